// CDS: what kind of service a cluster is, its load-balancing policy, its connection cap, and which
// transport each endpoint would get (the kernel forwards plaintext only).
import type { LbPolicy, ServiceKind } from '../dataplane/model.js';
import type { JsonObject, JsonValue } from '../xds/types.js';
import { CLUSTER_FIELDS, checkFields } from './fields.js';
import { anyType, bool, durationMs, num, obj, objs, str } from './json.js';
import { analyseAssignment } from './endpoints.js';
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
    parsed.edsName = str(obj(c.eds_cluster_config)?.service_name) ?? name;
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
