// Envoy's /clusters (text) and /clusters?format=json (envoy.admin.v3.Clusters): every cluster istiod
// sent, with each host's address, EDS health, weight, priority, locality and the kernel's counts.
import { arr, num, obj as maybeObj, str as maybeStr } from '../xds/read-json.js';
import { edsServiceName } from '../xds/resource-types/index.js';
import { TYPE, type JsonObject, type JsonValue, type XdsResource } from '../xds/types.js';
import type { ClusterStatsView } from './cluster-stats.js';

// Envoy's views print absent messages as {} and absent strings as '': the shared readers, defaulted.
const obj = (v: JsonValue | undefined): JsonObject => maybeObj(v) ?? {};
const str = (v: JsonValue | undefined): string => maybeStr(v) ?? '';
const uint = (v: JsonValue | undefined, dflt: number): number => num(v) ?? dflt;

function hostsOf(cla: JsonObject, stats?: ClusterStatsView, clusterName?: string): JsonObject[] {
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
        // SimpleMetric's value is a uint64: a string in proto3 JSON.
        stats:
          stats && typeof sock.address === 'string'
            ? stats
                .host(sock.address, uint(sock.port_value, 0))
                .map((s) => ({ ...s, value: String(s.value) }))
            : [],
        health_status: {
          eds_health_status: typeof e.health_status === 'string' ? e.health_status : 'UNKNOWN',
          ...(clusterName && stats?.hostEjected(clusterName, str(sock.address), uint(sock.port_value, 0))
            ? { failed_outlier_check: true }
            : {}),
        },
        weight: uint(e.load_balancing_weight, 1),
        priority,
      };
      if (g.locality && Object.keys(obj(g.locality)).length) host.locality = g.locality;
      const hostname = obj(e.endpoint).hostname;
      if (typeof hostname === 'string') host.hostname = hostname;
      hosts.push(host);
    }
  }
  return hosts;
}

/** envoy.admin.v3.Clusters; host stats only where the kernel's counts are given. */
export function buildClusters(resources: XdsResource[], stats?: ClusterStatsView): JsonObject {
  const assignments = new Map<string, JsonObject>();
  for (const r of resources) if (r.typeUrl === TYPE.endpoint) assignments.set(r.name, r.resource);
  const statuses: JsonObject[] = [];
  for (const r of resources
    .filter((x) => x.typeUrl === TYPE.cluster)
    .sort((a, b) => a.name.localeCompare(b.name))) {
    const c = r.resource;
    // EDS clusters take their ClusterLoadAssignment by name; others carry load_assignment inline.
    const edsName = edsServiceName(c);
    const cla = (edsName !== undefined ? assignments.get(edsName) : undefined) ?? obj(c.load_assignment);
    const status: JsonObject = {
      name: r.name,
      added_via_api: true,
      observability_name: str(c.alt_stat_name) || r.name,
      host_statuses: hostsOf(cla, stats, r.name),
    };
    if (edsName !== undefined) status.eds_service_name = edsName;
    statuses.push(status);
  }
  return { cluster_statuses: statuses };
}

/**
 * Envoy's health_flags: "healthy", or the flags set on the host in Envoy's order (HealthFlag's):
 * /failed_outlier_check for a host outlier detection ejected, then EDS health.
 */
function healthFlags(status: JsonObject): string {
  const eds = str(status.eds_health_status);
  let flags = '';
  if (status.failed_outlier_check === true) flags += '/failed_outlier_check';
  if (eds === 'UNHEALTHY' || eds === 'TIMEOUT') flags += '/failed_eds_health';
  if (eds === 'DEGRADED') flags += '/degraded_eds_health';
  if (eds === 'DRAINING') flags += '/eds_status_draining';
  return flags || 'healthy';
}

/**
 * Envoy's text form of /clusters, one `cluster::[host::]field::value` a line. Cluster-level kernel
 * counts (upstream_cx_*) are printed as `cluster::stat::value`, which Envoy keeps in /stats instead.
 */
export function clustersText(clusters: JsonObject, stats?: ClusterStatsView): string {
  const lines: string[] = [];
  for (const c of arr(clusters.cluster_statuses)) {
    const cs = obj(c);
    const name = str(cs.name);
    lines.push(`${name}::observability_name::${str(cs.observability_name)}`);
    for (const s of stats?.cluster(name) ?? []) lines.push(`${name}::${s.name}::${s.value}`);
    lines.push(`${name}::added_via_api::true`);
    if (cs.eds_service_name !== undefined)
      lines.push(`${name}::eds_service_name::${str(cs.eds_service_name)}`);
    for (const h of arr(cs.host_statuses)) {
      const host = obj(h);
      const sock = obj(obj(host.address).socket_address);
      const address = str(sock.address);
      const hp = `${address.includes(':') ? `[${address}]` : address}:${uint(sock.port_value, 0)}`;
      const locality = obj(host.locality);
      for (const s of arr(host.stats))
        lines.push(`${name}::${hp}::${str(obj(s).name)}::${str(obj(s).value)}`);
      lines.push(`${name}::${hp}::hostname::${str(host.hostname)}`);
      lines.push(`${name}::${hp}::health_flags::${healthFlags(obj(host.health_status))}`);
      lines.push(`${name}::${hp}::weight::${uint(host.weight, 1)}`);
      lines.push(`${name}::${hp}::region::${str(locality.region)}`);
      lines.push(`${name}::${hp}::zone::${str(locality.zone)}`);
      lines.push(`${name}::${hp}::sub_zone::${str(locality.sub_zone)}`);
      lines.push(`${name}::${hp}::priority::${uint(host.priority, 0)}`);
    }
  }
  return lines.join('\n') + '\n';
}
