// CDS: what kind of service a cluster is, its load-balancing policy, its connection cap, and which
// transport each endpoint would get (the kernel forwards plaintext only).
import type { LbPolicy, ServiceKind } from '../dataplane/model.js';
import { anyType, bool, durationMs, num, obj, objs, str } from '../xds/read-json.js';
import { edsServiceName } from '../xds/resource-types/index.js';
import type { HeldResources } from '../xds/state.js';
import { TYPE, type JsonObject, type JsonValue, type Rejection, type XdsResource } from '../xds/types.js';
import { analysed, type Analyser } from './analysis.js';
import { ENDPOINT_ANALYSER, analyseAssignment, metadataMatches, type ParsedEndpoint } from './endpoints.js';
import { CLUSTER_FIELDS, checkFields } from './fields.js';
import { type DnsQuery, ResourceFindings } from './types.js';

/** What a transport socket asks of a connection. */
export type TransportKind = 'plaintext' | 'istio-mtls' | 'tls' | 'unsupported';

export interface TransportChoice {
  kind: TransportKind;
  /** How the socket is named in reasons (`transport_socket_matches[0] "tlsMode-istio"`). */
  label: string;
}

export interface TransportMatch extends TransportChoice {
  /** Endpoint metadata (`envoy.transport_socket_match`) that selects this socket; {} matches every endpoint. */
  match: JsonObject;
}

export interface ParsedCluster {
  name: string;
  /** Discovery type as Envoy names it. */
  type: string;
  kind: ServiceKind;
  lbPolicy: LbPolicy;
  /** least_request: active_request_bias when set (Envoy's default is 1). */
  activeRequestBias?: number;
  maxConnections?: number;
  /** The ClusterLoadAssignment name to wait for (EDS). */
  edsName?: string;
  /** Inline endpoints (STATIC, STRICT_DNS, LOGICAL_DNS). */
  loadAssignment?: JsonObject;
  dns?: Omit<DnsQuery, 'hostname' | 'clusters'>;
  transport: TransportChoice;
  transportMatches: TransportMatch[];
  /** common_lb_config.locality_weighted_lb_config: localities' weights apply. */
  localityWeighted: boolean;
}

const LB_POLICIES: Readonly<Record<string, LbPolicy>> = {
  ROUND_ROBIN: 'round_robin',
  LEAST_REQUEST: 'least_request',
  RANDOM: 'random',
  RING_HASH: 'maglev',
  MAGLEV: 'maglev',
};

/** Typed load_balancing_policy extensions by the last component of their type name. */
const TYPED_LB_POLICIES: Readonly<Record<string, LbPolicy>> = {
  RoundRobin: 'round_robin',
  LeastRequest: 'least_request',
  Random: 'random',
  RingHash: 'maglev',
  Maglev: 'maglev',
};

/** Envoy's own default when a cluster sets no circuit breaker. */
export const ENVOY_DEFAULT_MAX_CONNECTIONS = 1024;
/** Istio writes uint32 max for "no limit". */
const UNLIMITED = 4294967295;

const DISCOVERY_TYPES = new Set(['STATIC', 'STRICT_DNS', 'LOGICAL_DNS', 'EDS', 'ORIGINAL_DST']);

export function classifyTransportSocket(socket: JsonValue | undefined, label: string): TransportChoice {
  const s = obj(socket);
  if (!s) return { kind: 'plaintext', label };
  const type = anyType(s.typed_config) ?? '';
  const name = str(s.name) ?? '';
  if (type.endsWith('InternalUpstreamTransport')) {
    // The internal upstream wrapper only carries metadata; what matters is the socket inside it.
    return classifyTransportSocket(obj(s.typed_config)?.transport_socket, label);
  }
  if (type.endsWith('RawBuffer') || name === 'envoy.transport_sockets.raw_buffer' || name === 'raw_buffer') {
    return { kind: 'plaintext', label };
  }
  if (type.endsWith('UpstreamTlsContext') || name === 'envoy.transport_sockets.tls' || name === 'tls') {
    const tls = obj(s.typed_config);
    const common = obj(tls?.common_tls_context);
    const alpn = (Array.isArray(common?.alpn_protocols) ? common.alpn_protocols : []).map(String);
    const sni = str(tls?.sni) ?? '';
    const istio =
      alpn.includes('istio') || alpn.includes('istio-peer-exchange') || sni.startsWith('outbound_.');
    return { kind: istio ? 'istio-mtls' : 'tls', label };
  }
  return { kind: 'unsupported', label: `${label} (${name || type || 'unnamed'})` };
}

export function describeTransport(t: TransportChoice): string {
  switch (t.kind) {
    case 'istio-mtls':
      return `${t.label} requires Istio mTLS, which the kernel cannot originate`;
    case 'tls':
      return `${t.label} originates TLS, which the kernel cannot do`;
    case 'unsupported':
      return `${t.label} is a transport socket the kernel cannot provide`;
    case 'plaintext':
      return `${t.label} is plaintext`;
  }
}

/** Reads one Cluster; refusals go to `res`. Returns undefined only when the cluster cannot be read at all. */
export function analyseCluster(c: JsonObject, res: ResourceFindings): ParsedCluster | undefined {
  const name = str(c.name);
  if (!name) {
    res.refuse('name', 'a cluster needs a name');
    return undefined;
  }
  checkFields(c, '', CLUSTER_FIELDS, res);

  const type = str(c.type) ?? (obj(c.cluster_type) ? 'CUSTOM' : 'STATIC');
  if (!DISCOVERY_TYPES.has(type) && type !== 'CUSTOM')
    res.refuse('type', `discovery type ${type} is not supported`);

  let kind: ServiceKind = 'endpoints';
  if (type === 'ORIGINAL_DST') kind = 'passthrough';
  else if (name === 'BlackHoleCluster') kind = 'blackhole';

  const { lbPolicy, activeRequestBias } = readLbPolicy(c, type, res);
  const maxConnections = readMaxConnections(c, res);

  const transport = classifyTransportSocket(c.transport_socket, 'transport_socket');
  const transportMatches: TransportMatch[] = objs(c.transport_socket_matches).map((m, i) => ({
    ...classifyTransportSocket(m.transport_socket, `transport_socket_matches[${i}] "${str(m.name) ?? ''}"`),
    match: obj(m.match) ?? {},
  }));
  if (kind === 'endpoints' && transport.kind !== 'plaintext' && transportMatches.length === 0) {
    // No endpoint could ever be reached in plaintext: refuse now, without waiting for EDS.
    res.refuse('transport_socket', describeTransport(transport));
  }

  const parsed: ParsedCluster = {
    name,
    type,
    kind,
    lbPolicy,
    transport,
    transportMatches,
    localityWeighted: obj(obj(c.common_lb_config)?.locality_weighted_lb_config) !== undefined,
  };
  if (maxConnections !== undefined) parsed.maxConnections = maxConnections;
  if (activeRequestBias !== undefined) parsed.activeRequestBias = activeRequestBias;
  for (const field of Object.keys(obj(c.common_lb_config) ?? {})) {
    if (field !== 'locality_weighted_lb_config') res.notEnforced(`common_lb_config.${field}`);
  }

  if (type === 'EDS') {
    parsed.edsName = edsServiceName(c) ?? name;
  } else if (type === 'STATIC' || type === 'STRICT_DNS' || type === 'LOGICAL_DNS') {
    const la = obj(c.load_assignment);
    if (la) {
      parsed.loadAssignment = la;
      // Refusals only: translate() reads the endpoints again and lists the rest there.
      const { findings, res: scratch } = ResourceFindings.scratch(res.typeUrl, res.name);
      analyseAssignment(la, scratch, 'load_assignment', type !== 'STATIC');
      for (const r of findings.rejected) res.refuse('', r.reason);
    }
  }
  if (type === 'STRICT_DNS' || type === 'LOGICAL_DNS') {
    parsed.dns = {
      family: dnsFamily(str(c.dns_lookup_family)),
      refreshMs: durationMs(c.dns_refresh_rate) ?? 5000,
      respectTtl: bool(c.respect_dns_ttl) ?? false,
    };
  }
  return parsed;
}

function readLbPolicy(
  c: JsonObject,
  type: string,
  res: ResourceFindings,
): { lbPolicy: LbPolicy; activeRequestBias?: number } {
  const typed = objs(obj(c.load_balancing_policy)?.policies);
  if (typed.length > 0) {
    for (const [i, p] of typed.entries()) {
      const config = obj(p.typed_extension_config)?.typed_config;
      const t = anyType(config) ?? '';
      const known = TYPED_LB_POLICIES[t.slice(t.lastIndexOf('.') + 1)];
      if (!known) continue;
      if (known !== 'least_request') return { lbPolicy: known };
      const path = `load_balancing_policy.policies[${i}].typed_extension_config.typed_config`;
      return { lbPolicy: known, ...readLeastRequest(obj(config), path, res) };
    }
    res.refuse('load_balancing_policy', 'none of its policies is one the kernel implements');
    return { lbPolicy: 'round_robin' };
  }
  const policy = str(c.lb_policy) ?? 'ROUND_ROBIN';
  const known = LB_POLICIES[policy];
  const config = obj(c.least_request_lb_config);
  if (known === 'least_request')
    return { lbPolicy: known, ...readLeastRequest(config, 'least_request_lb_config', res) };
  // Envoy reads it only for LEAST_REQUEST either
  if (config) res.note(`least_request_lb_config: unused with lb_policy ${policy}, as in Envoy`);
  if (known) return { lbPolicy: known };
  if (policy === 'CLUSTER_PROVIDED' && type === 'ORIGINAL_DST') return { lbPolicy: 'round_robin' };
  res.refuse('lb_policy', `${policy} is not a policy the kernel implements`);
  return { lbPolicy: 'round_robin' };
}

/**
 * Envoy's LEAST_REQUEST settings (Cluster.least_request_lb_config, or the LeastRequest extension):
 * active_request_bias is carried to the kernel, which computes (active + 1)^bias for 0 and 1 only;
 * other values are refused. What the kernel does not do is listed as not enforced.
 */
function readLeastRequest(
  config: JsonObject | undefined,
  path: string,
  res: ResourceFindings,
): { activeRequestBias?: number } {
  if (!config) return {};
  const out: { activeRequestBias?: number } = {};
  for (const [field, v] of Object.entries(config)) {
    if (field === '@type') continue;
    const at = `${path}.${field}`;
    switch (field) {
      case 'active_request_bias': {
        const bias = obj(v);
        // a RuntimeDouble: no runtime layer here, so its default_value is the value (proto3: 0 if unset)
        if (bias?.runtime_key !== undefined) res.notEnforced(`${at}.runtime_key`);
        const raw = bias?.default_value;
        const value = raw === undefined ? 0 : typeof raw === 'number' ? raw : Number(raw);
        if (Number.isNaN(value) || value < 0) {
          res.note(`${at}: ${JSON.stringify(raw)} is not >= 0; 1.0 applies, as in Envoy`);
          out.activeRequestBias = 1;
        } else if (value === 0 || value === 1) out.activeRequestBias = value;
        else
          res.refuse(
            at,
            `${value}: the kernel computes weight / (active + 1)^bias only for bias 0.0 and 1.0`,
          );
        break;
      }
      case 'choice_count':
        // Envoy's default is 2, which is what the kernel does
        if (num(v) !== 2) res.notEnforced(at);
        break;
      case 'selection_method':
        if (str(v) !== 'N_CHOICES') res.notEnforced(at);
        break;
      case 'enable_full_scan':
        if (bool(v) === true) res.notEnforced(at);
        break;
      default:
        // slow_start_config, locality_lb_config, and anything newer
        res.notEnforced(at);
    }
  }
  return out;
}

function readMaxConnections(c: JsonObject, res: ResourceFindings): number | undefined {
  const cb = obj(c.circuit_breakers);
  if (!cb) return ENVOY_DEFAULT_MAX_CONNECTIONS;
  const thresholds = objs(cb.thresholds);
  let max: number | undefined = ENVOY_DEFAULT_MAX_CONNECTIONS;
  thresholds.forEach((t, i) => {
    const priority = str(t.priority) ?? 'DEFAULT';
    if (priority !== 'DEFAULT') {
      res.notEnforced(`circuit_breakers.thresholds[${i}]`);
      return;
    }
    const value = num(t.max_connections);
    if (value !== undefined) max = value >= UNLIMITED ? undefined : value;
    for (const field of [
      'max_pending_requests',
      'max_requests',
      'max_retries',
      'retry_budget',
      'max_connection_pools',
    ]) {
      const v = t[field];
      // Istio writes uint32 max into every threshold: only a real limit is worth listing.
      if (v !== undefined && num(v) !== UNLIMITED)
        res.notEnforced(`circuit_breakers.thresholds[${i}].${field}`);
    }
  });
  for (const field of Object.keys(cb))
    if (field !== 'thresholds') res.notEnforced(`circuit_breakers.${field}`);
  return max;
}

function dnsFamily(v: string | undefined): DnsQuery['family'] {
  switch (v) {
    case 'V4_ONLY':
      return 'v4';
    case 'V6_ONLY':
      return 'v6';
    case 'V4_PREFERRED':
      return 'v4_preferred';
    case 'ALL':
      return 'all';
    default:
      // AUTO (the default) prefers IPv6 and falls back to IPv4.
      return 'any';
  }
}

function transportFor(c: ParsedCluster, e: ParsedEndpoint): TransportChoice {
  return c.transportMatches.find((m) => metadataMatches(m.match, e.tlsMatch)) ?? c.transport;
}

/**
 * What only shows when a cluster meets its endpoints: the kernel forwards plaintext only, so each
 * endpoint's transport is chosen as Envoy would choose it; HBONE endpoints need a tunnel.
 */
export function checkEndpoints(parsed: ParsedCluster, eps: ParsedEndpoint[], res: ResourceFindings): void {
  const tls = eps
    .filter((e) => e.internal === undefined)
    .map((e) => ({ e, t: transportFor(parsed, e) }))
    .filter((x) => x.t.kind !== 'plaintext');
  const firstTls = tls[0];
  if (firstTls) {
    const meta = Object.keys(firstTls.e.tlsMatch).length ? ` (${JSON.stringify(firstTls.e.tlsMatch)})` : '';
    res.refuse(
      firstTls.t.label.split(' ')[0] ?? 'transport_socket',
      `endpoint ${firstTls.e.address}:${firstTls.e.port}${meta}${tls.length > 1 ? ` and ${tls.length - 1} more` : ''}: ${describeTransport(firstTls.t)}, and no plaintext match applies to it`,
    );
  }
  const internal = eps.filter((e) => e.internal !== undefined);
  const firstInternal = internal[0];
  if (firstInternal?.internal) {
    res.refuse(
      'endpoints',
      `endpoint ${firstInternal.internal.endpointId} is reached through internal listener ${firstInternal.internal.listener} (HBONE: mTLS HTTP/2 CONNECT), which the kernel cannot originate${internal.length > 1 ? ` (and ${internal.length - 1} more)` : ''}`,
    );
  }
}

/** The endpoints a cluster would use: inline, or from a held ClusterLoadAssignment (undefined: none usable). */
function endpointsOf(
  a: ParsedCluster,
  own: JsonObject,
  assignment: XdsResource | undefined,
): ParsedEndpoint[] | undefined {
  if (a.kind !== 'endpoints') return undefined;
  if (a.edsName === undefined) {
    if (!a.loadAssignment) return undefined;
    return analyseAssignment(
      a.loadAssignment,
      ResourceFindings.scratch(TYPE.cluster, a.name).res,
      'load_assignment',
      a.dns !== undefined,
    ).endpoints;
  }
  if (!assignment) return undefined;
  const cla = analysed(ENDPOINT_ANALYSER, assignment.name, assignment.resource);
  return cla.refused ? undefined : cla.parsed.endpoints;
}

/** Held resources whose content differs from what a response carries (only those need checking again). */
function changedOnly(candidates: readonly XdsResource[], held: readonly XdsResource[]): XdsResource[] {
  const before = new Map(held.map((r) => [r.name, r.resource]));
  return candidates.filter((c) => {
    const b = before.get(c.name);
    return b === undefined || (b !== c.resource && JSON.stringify(b) !== JSON.stringify(c.resource));
  });
}

/** A CDS response against the held ClusterLoadAssignments: clusters whose endpoints would need mTLS. */
function clustersMeetEndpoints(candidates: readonly XdsResource[], held: HeldResources): Rejection[] {
  const out: Rejection[] = [];
  const assignments = new Map(held(TYPE.endpoint).map((r) => [r.name, r]));
  for (const c of changedOnly(candidates, held(TYPE.cluster))) {
    const a = analysed(CLUSTER_ANALYSER, c.name, c.resource);
    if (a.refused || !a.parsed) continue;
    const eps = endpointsOf(
      a.parsed,
      c.resource,
      a.parsed.edsName ? assignments.get(a.parsed.edsName) : undefined,
    );
    if (!eps) continue;
    const { findings, res } = ResourceFindings.scratch(TYPE.cluster, c.name);
    checkEndpoints(a.parsed, eps, res);
    out.push(...findings.rejected);
  }
  return out;
}

/**
 * An EDS response against the held clusters using it: a refusal of the cluster is reported on the
 * ClusterLoadAssignment, whose content caused it (the cluster was accepted on its own).
 */
function endpointsMeetClusters(candidates: readonly XdsResource[], held: HeldResources): Rejection[] {
  const changed = changedOnly(candidates, held(TYPE.endpoint));
  if (changed.length === 0) return [];
  const wanted = new Set(changed.map((c) => c.name));
  const users = new Map<string, XdsResource[]>();
  for (const c of held(TYPE.cluster)) {
    const eds = edsServiceName(c.resource);
    if (eds !== undefined && wanted.has(eds)) users.set(eds, [...(users.get(eds) ?? []), c]);
  }
  const out: Rejection[] = [];
  for (const cla of changed) {
    const parsedCla = analysed(ENDPOINT_ANALYSER, cla.name, cla.resource);
    if (parsedCla.refused) continue;
    for (const c of users.get(cla.name) ?? []) {
      const a = analysed(CLUSTER_ANALYSER, c.name, c.resource);
      if (a.refused || !a.parsed) continue;
      const { findings, res } = ResourceFindings.scratch(TYPE.cluster, c.name);
      checkEndpoints(a.parsed, parsedCla.parsed.endpoints, res);
      for (const r of findings.rejected)
        out.push({ typeUrl: TYPE.endpoint, name: cla.name, reason: `cluster ${c.name}: ${r.reason}` });
    }
  }
  return out;
}

export const CLUSTER_ANALYSER: Analyser<ParsedCluster | undefined> = {
  typeUrl: TYPE.cluster,
  analyse: analyseCluster,
  crossChecks: { [TYPE.cluster]: clustersMeetEndpoints, [TYPE.endpoint]: endpointsMeetClusters },
};
