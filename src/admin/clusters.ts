// Envoy's /clusters?format=json (envoy.admin.v3.Clusters): every cluster istiod sent, with each
// host's address, EDS health, weight, priority and locality, as istioctl proxy-config endpoint reads it.
import { TYPE, type JsonObject, type JsonValue, type XdsResource } from '../xds/types.js';

/** Kernel-side counters for one backend, added to the host's stats when the dataplane has them. */
export type HostStats = (
  cluster: string,
  address: string,
  port: number,
) => { name: string; value: number; type: 'COUNTER' | 'GAUGE' }[];

const obj = (v: JsonValue | undefined): JsonObject =>
  v && typeof v === 'object' && !Array.isArray(v) ? v : {};
const arr = (v: JsonValue | undefined): JsonValue[] => (Array.isArray(v) ? v : []);

/** A UInt32Value in proto3 JSON is a bare number, but hand-written files sometimes use `{value: n}`. */
function uint(v: JsonValue | undefined, dflt: number): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^\d+$/.test(v)) return Number(v);
  const inner = obj(v).value;
  return typeof inner === 'number' ? inner : dflt;
}

function hostsOf(cla: JsonObject, cluster: string, stats?: HostStats): JsonObject[] {
  const hosts: JsonObject[] = [];
  for (const group of arr(cla.endpoints)) {
    const g = obj(group);
    const priority = uint(g.priority, 0);
    for (const lbe of arr(g.lb_endpoints)) {
      const e = obj(lbe);
      const address = obj(obj(e.endpoint).address);
      const sock = obj(address.socket_address);
      const host: JsonObject = {
        address: address,
        health_status: {
          eds_health_status: typeof e.health_status === 'string' ? e.health_status : 'UNKNOWN',
        },
        weight: uint(e.load_balancing_weight, 1),
        priority,
        stats:
          stats && typeof sock.address === 'string'
            ? stats(cluster, sock.address, uint(sock.port_value, 0)).map((s) => ({
                ...s,
                value: String(s.value),
              }))
            : [],
      };
      if (g.locality && Object.keys(obj(g.locality)).length) host.locality = g.locality;
      const hostname = obj(e.endpoint).hostname;
      if (typeof hostname === 'string') host.hostname = hostname;
      hosts.push(host);
    }
  }
  return hosts;
}

export function buildClusters(resources: XdsResource[], stats?: HostStats): JsonObject {
  const assignments = new Map<string, JsonObject>();
  for (const r of resources) if (r.typeUrl === TYPE.endpoint) assignments.set(r.name, r.resource);
  const statuses: JsonObject[] = [];
  for (const r of resources
    .filter((x) => x.typeUrl === TYPE.cluster)
    .sort((a, b) => a.name.localeCompare(b.name))) {
    const c = r.resource;
    // EDS clusters are named by eds_cluster_config.service_name when set; others carry load_assignment inline.
    const edsName = obj(c.eds_cluster_config).service_name;
    const cla =
      assignments.get(typeof edsName === 'string' && edsName ? edsName : r.name) ?? obj(c.load_assignment);
    statuses.push({
      name: r.name,
      added_via_api: true,
      observability_name: typeof c.alt_stat_name === 'string' ? c.alt_stat_name : r.name,
      host_statuses: hostsOf(cla, r.name, stats),
    });
  }
  return { cluster_statuses: statuses };
}
