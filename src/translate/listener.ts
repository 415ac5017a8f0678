// LDS: which listeners are on the outbound kernel path and which (VIP, port) each filter chain
// sends where. The kernel decides at connect(), before any byte: chains that differ only by what
// the first bytes say (TLS or HTTP sniffing) must agree, or the HTTP route wins (see below).
import { isIP } from 'node:net';
import { listenerName } from '../xds/resource-types/index.js';
import { TYPE, type JsonObject } from '../xds/types.js';
import type { Analyser } from './analysis.js';
import {
  CHAIN_MATCH_FIELDS,
  FILTER_CHAIN_FIELDS,
  HCM_FIELDS,
  LISTENER_FIELDS,
  NETWORK_FILTERS,
  TCP_PROXY_FIELDS,
  checkFields,
} from './fields.js';
import { anyType, arr, bool, num, obj, objs, str } from '../xds/read-json.js';
import {
  type Destination,
  type RouteConfigResult,
  analyseRouteConfig,
  checkHashPolicy,
  checkHttpFilter,
  destinationName,
  readWeightedClusters,
} from './route.js';
import type { OutboundPolicy, ResourceFindings } from './types.js';

export type ListenerRole = 'outbound' | 'virtual-outbound' | 'inbound' | 'internal' | 'proxy-port';

/** Where a chain sends a connection: straight to a destination, or by HTTP route (resolved with RDS). */
export type ChainTarget =
  | { kind: 'tcp'; destination: Destination }
  | { kind: 'rds'; routeName: string }
  | { kind: 'inline'; routes: RouteConfigResult };

/** `*` is every address: a wildcard listener or a 0.0.0.0/0 chain. */
export interface Candidate {
  address: string;
  port: number;
  target: ChainTarget;
  /** 0: the listener's own address; 1: an exact prefix_ranges entry; the more specific wins, as in Envoy. */
  rank: number;
  /** The TCP destination of the same address when HTTP sniffing would send plain TCP elsewhere. */
  tcpFallback?: Destination;
  path: string;
}

export interface ListenerResult {
  name: string;
  role: ListenerRole;
  candidates: Candidate[];
  outboundPolicy?: OutboundPolicy;
}

const WILDCARDS = new Set(['0.0.0.0', '::']);

export function analyseListener(l: JsonObject, res: ResourceFindings): ListenerResult {
  const name = listenerName(l);
  const sa = obj(obj(l.address)?.socket_address);
  const address = str(sa?.address);
  const port = num(sa?.port_value) ?? 0;
  const result: ListenerResult = { name, role: 'outbound', candidates: [] };
  // What Envoy's listener manager refuses before any filter runs.
  if (l.address === undefined && l.internal_listener === undefined) {
    res.refuse('address', 'a listener needs an address (or internal_listener)');
    return result;
  }
  if (sa && !isIP(address ?? '')) {
    // Envoy resolves a listener's socket address as an IP literal whatever the listener's role.
    res.refuse('address.socket_address.address', `"${address ?? ''}" is not an IP address`);
    return result;
  }
  if (
    objs(l.filter_chains).length === 0 &&
    l.default_filter_chain === undefined &&
    l.api_listener === undefined
  ) {
    res.refuse('filter_chains', 'a listener needs at least one filter chain (or a default_filter_chain)');
    return result;
  }

  if (l.internal_listener !== undefined || !sa) {
    result.role = 'internal';
    res.note(
      name === 'connect_originate'
        ? 'internal listener (HBONE tunnel origination): not on the outbound kernel path'
        : 'internal listener: not on the outbound kernel path',
    );
    noteUnenforcedAuthorization(l, res);
    return result;
  }
  if (str(l.traffic_direction) === 'INBOUND' || name === 'virtualInbound') {
    result.role = 'inbound';
    res.note('inbound listener: not on the outbound kernel path');
    noteUnenforcedAuthorization(l, res);
    return result;
  }
  if (bool(l.use_original_dst) === true) {
    result.role = 'virtual-outbound';
    const policy = catchAllPolicy(l);
    if (typeof policy !== 'string') {
      // Never described as more open than it is: what cannot be read is refused, not taken for ALLOW_ANY.
      res.refuse(policy.path, `cannot tell the outbound traffic policy: ${policy.why}`);
      return result;
    }
    result.outboundPolicy = policy;
    res.note(
      `outbound catch-all: connections to no known service ${policy === 'blackhole' ? 'are refused (REGISTRY_ONLY)' : 'keep their destination (ALLOW_ANY)'}`,
    );
    return result;
  }
  if (address !== undefined && WILDCARDS.has(address) && bool(l.bind_to_port) !== false) {
    result.role = 'proxy-port';
    res.note(
      name === 'connect_terminate'
        ? `HBONE termination on the proxy's own port ${port}: not on the outbound kernel path`
        : `listens on the proxy's own port ${port}: not on the outbound kernel path`,
    );
    noteUnenforcedAuthorization(l, res);
    return result;
  }

  checkFields(l, '', LISTENER_FIELDS, res);
  if ((str(sa.protocol) ?? 'TCP') !== 'TCP') {
    res.refuse('address.socket_address.protocol', 'only TCP listeners are supported');
    return result;
  }
  const addresses = [address ?? ''];
  objs(l.additional_addresses).forEach((a) => {
    const extra = str(obj(obj(a.address)?.socket_address)?.address);
    if (extra) addresses.push(extra);
  });
  for (const [i, a] of addresses.entries()) {
    if (!isIP(a))
      res.refuse(i === 0 ? 'address' : `additional_addresses[${i - 1}]`, `"${a}" is not an IP address`);
  }

  const raw: Candidate[] = [];
  objs(l.filter_chains).forEach((chain, i) => {
    raw.push(...analyseChain(chain, `filter_chains[${i}]`, addresses, port, res));
  });
  const def = obj(l.default_filter_chain);
  if (def) raw.push(...analyseChain(def, 'default_filter_chain', addresses, port, res));
  result.candidates = mergeChains(raw, res);
  return result;
}

function analyseChain(
  chain: JsonObject,
  path: string,
  listenerAddresses: string[],
  listenerPort: number,
  res: ResourceFindings,
): Candidate[] {
  const before = res.refusalCount;
  checkFields(chain, path, FILTER_CHAIN_FIELDS, res);
  const match = obj(chain.filter_chain_match) ?? {};
  checkFields(match, `${path}.filter_chain_match`, CHAIN_MATCH_FIELDS, res);
  const port = num(match.destination_port) ?? listenerPort;

  const target = chainTarget(chain, path, res);
  if (!target || res.refusalCount > before) return [];

  const out: Candidate[] = [];
  const ranges = objs(match.prefix_ranges);
  if (ranges.length === 0) {
    for (const a of listenerAddresses) {
      out.push({ address: WILDCARDS.has(a) ? '*' : a, port, target, rank: 0, path });
    }
    return out;
  }
  ranges.forEach((r, k) => {
    const prefix = str(r.address_prefix) ?? '';
    const len = num(r.prefix_len) ?? 0;
    const family = isIP(prefix);
    if (family === 0) {
      res.refuse(`${path}.filter_chain_match.prefix_ranges[${k}]`, `"${prefix}" is not an IP address`);
    } else if (len === 0) {
      out.push({ address: '*', port, target, rank: 1, path });
    } else if (len === (family === 4 ? 32 : 128)) {
      out.push({ address: prefix, port, target, rank: 1, path });
    } else if (!(target.kind === 'tcp' && isPassthrough(target.destination))) {
      res.refuse(
        `${path}.filter_chain_match.prefix_ranges[${k}]`,
        `${prefix}/${len} is a range: the kernel looks services up by exact (VIP, port)`,
      );
    }
  });
  return out;
}

function chainTarget(chain: JsonObject, path: string, res: ResourceFindings): ChainTarget | undefined {
  const before = res.refusalCount;
  let target: ChainTarget | undefined;
  objs(chain.filters).forEach((f, j) => {
    const fpath = `${path}.filters[${j}]`;
    const name = filterName(f);
    const rule = NETWORK_FILTERS[name];
    const cfg = obj(f.typed_config) ?? {};
    if (!rule) {
      res.refuse(
        fpath,
        `network filter ${name || '(unnamed)'} is not one kernmesh knows: it may act on the bytes`,
      );
      return;
    }
    if (rule.disposition === 'refused') {
      res.refuse(fpath, `network filter ${name}: ${rule.why}`);
      return;
    }
    if (name === 'envoy.filters.network.rbac') {
      // Security rules never fail open: enforced rules the kernel cannot evaluate are refused.
      if (cfg.rules !== undefined)
        res.refuse(fpath, 'connection authorization (RBAC rules) cannot be enforced in the kernel');
      return;
    }
    if (name === 'envoy.filters.network.tcp_proxy') {
      const tpath = `${fpath}.typed_config`;
      checkFields(cfg, tpath, TCP_PROXY_FIELDS, res);
      objs(cfg.hash_policy).forEach((h, k) => checkHashPolicy(h, `${tpath}.hash_policy[${k}]`, res, ''));
      const cluster = str(cfg.cluster);
      const wc = obj(cfg.weighted_clusters);
      const destination: Destination | undefined = cluster
        ? { kind: 'cluster', cluster }
        : wc
          ? readWeightedClusters(wc, `${tpath}.weighted_clusters`, res, '')
          : undefined;
      if (!destination) res.refuse(tpath, 'tcp_proxy without a cluster');
      else target = { kind: 'tcp', destination };
      return;
    }
    if (name === 'envoy.filters.network.http_connection_manager') {
      const hpath = `${fpath}.typed_config`;
      checkFields(cfg, hpath, HCM_FIELDS, res);
      objs(cfg.http_filters).forEach((h, k) => checkHttpFilter(h, `${hpath}.http_filters[${k}]`, res));
      const rds = str(obj(cfg.rds)?.route_config_name);
      const inline = obj(cfg.route_config);
      if (rds !== undefined) target = { kind: 'rds', routeName: rds };
      else if (inline)
        target = { kind: 'inline', routes: analyseRouteConfig(inline, res, `${hpath}.route_config`) };
      else res.refuse(hpath, 'HTTP connection manager without routes');
    }
  });
  if (!target && res.refusalCount === before)
    res.refuse(`${path}.filters`, 'no tcp_proxy or HTTP connection manager');
  return target;
}

/** Protocol sniffing splits one address into HTTP and TCP chains; the kernel must pick one destination. */
function mergeChains(raw: Candidate[], res: ResourceFindings): Candidate[] {
  const byKey = new Map<string, Candidate[]>();
  for (const c of raw) {
    const key = `${c.address}|${c.port}`;
    byKey.set(key, [...(byKey.get(key) ?? []), c]);
  }
  const out: Candidate[] = [];
  for (const group of byKey.values()) {
    const http = group.filter((c) => c.target.kind !== 'tcp');
    const tcp = group.filter((c) => c.target.kind === 'tcp');
    const tcpNames = new Set(
      tcp.map((c) => (c.target.kind === 'tcp' ? destinationName(c.target.destination) : '')),
    );
    const httpNames = new Set(http.map((c) => (c.target.kind === 'rds' ? c.target.routeName : c.path)));
    const first = group[0];
    if (!first) continue;
    const where = first.address === '*' ? `port ${first.port}` : `${first.address}:${first.port}`;
    if (tcpNames.size > 1) {
      res.refuse(
        tcp.map((c) => c.path).join(', '),
        `connections to ${where} go to ${[...tcpNames].join(' or ')} depending on their first bytes; the kernel routes at connect()`,
      );
      continue;
    }
    if (httpNames.size > 1) {
      res.refuse(
        http.map((c) => c.path).join(', '),
        `HTTP to ${where} uses different routes depending on TLS; the kernel routes at connect()`,
      );
      continue;
    }
    const chosen = http[0] ?? tcp[0];
    if (!chosen) continue;
    const fallback = tcp[0];
    if (http[0] && fallback?.target.kind === 'tcp')
      out.push({ ...chosen, tcpFallback: fallback.target.destination });
    else out.push(chosen);
  }
  return out;
}

/**
 * Istio's outboundTrafficPolicy as virtualOutbound's catch-all says it: every chain that is not the
 * loop guard (destination_port: its own port), and the default chain, must send to PassthroughCluster
 * (ALLOW_ANY) or all to BlackHoleCluster (REGISTRY_ONLY). Anything else cannot be told.
 */
function catchAllPolicy(l: JsonObject): OutboundPolicy | { path: string; why: string } {
  const chains: [string, JsonObject][] = objs(l.filter_chains)
    .map((c, i): [string, JsonObject] => [`filter_chains[${i}]`, c])
    .filter(([, c]) => obj(c.filter_chain_match)?.destination_port === undefined);
  const def = obj(l.default_filter_chain);
  if (def) chains.push(['default_filter_chain', def]);
  if (chains.length === 0) return { path: 'filter_chains', why: 'no catch-all filter chain' };
  const seen = new Set<string>();
  for (const [path, chain] of chains) {
    const proxies = objs(chain.filters).filter((f) => filterName(f) === 'envoy.filters.network.tcp_proxy');
    const cfg = obj(proxies[0]?.typed_config);
    const destination = str(cfg?.cluster);
    if (proxies.length !== 1 || !destination)
      return {
        path,
        why: `the catch-all chain has ${proxies.length === 0 ? 'no' : 'no single'} tcp_proxy to one cluster`,
      };
    if (destination !== 'BlackHoleCluster' && destination !== 'PassthroughCluster')
      return {
        path,
        why: `the catch-all chain goes to ${destination}, neither PassthroughCluster nor BlackHoleCluster`,
      };
    seen.add(destination);
  }
  if (seen.size > 1)
    return {
      path: 'filter_chains',
      why: 'its catch-all chains disagree (PassthroughCluster and BlackHoleCluster)',
    };
  return seen.has('BlackHoleCluster') ? 'blackhole' : 'passthrough';
}

/** Envoy's deprecated short names of the filters kernmesh reads, as older configs spell them. */
const LEGACY_FILTER_NAMES: Record<string, string> = {
  'envoy.tcp_proxy': 'envoy.filters.network.tcp_proxy',
  tcp_proxy: 'envoy.filters.network.tcp_proxy',
  'envoy.http_connection_manager': 'envoy.filters.network.http_connection_manager',
};

function filterName(f: JsonObject): string {
  const name = str(f.name) ?? '';
  if (name in NETWORK_FILTERS) return name;
  const legacy = LEGACY_FILTER_NAMES[name];
  if (legacy) return legacy;
  const t = anyType(f.typed_config) ?? '';
  if (t.endsWith('.TcpProxy')) return 'envoy.filters.network.tcp_proxy';
  if (t.endsWith('.HttpConnectionManager')) return 'envoy.filters.network.http_connection_manager';
  return name;
}

export function isPassthrough(d: Destination): boolean {
  return d.kind === 'cluster' && d.cluster === 'PassthroughCluster';
}

/** Authorization on listeners kernmesh does not serve: listed so nobody believes the kernel enforces it. */
function noteUnenforcedAuthorization(l: JsonObject, res: ResourceFindings): void {
  const walk = (v: unknown, path: string): void => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${path}[${i}]`));
      return;
    }
    if (typeof v !== 'object' || v === null) return;
    const o = v as JsonObject;
    const name = str(o.name);
    if (
      (name === 'envoy.filters.http.rbac' || name === 'envoy.filters.network.rbac') &&
      obj(o.typed_config)?.rules
    ) {
      const policies = Object.keys(obj(obj(obj(o.typed_config)?.rules)?.policies) ?? {});
      res.notEnforced(
        `${path} (authorization${policies.length ? `: ${policies.join(', ')}` : ': deny all'})`,
      );
      return;
    }
    for (const [k, x] of Object.entries(o)) walk(x, path ? `${path}.${k}` : k);
  };
  walk({ filter_chains: arr(l.filter_chains) }, '');
}

export const LISTENER_ANALYSER: Analyser<ListenerResult> = {
  typeUrl: TYPE.listener,
  analyse: analyseListener,
};
