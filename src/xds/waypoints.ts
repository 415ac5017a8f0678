// Which service uses which waypoint, from Istio's workload API (istio.workload.Address → Service).
import { decodeAddress } from '../net/address.js';
import type { JsonObject, JsonValue, ServiceWaypoint, XdsResource } from './types.js';

function obj(v: JsonValue | undefined): JsonObject | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
}

function str(v: JsonValue | undefined): string {
  return typeof v === 'string' ? v : '';
}

/** IPv4/IPv6 bytes (base64 in proto3 JSON) as an IP literal; undefined for other lengths. */
export function ipFromBase64(b64: string): string | undefined {
  const b = Buffer.from(b64, 'base64');
  if (b.length === 4) return decodeAddress(b, 4);
  if (b.length === 16) return decodeAddress(b, 6);
  return undefined;
}

/** The services of the workload API snapshot that name a waypoint, in resource-name order. */
export function serviceWaypoints(addresses: readonly XdsResource[]): ServiceWaypoint[] {
  const out: ServiceWaypoint[] = [];
  for (const a of addresses) {
    const svc = obj(a.resource['service']);
    const wp = obj(svc?.['waypoint']);
    if (!svc || !wp) continue;
    const vips: string[] = [];
    for (const na of (svc['addresses'] as JsonValue[] | undefined) ?? []) {
      const addr = obj(na)?.['address'];
      const ip = typeof addr === 'string' ? ipFromBase64(addr) : undefined;
      if (ip) vips.push(ip);
    }
    const ports = ((svc['ports'] as JsonValue[] | undefined) ?? []).map((p) => ({
      servicePort: Number(obj(p)?.['service_port'] ?? 0),
      targetPort: Number(obj(p)?.['target_port'] ?? 0),
    }));
    const waypoint: ServiceWaypoint['waypoint'] = { port: Number(wp['hbone_mtls_port'] ?? 0) };
    const wpAddr = obj(wp['address'])?.['address'];
    if (typeof wpAddr === 'string') {
      const ip = ipFromBase64(wpAddr);
      if (ip) waypoint.address = ip;
    }
    const host = obj(wp['hostname']);
    if (host)
      waypoint.hostname = {
        namespace: str(host['namespace']),
        hostname: str(host['hostname']),
      };
    out.push({
      namespace: typeof svc['namespace'] === 'string' ? svc['namespace'] : '',
      hostname: typeof svc['hostname'] === 'string' ? svc['hostname'] : '',
      vips,
      ports,
      waypoint,
    });
  }
  return out;
}
