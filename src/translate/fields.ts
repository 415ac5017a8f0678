// The table of what kernmesh does with each field istiod can send, per message. The translation code
// walks resources through these tables; docs/translation.md is the same table in prose, and the
// tests feed every row a minimal resource. A field not listed is accepted as "not enforced".
import type { JsonValue } from '../xds/types.js';
import type { ResourceFindings } from './types.js';
import { joinPath } from './types.js';

/**
 * accepted: read and programmed (the code may still refuse some values);
 * ignored: no effect on which backend a connection reaches (stats, tracing, names, metadata);
 * not enforced: Envoy would act on it, the kernel cannot, and routing does not change — listed in the status;
 * refused: real L7 or security intent the kernel cannot honour — the resource is NACKed.
 */
export type Disposition = 'accepted' | 'ignored' | 'not enforced' | 'refused';

export interface FieldRule {
  disposition: Disposition;
  why: string;
  /** A value that exercises the rule in a minimal resource (used by the tests). */
  example: JsonValue;
}

const acc = (why: string, example: JsonValue): FieldRule => ({ disposition: 'accepted', why, example });
const ign = (why: string, example: JsonValue): FieldRule => ({ disposition: 'ignored', why, example });
const ne = (why: string, example: JsonValue): FieldRule => ({ disposition: 'not enforced', why, example });
const ref = (why: string, example: JsonValue): FieldRule => ({ disposition: 'refused', why, example });

export type FieldTable = Readonly<Record<string, FieldRule>>;

export const CLUSTER_FIELDS: FieldTable = {
  name: acc('service name', 'x'),
  type: acc('EDS, STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST', 'STATIC'),
  eds_cluster_config: acc('EDS service name', { service_name: 'x' }),
  load_assignment: acc('inline endpoints (STATIC, DNS)', { cluster_name: 'x' }),
  lb_policy: acc('kernel load-balancing policy', 'RANDOM'),
  load_balancing_policy: acc('typed load-balancing policy (first known entry)', {
    policies: [
      {
        typed_extension_config: {
          name: 'envoy.load_balancing_policies.random',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random',
          },
        },
      },
    ],
  }),
  circuit_breakers: acc('thresholds[DEFAULT].max_connections caps connections', {
    thresholds: [{ max_connections: 10 }],
  }),
  transport_socket: acc('plaintext accepted; Istio mTLS or other TLS refused', {
    name: 'envoy.transport_sockets.raw_buffer',
  }),
  transport_socket_matches: acc('per-endpoint choice; plaintext match accepted, mTLS refused', []),
  common_lb_config: acc(
    'healthy_panic_threshold, locality_weighted_lb_config, fail_traffic_on_panic and close_connections_on_host_set_change enforced; zone-aware routing refused (see Priorities, localities and panic)',
    {},
  ),
  dns_lookup_family: acc('which families of resolved addresses are kept', 'V4_ONLY'),
  dns_refresh_rate: acc('how often the agent re-resolves', '10s'),
  respect_dns_ttl: ne('the agent re-resolves on dns_refresh_rate; record TTLs are not read', true),
  connect_timeout: ne(
    'the kernel does not cut a connect; outlier detection counts one unanswered this long as a failure',
    '10s',
  ),
  outlier_detection: acc('consecutive-failure ejection in the kernel (see Outlier detection)', {
    consecutive_5xx: 5,
    enforcing_success_rate: 0,
  }),
  health_checks: ne('no active health checking; EDS health is honoured', [{ timeout: '1s' }]),
  upstream_connection_options: ne('TCP keepalive is the application socket’s', { tcp_keepalive: {} }),
  typed_extension_protocol_options: ne('HTTP protocol options: no HTTP in the kernel', {}),
  http2_protocol_options: ne('no HTTP in the kernel', {}),
  http_protocol_options: ne('no HTTP in the kernel', {}),
  common_http_protocol_options: ne('no HTTP in the kernel', { idle_timeout: '1h' }),
  max_requests_per_connection: ne('no HTTP in the kernel', 100),
  per_connection_buffer_limit_bytes: ne('no proxy buffers', 32768),
  cleanup_interval: ne('no connection pools', '5s'),
  lb_subset_config: ne('subset selection needs route metadata_match, which is refused', {}),
  least_request_lb_config: acc('active_request_bias 0 or 1; the rest not enforced (see Least request)', {
    active_request_bias: { default_value: 0 },
  }),
  ring_hash_lb_config: ne('the kernel uses a fixed-size Maglev table', { minimum_ring_size: 1024 }),
  maglev_lb_config: ne('the kernel uses a fixed-size Maglev table', { table_size: 65537 }),
  upstream_bind_config: ne('the source address is the application’s', {}),
  close_connections_on_host_health_failure: acc(
    'a host turning unhealthy (EDS or ejected) has its connections closed (see Connections to removed endpoints)',
    true,
  ),
  ignore_health_on_host_removal: ne('removed endpoints are removed', true),
  track_cluster_stats: ign('stats', {}),
  alt_stat_name: ign('stats', 'x'),
  metadata: ign('Istio bookkeeping (config, services, subset)', { filter_metadata: {} }),
  filters: ign('Istio metadata exchange: telemetry only', []),
  protocol_selection: ign('HTTP upstream protocol', 'USE_DOWNSTREAM_PROTOCOL'),
  dns_resolvers: ne('the agent uses the node’s resolver', []),
  typed_dns_resolver_config: ne('the agent uses the node’s resolver', {}),
  use_tcp_for_dns_lookups: ne('the agent uses the node’s resolver', true),
  dns_resolution_config: ne('the agent uses the node’s resolver', {}),
  original_dst_lb_config: ne('passthrough keeps the original destination', {}),
  lrs_server: ign('load reporting', {}),
  cluster_type: ref('custom cluster types (aggregate, dynamic forward proxy) need a proxy', {
    name: 'envoy.clusters.aggregate',
  }),
  upstream_http_protocol_options: ne('no HTTP in the kernel', {}),
};

export const CLA_FIELDS: FieldTable = {
  cluster_name: acc('which cluster', 'x'),
  endpoints: acc('localities, priorities, weights, health', []),
  policy: acc('overprovisioning_factor enforced; weighted_priority_health and drop_overloads refused', {
    overprovisioning_factor: 140,
  }),
  named_endpoints: ref('named endpoints are not resolvable here', {}),
};

export const LISTENER_FIELDS: FieldTable = {
  name: acc('listener name', 'x'),
  address: acc('the VIP and port', { socket_address: { address: '127.100.0.1', port_value: 80 } }),
  additional_addresses: acc('more VIPs (dual stack) for the same chains', []),
  filter_chains: acc('where connections go', [
    {
      filters: [
        {
          name: 'envoy.filters.network.tcp_proxy',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
            stat_prefix: 'x',
            cluster: 'x',
          },
        },
      ],
    },
  ]),
  default_filter_chain: acc('non-HTTP traffic of a sniffed port', {
    filters: [{ name: 'envoy.filters.network.tcp_proxy', typed_config: { cluster: 'x' } }],
  }),
  traffic_direction: acc('INBOUND listeners are not on the outbound path', 'OUTBOUND'),
  bind_to_port: acc('false for per-service outbound listeners', false),
  use_original_dst: acc('marks the virtualOutbound catch-all', false),
  internal_listener: acc('internal listeners are not on the outbound path', {}),
  listener_filters: ign(
    'tls/http inspectors and original_dst: protocol sniffing is not needed at connect()',
    [],
  ),
  listener_filters_timeout: ign('protocol sniffing', '0s'),
  continue_on_listener_filters_timeout: ign('protocol sniffing', true),
  access_log: ign('access logs come from the kernel events', []),
  metadata: ign('bookkeeping', {}),
  stat_prefix: ign('stats', 'x'),
  per_connection_buffer_limit_bytes: ne('no proxy buffers', 32768),
  socket_options: ne('listener socket options', []),
  connection_balance_config: ne('no proxy workers', {}),
  filter_chain_matcher: ref('the unified matcher API is not supported on outbound listeners', {}),
  freebind: ign('no listening socket', true),
  transparent: ign('no listening socket', true),
};

export const FILTER_CHAIN_FIELDS: FieldTable = {
  name: ign('name', 'x'),
  filter_chain_match: acc('destination address and port; see the match table', {}),
  filters: acc('tcp_proxy or http_connection_manager', [
    { name: 'envoy.filters.network.tcp_proxy', typed_config: { cluster: 'x' } },
  ]),
  transport_socket: ref('TLS termination needs a proxy', { name: 'envoy.transport_sockets.tls' }),
  metadata: ign('bookkeeping', {}),
  transport_socket_connect_timeout: ne('no TLS handshake', '10s'),
};

export const CHAIN_MATCH_FIELDS: FieldTable = {
  prefix_ranges: acc('exact addresses become frontends; 0.0.0.0/0 is the catch-all', []),
  destination_port: acc('frontend port', 80),
  transport_protocol: acc('protocol sniffing: chains must agree on the destination', 'raw_buffer'),
  application_protocols: acc('protocol sniffing: chains must agree on the destination', ['http/1.1']),
  server_names: ref('SNI routing is decided on the TLS ClientHello, after connect()', ['a.example.com']),
  source_prefix_ranges: ref('routing on the client address', [{ address_prefix: '10.0.0.0', prefix_len: 8 }]),
  direct_source_prefix_ranges: ref('routing on the client address', [
    { address_prefix: '10.0.0.0', prefix_len: 8 },
  ]),
  source_ports: ref('routing on the client port', [1234]),
  source_type: ref('routing on the client address', 'SAME_IP_OR_LOOPBACK'),
};

export const TCP_PROXY_FIELDS: FieldTable = {
  cluster: acc('destination', 'x'),
  weighted_clusters: acc('chosen per connection (synthetic service)', { clusters: [] }),
  stat_prefix: ign('stats', 'x'),
  access_log: ign('access logs come from the kernel events', []),
  hash_policy: acc('source_ip hashing (Maglev on the client address); filter_state refused', [
    { source_ip: {} },
  ]),
  idle_timeout: ne('the kernel does not close idle connections', '1h'),
  max_connect_attempts: ne('one connect, by the application', 3),
  max_downstream_connection_duration: ne('connections are not cut', '1h'),
  metadata_match: ref('endpoint subset selection by metadata needs a proxy', { filter_metadata: {} }),
  tunneling_config: ref('HTTP CONNECT tunnelling (HBONE) cannot be originated in the kernel', {
    hostname: 'x',
  }),
  on_demand: ref('on-demand cluster discovery needs a proxy', {}),
  access_log_options: ign('access logs come from the kernel events', {}),
  upstream_idle_timeout: ne('the kernel does not close idle connections', '1h'),
};

export const HCM_FIELDS: FieldTable = {
  rds: acc('route configuration by name', { route_config_name: '80' }),
  route_config: acc('inline route configuration', {}),
  http_filters: acc('every filter checked: see the HTTP filter table', []),
  stat_prefix: ign('stats', 'x'),
  tracing: ign('tracing', {}),
  access_log: ign('access logs come from the kernel events', []),
  use_remote_address: ign('no X-Forwarded-For handling: headers untouched', false),
  upgrade_configs: ign('upgrades pass through a plain TCP connection', []),
  normalize_path: ign('the request is not parsed', true),
  merge_slashes: ign('the request is not parsed', true),
  path_with_escaped_slashes_action: ign('the request is not parsed', 'KEEP_UNCHANGED'),
  request_id_extension: ign('request ids are tracing', {}),
  generate_request_id: ign('request ids are tracing', true),
  preserve_external_request_id: ign('request ids are tracing', true),
  forward_client_cert_details: ign('no client certificate on a plaintext connection', 'APPEND_FORWARD'),
  set_current_client_cert_details: ign('no client certificate on a plaintext connection', {}),
  server_name: ign('response header of the proxy itself', 'x'),
  xff_num_trusted_hops: ign('no X-Forwarded-For handling', 1),
  internal_address_config: ign('no X-Forwarded-For handling', {}),
  codec_type: ign('the request is not parsed', 'AUTO'),
  stream_idle_timeout: ne('the kernel does not time streams out', '0s'),
  request_timeout: ne('the kernel does not time requests out', '0s'),
  request_headers_timeout: ne('the kernel does not time requests out', '0s'),
  drain_timeout: ne('no proxy drain', '5s'),
  delayed_close_timeout: ne('no proxy close', '1s'),
  common_http_protocol_options: ne('no HTTP in the kernel', {}),
  http_protocol_options: ne('no HTTP in the kernel', {}),
  http2_protocol_options: ne('no HTTP in the kernel', {}),
  max_request_headers_kb: ne('no HTTP in the kernel', 60),
  scoped_routes: ref('scoped routes select routes on headers', {}),
  local_reply_config: ref('rewrites the proxy’s own replies', {}),
  strip_any_host_port: ign('host header is not read', true),
};

export const ROUTE_CONFIG_FIELDS: FieldTable = {
  name: acc('route configuration name', 'x'),
  virtual_hosts: acc('domains carry the VIPs', []),
  validate_clusters: ign('Envoy start-up check', false),
  max_direct_response_body_size_bytes: ign('no direct responses', 4096),
  request_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  request_headers_to_remove: ref('header rewrite', ['x']),
  response_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  response_headers_to_remove: ref('header rewrite', ['x']),
  internal_only_headers: ref('header rewrite', ['x']),
  vhds: ref('on-demand virtual hosts need a proxy', {}),
  most_specific_header_mutations_wins: ign('no header mutations', true),
  ignore_port_in_host_matching: ign('the host header is not read', true),
  metadata: ign('bookkeeping', {}),
};

export const VHOST_FIELDS: FieldTable = {
  name: ign('name', 'x'),
  domains: acc('IP literals (and IP:port) are the frontends', []),
  routes: acc('must send every request to one destination', [
    { match: { prefix: '/' }, route: { cluster: 'x' } },
  ]),
  include_request_attempt_count: ign('retry header', true),
  include_attempt_count_in_response: ign('retry header', true),
  retry_policy: ne('no request retries in the kernel', { num_retries: 2 }),
  hedge_policy: ne('no request hedging in the kernel', {}),
  virtual_clusters: ign('stats', []),
  metadata: ign('bookkeeping', {}),
  typed_per_filter_config: acc(
    'fault, authorization and other per-filter configs refused; empty ones ignored',
    {},
  ),
  cors: ref('CORS preflights are answered by the proxy', { allow_origin_string_match: [] }),
  require_tls: ref('TLS redirect', 'ALL'),
  rate_limits: ref('request rate limiting', [{ actions: [] }]),
  request_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  request_headers_to_remove: ref('header rewrite', ['x']),
  response_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  response_headers_to_remove: ref('header rewrite', ['x']),
  request_mirror_policies: ref('mirroring', [{ cluster: 'x' }]),
  per_request_buffer_limit_bytes: ne('no proxy buffers', 1024),
};

export const ROUTE_FIELDS: FieldTable = {
  name: ign('name (quoted in reasons)', 'x'),
  match: acc('see the route match table', { prefix: '/' }),
  route: acc('see the route action table', { cluster: 'x' }),
  decorator: ign('tracing span name', { operation: 'x' }),
  metadata: ign('Istio object (quoted in reasons)', {}),
  tracing: ign('tracing', {}),
  typed_per_filter_config: acc(
    'fault, authorization and other per-filter configs refused; empty ones ignored',
    {},
  ),
  redirect: ref('HTTP redirect', { path_redirect: '/x' }),
  direct_response: ref('direct response from the proxy', { status: 503 }),
  filter_action: ref('filter action', {}),
  non_forwarding_action: ref('non-forwarding action', {}),
  request_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  request_headers_to_remove: ref('header rewrite', ['x']),
  response_headers_to_add: ref('header rewrite', [{ header: { key: 'x', value: 'y' } }]),
  response_headers_to_remove: ref('header rewrite', ['x']),
  per_request_buffer_limit_bytes: ne('no proxy buffers', 1024),
};

export const ROUTE_MATCH_FIELDS: FieldTable = {
  prefix: acc(
    '"/" makes the catch-all route; a narrower prefix is L7 unless it leads where the catch-all does',
    '/',
  ),
  path: ref('one path only: L7 unless the route leads where the catch-all route does', '/x'),
  safe_regex: acc(
    '".*" makes the catch-all route; a narrower regex is L7 unless it leads where the catch-all does',
    {
      regex: '.*',
    },
  ),
  path_separated_prefix: ref('a path prefix: L7 unless the route leads where the catch-all route does', '/x'),
  connect_matcher: acc('CONNECT requests (HBONE)', {}),
  path_match_policy: ref('path template: L7 unless the route leads where the catch-all route does', {}),
  case_sensitive: ign('only matters for narrower paths', true),
  headers: ref('header match: L7 unless the route leads where the catch-all route does', [
    { name: 'end-user', string_match: { exact: 'jason' } },
  ]),
  query_parameters: ref('query match: L7 unless the route leads where the catch-all route does', [
    { name: 'x', string_match: { exact: 'y' } },
  ]),
  grpc: ref('gRPC match: L7 unless the route leads where the catch-all route does', {}),
  runtime_fraction: ref('per-request split: L7 unless the route leads where the catch-all route does', {
    default_value: { numerator: 50 },
  }),
  tls_context: ref('TLS context match: L7 unless the route leads where the catch-all route does', {
    presented: true,
  }),
  dynamic_metadata: ref('metadata match: L7 unless the route leads where the catch-all route does', [{}]),
};

export const ROUTE_ACTION_FIELDS: FieldTable = {
  cluster: acc('destination', 'x'),
  weighted_clusters: acc('chosen per connection (synthetic service)', { clusters: [] }),
  timeout: ne('the kernel does not time requests out', '0s'),
  idle_timeout: ne('the kernel does not time streams out', '0s'),
  retry_policy: ne('no request retries in the kernel', { num_retries: 2 }),
  max_stream_duration: ne('the kernel does not time streams out', {}),
  max_grpc_timeout: ne('the kernel does not time requests out', '0s'),
  grpc_timeout_offset: ne('the kernel does not time requests out', '0s'),
  hedge_policy: ne('no request hedging in the kernel', {}),
  upgrade_configs: ign('upgrades pass through a plain TCP connection', []),
  priority: ign('Envoy connection-pool priority', 'DEFAULT'),
  internal_redirect_policy: ne('redirects are followed by the client', {}),
  cluster_not_found_response_code: ign('clusters are checked before programming', 'NOT_FOUND'),
  hash_policy: acc('connection_properties.source_ip accepted; header, cookie, query, filter_state refused', [
    { connection_properties: { source_ip: true } },
  ]),
  cluster_header: ref('destination chosen from a request header', 'x-cluster'),
  cluster_specifier_plugin: ref('destination chosen by a plugin', 'x'),
  inline_cluster_specifier_plugin: ref('destination chosen by a plugin', {}),
  metadata_match: ref('endpoint subset selection by metadata', { filter_metadata: {} }),
  prefix_rewrite: ref('path rewrite', '/'),
  regex_rewrite: ref('path rewrite', { pattern: { regex: 'x' }, substitution: 'y' }),
  path_rewrite_policy: ref('path rewrite', {}),
  host_rewrite_literal: ref('host rewrite', 'x'),
  auto_host_rewrite: ref('host rewrite', true),
  host_rewrite_header: ref('host rewrite', 'x'),
  host_rewrite_path_regex: ref('host rewrite', {}),
  append_x_forwarded_host: ref('header rewrite', true),
  request_mirror_policies: ref('mirroring', [{ cluster: 'x' }]),
  rate_limits: ref('request rate limiting', [{ actions: [] }]),
  cors: ref('CORS preflights are answered by the proxy', {}),
};

/** HTTP filters by name: what Istio installs everywhere is benign; anything else may act on requests. */
export const HTTP_FILTERS: FieldTable = {
  'envoy.filters.http.router': acc('forwards the request', {}),
  'istio.metadata_exchange': ign('telemetry', {}),
  'istio.stats': ign('telemetry', {}),
  'istio.alpn': ign('upstream ALPN for mTLS, which is not used', {}),
  'envoy.filters.http.grpc_stats': ign('telemetry', {}),
  'envoy.filters.http.cors': acc('installed empty by Istio; per-route CORS policies are refused', {}),
  'envoy.filters.http.fault': acc('installed empty by Istio; an abort or delay is refused', {}),
  'envoy.filters.http.rbac': acc('shadow (dry-run) rules ignored; enforced rules refused on outbound', {}),
  'envoy.filters.http.ext_authz': ref('request-level authorization', {}),
  'envoy.filters.http.jwt_authn': ref('request authentication', {}),
  'envoy.filters.http.local_ratelimit': ref('request rate limiting', {}),
  'envoy.filters.http.ratelimit': ref('request rate limiting', {}),
  'envoy.filters.http.lua': ref('request scripting', {}),
  'envoy.filters.http.wasm': ref('request plugin', {}),
  'envoy.filters.http.header_to_metadata': ref('request inspection', {}),
  'envoy.filters.http.compressor': ref('body rewrite', {}),
};

/** Network filters by name, for outbound listeners. */
export const NETWORK_FILTERS: FieldTable = {
  'envoy.filters.network.tcp_proxy': acc('forwards the connection: see the tcp_proxy table', {
    cluster: 'x',
  }),
  'envoy.filters.network.http_connection_manager': acc('HTTP: see the HTTP connection manager table', {
    rds: { route_config_name: '80' },
  }),
  'istio.stats': ign('telemetry', {}),
  'istio.metadata_exchange': ign('telemetry', {}),
  'envoy.filters.network.mongo_proxy': ign('protocol stats', {}),
  'envoy.filters.network.mysql_proxy': ign('protocol stats', {}),
  'envoy.filters.network.rbac': acc('shadow (dry-run) rules ignored; enforced rules refused on outbound', {}),
  'envoy.filters.network.redis_proxy': ref('Redis command routing', {}),
  'envoy.filters.network.sni_cluster': ref('destination chosen from the TLS SNI', {}),
  'envoy.filters.network.sni_dynamic_forward_proxy': ref('destination chosen from the TLS SNI', {}),
  'envoy.filters.network.ext_authz': ref('connection-level external authorization', {}),
  'envoy.filters.network.local_ratelimit': ref('connection rate limiting', {}),
  'envoy.filters.network.ratelimit': ref('connection rate limiting', {}),
  'envoy.filters.network.wasm': ref('connection plugin', {}),
};

/**
 * Walks the fields of one message through its table: ignored fields pass, not-enforced ones are
 * listed, refused ones refuse the resource; accepted ones are left to the caller to read.
 */
export function checkFields(
  o: Record<string, JsonValue>,
  path: string,
  table: FieldTable,
  res: ResourceFindings,
  suffix = '',
): void {
  for (const key of Object.keys(o)) {
    if (key === '@type') continue;
    const rule = table[key];
    const at = joinPath(path, key);
    if (!rule) {
      res.notEnforced(at);
      continue;
    }
    if (rule.disposition === 'refused') res.refuse(at, rule.why + suffix);
    else if (rule.disposition === 'not enforced') res.notEnforced(at);
  }
}
