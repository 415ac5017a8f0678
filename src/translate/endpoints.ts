// EDS (and inline load_assignment): localities, priorities, weights, health, dual-stack addresses,
// and endpoints the kernel cannot reach directly (unix sockets, Envoy internal/HBONE addresses).
import { isIP } from 'node:net';
import type { EndpointHealth, Locality } from '../dataplane/model.js';
import { TYPE, type JsonObject } from '../xds/types.js';
import type { Analyser } from './analysis.js';
import { CLA_FIELDS, checkFields } from './fields.js';
import { num, obj, objs, str } from '../xds/read-json.js';
import type { ResourceFindings } from './types.js';

export interface ParsedEndpoint {
  /** IP literal, or a hostname for DNS clusters. */
  address: string;
  port: number;
  /** Other addresses of the same endpoint (dual stack), IP literals. */
  additional: { address: string; port: number }[];
  weight: number;
  priority: number;
  health: EndpointHealth;
  locality?: Locality;
  /**
   * The locality's load_balancing_weight for locality-weighted clusters: Envoy records it only for a
   * group that has a locality (an empty one counts), and a group without one gets no load (0).
   */
  localityWeight: number;
  /** Key of the locality group (priority + locality), for locality weighting. */
  group: string;
  /** `envoy.transport_socket_match` metadata of the endpoint, which picks its transport socket. */
  tlsMatch: JsonObject;
  /** Set for Envoy internal addresses (HBONE through connect_originate). */
  internal?: { listener: string; endpointId: string };
  /** Path inside the ClusterLoadAssignment, for reasons. */
  path: string;
}

export interface ParsedAssignment {
  endpoints: ParsedEndpoint[];
  /** Endpoints skipped because no connect() can reach them (unix sockets). */
  skipped: string[];
  /** policy.overprovisioning_factor, when set. */
  overprovisioningFactor?: number;
}

const HEALTH: Readonly<Record<string, EndpointHealth>> = {
  UNKNOWN: 'unknown',
  HEALTHY: 'healthy',
  UNHEALTHY: 'unhealthy',
  DRAINING: 'draining',
  TIMEOUT: 'unhealthy',
  // The kernel has no "degraded" tier: such endpoints stay selectable, as Envoy uses them when it must.
  DEGRADED: 'unknown',
};

/**
 * Reads a ClusterLoadAssignment (or a cluster's inline load_assignment). `allowHostnames` is for
 * DNS clusters, whose addresses are names to resolve; everywhere else an address must be an IP.
 */
export function analyseAssignment(
  cla: JsonObject,
  res: ResourceFindings,
  base: string,
  allowHostnames: boolean,
): ParsedAssignment {
  const at = (p: string) => (base ? `${base}.${p}` : p);
  checkFields(cla, base, CLA_FIELDS, res);
  const out: ParsedAssignment = { endpoints: [], skipped: [] };
  readPolicy(obj(cla.policy), at('policy'), out, res);
  objs(cla.endpoints).forEach((group, gi) => {
    const gpath = at(`endpoints[${gi}]`);
    const priority = num(group.priority) ?? 0;
    const locality = readLocality(obj(group.locality));
    const localityWeight = group.locality !== undefined ? (num(group.load_balancing_weight) ?? 0) : 0;
    const key = `${priority}/${locality?.region ?? ''}/${locality?.zone ?? ''}/${locality?.subZone ?? ''}`;
    if (group.leds_cluster_locality_config !== undefined) {
      res.refuse(`${gpath}.leds_cluster_locality_config`, 'LEDS endpoint discovery is not supported');
    }
    objs(group.lb_endpoints).forEach((lb, ei) => {
      const epath = `${gpath}.lb_endpoints[${ei}]`;
      const ep = obj(lb.endpoint);
      if (!ep) {
        res.refuse(
          epath,
          lb.endpoint_name !== undefined ? 'named endpoints are not supported' : 'no endpoint',
        );
        return;
      }
      const weight = num(lb.load_balancing_weight) ?? 1;
      if (!Number.isInteger(weight) || weight < 1) {
        res.refuse(`${epath}.load_balancing_weight`, `weight ${String(weight)} is not a positive integer`);
        return;
      }
      const healthName = str(lb.health_status) ?? 'UNKNOWN';
      const health = HEALTH[healthName];
      if (!health) {
        res.refuse(`${epath}.health_status`, `unknown health status ${healthName}`);
        return;
      }
      const tlsMatch = obj(obj(obj(lb.metadata)?.filter_metadata)?.['envoy.transport_socket_match']) ?? {};
      const address = obj(ep.address);
      const internal = obj(address?.envoy_internal_address);
      const common = { weight, priority, health, group: key, tlsMatch, path: epath };
      const withLocality = { ...common, localityWeight, ...(locality ? { locality } : {}) };
      if (internal) {
        // HBONE: the endpoint is reached through Envoy's internal listener, which tunnels in mTLS.
        const endpointId = str(internal.endpoint_id) ?? '';
        const m = /^(.*):(\d+)$/.exec(endpointId);
        out.endpoints.push({
          ...withLocality,
          address: (m?.[1] ?? endpointId).replace(/^\[|\]$/g, ''),
          port: Number(m?.[2] ?? 0),
          additional: [],
          internal: { listener: str(internal.server_listener_name) ?? '', endpointId },
        });
        return;
      }
      if (address?.pipe !== undefined) {
        out.skipped.push(`${epath}: unix socket ${str(obj(address.pipe)?.path) ?? ''}`);
        return;
      }
      const sock = readSocketAddress(address, `${epath}.endpoint.address`, res, allowHostnames);
      if (!sock) return;
      const additional: ParsedEndpoint['additional'] = [];
      objs(ep.additional_addresses).forEach((extra, ai) => {
        const s = readSocketAddress(
          obj(extra.address),
          `${epath}.endpoint.additional_addresses[${ai}].address`,
          res,
          false,
        );
        if (s) additional.push(s);
      });
      out.endpoints.push({ ...withLocality, ...sock, additional });
    });
  });
  return out;
}

/**
 * ClusterLoadAssignment.policy: the overprovisioning factor feeds Envoy's priority and locality
 * health; what would drop traffic or weigh health differently is refused, never ignored.
 */
function readPolicy(
  p: JsonObject | undefined,
  path: string,
  out: ParsedAssignment,
  res: ResourceFindings,
): void {
  if (!p) return;
  for (const [field, v] of Object.entries(p)) {
    const at = `${path}.${field}`;
    switch (field) {
      case 'overprovisioning_factor': {
        const f = num(v);
        if (f === undefined || !Number.isInteger(f) || f < 1 || f > 65535)
          res.refuse(at, `${String(f)} is not a factor in 1..65535 (percent)`);
        else out.overprovisioningFactor = f;
        break;
      }
      case 'weighted_priority_health':
        if (v === true)
          res.refuse(at, "the kernel computes a priority's health from host counts, not weights");
        break;
      case 'drop_overloads':
        if (Array.isArray(v) && v.length > 0)
          res.refuse(at, 'dropping a share of connections on purpose is not done by the kernel');
        break;
      default:
        // endpoint_stale_after and anything newer
        res.notEnforced(at);
    }
  }
}

function readLocality(l: JsonObject | undefined): Locality | undefined {
  if (!l) return undefined;
  const loc: Locality = {};
  const region = str(l.region);
  const zone = str(l.zone);
  const subZone = str(l.sub_zone);
  if (region) loc.region = region;
  if (zone) loc.zone = zone;
  if (subZone) loc.subZone = subZone;
  return Object.keys(loc).length > 0 ? loc : undefined;
}

/** An Envoy Address's socket_address as (address, port); refuses what a connect() cannot target. */
export function readSocketAddress(
  address: JsonObject | undefined,
  path: string,
  res: ResourceFindings,
  allowHostnames: boolean,
): { address: string; port: number } | undefined {
  const sa = obj(address?.socket_address);
  if (!sa) {
    res.refuse(path, 'not a socket address');
    return undefined;
  }
  const ip = str(sa.address) ?? '';
  const port = num(sa.port_value) ?? 0;
  if (sa.named_port !== undefined) {
    res.refuse(`${path}.socket_address.named_port`, 'named ports are not supported');
    return undefined;
  }
  if ((str(sa.protocol) ?? 'TCP') !== 'TCP') {
    res.refuse(`${path}.socket_address.protocol`, 'only TCP endpoints are supported');
    return undefined;
  }
  if (!isIP(ip) && !(allowHostnames && /^[A-Za-z0-9.-]+$/.test(ip) && ip.length > 0)) {
    res.refuse(`${path}.socket_address.address`, `"${ip}" is not an IP address`);
    return undefined;
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    res.refuse(`${path}.socket_address.port_value`, `port ${String(port)} is out of range`);
    return undefined;
  }
  return { address: ip, port };
}

/** Envoy's transport_socket_matches rule: every key/value of `match` is in the endpoint's metadata. */
export function metadataMatches(match: JsonObject, meta: JsonObject): boolean {
  return Object.entries(match).every(([k, v]) => JSON.stringify(meta[k]) === JSON.stringify(v));
}

export const ENDPOINT_ANALYSER: Analyser<ParsedAssignment> = {
  typeUrl: TYPE.endpoint,
  analyse: (cla, res) => analyseAssignment(cla, res, '', false),
};
