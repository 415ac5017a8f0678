// The desired kernel model: what translate/ produces and what dataplane/ programs into the maps.
// Plain data only, no kernel ids: the writer assigns stable service and backend ids itself.

/** Kernel load-balancing policy; Envoy's lb_policy maps onto these (RING_HASH → maglev). */
export type LbPolicy = 'random' | 'round_robin' | 'least_request' | 'maglev';

/** EDS health as the kernel sees it: healthy and unknown are selectable for new connections. */
export type EndpointHealth = 'healthy' | 'unknown' | 'unhealthy' | 'draining';

export interface Locality {
  region?: string;
  zone?: string;
  subZone?: string;
}

export interface Endpoint {
  /** IPv4 or IPv6 literal. */
  address: string;
  port: number;
  /** Relative weight, >= 1. */
  weight: number;
  /** EDS priority group: 0 is tried first, higher numbers only when no lower group can serve. */
  priority: number;
  health: EndpointHealth;
  locality?: Locality;
}

/**
 * What a frontend leads to. `endpoints`: load-balanced over its endpoints; `passthrough`: the
 * connection keeps its destination (counted); `blackhole`: the connect is refused;
 * `waypoint`: the connection goes to the waypoint, with the original destination in a TLV.
 */
export type ServiceKind = 'endpoints' | 'passthrough' | 'blackhole' | 'waypoint';

export interface Waypoint {
  address: string;
  port: number;
}

export interface Service {
  /** Unique name, normally the Envoy cluster name (`outbound|80||reviews.default.svc.cluster.local`). */
  name: string;
  kind: ServiceKind;
  lbPolicy: LbPolicy;
  /** circuit_breakers max_connections; undefined means no cap. */
  maxConnections?: number;
  /**
   * least_request only: Envoy's active_request_bias, the exponent in weight / (active + 1)^bias
   * when a group's weights differ. Undefined means Envoy's default, 1; the kernel computes 0 and 1.
   */
  activeRequestBias?: number;
  endpoints: Endpoint[];
  /** Set when kind is 'waypoint'. */
  waypoint?: Waypoint;
}

export type Protocol = 'tcp' | 'udp';

/** A (VIP, port, protocol) that connect() is intercepted on, and the service it leads to. */
export interface Frontend {
  address: string;
  port: number;
  protocol: Protocol;
  /** Name of a Service in the same DesiredState. */
  service: string;
}

export interface DesiredState {
  services: Service[];
  frontends: Frontend[];
}
