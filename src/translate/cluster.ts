// CDS: what kind of service a cluster is, its load-balancing policy, its connection cap, and which
// transport each endpoint would get (the kernel forwards plaintext only).
import {
  OUTLIER_DEFAULTS,
  type CloseConnections,
  type LbPolicy,
  type OutlierDetection,
  type ServiceKind,
} from '../dataplane/model.js';
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
  /** outlier_detection, as the kernel applies it. */
  outlierDetection?: OutlierDetection;
  /** connect_timeout (outlier detection's connect timeouts). */
  connectTimeoutMs?: number;
  /** common_lb_config.healthy_panic_threshold, truncated to 1% as Envoy does. */
  panicThreshold?: number;
  /** common_lb_config.zone_aware_lb_config.fail_traffic_on_panic */
  failTrafficOnPanic?: boolean;
  closeConnections?: CloseConnections;
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
  checkMaglevTableSizes(c, res);
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
  readCommonLbConfig(obj(c.common_lb_config), parsed, res);
  const od = obj(c.outlier_detection);
  if (od) parsed.outlierDetection = readOutlierDetection(od, res);
  const timeout = durationMs(c.connect_timeout);
  if (timeout !== undefined) parsed.connectTimeoutMs = timeout;
  if (bool(c.close_connections_on_host_health_failure) === true)
    parsed.closeConnections = { ...parsed.closeConnections, onHostHealthFailure: true };

  if (type === 'EDS') {
    // Envoy's EDS cluster factory refuses it the same way ("cannot create an EDS cluster without an EDS config").
    if (!obj(c.eds_cluster_config))
      res.refuse('eds_cluster_config', 'an EDS cluster needs eds_cluster_config');
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

function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

/** Envoy's Maglev load balancer refuses a table size that is not prime, wherever it is set. */
function checkMaglevTableSizes(c: JsonObject, res: ResourceFindings): void {
  const check = (size: JsonValue | undefined, path: string): void => {
    const n = num(size);
    if (n !== undefined && !isPrime(n)) res.refuse(path, `Maglev table size ${n} is not a prime number`);
  };
  check(obj(c.maglev_lb_config)?.table_size, 'maglev_lb_config.table_size');
  objs(obj(c.load_balancing_policy)?.policies).forEach((p, i) => {
    const config = obj(obj(p.typed_extension_config)?.typed_config);
    if ((anyType(config) ?? '').endsWith('.Maglev'))
      check(
        config?.table_size,
        `load_balancing_policy.policies[${i}].typed_extension_config.typed_config.table_size`,
      );
  });
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

/** A Percent message ({value: double}) as a whole percent, truncated as Envoy does; undefined if absent. */
function percent(v: JsonValue | undefined): number | undefined {
  const p = num(obj(v)?.value ?? v);
  return p === undefined ? undefined : Math.floor(p);
}

/** common_lb_config: panic threshold, locality weighting, zone-aware routing, connection draining. */
function readCommonLbConfig(cfg: JsonObject | undefined, parsed: ParsedCluster, res: ResourceFindings): void {
  if (!cfg) return;
  for (const [field, v] of Object.entries(cfg)) {
    const at = `common_lb_config.${field}`;
    switch (field) {
      case 'healthy_panic_threshold': {
        const p = percent(v) ?? 0;
        if (p < 0 || p > 100) res.refuse(at, `${p}% is not a percentage`);
        else parsed.panicThreshold = p;
        break;
      }
      case 'locality_weighted_lb_config':
        break; // read by analyseCluster
      case 'zone_aware_lb_config': {
        const z = obj(v) ?? {};
        // zone-aware routing weighs this node's zone by the share the originating service (Envoy's
        // local_cluster_name) has there; one agent serves pods of many services, so there is none
        const routing = percent(z.routing_enabled);
        if ((routing !== undefined && routing > 0) || z.min_cluster_size !== undefined)
          res.refuse(
            `${at}${routing !== undefined && routing > 0 ? '.routing_enabled' : '.min_cluster_size'}`,
            'zone-aware routing splits traffic by the share of the originating service (local_cluster) in each zone; a node agent serving many services has no local cluster — use locality failover (priorities) or locality_weighted_lb_config, or set routing_enabled to 0',
          );
        if (bool(z.fail_traffic_on_panic) === true) parsed.failTrafficOnPanic = true;
        break;
      }
      case 'close_connections_on_host_set_change':
        if (bool(v) === true) parsed.closeConnections = { ...parsed.closeConnections, onHostSetChange: true };
        break;
      case 'ignore_new_hosts_until_first_hc':
        break; // no active health checks: nothing to wait for
      default:
        // update_merge_window, consistent_hashing_lb_config, override_host_status and anything newer
        res.notEnforced(at);
    }
  }
}

/** A UInt32Value percentage (0..100), refused with its path when out of range. */
function percentage(o: JsonObject, field: string, dflt: number, res: ResourceFindings): number {
  const v = num(o[field]);
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || v < 0 || v > 100) {
    res.refuse(`outlier_detection.${field}`, `${v} is not a percentage`);
    return dflt;
  }
  return v;
}

/**
 * outlier_detection for L4, as Envoy's detector treats a TCP proxy's connects: a failed or timed-out
 * connect is a gateway error (503/504) for consecutive_5xx and consecutive_gateway_failure, or a
 * local-origin failure with split_external_local_origin_errors; an established one a success. The
 * kernel runs the consecutive-failure detector; success-rate and failure-percentage statistics are
 * not computed (listed as not enforced when Envoy would run them).
 */
function readOutlierDetection(o: JsonObject, res: ResourceFindings): OutlierDetection {
  const d = OUTLIER_DEFAULTS;
  const count = (field: string, dflt: number): number => {
    const v = num(o[field]);
    return v === undefined || !Number.isInteger(v) || v < 0 ? dflt : Math.min(v, 0xffffffff);
  };
  const ms = (field: string, dflt: number): number => {
    const v = durationMs(o[field]);
    if (v === undefined) return dflt;
    if (v <= 0 && field !== 'max_ejection_time_jitter') {
      res.refuse(`outlier_detection.${field}`, `${JSON.stringify(o[field])} is not a positive duration`);
      return dflt;
    }
    return Math.min(v, 0xffffffff);
  };
  const base = ms('base_ejection_time', d.baseEjectionTimeMs);
  const out: OutlierDetection = {
    consecutive5xx: count('consecutive_5xx', d.consecutive5xx),
    consecutiveGatewayFailure: count('consecutive_gateway_failure', d.consecutiveGatewayFailure),
    consecutiveLocalOriginFailure: count('consecutive_local_origin_failure', d.consecutiveLocalOriginFailure),
    enforcingConsecutive5xx: percentage(o, 'enforcing_consecutive_5xx', d.enforcingConsecutive5xx, res),
    enforcingConsecutiveGatewayFailure: percentage(
      o,
      'enforcing_consecutive_gateway_failure',
      d.enforcingConsecutiveGatewayFailure,
      res,
    ),
    enforcingConsecutiveLocalOriginFailure: percentage(
      o,
      'enforcing_consecutive_local_origin_failure',
      d.enforcingConsecutiveLocalOriginFailure,
      res,
    ),
    splitExternalLocalOriginErrors: bool(o.split_external_local_origin_errors) === true,
    intervalMs: ms('interval', d.intervalMs),
    baseEjectionTimeMs: base,
    // Envoy's default is the larger of 300 s and base_ejection_time
    maxEjectionTimeMs: ms('max_ejection_time', Math.max(d.maxEjectionTimeMs, base)),
    maxEjectionTimeJitterMs: ms('max_ejection_time_jitter', d.maxEjectionTimeJitterMs),
    maxEjectionPercent: percentage(o, 'max_ejection_percent', d.maxEjectionPercent, res),
    alwaysEjectOneHost: bool(o.always_eject_one_host) === true,
  };
  if (out.maxEjectionTimeMs < out.baseEjectionTimeMs)
    res.refuse(
      'outlier_detection.max_ejection_time',
      'max_ejection_time cannot be smaller than base_ejection_time (Envoy refuses the cluster too)',
    );
  // the statistical detectors: Envoy runs success rate unless enforcing_success_rate is 0 (its
  // default is 100; istiod sets 0), failure percentage only when enforcing_failure_percentage > 0
  const successRate = percentage(o, 'enforcing_success_rate', 100, res);
  const localSuccessRate = out.splitExternalLocalOriginErrors
    ? percentage(o, 'enforcing_local_origin_success_rate', 100, res)
    : 0;
  if (successRate > 0 || localSuccessRate > 0) {
    res.notEnforced(
      `outlier_detection.${successRate > 0 ? 'enforcing_success_rate' : 'enforcing_local_origin_success_rate'}`,
    );
    res.note(
      'outlier_detection: success-rate ejection (Envoy runs it unless enforcing_success_rate is 0) is not computed by the kernel; consecutive failures are',
    );
  }
  for (const f of ['enforcing_failure_percentage', 'enforcing_failure_percentage_local_origin'])
    if (percentage(o, f, 0, res) > 0) res.notEnforced(`outlier_detection.${f}`);
  for (const f of ['monitors']) if (o[f] !== undefined) res.notEnforced(`outlier_detection.${f}`);
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
