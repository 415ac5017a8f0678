// Compiles authorization policies and workloads into what bpf/authz.bpf.c reads: per destination
// address of the node's workloads, an ordered list of terms; per source address, an identity id;
// per term, its sets. Pure: no I/O, ids from an AuthzIds the caller keeps between compiles.
//
// A policy matches if any group matches, a group if all its clauses do, a clause if any of its
// matches does (ztunnel's rbac.rs). Each policy becomes its disjunctive normal form: one term per
// choice of one match in every clause of a group, the chosen matches merged into one conjunction.
// Identity conditions (namespaces, principals, service accounts) are evaluated here against every
// identity the kernel can see, so in the kernel they are one set lookup. Destination IPs are
// evaluated here per destination address. What the kernel cannot be given denies, never allows.
import { encodeAddress, familyOf, type Family } from '../net/address.js';
import {
  formatCidr,
  principalOf,
  type Action,
  type AuthzPolicy,
  type AuthzWorkload,
  type Cidr,
  type Match,
  type RefusedPolicy,
  type Scope,
  type StringMatch,
} from './policy.js';

/** KM_AUTHZ_MAX_TERMS (bpf/authz.h; checked at load, authz/codec.ts's AUTHZ_SPEC). */
export const MAX_TERMS = 4096;
/** Terms one policy may expand to (the product of its clauses' alternatives); past it, unexpressible. */
export const MAX_POLICY_TERMS = 1024;

export const TERM_FLAGS = {
  dryRun: 0x01,
  idIn: 0x02,
  idNotIn: 0x04,
  srcIn: 0x08,
  srcNotIn: 0x10,
  portIn: 0x20,
  portNotIn: 0x40,
} as const;
export const DEST_FLAGS = { allow: 0x01, dryAllow: 0x02 } as const;
export const ACTION_CODE: Record<Action, number> = { ALLOW: 0, DENY: 1 };

export const REASONS = {
  deny_policy: 1,
  no_allow_match: 2,
  unknown_destination: 3,
  policy_pending: 4,
  policy_refused: 5,
  over_budget: 6,
  dry_run_deny: 7,
  dry_run_no_allow_match: 8,
  unexpressible: 9,
} as const;
export type ReasonName = keyof typeof REASONS;
export const REASON_NAMES = Object.fromEntries(Object.entries(REASONS).map(([k, v]) => [v, k])) as Record<
  number,
  ReasonName
>;

export interface Term {
  /** What a match counts against: the policy, or the destination workload (over_budget). */
  id: number;
  set: number;
  flags: number;
  action: number;
  reason: number;
}

export interface Dest {
  address: string;
  family: Family;
  workload: number;
  flags: number;
  /** Walked in order. */
  terms: Term[];
  /** The index of the terms folded out of the walk (0: none). */
  list: number;
}

/** What one lookup in km_authz_index answers: the first DENY and whether an ALLOW matches. */
export interface IndexEntry {
  deny: number;
  reason: number;
  allow: boolean;
}

/** Per list, by source identity and by destination port. */
export interface TermIndex {
  identities: Map<number, IndexEntry>;
  ports: Map<number, IndexEntry>;
}

/** Entries one list's index may hold; past it, its terms stay in the walk. */
export const MAX_INDEX_ENTRIES = 65536;

export interface TermSet {
  /** Identity ids listed (the term's flag says whether the source must be in or out). */
  identities: number[];
  cidrs: { negated: boolean; cidr: Cidr }[];
  ports: { negated: boolean; port: number }[];
}

/** The kernel's authorization state. */
export interface AuthzModel {
  /** Destination address (IP literal) → its terms. */
  dests: Map<string, Dest>;
  /** Source address → identity id (addresses of no identity are left out). */
  sources: Map<string, number>;
  sets: Map<number, TermSet>;
  /** Folded terms of each list id. */
  index: Map<number, TermIndex>;
  /** For counters, events and the admin views: what each id names. */
  names: AuthzNames;
  workloads: WorkloadView[];
}

export interface AuthzNames {
  policies: Map<number, { key: string; namespace: string; name: string }>;
  workloads: Map<number, { uid: string; namespace: string; name: string }>;
  identities: Map<number, string>;
}

export type PolicyState = 'enforced' | 'dry_run' | 'pending' | 'refused' | 'unexpressible';

/** Per workload of the node: which policies apply and how (the admin endpoint shows it). */
export interface WorkloadView {
  uid: string;
  namespace: string;
  name: string;
  addresses: string[];
  policies: { policy: string; scope?: Scope; action?: Action; state: PolicyState; terms: number }[];
  /** Terms in the kernel for its first address, and why a whole-destination deny was written. */
  terms: number;
  denyAll?: ReasonName;
}

/**
 * Ids stay the same for the same thing across compiles (counters keep their series; unchanged
 * terms are not rewritten). Never reused: a restarted agent starts above what it finds pinned.
 */
export class AuthzIds {
  private next = { policy: 1, workload: 1, identity: 1, set: 1, list: 1 };
  private readonly maps = {
    policy: new Map<string, number>(),
    workload: new Map<string, number>(),
    identity: new Map<string, number>(),
    set: new Map<string, number>(),
    list: new Map<string, number>(),
  };

  id(kind: keyof AuthzIds['next'], key: string): number {
    let v = this.maps[kind].get(key);
    if (v === undefined) {
      v = this.next[kind]++;
      this.maps[kind].set(key, v);
    }
    return v;
  }

  /** Ids found pinned by a previous agent: new ones start above them. */
  above(kind: keyof AuthzIds['next'], max: number): void {
    this.next[kind] = Math.max(this.next[kind], max + 1);
  }

  /** Keeps only the keys still used, so memory follows the mesh (their ids are not handed out again). */
  retain(kind: keyof AuthzIds['next'], used: Set<string>): void {
    for (const k of this.maps[kind].keys()) if (!used.has(k)) this.maps[kind].delete(k);
  }
}

export interface AuthzInput {
  policies: readonly AuthzPolicy[];
  refused: readonly RefusedPolicy[];
  workloads: readonly AuthzWorkload[];
  /** Workloads on this node get destination entries; undefined: every workload with an address. */
  node?: string;
}

interface Identity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

/** A conjunction of matches with the address and port conditions merged. */
interface TermDef {
  identity: Match[];
  srcIn?: Cidr[];
  srcNotIn: Cidr[];
  dstIn: Cidr[][];
  dstNotIn: Cidr[];
  portIn?: number[];
  portNotIn: number[];
}

function stringMatches(m: StringMatch, v: string): boolean {
  switch (m.kind) {
    case 'exact':
      return v === m.value;
    case 'prefix':
      return v.startsWith(m.value);
    case 'suffix':
      return v.endsWith(m.value);
    case 'presence':
      return v !== '';
  }
}

function hasIdentityConditions(m: Match): boolean {
  return (
    m.namespaces.length +
      m.notNamespaces.length +
      m.principals.length +
      m.notPrincipals.length +
      m.serviceAccounts.length +
      m.notServiceAccounts.length >
    0
  );
}

function isEmptyMatch(m: Match): boolean {
  return (
    !hasIdentityConditions(m) &&
    m.sourceIps.length +
      m.notSourceIps.length +
      m.destinationIps.length +
      m.notDestinationIps.length +
      m.destinationPorts.length +
      m.notDestinationPorts.length ===
      0
  );
}

/** ztunnel's identity checks for one source: undefined is a source with no identity. */
function identityMatches(m: Match, id: Identity | undefined): boolean {
  const ns = id?.namespace ?? '';
  const principal = id ? principalOf(id) : undefined;
  const nsOk = (s: StringMatch): boolean => stringMatches(s, ns);
  const principalOk = (s: StringMatch): boolean => principal !== undefined && stringMatches(s, principal);
  const saOk = (a: { namespace: string; serviceAccount: string }): boolean =>
    id !== undefined && a.namespace === id.namespace && a.serviceAccount === id.serviceAccount;
  if (m.namespaces.length > 0 && !m.namespaces.some(nsOk)) return false;
  if (m.notNamespaces.some(nsOk)) return false;
  if (m.principals.length > 0 && !m.principals.some(principalOk)) return false;
  if (m.notPrincipals.some(principalOk)) return false;
  if (m.serviceAccounts.length > 0 && !m.serviceAccounts.some(saOk)) return false;
  if (m.notServiceAccounts.some(saOk)) return false;
  return true;
}

function contains(outer: Cidr, inner: Cidr): boolean {
  if (outer.family !== inner.family || outer.length > inner.length) return false;
  for (let bit = 0; bit < outer.length; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((outer.bytes[bit >> 3]! & mask) !== (inner.bytes[bit >> 3]! & mask)) return false;
  }
  return true;
}

/** The addresses in both lists, as CIDRs (one contains the other, or they are disjoint). */
function intersect(a: Cidr[], b: Cidr[]): Cidr[] {
  const out: Cidr[] = [];
  for (const x of a)
    for (const y of b) {
      if (contains(x, y)) out.push(y);
      else if (contains(y, x)) out.push(x);
    }
  return dedupeCidrs(out);
}

function dedupeCidrs(cs: Cidr[]): Cidr[] {
  const seen = new Map<string, Cidr>();
  for (const c of cs) seen.set(formatCidr(c), c);
  return [...seen.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, c]) => c);
}

function hostCidr(address: string): Cidr {
  const family = familyOf(address);
  return { family, bytes: encodeAddress(address), length: family === 4 ? 32 : 128 };
}

/** The conjunction of the chosen matches, or undefined when it can never hold. */
function merge(matches: Match[]): TermDef | undefined {
  const t: TermDef = { identity: [], srcNotIn: [], dstIn: [], dstNotIn: [], portNotIn: [] };
  for (const m of matches) {
    if (hasIdentityConditions(m)) t.identity.push(m);
    if (m.sourceIps.length > 0)
      t.srcIn = t.srcIn ? intersect(t.srcIn, m.sourceIps) : dedupeCidrs(m.sourceIps);
    t.srcNotIn.push(...m.notSourceIps);
    if (m.destinationIps.length > 0) t.dstIn.push(m.destinationIps);
    t.dstNotIn.push(...m.notDestinationIps);
    if (m.destinationPorts.length > 0) {
      const ports = new Set(m.destinationPorts);
      t.portIn = t.portIn ? t.portIn.filter((p) => ports.has(p)) : [...ports];
    }
    t.portNotIn.push(...m.notDestinationPorts);
  }
  t.srcNotIn = dedupeCidrs(t.srcNotIn);
  t.portNotIn = [...new Set(t.portNotIn)].sort((a, b) => a - b);
  if (t.portIn) {
    const excluded = new Set(t.portNotIn);
    t.portIn = t.portIn.filter((p) => !excluded.has(p)).sort((a, b) => a - b);
    if (t.portIn.length === 0) return undefined;
  }
  if (t.srcIn) {
    t.srcIn = t.srcIn.filter((c) => !t.srcNotIn.some((n) => contains(n, c)));
    if (t.srcIn.length === 0) return undefined;
  }
  return t;
}

/** A policy's terms before destination addresses are applied, or 'unexpressible'. */
function expand(p: AuthzPolicy): TermDef[] | 'unexpressible' {
  const out: TermDef[] = [];
  for (const g of p.groups) {
    let combos: Match[][] = [[]];
    for (const clause of g.clauses) {
      if (clause.matches.length === 0) continue; // a clause with no matches holds
      const alternatives = clause.matches.filter((m) => !isEmptyMatch(m)); // an empty match never holds
      combos = combos.flatMap((c) => alternatives.map((a) => [...c, a]));
      if (combos.length > MAX_POLICY_TERMS) return 'unexpressible';
      if (combos.length === 0) break;
    }
    for (const c of combos) {
      const t = merge(c);
      if (t) out.push(t);
    }
    if (out.length > MAX_POLICY_TERMS) return 'unexpressible';
  }
  return out;
}

function dstHolds(t: TermDef, address: Cidr): boolean {
  return (
    t.dstIn.every((list) => list.some((c) => contains(c, address))) &&
    !t.dstNotIn.some((c) => contains(c, address))
  );
}

function matchKey(m: Match): string {
  const s = (l: StringMatch[]): string[] =>
    l.map((x) => (x.kind === 'presence' ? '*' : `${x.kind}:${x.value}`)).sort();
  const a = (l: { namespace: string; serviceAccount: string }[]): string[] =>
    l.map((x) => `${x.namespace}/${x.serviceAccount}`).sort();
  return JSON.stringify([
    s(m.namespaces),
    s(m.notNamespaces),
    s(m.principals),
    s(m.notPrincipals),
    a(m.serviceAccounts),
    a(m.notServiceAccounts),
  ]);
}

interface Universe {
  /** Identity id → the identities a source with it may be (undefined: no identity). */
  candidates: Map<number, (Identity | undefined)[]>;
}

/**
 * The identity ids a term's set lists, and whether they are the ones that pass or fail. A source
 * that may be one of several identities (an address shared by workloads, or a host-network
 * workload's address, which the node's own connections share) passes an ALLOW term only if every
 * candidate would, and a DENY term if any would: never more open than any reading of the source.
 */
function identitySet(def: TermDef, action: Action, u: Universe): { negated: boolean; ids: number[] } {
  const passing: number[] = [];
  const failing: number[] = [];
  for (const [id, cands] of u.candidates) {
    const ok = (c: Identity | undefined): boolean => def.identity.every((m) => identityMatches(m, c));
    const pass = action === 'ALLOW' ? cands.every(ok) : cands.some(ok);
    (pass ? passing : failing).push(id);
  }
  // the shorter list; its kind is part of the set's identity, so a flip is a new set (a new term)
  return failing.length < passing.length ? { negated: true, ids: failing } : { negated: false, ids: passing };
}

interface Applied {
  key: string;
  policy?: AuthzPolicy;
  refused?: RefusedPolicy;
}

export function compile(input: AuthzInput, ids: AuthzIds): AuthzModel {
  const names: AuthzNames = { policies: new Map(), workloads: new Map(), identities: new Map() };
  const used = {
    policy: new Set<string>(),
    workload: new Set<string>(),
    identity: new Set<string>(),
    list: new Set<string>(),
    set: new Set<string>(),
  };
  const policyId = (key: string): number => {
    used.policy.add(key);
    const id = ids.id('policy', key);
    const slash = key.indexOf('/');
    names.policies.set(id, { key, namespace: key.slice(0, slash), name: key.slice(slash + 1) });
    return id;
  };

  const local = input.workloads.filter((w) => input.node === undefined || w.node === input.node);
  const networks = new Set(local.map((w) => w.network));

  // ---- sources: address → identity id ----
  const byAddress = new Map<string, Map<string, Identity | undefined>>();
  for (const w of input.workloads) {
    if (networks.size > 0 && !networks.has(w.network)) continue; // another network's address space
    const ident: Identity = {
      trustDomain: w.trustDomain,
      namespace: w.namespace,
      serviceAccount: w.serviceAccount,
    };
    for (const a of w.addresses) {
      const c = byAddress.get(a) ?? new Map<string, Identity | undefined>();
      c.set(principalOf(ident), ident);
      if (w.hostNetwork) c.set('', undefined); // the node's own connections come from this address too
      byAddress.set(a, c);
    }
  }
  const universe: Universe = { candidates: new Map([[0, [undefined]]]) };
  names.identities.set(0, '');
  const sources = new Map<string, number>();
  for (const [address, cands] of byAddress) {
    const keys = [...cands.keys()].sort();
    if (keys.length === 1 && keys[0] === '') continue;
    const key = keys.length === 1 ? keys[0]! : `ambiguous:${keys.join('|')}`;
    used.identity.add(key);
    const id = ids.id('identity', key);
    sources.set(address, id);
    universe.candidates.set(id, [...cands.values()]);
    names.identities.set(
      id,
      keys.length === 1 ? keys[0]! : keys.map((k) => k || '(no identity)').join(' | '),
    );
  }

  // ---- policies: which apply where, expanded once each ----
  const accepted = new Map(input.policies.map((p) => [p.key, p]));
  const refused = new Map(input.refused.map((p) => [p.key, p]));
  const expanded = new Map<string, TermDef[] | 'unexpressible'>();
  const expandedOf = (p: AuthzPolicy): TermDef[] | 'unexpressible' => {
    let e = expanded.get(p.key);
    if (!e) expanded.set(p.key, (e = expand(p)));
    return e;
  };
  const sets = new Map<number, TermSet>();
  const sharedTerms = new Map<string, Term[]>();
  const foldCache = new Map<string, TermIndex | null>();
  const index = new Map<number, TermIndex>();
  const universeIds = new Set(universe.candidates.keys());
  // one set per definition and action, whatever the number of destinations sharing it
  const setCache = new Map<TermDef, Map<Action, { id: number; flags: number }>>();
  const setFor = (def: TermDef, action: Action): { id: number; flags: number } => {
    let byAction = setCache.get(def);
    if (!byAction) setCache.set(def, (byAction = new Map<Action, { id: number; flags: number }>()));
    let r = byAction.get(action);
    if (!r) byAction.set(action, (r = makeSet(def, action)));
    return r;
  };
  const makeSet = (def: TermDef, action: Action): { id: number; flags: number } => {
    let flags = 0;
    let idPart: { negated: boolean; ids: number[] } | undefined;
    if (def.identity.length > 0) {
      idPart = identitySet(def, action, universe);
      flags |= idPart.negated ? TERM_FLAGS.idNotIn : TERM_FLAGS.idIn;
    }
    if (def.srcIn) flags |= TERM_FLAGS.srcIn;
    if (def.srcNotIn.length > 0) flags |= TERM_FLAGS.srcNotIn;
    if (def.portIn) flags |= TERM_FLAGS.portIn;
    if (def.portNotIn.length > 0) flags |= TERM_FLAGS.portNotIn;
    if (flags === 0) return { id: 0, flags };
    const key = JSON.stringify([
      action,
      idPart?.negated ?? null,
      def.identity.map(matchKey).sort(),
      def.srcIn?.map(formatCidr) ?? null,
      def.srcNotIn.map(formatCidr),
      def.portIn ?? null,
      def.portNotIn,
    ]);
    used.set.add(key);
    const id = ids.id('set', key);
    if (!sets.has(id))
      sets.set(id, {
        identities: [...(idPart?.ids ?? [])].sort((a, b) => a - b),
        cidrs: [
          ...(def.srcIn ?? []).map((cidr) => ({ negated: false, cidr })),
          ...def.srcNotIn.map((cidr) => ({ negated: true, cidr })),
        ],
        ports: [
          ...(def.portIn ?? []).map((port) => ({ negated: false, port })),
          ...def.portNotIn.map((port) => ({ negated: true, port })),
        ],
      });
    return { id, flags };
  };

  const globals = [...accepted.values(), ...refused.values()].filter(
    (p) => p.scope === 'GLOBAL' || p.scope === undefined,
  );
  const byNamespace = new Map<string, string[]>();
  for (const p of [...accepted.values(), ...refused.values()])
    if (p.scope === 'NAMESPACE')
      byNamespace.set(p.namespace, [...(byNamespace.get(p.namespace) ?? []), p.key]);

  // ---- destinations: the node's workloads ----
  const dests = new Map<string, Dest>();
  const views: WorkloadView[] = [];
  const claimed = new Map<string, number>();
  for (const w of local) for (const a of w.addresses) claimed.set(a, (claimed.get(a) ?? 0) + 1);
  for (const w of local) {
    used.workload.add(w.uid);
    const workload = ids.id('workload', w.uid);
    names.workloads.set(workload, { uid: w.uid, namespace: w.namespace, name: w.name });
    const keys = new Set([
      ...globals.map((p) => p.key),
      ...(byNamespace.get(w.namespace) ?? []),
      ...w.policies,
    ]);
    const applied: Applied[] = [...keys].sort().map((key) => ({
      key,
      ...(accepted.has(key) ? { policy: accepted.get(key) } : {}),
      ...(refused.has(key) ? { refused: refused.get(key) } : {}),
    }));
    const view: WorkloadView = {
      uid: w.uid,
      namespace: w.namespace,
      name: w.name,
      addresses: w.addresses,
      policies: [],
      terms: 0,
    };
    views.push(view);
    for (const [i, address] of w.addresses.entries()) {
      const dest = destFor(w, workload, address, applied, i === 0 ? view : undefined);
      if ((claimed.get(address) ?? 0) > 1) {
        // two workloads of this node claim the address (a recycled pod IP): whose policies? neither
        dest.terms = [denyAll(0, REASONS.unknown_destination)];
        dest.flags = 0;
        dest.list = 0;
        if (i === 0) view.denyAll = 'unknown_destination';
      }
      if (i === 0) view.terms = dest.terms.length;
      dests.set(address, dest);
    }
  }

  function denyAll(id: number, reason: number): Term {
    return { id, set: 0, flags: 0, action: ACTION_CODE.DENY, reason };
  }

  function destFor(
    w: AuthzWorkload,
    workload: number,
    address: string,
    applied: Applied[],
    view?: WorkloadView,
  ): Dest {
    const host = hostCidr(address);
    const dryDeny: Term[] = [];
    const deny: Term[] = [];
    const allow: Term[] = [];
    const dryAllow: Term[] = [];
    let enforcedAllow = false;
    let anyDryAllow = false;
    for (const a of applied) {
      const id = policyId(a.key);
      const p = a.policy;
      if (!p) {
        const r = a.refused;
        const state: PolicyState = r ? 'refused' : 'pending';
        view?.policies.push({
          policy: a.key,
          ...(r?.scope ? { scope: r.scope } : {}),
          ...(r?.action ? { action: r.action } : {}),
          state: r?.dryRun ? 'dry_run' : state,
          terms: r?.dryRun || r?.action === 'ALLOW' ? 0 : 1,
        });
        if (r?.dryRun) continue; // known to be dry-run: never enforced, refused or not
        if (r?.action === 'ALLOW')
          enforcedAllow = true; // an ALLOW kernmesh cannot read allows nothing
        else deny.push(denyAll(id, r ? REASONS.policy_refused : REASONS.policy_pending));
        continue;
      }
      const e = expandedOf(p);
      if (e === 'unexpressible') {
        view?.policies.push({
          policy: a.key,
          scope: p.scope,
          action: p.action,
          state: 'unexpressible',
          terms: 0,
        });
        if (p.dryRun) continue;
        if (p.action === 'ALLOW') enforcedAllow = true;
        else deny.push(denyAll(id, REASONS.unexpressible));
        continue;
      }
      // a policy without destination IPs has the same terms on every destination: built once
      const shared = e.every((d) => d.dstIn.length === 0 && d.dstNotIn.length === 0);
      let terms = shared ? sharedTerms.get(p.key) : undefined;
      if (!terms) {
        terms = [];
        for (const def of e) {
          if (!dstHolds(def, host)) continue;
          const set = setFor(def, p.action);
          terms.push({
            id,
            set: set.id,
            flags: set.flags | (p.dryRun ? TERM_FLAGS.dryRun : 0),
            action: ACTION_CODE[p.action],
            reason: REASONS.deny_policy,
          });
        }
        if (shared) sharedTerms.set(p.key, terms);
      }
      view?.policies.push({
        policy: a.key,
        scope: p.scope,
        action: p.action,
        state: p.dryRun ? 'dry_run' : 'enforced',
        terms: terms.length,
      });
      if (p.action === 'DENY') (p.dryRun ? dryDeny : deny).push(...terms);
      else if (p.dryRun) {
        anyDryAllow = true;
        dryAllow.push(...terms);
      } else {
        enforcedAllow = true;
        allow.push(...terms);
      }
    }
    // dry-run DENYs first: they are reported even when an enforced DENY then matches (as ztunnel)
    const ordered = [...dryDeny, ...deny, ...allow, ...(enforcedAllow ? [] : dryAllow)];
    const { walked, list } = fold(ordered);
    let terms = walked;
    let flags = enforcedAllow ? DEST_FLAGS.allow : anyDryAllow ? DEST_FLAGS.dryAllow : 0;
    let listId = list;
    if (terms.length > MAX_TERMS) {
      terms = [denyAll(workload, REASONS.over_budget)];
      flags = 0;
      listId = 0;
      if (view) view.denyAll = 'over_budget';
    }
    return { address, family: familyOf(address), workload, flags, terms, list: listId };
  }

  /**
   * Enforced terms with one identity condition or one port list, folded out of the walk into one
   * lookup each (by source identity, by destination port); the rest is walked in order.
   */
  function fold(terms: Term[]): { walked: Term[]; list: number } {
    const idOnly = (t: Term): boolean => t.flags === TERM_FLAGS.idIn || t.flags === TERM_FLAGS.idNotIn;
    const portOnly = (t: Term): boolean => t.flags === TERM_FLAGS.portIn;
    const folded = terms.filter((t) => idOnly(t) || portOnly(t));
    if (folded.length === 0) return { walked: terms, list: 0 };
    const key = JSON.stringify(folded.map((t) => [t.id, t.set, t.flags, t.action]));
    let cached = foldCache.get(key);
    if (cached === undefined) {
      cached = buildIndex(folded, idOnly);
      foldCache.set(key, cached);
    }
    if (!cached) return { walked: terms, list: 0 };
    used.list.add(key);
    const list = ids.id('list', key);
    index.set(list, cached);
    return { walked: terms.filter((t) => !(idOnly(t) || portOnly(t))), list };
  }

  function buildIndex(folded: Term[], idOnly: (t: Term) => boolean): TermIndex | null {
    const out: TermIndex = { identities: new Map(), ports: new Map() };
    const entry = (m: Map<number, IndexEntry>, k: number): IndexEntry => {
      let e = m.get(k);
      if (!e) m.set(k, (e = { deny: 0, reason: 0, allow: false }));
      return e;
    };
    const note = (e: IndexEntry, t: Term): void => {
      if (t.action === ACTION_CODE.ALLOW) e.allow = true;
      else if (!e.deny) {
        e.deny = t.id;
        e.reason = t.reason;
      }
    };
    const universe = [...universeIds];
    for (const t of folded) {
      const s = sets.get(t.set)!;
      if (idOnly(t)) {
        const listed = new Set(s.identities);
        const holds = t.flags === TERM_FLAGS.idIn ? s.identities : universe.filter((x) => !listed.has(x));
        for (const x of holds) note(entry(out.identities, x), t);
      } else for (const p of s.ports) if (!p.negated) note(entry(out.ports, p.port), t);
      if (out.identities.size + out.ports.size > MAX_INDEX_ENTRIES) return null;
    }
    return out;
  }

  for (const kind of ['policy', 'workload', 'identity', 'set', 'list'] as const) ids.retain(kind, used[kind]);
  return { dests, sources, sets, index, names, workloads: views };
}
