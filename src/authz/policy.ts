// Reads Istio's workload API for authorization: istio.security.Authorization resources (proto3 JSON
// with the proto's field names, as src/xds hands them on) into checked policies, and the workloads
// of istio.workload.Address into what authorization needs (addresses, identity, policy list).
// Strict where ztunnel is lenient: a value it would drop or widen without a word (a StringMatch
// with no kind, a malformed CIDR, a port above 65535, an unknown scope or action, an extension whose
// meaning kernmesh cannot know) refuses the whole resource, every fault listed with its path.
import { decodeAddress, type Family } from '../net/address.js';
import type { JsonObject, JsonValue } from '../xds/types.js';

export type Scope = 'GLOBAL' | 'NAMESPACE' | 'WORKLOAD_SELECTOR';
export type Action = 'ALLOW' | 'DENY';

export const SCOPES: readonly Scope[] = ['GLOBAL', 'NAMESPACE', 'WORKLOAD_SELECTOR'];
export const ACTIONS: readonly Action[] = ['ALLOW', 'DENY'];

export type StringMatch =
  | { kind: 'exact'; value: string }
  | { kind: 'prefix'; value: string }
  | { kind: 'suffix'; value: string }
  | { kind: 'presence' };

export interface ServiceAccountMatch {
  namespace: string;
  serviceAccount: string;
}

/** A CIDR with its host bits cleared: 16 bytes (IPv4 in the first 4) and a prefix length. */
export interface Cidr {
  family: Family;
  bytes: Buffer;
  length: number;
}

/** Every kind that is set must hold (one of its values, none of its not_ values); none set: no match. */
export interface Match {
  namespaces: StringMatch[];
  notNamespaces: StringMatch[];
  principals: StringMatch[];
  notPrincipals: StringMatch[];
  serviceAccounts: ServiceAccountMatch[];
  notServiceAccounts: ServiceAccountMatch[];
  sourceIps: Cidr[];
  notSourceIps: Cidr[];
  destinationIps: Cidr[];
  notDestinationIps: Cidr[];
  destinationPorts: number[];
  notDestinationPorts: number[];
}

/** Istio's `Rules`: any of its matches; with no matches at all it holds. */
export interface Clause {
  matches: Match[];
}

/** Istio's `Group`: all of its clauses; with none it holds. */
export interface Group {
  clauses: Clause[];
}

export interface AuthzPolicy {
  /** namespace/name, as istiod names the resource and workloads list it. */
  key: string;
  name: string;
  namespace: string;
  scope: Scope;
  action: Action;
  dryRun: boolean;
  groups: Group[];
}

/** A resource kernmesh cannot enforce as sent: it denies what it applies to (never fails open). */
export interface RefusedPolicy {
  key: string;
  name: string;
  namespace: string;
  /** Undefined when the scope itself was not understood: then it may apply to any workload. */
  scope?: Scope;
  /** Undefined when the action was not understood: then it is taken as a DENY. */
  action?: Action;
  dryRun: boolean;
  errors: string[];
}

/** errors: each fault as `<resource name>.<path>: <reason>`, for logs and tests. */
export type PolicyReading =
  | { policy: AuthzPolicy; errors?: undefined; faults?: undefined }
  | { refused: RefusedPolicy; errors: string[]; faults: Fault[] };

const MATCH_FIELDS = [
  'namespaces',
  'not_namespaces',
  'service_accounts',
  'not_service_accounts',
  'principals',
  'not_principals',
  'source_ips',
  'not_source_ips',
  'destination_ips',
  'not_destination_ips',
  'destination_ports',
  'not_destination_ports',
  'extensions',
];

function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A field's path inside the resource: `groups[0].rules[1]`, '' for the resource itself. */
function j(base: string, field: string): string {
  return base ? `${base}.${field}` : field;
}

/** One fault of a resource: where inside it, and why. */
export interface Fault {
  path: string;
  reason: string;
}

class Reader {
  readonly faults: Fault[] = [];

  fail(path: string, reason: string): void {
    this.faults.push({ path, reason });
  }

  /** A repeated field: absent is empty; anything but an array is a fault. */
  list(o: JsonObject, field: string, path: string): JsonValue[] {
    const v = o[field];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) {
      this.fail(j(path, field), 'not a list');
      return [];
    }
    return v;
  }

  objects(o: JsonObject, field: string, path: string): [JsonObject, string][] {
    const out: [JsonObject, string][] = [];
    this.list(o, field, path).forEach((v, i) => {
      if (isObject(v)) out.push([v, j(path, `${field}[${i}]`)]);
      else this.fail(j(path, `${field}[${i}]`), 'not a message');
    });
    return out;
  }

  string(o: JsonObject, field: string, path: string): string {
    const v = o[field];
    if (v === undefined || v === null) return '';
    if (typeof v !== 'string') {
      this.fail(j(path, field), 'not a string');
      return '';
    }
    return v;
  }

  /** Unknown fields are faults: a field this reader does not know may change what a match means. */
  known(o: JsonObject, fields: readonly string[], path: string): void {
    for (const k of Object.keys(o))
      if (k !== '@type' && !fields.includes(k)) this.fail(j(path, k), 'unknown field');
  }
}

function enumValue<T extends string>(
  r: Reader,
  v: JsonValue | undefined,
  values: readonly T[],
  path: string,
): T | undefined {
  if (v === undefined || v === null) return values[0];
  if (typeof v === 'string' && (values as readonly string[]).includes(v)) return v as T;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < values.length) return values[v];
  r.fail(path, `${JSON.stringify(v)} is not one of ${values.join(', ')} (kernmesh knows no other)`);
  return undefined;
}

function stringMatch(r: Reader, o: JsonObject, path: string): StringMatch | undefined {
  const kinds = ['exact', 'prefix', 'suffix', 'presence'].filter((k) => o[k] !== undefined && o[k] !== null);
  r.known(o, ['exact', 'prefix', 'suffix', 'presence'], path);
  if (kinds.length !== 1) {
    // ztunnel leaves a StringMatch with no kind out of the list, which widens a not_ match
    r.fail(
      path,
      kinds.length === 0 ? 'no match kind set (exact, prefix, suffix or presence)' : 'more than one kind',
    );
    return undefined;
  }
  const kind = kinds[0] as StringMatch['kind'];
  if (kind === 'presence') {
    if (!isObject(o.presence)) r.fail(j(path, 'presence'), 'not an Empty message');
    return { kind };
  }
  const value = o[kind];
  if (typeof value !== 'string') {
    r.fail(j(path, kind), 'not a string');
    return undefined;
  }
  return { kind, value };
}

/** address is bytes (base64 in proto3 JSON); 4 or 16 of them; length within the family's bits. */
function cidr(r: Reader, o: JsonObject, path: string): Cidr | undefined {
  r.known(o, ['address', 'length'], path);
  const a = o.address;
  let bytes: Buffer | undefined;
  if (typeof a === 'string' && /^[A-Za-z0-9+/_-]*={0,2}$/.test(a)) bytes = Buffer.from(a, 'base64');
  if (!bytes || (bytes.length !== 4 && bytes.length !== 16)) {
    r.fail(j(path, 'address'), `${bytes ? `${bytes.length} bytes` : 'not bytes'}; an address has 4 or 16`);
    return undefined;
  }
  const family: Family = bytes.length === 4 ? 4 : 6;
  const max = family === 4 ? 32 : 128;
  const len = o.length ?? 0;
  if (typeof len !== 'number' || !Number.isInteger(len) || len < 0 || len > max) {
    r.fail(
      j(path, 'length'),
      `${JSON.stringify(len)} is not a prefix length of an IPv${family} address (0-${max})`,
    );
    return undefined;
  }
  const out = Buffer.alloc(16);
  bytes.copy(out, 0);
  // host bits cleared, so equal CIDRs are equal bytes (the kernel's trie compares len bits only)
  for (let bit = len; bit < max; bit++) out[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family, bytes: out, length: len };
}

function ports(r: Reader, o: JsonObject, field: string, path: string): number[] {
  const out: number[] = [];
  r.list(o, field, path).forEach((v, i) => {
    const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
    // ztunnel truncates to 16 bits (70000 would mean 4464): refused instead
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65535)
      r.fail(j(path, `${field}[${i}]`), `${JSON.stringify(v)} is not a port (0-65535)`);
    else out.push(n);
  });
  return out;
}

function match(r: Reader, o: JsonObject, path: string): Match {
  r.known(o, MATCH_FIELDS, path);
  const strings = (f: string): StringMatch[] =>
    r.objects(o, f, path).flatMap(([m, p]) => {
      const s = stringMatch(r, m, p);
      return s ? [s] : [];
    });
  const accounts = (f: string): ServiceAccountMatch[] =>
    r.objects(o, f, path).map(([m, p]) => {
      r.known(m, ['namespace', 'serviceAccount', 'service_account'], p);
      return {
        namespace: r.string(m, 'namespace', p),
        serviceAccount: r.string(m, m.serviceAccount !== undefined ? 'serviceAccount' : 'service_account', p),
      };
    });
  const cidrs = (f: string): Cidr[] =>
    r.objects(o, f, path).flatMap(([m, p]) => {
      const c = cidr(r, m, p);
      return c ? [c] : [];
    });
  if (r.list(o, 'extensions', path).length > 0)
    r.fail(j(path, 'extensions'), 'an extension may narrow or widen the match; kernmesh knows none');
  return {
    namespaces: strings('namespaces'),
    notNamespaces: strings('not_namespaces'),
    principals: strings('principals'),
    notPrincipals: strings('not_principals'),
    serviceAccounts: accounts('service_accounts'),
    notServiceAccounts: accounts('not_service_accounts'),
    sourceIps: cidrs('source_ips'),
    notSourceIps: cidrs('not_source_ips'),
    destinationIps: cidrs('destination_ips'),
    notDestinationIps: cidrs('not_destination_ips'),
    destinationPorts: ports(r, o, 'destination_ports', path),
    notDestinationPorts: ports(r, o, 'not_destination_ports', path),
  };
}

/**
 * One Authorization resource. `resourceName` (namespace/name as the server named it) must agree
 * with the content: workloads list policies by that name.
 */
export function readAuthorization(resource: JsonObject, resourceName?: string): PolicyReading {
  const r = new Reader();
  const path = '';
  r.known(resource, ['name', 'namespace', 'scope', 'action', 'groups', 'dry_run', 'extensions'], path);
  const name = r.string(resource, 'name', path);
  const namespace = r.string(resource, 'namespace', path);
  if (!name) r.fail(j(path, 'name'), 'empty');
  if (!namespace) r.fail(j(path, 'namespace'), 'empty');
  const key = `${namespace}/${name}`;
  if (resourceName !== undefined && resourceName !== key)
    r.fail(path, `named ${JSON.stringify(resourceName)} but holds ${JSON.stringify(key)}`);
  const scope = enumValue(r, resource.scope, SCOPES, j(path, 'scope'));
  const action = enumValue(r, resource.action, ACTIONS, j(path, 'action'));
  const dryRunValue = resource.dry_run;
  if (dryRunValue !== undefined && dryRunValue !== null && typeof dryRunValue !== 'boolean')
    r.fail(j(path, 'dry_run'), 'not a bool');
  const dryRun = dryRunValue === true;
  if (r.list(resource, 'extensions', path).length > 0)
    r.fail(j(path, 'extensions'), 'an extension may change what the policy does; kernmesh knows none');
  const groups: Group[] = r.objects(resource, 'groups', path).map(([g, gp]) => {
    r.known(g, ['rules'], gp);
    return {
      clauses: r.objects(g, 'rules', gp).map(([c, cp]) => {
        r.known(c, ['matches'], cp);
        return { matches: r.objects(c, 'matches', cp).map(([m, mp]) => match(r, m, mp)) };
      }),
    };
  });
  if (r.faults.length > 0 || scope === undefined || action === undefined) {
    const label = resourceName ?? key;
    const errors = r.faults.map((f) => `${f.path ? `${label}.${f.path}` : label}: ${f.reason}`);
    return {
      refused: {
        key: label,
        name,
        namespace,
        ...(scope ? { scope } : {}),
        ...(action ? { action } : {}),
        dryRun,
        errors,
      },
      errors,
      faults: r.faults,
    };
  }
  return { policy: { key, name, namespace, scope, action, dryRun, groups } };
}

/** What authorization needs of a workload of istio.workload.Address. */
export interface AuthzWorkload {
  uid: string;
  name: string;
  namespace: string;
  /** IP literals. */
  addresses: string[];
  /** With istiod's empty values filled in as ztunnel does: cluster.local, default. */
  trustDomain: string;
  serviceAccount: string;
  node: string;
  network: string;
  /** HOST_NETWORK: its address is the node's, shared with the node's own connections. */
  hostNetwork: boolean;
  /** namespace/name of the WORKLOAD_SELECTOR policies selecting it. */
  policies: string[];
}

/** The workload of an Address resource, or undefined for a Service (or a malformed workload). */
export function readWorkload(resource: JsonObject): AuthzWorkload | undefined {
  const w = resource.workload;
  if (!isObject(w)) return undefined;
  const s = (f: string): string => {
    const v = w[f];
    return typeof v === 'string' ? v : '';
  };
  const addresses: string[] = [];
  for (const a of Array.isArray(w.addresses) ? w.addresses : []) {
    if (typeof a !== 'string') return undefined;
    const b = Buffer.from(a, 'base64');
    // ztunnel refuses the whole workload when one address has another length
    if (b.length !== 4 && b.length !== 16) return undefined;
    const bytes = Buffer.alloc(16);
    b.copy(bytes);
    addresses.push(decodeAddress(bytes, b.length === 4 ? 4 : 6));
  }
  const policies = (Array.isArray(w.authorization_policies) ? w.authorization_policies : []).filter(
    (p): p is string => typeof p === 'string',
  );
  const mode = w.network_mode;
  return {
    uid: s('uid'),
    name: s('name'),
    namespace: s('namespace'),
    addresses,
    trustDomain: s('trust_domain') || 'cluster.local',
    serviceAccount: s('service_account') || 'default',
    node: s('node'),
    network: s('network'),
    hostNetwork: mode === 'HOST_NETWORK' || mode === 1,
    policies,
  };
}

/** The principal a workload's connections carry, without `spiffe://`. */
export function principalOf(w: { trustDomain: string; namespace: string; serviceAccount: string }): string {
  return `${w.trustDomain}/ns/${w.namespace}/sa/${w.serviceAccount}`;
}

/** "10.0.0.0/8" and the like, for logs and dumps. */
export function formatCidr(c: Cidr): string {
  return `${decodeAddress(c.bytes, c.family)}/${c.length}`;
}
