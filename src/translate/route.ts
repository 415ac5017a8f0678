// RDS: which virtual hosts are L4-equivalent (every request goes to one destination, or to weighted
// clusters chosen per connection) and which carry real L7 intent that must be refused.
import { TYPE, type JsonObject, type JsonValue } from '../xds/types.js';
import type { Analyser } from './analysis.js';
import {
  HTTP_FILTERS,
  ROUTE_ACTION_FIELDS,
  ROUTE_CONFIG_FIELDS,
  ROUTE_FIELDS,
  ROUTE_MATCH_FIELDS,
  VHOST_FIELDS,
  checkFields,
} from './fields.js';
import { arr, describeIstioConfig, istioConfig, num, obj, objs, str } from '../xds/read-json.js';
import type { ResourceFindings } from './types.js';

export type Destination =
  { kind: 'cluster'; cluster: string } | { kind: 'weighted'; members: { cluster: string; weight: number }[] };

/** The name a destination goes by: the cluster, or a synthetic name for weighted clusters. */
export function destinationName(d: Destination): string {
  if (d.kind === 'cluster') return d.cluster;
  return `weighted(${d.members.map((m) => `${m.cluster}=${m.weight}`).join(',')})`;
}

export interface VirtualHostResult {
  index: number;
  name: string;
  domains: string[];
  /** Undefined when the virtual host was refused. */
  destination?: Destination;
}

export interface RouteConfigResult {
  name: string;
  virtualHosts: VirtualHostResult[];
}

/** Match fields that narrow a route to some requests only. */
const NARROWING = [
  'headers',
  'query_parameters',
  'grpc',
  'runtime_fraction',
  'tls_context',
  'dynamic_metadata',
];
const EVERYTHING_REGEX = new Set(['.*', '/.*', '^.*$', '^/.*$']);

/** Per-filter configs Istio attaches that change nothing about where a request goes. */
const BENIGN_PER_FILTER = new Set(['connect_authority', 'istio.stats', 'istio.metadata_exchange']);

/** ` (route "x", VirtualService ns/name)`: names the route and the Istio object in a reason. */
export function routeSuffix(route: JsonObject | undefined, extra?: string): string {
  const parts: string[] = [];
  if (extra) parts.push(extra);
  const name = str(route?.name);
  if (name) parts.push(`route "${name}"`);
  const cfg = istioConfig(route);
  if (cfg) parts.push(describeIstioConfig(cfg));
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}

export function analyseRouteConfig(rc: JsonObject, res: ResourceFindings, base = ''): RouteConfigResult {
  const at = (p: string) => (base ? `${base}.${p}` : p);
  const before = res.refusalCount;
  checkFields(rc, base, ROUTE_CONFIG_FIELDS, res);
  const wholeConfigRefused = res.refusalCount > before;
  // In a RouteConfiguration resource (istiod's one per port), a refused virtual host is skipped on
  // its own and the others still apply; inline in a listener, the filter chain is refused whole.
  const scoped = res.typeUrl === TYPE.route && !base;
  const virtualHosts = objs(rc.virtual_hosts).map((vh, i) => {
    const one = () => analyseVirtualHost(vh, i, at(`virtual_hosts[${i}]`), res);
    return scoped ? res.part(one) : one();
  });
  // A refusal outside the virtual hosts (a header rewrite for all of them) refuses every one.
  if (wholeConfigRefused) for (const vh of virtualHosts) delete vh.destination;
  return { name: str(rc.name) ?? '', virtualHosts };
}

function analyseVirtualHost(
  vh: JsonObject,
  index: number,
  path: string,
  res: ResourceFindings,
): VirtualHostResult {
  const before = res.refusalCount;
  const name = str(vh.name) ?? '';
  const vsuffix = ` (virtual host "${name}")`;
  checkFields(vh, path, VHOST_FIELDS, res, vsuffix);
  checkPerFilterConfig(obj(vh.typed_per_filter_config), `${path}.typed_per_filter_config`, res, vsuffix);
  const domains = arr(vh.domains).filter((d): d is string => typeof d === 'string');
  const routes = objs(vh.routes);

  const destinations = routes.map((r, j) => analyseRoute(r, `${path}.routes[${j}]`, res));
  const catchAll = routes.findIndex((r) => matchesEverything(obj(r.match)));
  if (catchAll < 0) {
    const first = routes[0];
    const what = first ? describeMatch(obj(first.match)) : 'no routes';
    res.refuse(
      `${path}.routes`,
      `no route matches every request (${what}); requests that match none get a 404 from the proxy: L7${routeSuffix(first, `virtual host "${name}"`)}`,
    );
    return { index, name, domains };
  }
  const final = destinations[catchAll];
  routes.slice(0, catchAll).forEach((r, j) => {
    const d = destinations[j];
    if (final && d && destinationName(d) === destinationName(final)) return;
    const m = obj(r.match);
    const field = NARROWING.find((f) => m?.[f] !== undefined) ?? pathField(m);
    res.refuse(
      `${path}.routes[${j}].match${field ? `.${field}` : ''}`,
      `${describeMatch(m)} sends some requests to ${d ? destinationName(d) : 'a non-forwarding action'} instead of ${final ? destinationName(final) : 'the catch-all route'}: L7${routeSuffix(r, `virtual host "${name}"`)}`,
    );
  });
  if (res.refusalCount > before || !final) return { index, name, domains };
  return { index, name, domains, destination: final };
}

/** Checks one route's fields and returns where it sends requests (undefined if it does not forward). */
function analyseRoute(r: JsonObject, path: string, res: ResourceFindings): Destination | undefined {
  const suffix = routeSuffix(r);
  checkFields(r, path, ROUTE_FIELDS, res, suffix);
  checkPerFilterConfig(obj(r.typed_per_filter_config), `${path}.typed_per_filter_config`, res, suffix);
  const match = obj(r.match) ?? {};
  for (const key of Object.keys(match)) {
    if (!(key in ROUTE_MATCH_FIELDS)) res.notEnforced(`${path}.match.${key}`);
  }
  const action = obj(r.route);
  if (!action) return undefined;
  checkFields(action, `${path}.route`, ROUTE_ACTION_FIELDS, res, suffix);
  objs(action.hash_policy).forEach((h, k) =>
    checkHashPolicy(h, `${path}.route.hash_policy[${k}]`, res, suffix),
  );
  const cluster = str(action.cluster);
  if (cluster) return { kind: 'cluster', cluster };
  const wc = obj(action.weighted_clusters);
  if (wc) return readWeightedClusters(wc, `${path}.route.weighted_clusters`, res, suffix);
  res.refuse(`${path}.route`, `no cluster to send requests to${suffix}`);
  return undefined;
}

const WEIGHTED_FIELDS = new Set(['clusters', 'total_weight', 'runtime_key_prefix']);
const WEIGHTED_MEMBER_FIELDS = new Set(['name', 'weight']);

/** weighted_clusters of a route or tcp_proxy: chosen per connection by the kernel. */
export function readWeightedClusters(
  wc: JsonObject,
  path: string,
  res: ResourceFindings,
  suffix: string,
): Destination | undefined {
  for (const key of Object.keys(wc)) {
    if (!WEIGHTED_FIELDS.has(key)) res.refuse(`${path}.${key}`, `per-request cluster choice is L7${suffix}`);
  }
  const members: { cluster: string; weight: number }[] = [];
  objs(wc.clusters).forEach((m, i) => {
    const mpath = `${path}.clusters[${i}]`;
    for (const key of Object.keys(m)) {
      if (key === 'typed_per_filter_config')
        checkPerFilterConfig(obj(m[key]), `${mpath}.${key}`, res, suffix);
      else if (!WEIGHTED_MEMBER_FIELDS.has(key))
        res.refuse(`${mpath}.${key}`, `per-cluster ${key} is L7${suffix}`);
    }
    const name = str(m.name);
    const weight = num(m.weight) ?? 0;
    if (!name) res.refuse(`${mpath}.name`, 'a weighted cluster needs a name');
    else if (weight > 0) members.push({ cluster: name, weight });
  });
  if (members.length === 0) {
    res.refuse(path, `no cluster with a positive weight${suffix}`);
    return undefined;
  }
  if (members.length === 1 && members[0]) return { kind: 'cluster', cluster: members[0].cluster };
  return { kind: 'weighted', members };
}

/** Hashing on the client address is what the kernel's Maglev does; anything from the request is L7. */
export function checkHashPolicy(h: JsonObject, path: string, res: ResourceFindings, suffix: string): void {
  for (const key of Object.keys(h)) {
    if (key === 'terminal') continue;
    if (key === 'connection_properties' || key === 'source_ip') continue;
    res.refuse(`${path}.${key}`, `${key.replace('_', ' ')} hashing is L7${suffix}`);
  }
}

/** typed_per_filter_config: per-route fault injection, authorization or any unknown filter acts on requests. */
export function checkPerFilterConfig(
  cfg: JsonObject | undefined,
  path: string,
  res: ResourceFindings,
  suffix: string,
): void {
  for (const [filter, value] of Object.entries(cfg ?? {})) {
    if (BENIGN_PER_FILTER.has(filter) || isEmptyConfig(value)) continue;
    const what =
      filter === 'envoy.filters.http.fault'
        ? 'fault injection'
        : filter === 'envoy.filters.http.rbac'
          ? 'request-level authorization'
          : `per-route config of HTTP filter ${filter}`;
    res.refuse(`${path}.${filter}`, `${what} is L7${suffix}`);
  }
}

/** An Any with nothing but its type: a filter installed with no behaviour. */
export function isEmptyConfig(v: JsonValue | undefined): boolean {
  const o = obj(v);
  if (!o) return v === undefined;
  return Object.keys(o).every((k) => k === '@type');
}

/** Whether one HTTP filter of an outbound HCM may act on requests, with the reason when it does. */
export function checkHttpFilter(f: JsonObject, path: string, res: ResourceFindings): void {
  const name = str(f.name) ?? '';
  const rule = HTTP_FILTERS[name];
  const cfg = obj(f.typed_config);
  if (!rule) {
    res.refuse(
      path,
      `HTTP filter ${name || '(unnamed)'} is not one kernmesh knows to be harmless: it may act on requests`,
    );
    return;
  }
  if (rule.disposition === 'refused') {
    res.refuse(path, `HTTP filter ${name}: ${rule.why}`);
    return;
  }
  if (name === 'envoy.filters.http.fault' && !isEmptyConfig(cfg)) {
    res.refuse(path, 'fault injection (abort or delay) is L7');
  } else if (name === 'envoy.filters.http.cors' && !isEmptyConfig(cfg)) {
    res.refuse(path, 'CORS preflights are answered by the proxy: L7');
  } else if (name === 'envoy.filters.http.rbac' && cfg?.rules !== undefined) {
    // Security rules never fail open: an authorization the kernel cannot evaluate is refused.
    res.refuse(path, 'request-level authorization (RBAC rules) cannot be enforced in the kernel');
  }
}

function matchesEverything(m: JsonObject | undefined): boolean {
  if (!m) return false;
  if (NARROWING.some((f) => m[f] !== undefined)) return false;
  // prefix is in a oneof, so an empty prefix is present (and matches every path).
  if (typeof m.prefix === 'string') return m.prefix === '' || m.prefix === '/';
  const regex = str(obj(m.safe_regex)?.regex);
  if (regex !== undefined) return EVERYTHING_REGEX.has(regex);
  // A CONNECT matcher takes every tunnel request (HBONE termination).
  return m.connect_matcher !== undefined;
}

function pathField(m: JsonObject | undefined): string | undefined {
  return ['path', 'prefix', 'safe_regex', 'path_separated_prefix', 'path_match_policy'].find(
    (f) => m?.[f] !== undefined,
  );
}

function describeMatch(m: JsonObject | undefined): string {
  if (!m) return 'no match';
  const headers = objs(m.headers);
  if (headers.length > 0) return `header match on ${headers.map((h) => str(h.name) ?? '?').join(', ')}`;
  const query = objs(m.query_parameters);
  if (query.length > 0) return `query match on ${query.map((q) => str(q.name) ?? '?').join(', ')}`;
  if (m.grpc !== undefined) return 'gRPC match';
  if (m.runtime_fraction !== undefined) return 'runtime fraction match';
  if (m.tls_context !== undefined) return 'TLS context match';
  if (m.dynamic_metadata !== undefined) return 'dynamic metadata match';
  if (str(m.path) !== undefined) return `path match ${str(m.path)}`;
  if (typeof m.prefix === 'string') return `prefix match ${m.prefix}`;
  if (str(m.path_separated_prefix) !== undefined) return `prefix match ${str(m.path_separated_prefix)}`;
  const regex = str(obj(m.safe_regex)?.regex);
  if (regex !== undefined) return `regex match ${regex}`;
  if (m.path_match_policy !== undefined) return 'path template match';
  return 'match';
}

export const ROUTE_ANALYSER: Analyser<RouteConfigResult> = {
  typeUrl: TYPE.route,
  analyse: (rc, res) => analyseRouteConfig(rc, res),
};
