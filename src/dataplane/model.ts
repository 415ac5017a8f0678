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
  /**
   * The locality's load_balancing_weight, when the service weighs localities: Envoy gives a group
   * without a locality, or without a weight, no load (0).
   */
  localityWeight?: number;
}

/**
 * Envoy's outlier detector for L4 (CDS outlier_detection): consecutive failed connects eject a
 * host for base × multiplier (capped by max), within max_ejection_percent of the cluster's hosts.
 */
export interface OutlierDetection {
  consecutive5xx: number;
  consecutiveGatewayFailure: number;
  consecutiveLocalOriginFailure: number;
  /** Percentages (0..100) of detected ejections that are enforced. */
  enforcingConsecutive5xx: number;
  enforcingConsecutiveGatewayFailure: number;
  enforcingConsecutiveLocalOriginFailure: number;
  splitExternalLocalOriginErrors: boolean;
  intervalMs: number;
  baseEjectionTimeMs: number;
  maxEjectionTimeMs: number;
  maxEjectionTimeJitterMs: number;
  maxEjectionPercent: number;
  alwaysEjectOneHost: boolean;
}

/** Envoy's defaults (outlier_detection.proto, DetectorConfig). */
export const OUTLIER_DEFAULTS: OutlierDetection = {
  consecutive5xx: 5,
  consecutiveGatewayFailure: 5,
  consecutiveLocalOriginFailure: 5,
  enforcingConsecutive5xx: 100,
  enforcingConsecutiveGatewayFailure: 0,
  enforcingConsecutiveLocalOriginFailure: 100,
  splitExternalLocalOriginErrors: false,
  intervalMs: 10_000,
  baseEjectionTimeMs: 30_000,
  maxEjectionTimeMs: 300_000,
  maxEjectionTimeJitterMs: 0,
  maxEjectionPercent: 10,
  alwaysEjectOneHost: false,
};

/** Envoy's defaults for a cluster's priority levels. */
export const DEFAULT_OVERPROVISIONING = 140;
export const DEFAULT_PANIC_THRESHOLD = 50;
/** Envoy's connect_timeout when a cluster sets none. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;

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
  /** ClusterLoadAssignment policy.overprovisioning_factor, percent; undefined: Envoy's 140. */
  overprovisioningFactor?: number;
  /** common_lb_config.healthy_panic_threshold, percent (0 disables panic); undefined: 50. */
  panicThreshold?: number;
  /** zone_aware_lb_config.fail_traffic_on_panic: a priority in panic refuses connects. */
  failTrafficOnPanic?: boolean;
  /** common_lb_config.locality_weighted_lb_config: localities are weighed as Envoy does. */
  localityWeighted?: boolean;
  outlierDetection?: OutlierDetection;
  /** connect_timeout, for outlier detection's timeouts; undefined: Envoy's 5 s. */
  connectTimeoutMs?: number;
  /** What closes open connections to this service's hosts (Envoy's cluster fields; issue 17). */
  closeConnections?: CloseConnections;
}

export interface CloseConnections {
  /** close_connections_on_host_health_failure: a host turning unhealthy (EDS or ejected) loses its connections. */
  onHostHealthFailure?: boolean;
  /** common_lb_config.close_connections_on_host_set_change: any host added or removed closes every connection. */
  onHostSetChange?: boolean;
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
