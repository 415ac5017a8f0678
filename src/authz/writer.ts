// Writes an AuthzModel into the maps of bpf/authz.bpf.o, make-before-break: set entries a new term
// needs are there before the term, a destination's new term list is written in a free range of
// km_authz_terms before the one update of its km_authz_dest entry switches to it, and what is no
// longer used goes last. A range a destination left is not reused for a while (a lookup running
// through the old list during the switch must read the old terms whole).
import type { BpfMap } from '../../native/index.js';
import { u32 } from '../../native/spec.js';
import { REASONS, type AuthzModel } from './compile.js';
import {
  INDEX_KIND,
  cidrKey,
  encodeIndex,
  indexKey,
  decodeAddr,
  decodeCidrKey,
  decodeDest,
  decodeTerm,
  encodeAddr,
  encodeDest,
  encodeTerm,
  idKey,
  portKey,
  termListSignature,
  type DestValue,
} from './codec.js';

export interface AuthzMaps {
  index: BpfMap;
  dest: BpfMap;
  src: BpfMap;
  terms: BpfMap;
  ids: BpfMap;
  ports: BpfMap;
  cidrs: BpfMap;
}

/** Slot 0 of km_authz_terms: a term that denies everything, for a destination whose list does not fit. */
export const FALLBACK_SLOT = 0;
/** How long a range a destination left stays unused: far beyond any one lookup's walk. */
export const QUARANTINE_MS = 1000;

export interface ApplyResult {
  /** Map entries written or deleted. */
  ops: number;
  /** Anything a connection's verdict depends on changed (open connections need judging again). */
  changed: boolean;
  /** Destinations that did not fit in km_authz_terms and deny everything until they do. */
  overflowed: string[];
}

interface Range {
  first: number;
  count: number;
}

/** First-fit ranges of km_authz_terms; a freed range waits out its quarantine before reuse. */
export class TermRanges {
  private free: Range[];
  private quarantined: (Range & { until: number })[] = [];

  constructor(
    readonly capacity: number,
    used: Range[] = [],
    private readonly now: () => number = Date.now,
  ) {
    // slot 0 is the fallback term, never handed out
    const taken = [{ first: FALLBACK_SLOT, count: 1 }, ...used].sort((a, b) => a.first - b.first);
    this.free = [];
    let at = 0;
    for (const r of taken) {
      if (r.first > at) this.free.push({ first: at, count: r.first - at });
      at = Math.max(at, r.first + r.count);
    }
    if (at < capacity) this.free.push({ first: at, count: capacity - at });
  }

  allocate(count: number): number | undefined {
    this.release();
    const i = this.free.findIndex((r) => r.count >= count);
    if (i < 0) return undefined;
    const r = this.free[i]!;
    const first = r.first;
    if (r.count === count) this.free.splice(i, 1);
    else this.free[i] = { first: r.first + count, count: r.count - count };
    return first;
  }

  /** Reusable after the quarantine. */
  retire(r: Range): void {
    if (r.count > 0) this.quarantined.push({ ...r, until: this.now() + QUARANTINE_MS });
  }

  /** When the next quarantined range becomes free (undefined: none waits). */
  nextRelease(): number | undefined {
    return this.quarantined.length ? Math.min(...this.quarantined.map((q) => q.until)) : undefined;
  }

  private release(): void {
    const now = this.now();
    const due = this.quarantined.filter((q) => q.until <= now);
    if (due.length === 0) return;
    this.quarantined = this.quarantined.filter((q) => q.until > now);
    const all = [...this.free, ...due.map(({ first, count }) => ({ first, count }))].sort(
      (a, b) => a.first - b.first,
    );
    this.free = [];
    for (const r of all) {
      const last = this.free[this.free.length - 1];
      if (last && last.first + last.count === r.first) last.count += r.count;
      else this.free.push({ ...r });
    }
  }

  freeSlots(): number {
    return this.free.reduce((n, r) => n + r.count, 0);
  }
}

interface LiveDest extends DestValue {
  signature: string;
}

export class AuthzWriter {
  private readonly dests = new Map<string, LiveDest>();
  private readonly sources = new Map<string, number>();
  private readonly idEntries = new Set<string>();
  private readonly portEntries = new Set<string>();
  private readonly cidrEntries = new Map<string, Buffer>();
  /** km_authz_index: key hex → value hex. */
  private readonly indexEntries = new Map<string, string>();
  private readonly ranges: TermRanges;
  /**
   * Term lists by content: destinations with the same list (a namespace's pods under the same
   * NAMESPACE and GLOBAL policies) share one range.
   */
  private readonly lists = new Map<string, Range>();

  /** Rebuilds the mirror from what the maps hold (a previous agent's state stays in force until replaced). */
  constructor(
    private readonly maps: AuthzMaps,
    now: () => number = Date.now,
  ) {
    const used: Range[] = [];
    for (const [k, v] of maps.dest.entries()) {
      const d = decodeDest(v);
      const terms = [];
      for (let i = 0; i < d.count; i++) {
        const t = maps.terms.lookup(u32(d.first + i));
        if (t) terms.push(decodeTerm(t));
      }
      const signature = d.first === FALLBACK_SLOT ? 'fallback' : termListSignature({ terms });
      this.dests.set(decodeAddr(k), { ...d, signature });
      if (d.first !== FALLBACK_SLOT && d.count > 0 && !this.lists.has(signature)) {
        used.push({ first: d.first, count: d.count });
        this.lists.set(signature, { first: d.first, count: d.count });
      }
    }
    for (const [k, v] of maps.src.entries()) this.sources.set(decodeAddr(k), v.readUInt32LE(0));
    for (const k of maps.ids.keys()) this.idEntries.add(k.toString('hex'));
    for (const k of maps.ports.keys()) this.portEntries.add(k.toString('hex'));
    for (const k of maps.cidrs.keys()) this.cidrEntries.set(k.toString('hex'), k);
    for (const [k, v] of maps.index.entries()) this.indexEntries.set(k.toString('hex'), v.toString('hex'));
    this.ranges = new TermRanges(maps.terms.maxEntries, used, now);
    maps.terms.update(
      u32(FALLBACK_SLOT),
      encodeTerm({ id: 0, set: 0, flags: 0, action: 1, reason: REASONS.over_budget }),
    );
  }

  /** The largest ids the pinned state uses, so a restarted agent's new ids do not collide. */
  pinnedMaxIds(): { policy: number; workload: number; identity: number; set: number; list: number } {
    const max = { policy: 0, workload: 0, identity: 0, set: 0, list: 0 };
    for (const k of this.indexEntries.keys())
      max.list = Math.max(max.list, Buffer.from(k, 'hex').readUInt32LE(0));
    for (const d of this.dests.values()) {
      max.workload = Math.max(max.workload, d.workload);
      max.list = Math.max(max.list, d.list);
      for (let i = 0; i < d.count; i++) {
        const t = this.maps.terms.lookup(u32(d.first + i));
        if (!t) continue;
        const term = decodeTerm(t);
        max.policy = Math.max(max.policy, term.id);
        max.set = Math.max(max.set, term.set);
      }
    }
    for (const id of this.sources.values()) max.identity = Math.max(max.identity, id);
    for (const k of this.idEntries) max.set = Math.max(max.set, Buffer.from(k, 'hex').readUInt32LE(0));
    for (const k of this.portEntries) max.set = Math.max(max.set, Buffer.from(k, 'hex').readUInt32LE(0));
    for (const k of this.cidrEntries.values()) max.set = Math.max(max.set, decodeCidrKey(k).set);
    return max;
  }

  apply(model: AuthzModel): ApplyResult {
    let ops = 0;
    const overflowed: string[] = [];

    // 1. set entries the new terms need
    const wantIds = new Map<string, Buffer>();
    const wantPorts = new Map<string, Buffer>();
    const wantCidrs = new Map<string, Buffer>();
    for (const [set, s] of model.sets) {
      for (const identity of s.identities) {
        const k = idKey(set, identity);
        wantIds.set(k.toString('hex'), k);
      }
      for (const p of s.ports) {
        const k = portKey(set, p.port, p.negated);
        wantPorts.set(k.toString('hex'), k);
      }
      for (const c of s.cidrs) {
        const k = cidrKey(set, c.cidr, c.negated);
        wantCidrs.set(k.toString('hex'), k);
      }
    }
    ops += this.addAll(this.maps.ids, wantIds, this.idEntries);
    ops += this.addAll(this.maps.ports, wantPorts, this.portEntries);
    for (const [h, k] of wantCidrs)
      if (!this.cidrEntries.has(h)) {
        this.maps.cidrs.update(k, Buffer.from([1])); // LPM tries have no batch commands
        this.cidrEntries.set(h, k);
        ops++;
      }
    // folded terms: a new list's entries before any destination points to it; a list's entries
    // for an identity that came or went change in place (as set entries do)
    const wantIndex = new Map<string, Buffer>();
    for (const [list, idx] of model.index)
      for (const [kind, m] of [
        [INDEX_KIND.identity, idx.identities],
        [INDEX_KIND.port, idx.ports],
      ] as const)
        for (const [value, e] of m)
          wantIndex.set(indexKey(list, kind, value).toString('hex'), encodeIndex(e));
    const indexKeys: Buffer[] = [];
    const indexValues: Buffer[] = [];
    for (const [h, v] of wantIndex)
      if (this.indexEntries.get(h) !== v.toString('hex')) {
        indexKeys.push(Buffer.from(h, 'hex'));
        indexValues.push(v);
        this.indexEntries.set(h, v.toString('hex'));
      }
    if (indexKeys.length > 0) batch(this.maps.index, indexKeys, indexValues);
    ops += indexKeys.length;

    // 2. new term lists, each in a free range (once per content)
    const destUpdates: [string, LiveDest][] = [];
    const termKeys: Buffer[] = [];
    const termValues: Buffer[] = [];
    for (const [address, d] of model.dests) {
      let signature = termListSignature(d);
      let count = d.terms.length;
      let flags = d.flags;
      let first = count === 0 ? 0 : this.lists.get(signature)?.first;
      if (first === undefined) {
        first = this.ranges.allocate(count);
        if (first === undefined) {
          // no room: the destination denies everything until a later apply finds room
          overflowed.push(address);
          first = FALLBACK_SLOT;
          count = 1;
          flags = 0;
          signature = 'fallback';
        } else {
          this.lists.set(signature, { first, count });
          d.terms.forEach((t, i) => {
            termKeys.push(u32(first! + i));
            termValues.push(encodeTerm(t));
          });
        }
      }
      const next: LiveDest = { workload: d.workload, first, count, flags, list: d.list, signature };
      const live = this.dests.get(address);
      if (!live || !sameDest(live, next)) destUpdates.push([address, next]);
    }
    if (termKeys.length > 0) {
      batch(this.maps.terms, termKeys, termValues);
      ops += termKeys.length;
    }

    // 3. sources, then destinations switch (each one update)
    const srcKeys: Buffer[] = [];
    const srcValues: Buffer[] = [];
    for (const [address, id] of model.sources)
      if (this.sources.get(address) !== id) {
        srcKeys.push(encodeAddr(address));
        srcValues.push(u32(id));
        this.sources.set(address, id);
      }
    if (srcKeys.length > 0) batch(this.maps.src, srcKeys, srcValues);
    ops += srcKeys.length;
    if (destUpdates.length > 0)
      batch(
        this.maps.dest,
        destUpdates.map(([a]) => encodeAddr(a)),
        destUpdates.map(([, d]) => encodeDest(d)),
      );
    for (const [a, d] of destUpdates) this.dests.set(a, d);
    ops += destUpdates.length;

    // 4. what is no longer used
    const goneDests = [...this.dests.keys()].filter((a) => !model.dests.has(a));
    if (goneDests.length > 0) {
      deleteAll(this.maps.dest, goneDests.map(encodeAddr));
      for (const a of goneDests) this.dests.delete(a);
    }
    ops += goneDests.length;
    const goneSources = [...this.sources.keys()].filter((a) => !model.sources.has(a));
    if (goneSources.length > 0) deleteAll(this.maps.src, goneSources.map(encodeAddr));
    for (const a of goneSources) this.sources.delete(a);
    ops += goneSources.length;
    ops += this.removeStale(this.maps.ids, wantIds, this.idEntries);
    const staleIndex = [...this.indexEntries.keys()].filter((h) => !wantIndex.has(h));
    if (staleIndex.length > 0)
      deleteAll(
        this.maps.index,
        staleIndex.map((h) => Buffer.from(h, 'hex')),
      );
    for (const h of staleIndex) this.indexEntries.delete(h);
    ops += staleIndex.length;
    ops += this.removeStale(this.maps.ports, wantPorts, this.portEntries);
    for (const [h, k] of [...this.cidrEntries])
      if (!wantCidrs.has(h)) {
        this.maps.cidrs.delete(k);
        this.cidrEntries.delete(h);
        ops++;
      }
    // ranges no destination points to any more wait out their quarantine before reuse
    const live = new Set([...this.dests.values()].map((d) => d.signature));
    for (const [signature, r] of [...this.lists])
      if (!live.has(signature)) {
        this.ranges.retire(r);
        this.lists.delete(signature);
      }
    return { ops, changed: ops > 0, overflowed };
  }

  /** What the writer believes is in the kernel (tests compare it with the maps). */
  mirror(): { dests: Map<string, DestValue>; sources: Map<string, number>; freeSlots: number } {
    return { dests: new Map(this.dests), sources: new Map(this.sources), freeSlots: this.ranges.freeSlots() };
  }

  private addAll(map: BpfMap, want: Map<string, Buffer>, have: Set<string>): number {
    const keys = [...want].filter(([h]) => !have.has(h)).map(([, k]) => k);
    if (keys.length === 0) return 0;
    batch(
      map,
      keys,
      keys.map(() => Buffer.from([1])),
    );
    for (const k of keys) have.add(k.toString('hex'));
    return keys.length;
  }

  private removeStale(map: BpfMap, want: Map<string, Buffer>, have: Set<string>): number {
    const stale = [...have].filter((h) => !want.has(h));
    if (stale.length === 0) return 0;
    deleteAll(
      map,
      stale.map((h) => Buffer.from(h, 'hex')),
    );
    for (const h of stale) have.delete(h);
    return stale.length;
  }
}

function sameDest(a: LiveDest, b: LiveDest): boolean {
  return (
    a.workload === b.workload &&
    a.first === b.first &&
    a.count === b.count &&
    a.flags === b.flags &&
    a.list === b.list &&
    a.signature === b.signature
  );
}

/** One batch call where the map has them; entry by entry otherwise (each still atomic). */
function batch(map: BpfMap, keys: Buffer[], values: Buffer[]): void {
  if (map.supportsBatch) {
    try {
      map.updateBatch(keys, values);
      return;
    } catch {
      // a batch that stopped part way: the single updates below redo it and name the entry at fault
    }
  }
  keys.forEach((k, i) => map.update(k, values[i]!));
}

function deleteAll(map: BpfMap, keys: Buffer[]): void {
  if (map.supportsBatch) {
    try {
      map.deleteBatch(keys);
      return;
    } catch {
      // an absent key stops a batch: delete the rest one by one
    }
  }
  for (const k of keys) map.delete(k);
}
