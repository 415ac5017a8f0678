// What istiod serves a sidecar, in small builders for the end-to-end tests (shapes taken from the
// real config dumps in ../shared/fixtures/istio/), and the agent's admin endpoint read as JSON (the
// agent itself runs through ./cli.ts).
import { TYPE, type JsonObject } from '../../src/xds/types.js';
import { adminGet } from './cli.js';

const HCM =
  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';

/** `outbound|<port>|<subset>|<host>`, istiod's outbound cluster name. */
export function outbound(host: string, port: number, subset = ''): string {
  return `outbound|${port}|${subset}|${host}`;
}

/** An EDS cluster as istiod generates it (mTLS auto: the tlsMode-istio match, plaintext otherwise). */
export function edsCluster(name: string, lbPolicy = 'ROUND_ROBIN'): JsonObject {
  return {
    '@type': TYPE.cluster,
    name,
    type: 'EDS',
    eds_cluster_config: {
      eds_config: { ads: {}, initial_fetch_timeout: '0s', resource_api_version: 'V3' },
      service_name: name,
    },
    connect_timeout: '10s',
    lb_policy: lbPolicy,
    circuit_breakers: {
      thresholds: [
        {
          max_connections: 4294967295,
          max_pending_requests: 4294967295,
          max_requests: 4294967295,
          max_retries: 4294967295,
        },
      ],
    },
    common_lb_config: { locality_weighted_lb_config: {} },
    metadata: {
      filter_metadata: {
        istio: { services: [{ host: name.split('|')[3] ?? '', name: 'svc', namespace: 'test' }] },
      },
    },
    transport_socket_matches: [
      {
        name: 'tlsMode-istio',
        match: { tlsMode: 'istio' },
        transport_socket: {
          name: 'envoy.transport_sockets.tls',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
            common_tls_context: { alpn_protocols: ['istio-peer-exchange', 'istio'] },
            sni: `outbound_.${name.split('|')[1] ?? ''}_._.${name.split('|')[3] ?? ''}`,
          },
        },
      },
      {
        name: 'tlsMode-disabled',
        match: {},
        transport_socket: { name: 'envoy.transport_sockets.raw_buffer' },
      },
    ],
  };
}

/** istiod's catch-all clusters (ALLOW_ANY and REGISTRY_ONLY). */
export const passthroughCluster: JsonObject = {
  '@type': TYPE.cluster,
  name: 'PassthroughCluster',
  type: 'ORIGINAL_DST',
  connect_timeout: '10s',
  lb_policy: 'CLUSTER_PROVIDED',
};
export const blackHoleCluster: JsonObject = {
  '@type': TYPE.cluster,
  name: 'BlackHoleCluster',
  type: 'STATIC',
  connect_timeout: '10s',
};

export interface ServedEndpoint {
  address: string;
  port: number;
  weight?: number;
}

/** A ClusterLoadAssignment with one locality, endpoints without a sidecar (no tlsMode label). */
export function assignment(name: string, endpoints: ServedEndpoint[]): JsonObject {
  return {
    '@type': TYPE.endpoint,
    cluster_name: name,
    endpoints: [
      {
        locality: { region: 'r1', zone: 'z1' },
        lb_endpoints: endpoints.map((e) => ({
          endpoint: { address: { socket_address: { address: e.address, port_value: e.port } } },
          health_status: 'HEALTHY',
          metadata: { filter_metadata: { istio: { workload: 'w;test;w;;Kubernetes' } } },
          load_balancing_weight: e.weight ?? 1,
        })),
        // Envoy's rule is weight >= 1: a locality without endpoints carries none (as istiod sends it).
        ...(endpoints.length > 0
          ? { load_balancing_weight: endpoints.reduce((a, e) => a + (e.weight ?? 1), 0) }
          : {}),
      },
    ],
  };
}

/**
 * A TCP service's outbound listener: `<VIP>_<port>` with tcp_proxy to its cluster. `tcpProxyExtra`
 * defaults to the idle timeout istiod sets; `{}` gives a bare tcp_proxy.
 */
export function tcpListener(
  vip: string,
  port: number,
  cluster: string,
  tcpProxyExtra: JsonObject = { idle_timeout: '3600s' },
): JsonObject {
  return {
    '@type': TYPE.listener,
    name: `${vip}_${port}`,
    address: { socket_address: { address: vip, port_value: port } },
    traffic_direction: 'OUTBOUND',
    bind_to_port: false,
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.tcp_proxy',
            typed_config: {
              '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
              stat_prefix: cluster,
              cluster,
              ...tcpProxyExtra,
            },
          },
        ],
      },
    ],
  };
}

/** The HTTP services of a port: `0.0.0.0_<port>` with an HCM taking its routes from RDS `<port>`. */
export function httpListener(port: number): JsonObject {
  return {
    '@type': TYPE.listener,
    name: `0.0.0.0_${port}`,
    address: { socket_address: { address: '0.0.0.0', port_value: port } },
    traffic_direction: 'OUTBOUND',
    bind_to_port: false,
    filter_chains: [
      {
        filter_chain_match: { transport_protocol: 'raw_buffer', application_protocols: ['http/1.1', 'h2c'] },
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': HCM,
              stat_prefix: `outbound_0.0.0.0_${port}`,
              rds: {
                config_source: { ads: {}, initial_fetch_timeout: '0s', resource_api_version: 'V3' },
                route_config_name: String(port),
              },
              http_filters: [
                {
                  name: 'envoy.filters.http.router',
                  typed_config: {
                    '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
                  },
                },
              ],
              use_remote_address: false,
            },
          },
        ],
      },
    ],
  };
}

/** The default route istiod writes for a service without a VirtualService (timeouts, default retries). */
export function defaultRoute(cluster: string, host: string, port: number): JsonObject {
  return {
    name: 'default',
    match: { prefix: '/' },
    route: {
      cluster,
      timeout: '0s',
      retry_policy: {
        retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes',
        num_retries: 2,
        retry_host_predicate: [{ name: 'envoy.retry_host_predicates.previous_hosts' }],
        host_selection_retry_max_attempts: '5',
        retriable_status_codes: [503],
      },
      max_grpc_timeout: '0s',
    },
    decorator: { operation: `${host}:${port}/*` },
  };
}

/** A VirtualService route matching a header: real L7 intent. */
export function headerRoute(cluster: string, vs: string, header: string, value: string): JsonObject {
  return {
    match: { prefix: '/', case_sensitive: true, headers: [{ name: header, string_match: { exact: value } }] },
    route: { cluster, timeout: '0s', max_grpc_timeout: '0s' },
    metadata: {
      filter_metadata: {
        istio: { config: `/apis/networking.istio.io/v1alpha3/namespaces/test/virtual-service/${vs}` },
      },
    },
  };
}

/** A service's virtual host: its names and VIP, with and without the port, as istiod lists them. */
export function virtualHost(host: string, vip: string, port: number, routes: JsonObject[]): JsonObject {
  const short = host.split('.')[0] ?? host;
  return {
    name: `${host}:${port}`,
    domains: [host, `${host}:${port}`, short, `${short}:${port}`, vip, `${vip}:${port}`],
    routes,
    include_request_attempt_count: true,
  };
}

/** RDS `<port>`: every HTTP service on the port as a virtual host, plus ALLOW_ANY's catch-all. */
export function routeConfig(port: number, vhosts: JsonObject[]): JsonObject {
  return {
    '@type': TYPE.route,
    name: String(port),
    virtual_hosts: [
      ...vhosts,
      {
        name: 'allow_any',
        domains: ['*'],
        routes: [
          {
            name: 'allow_any',
            match: { prefix: '/' },
            route: { cluster: 'PassthroughCluster', timeout: '0s', max_grpc_timeout: '0s' },
          },
        ],
        include_request_attempt_count: true,
      },
    ],
    validate_clusters: false,
    max_direct_response_body_size_bytes: 1048576,
    ignore_port_in_host_matching: true,
  };
}

/** An admin endpoint's answer, its body parsed when it is JSON (the text otherwise). */
export async function getJson<T>(admin: string, path: string): Promise<{ status: number; body: T }> {
  const { status, text } = await adminGet(admin, path);
  return {
    status,
    body: (text.startsWith('{') || text.startsWith('[') ? JSON.parse(text) : text) as T,
  };
}
