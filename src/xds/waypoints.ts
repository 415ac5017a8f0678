// The one reader of waypoints: which service uses which waypoint, from Istio's workload API
// (istio.workload.Address → Service.waypoint). Addresses from istiod, from a resources file and
// from a ztunnel dump (config-file.ts turns it into Addresses) all come through here.
import { decodeAddress } from '../net/address.js';
import { num, obj, objs, str } from './read-json.js';
import type { JsonObject, ServiceWaypoint, XdsResource } from './types.js';

/** Istio's HBONE port: what a waypoint listens on when the GatewayAddress does not say. */
export const HBONE_PORT = 15008;

/** IPv4/IPv6 bytes (base64 in proto3 JSON) as an IP literal; undefined for other lengths. */
export function ipFromBase64(b64: string | undefined): string | undefined {
  if (!b64) return undefined;
  const b = Buffer.from(b64, 'base64');
  if (b.length === 4) return decodeAddress(b, 4);
  if (b.length === 16) return decodeAddress(b, 6);
  return undefined;
}

function gateway(wp: JsonObject): ServiceWaypoint['waypoint'] {
  const waypoint: ServiceWaypoint['waypoint'] = { port: num(wp['hbone_mtls_port']) || HBONE_PORT };
  const address = ipFromBase64(str(obj(wp['address'])?.['address']));
  if (address) waypoint.address = address;
  const host = obj(wp['hostname']);
  if (host)
    waypoint.hostname = { namespace: str(host['namespace']) ?? '', hostname: str(host['hostname']) ?? '' };
  return waypoint;
}

function describe(w: ServiceWaypoint['waypoint']): string {
  const where = w.address ?? (w.hostname ? `${w.hostname.namespace}/${w.hostname.hostname}` : '?');
  return `${where}:${w.port}`;
}

export interface AddressUse {
  /** Services of the snapshot that name a waypoint, in resource order. */
  waypoints: ServiceWaypoint[];
  /** What the agent does not act on, per resource (workload-addressed waypoints). */
  notes: { name: string; note: string }[];
}

/** Reads the workload API snapshot: the service waypoints, and notes for what is not applied. */
export function readAddresses(addresses: readonly XdsResource[]): AddressUse {
  const out: AddressUse = { waypoints: [], notes: [] };
  for (const a of addresses) {
    const svc = obj(a.resource['service']);
    if (svc) {
      const wp = obj(svc['waypoint']);
      if (!wp) continue;
      out.waypoints.push({
        namespace: str(svc['namespace']) ?? '',
        hostname: str(svc['hostname']) ?? '',
        vips: objs(svc['addresses'])
          .map((na) => ipFromBase64(str(na['address'])))
          .filter((ip): ip is string => ip !== undefined),
        ports: objs(svc['ports']).map((p) => ({
          servicePort: num(p['service_port']) ?? 0,
          targetPort: num(p['target_port']) ?? 0,
        })),
        waypoint: gateway(wp),
      });
      continue;
    }
    const wl = obj(a.resource['workload']);
    const wp = obj(wl?.['waypoint']);
    if (wl && wp) {
      out.notes.push({
        name: a.name,
        note:
          `workload ${str(wl['namespace']) ?? ''}/${str(wl['name']) ?? ''} has waypoint ${describe(gateway(wp))}: ` +
          'workload-addressed waypoints are not applied (kernmesh rewrites service VIPs only)',
      });
    }
  }
  return out;
}

/** The services of the workload API snapshot that name a waypoint, in resource-name order. */
export function serviceWaypoints(addresses: readonly XdsResource[]): ServiceWaypoint[] {
  return readAddresses(addresses).waypoints;
}
