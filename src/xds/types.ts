// Plain data handed from xds/ to translate/ (and to admin/ for config_dump): each resource in its
// proto3 JSON form with the proto's own field names (snake_case), exactly as Envoy's config_dump
// prints it, so resources from istiod and from a file look the same to every later stage.

export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };
export type JsonObject = { [k: string]: JsonValue };

export const TYPE = {
  cluster: 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  endpoint: 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
  listener: 'type.googleapis.com/envoy.config.listener.v3.Listener',
  route: 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  address: 'type.googleapis.com/istio.workload.Address',
  authorization: 'type.googleapis.com/istio.security.Authorization',
} as const;

export type TypeUrl = (typeof TYPE)[keyof typeof TYPE];

export interface XdsResource {
  typeUrl: string;
  /** Resource name: cluster_name for ClusterLoadAssignment, name for the others. */
  name: string;
  /** The version the resource was accepted under (the response's version_info, or Delta's resource version). */
  version: string;
  /** The resource as proto3 JSON with `@type`, snake_case field names, nested Any as `{"@type": ...}`. */
  resource: JsonObject;
  /** When it was accepted (ISO 8601), as config_dump's last_updated. */
  lastUpdated?: string;
}

/** The one key of a resource across types (maps of statuses, notes and refusals use it). */
export function resourceKey(typeUrl: string, name: string): string {
  return `${typeUrl}\u0000${name}`;
}

/** The one key of a refusal: the same resource refused for the same reason is one refusal. */
export function rejectionKey(r: { typeUrl: string; name: string; reason: string }): string {
  return `${resourceKey(r.typeUrl, r.name)}\u0000${r.reason}`;
}

/** A resource refused by validation or translation, in the form a NACK's error_detail lists it. */
export interface Rejection {
  typeUrl: string;
  name: string;
  /** Path inside the resource and reason, e.g. `filter_chains[1].filters[0]: header match is L7`. */
  reason: string;
  /**
   * The refusal concerns one part of the resource (a virtual host of a RouteConfiguration) that
   * translate skips: the rest of the resource is applied, and the response is still NACKed with it.
   */
  partial?: boolean;
}

/** Which service uses which waypoint, from Istio's workload API (istio.workload.Address → Service). */
export interface ServiceWaypoint {
  namespace: string;
  hostname: string;
  /** The service's VIPs as IP literals (the network prefix of NetworkAddress dropped). */
  vips: string[];
  /** Service ports (port → target_port) as the workload API lists them. */
  ports: { servicePort: number; targetPort: number }[];
  waypoint: { address?: string; hostname?: { namespace: string; hostname: string }; port: number };
}
