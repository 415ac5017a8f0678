// translate(): behaviour over small, hand-written sets of resources shaped like istiod's.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { planService } from '../src/dataplane/plan.js';
import { concernsOneVirtualHost, translate, validate, validateAgainst } from '../src/translate/index.js';
import { TYPE, type JsonObject, type ServiceWaypoint, type XdsResource } from '../src/xds/types.js';
import { slotKeyCodec, u32 } from '../src/dataplane/codec.js';
import { memoryMaps } from './support/memory-maps.js';
import { RouteWriter } from '../src/dataplane/writer.js';

function res(typeUrl: string, name: string, body: JsonObject): XdsResource {
  return { typeUrl, name, version: '1', resource: { '@type': typeUrl, ...body } };
}

/** Routing maps in memory, as the writer sees them: enough to restart a writer on what one wrote. */

function edsCluster(name: string, extra: JsonObject = {}): XdsResource {
  return res(TYPE.cluster, name, {
    name,
    type: 'EDS',
    eds_cluster_config: { eds_config: { ads: {} }, service_name: name },
    connect_timeout: '10s',
    circuit_breakers: { thresholds: [{ max_connections: 4294967295 }] },
    ...extra,
  });
}

type Ep = [address: string, port: number, extra?: JsonObject];
function cla(name: string, eps: Ep[], group: JsonObject = {}): XdsResource {
  return res(TYPE.endpoint, name, {
    cluster_name: name,
    endpoints: [
      {
        ...group,
        lb_endpoints: eps.map(([address, port, extra]) => ({
          endpoint: { address: { socket_address: { address, port_value: port } } },
          health_status: 'HEALTHY',
          ...extra,
        })),
      },
    ],
  });
}

const tcpProxy = (cluster: string) => ({
  name: 'envoy.filters.network.tcp_proxy',
  typed_config: {
    '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
    stat_prefix: cluster,
    cluster,
  },
});

function tcpListener(vip: string, port: number, cluster: string): XdsResource {
  const name = `${vip}_${port}`;
  return res(TYPE.listener, name, {
    name,
    address: { socket_address: { address: vip, port_value: port } },
    filter_chains: [
      {
        filters: [
          { name: 'istio.stats', typed_config: { '@type': 'x/stats.PluginConfig' } },
          tcpProxy(cluster),
        ],
      },
    ],
    traffic_direction: 'OUTBOUND',
    bind_to_port: false,
  });
}

const router = {
  name: 'envoy.filters.http.router',
  typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' },
};

/** `0.0.0.0_<port>` as istiod writes it: HTTP chain by RDS, non-HTTP to PassthroughCluster. */
function httpListener(port: number, extraFilters: JsonObject[] = []): XdsResource {
  const name = `0.0.0.0_${port}`;
  return res(TYPE.listener, name, {
    name,
    address: { socket_address: { address: '0.0.0.0', port_value: port } },
    filter_chains: [
      {
        filter_chain_match: { transport_protocol: 'raw_buffer', application_protocols: ['http/1.1', 'h2c'] },
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type':
                'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
              stat_prefix: `outbound_0.0.0.0_${port}`,
              rds: { config_source: { ads: {} }, route_config_name: String(port) },
              http_filters: [...extraFilters, router],
            },
          },
        ],
      },
    ],
    default_filter_chain: { filters: [tcpProxy('PassthroughCluster')], name: 'PassthroughFilterChain' },
    traffic_direction: 'OUTBOUND',
    bind_to_port: false,
  });
}

function vhost(name: string, domains: string[], routes: JsonObject[]): JsonObject {
  return { name, domains, routes };
}
const toCluster = (
  cluster: string,
  match: JsonObject = { prefix: '/' },
  extra: JsonObject = {},
): JsonObject => ({
  match,
  route: { cluster, timeout: '0s', retry_policy: { num_retries: 2 } },
  name: 'default',
  ...extra,
});
function routeConfig(name: string, vhosts: JsonObject[]): XdsResource {
  return res(TYPE.route, name, { name, virtual_hosts: vhosts, validate_clusters: false });
}

const A = 'outbound|5000||tcp-echo.default.svc.cluster.local';
const B = 'outbound|80||web.default.svc.cluster.local';
const C = 'outbound|80||reviews.default.svc.cluster.local';
const C2 = 'outbound|80|v2|reviews.default.svc.cluster.local';

/** The three services of issue 6's end-to-end: TCP, HTTP with a plain route, HTTP with a header match. */
function threeServices(): XdsResource[] {
  return [
    edsCluster(A),
    edsCluster(B, { lb_policy: 'LEAST_REQUEST' }),
    edsCluster(C),
    edsCluster(C2),
    cla(A, [['127.0.0.11', 7001]]),
    cla(B, [
      ['127.0.0.12', 7002],
      ['127.0.0.13', 7002],
    ]),
    cla(C, [['127.0.0.14', 7003]]),
    cla(C2, [['127.0.0.15', 7003]]),
    tcpListener('127.100.0.1', 5000, A),
    httpListener(80),
    routeConfig('80', [
      vhost(
        'web.default.svc.cluster.local:80',
        ['web.default.svc.cluster.local', '127.100.0.2'],
        [toCluster(B)],
      ),
      vhost(
        'reviews.default.svc.cluster.local:80',
        ['reviews.default.svc.cluster.local', '127.100.0.3', '127.100.0.3:80'],
        [
          toCluster(
            C2,
            { prefix: '/', headers: [{ name: 'end-user', string_match: { exact: 'jason' } }] },
            {
              name: 'jason',
              metadata: {
                filter_metadata: {
                  istio: {
                    config: '/apis/networking.istio.io/v1alpha3/namespaces/default/virtual-service/reviews',
                  },
                },
              },
            },
          ),
          toCluster(C),
        ],
      ),
      vhost('allow_any', ['*'], [toCluster('PassthroughCluster')]),
    ]),
  ];
}

void describe('translate', () => {
  void it('programs a TCP service and an HTTP service with a plain route, and refuses the header-match route', () => {
    const r = translate({ resources: threeServices() });
    assert.deepEqual(r.desired.frontends, [
      { address: '127.100.0.1', port: 5000, protocol: 'tcp', service: A },
      { address: '127.100.0.2', port: 80, protocol: 'tcp', service: B },
    ]);
    const web = r.desired.services.find((s) => s.name === B);
    assert.equal(web?.lbPolicy, 'least_request');
    assert.deepEqual(
      web?.endpoints.map((e) => `${e.address}:${e.port}`),
      ['127.0.0.12:7002', '127.0.0.13:7002'],
    );
    assert.equal(web?.maxConnections, undefined, 'uint32 max is no limit');
    // The whole route configuration is NACKed, naming the path, the route and the Istio object.
    assert.equal(r.rejected.length, 1);
    assert.equal(r.rejected[0]?.typeUrl, TYPE.route);
    assert.equal(r.rejected[0]?.name, '80');
    assert.match(
      r.rejected[0]?.reason ?? '',
      /^virtual_hosts\[1\]\.routes\[0\]\.match\.headers: header match on end-user/,
    );
    assert.match(r.rejected[0]?.reason ?? '', /route "jason", VirtualService default\/reviews/);
    // The refused VIP is not programmed: its traffic keeps its destination.
    assert.equal(
      r.frontends.find((f) => f.address === '127.100.0.3')?.pending,
      'virtual host "reviews.default.svc.cluster.local:80" of route "80" was refused',
    );
    // validate() gives the xDS client the same NACK for RDS, and accepts the rest.
    const rds = threeServices().filter((x) => x.typeUrl === TYPE.route);
    assert.deepEqual(validate(TYPE.route, rds), r.rejected);
    assert.deepEqual(
      validate(
        TYPE.listener,
        threeServices().filter((x) => x.typeUrl === TYPE.listener),
      ),
      [],
    );
    assert.deepEqual(
      validate(
        TYPE.cluster,
        threeServices().filter((x) => x.typeUrl === TYPE.cluster),
      ),
      [],
    );
  });

  void it('tells a refusal of one virtual host from a refusal of the whole route configuration', () => {
    const [vhostOnly] = translate({ resources: threeServices() }).rejected;
    assert.ok(vhostOnly && concernsOneVirtualHost(vhostOnly));
    const rewrite = routeConfig('80', [vhost('web', ['127.100.0.2'], [toCluster(B)])]);
    rewrite.resource.request_headers_to_add = [{ header: { key: 'x', value: 'y' } }];
    const r = translate({
      resources: [edsCluster(B), cla(B, [['127.0.0.12', 7002]]), httpListener(80), rewrite],
    });
    assert.equal(r.rejected.length, 1);
    assert.ok(r.rejected[0] && !concernsOneVirtualHost(r.rejected[0]));
    // Every virtual host of a configuration refused as a whole is left unprogrammed.
    assert.deepEqual(r.desired.frontends, []);
  });

  void it('accepts a narrow route that leads to the same cluster as the catch-all', () => {
    const rc = routeConfig('80', [
      vhost('x', ['127.100.0.3'], [toCluster(C, { path: '/health' }), toCluster(C, { prefix: '/' })]),
    ]);
    assert.deepEqual(validate(TYPE.route, [rc]), []);
  });

  void it('refuses a virtual host that only serves some paths', () => {
    const rc = routeConfig('80', [vhost('x', ['127.100.0.3'], [toCluster(C, { prefix: '/api' })])]);
    const [rej] = validate(TYPE.route, [rc]);
    assert.match(
      rej?.reason ?? '',
      /^virtual_hosts\[0\]\.routes: no route matches every request \(prefix match \/api\)/,
    );
  });

  void it('does not use an EDS cluster before its first ClusterLoadAssignment (warming)', () => {
    const r = translate({ resources: [edsCluster(A), tcpListener('127.100.0.1', 5000, A)] });
    assert.deepEqual(r.desired.frontends, []);
    assert.match(r.frontends[0]?.pending ?? '', /waiting for its ClusterLoadAssignment/);
  });

  void it('leaves a frontend whose cluster is unknown unprogrammed, with the reason', () => {
    const r = translate({ resources: [tcpListener('127.100.0.1', 5000, 'outbound|1||nope')] });
    assert.deepEqual(r.desired, { services: [], frontends: [] });
    assert.equal(r.frontends[0]?.pending, 'cluster outbound|1||nope is not among the accepted clusters');
  });

  void it('maps lb_policy to the kernel policy', () => {
    const cases: [string | undefined, string][] = [
      [undefined, 'round_robin'],
      ['ROUND_ROBIN', 'round_robin'],
      ['LEAST_REQUEST', 'least_request'],
      ['RANDOM', 'random'],
      ['RING_HASH', 'maglev'],
      ['MAGLEV', 'maglev'],
    ];
    for (const [policy, want] of cases) {
      const r = translate({
        resources: [
          edsCluster(A, policy ? { lb_policy: policy } : {}),
          cla(A, [['127.0.0.11', 7001]]),
          tcpListener('127.100.0.1', 5000, A),
        ],
      });
      assert.equal(r.desired.services[0]?.lbPolicy, want, String(policy));
    }
    const bad = validate(TYPE.cluster, [edsCluster(A, { lb_policy: 'CLUSTER_PROVIDED' })]);
    assert.match(bad[0]?.reason ?? '', /^lb_policy: CLUSTER_PROVIDED is not a policy the kernel implements/);
  });

  void it('takes max_connections from the DEFAULT threshold, and Envoy’s 1024 when there is none', () => {
    const r = translate({
      resources: [
        edsCluster(A, {
          circuit_breakers: {
            thresholds: [{ priority: 'HIGH', max_connections: 5 }, { max_connections: 7 }],
          },
        }),
        edsCluster(B, { circuit_breakers: undefined as unknown as JsonObject }),
        cla(A, [['127.0.0.11', 7001]]),
        cla(B, [['127.0.0.12', 7002]]),
        tcpListener('127.100.0.1', 5000, A),
        tcpListener('127.100.0.2', 80, B),
      ].map((x) => JSON.parse(JSON.stringify(x)) as XdsResource),
    });
    assert.equal(r.desired.services.find((s) => s.name === A)?.maxConnections, 7);
    assert.equal(r.desired.services.find((s) => s.name === B)?.maxConnections, 1024);
  });

  void it('carries priorities, localities, weights and health from EDS', () => {
    const load = res(TYPE.endpoint, A, {
      cluster_name: A,
      endpoints: [
        {
          locality: { region: 'eu', zone: 'eu-1a' },
          lb_endpoints: [
            {
              endpoint: { address: { socket_address: { address: '127.0.0.11', port_value: 1 } } },
              health_status: 'HEALTHY',
              load_balancing_weight: 3,
            },
            {
              endpoint: { address: { socket_address: { address: '127.0.0.12', port_value: 1 } } },
              health_status: 'DRAINING',
            },
          ],
        },
        {
          locality: { region: 'us', zone: 'us-1b', sub_zone: 'r1' },
          priority: 1,
          lb_endpoints: [
            {
              endpoint: { address: { socket_address: { address: '127.0.0.13', port_value: 1 } } },
              health_status: 'UNHEALTHY',
            },
            { endpoint: { address: { socket_address: { address: '127.0.0.14', port_value: 1 } } } },
          ],
        },
      ],
    });
    const r = translate({ resources: [edsCluster(A), load, tcpListener('127.100.0.1', 5000, A)] });
    assert.deepEqual(r.desired.services[0]?.endpoints, [
      {
        address: '127.0.0.11',
        port: 1,
        weight: 3,
        priority: 0,
        health: 'healthy',
        locality: { region: 'eu', zone: 'eu-1a' },
      },
      {
        address: '127.0.0.12',
        port: 1,
        weight: 1,
        priority: 0,
        health: 'draining',
        locality: { region: 'eu', zone: 'eu-1a' },
      },
      {
        address: '127.0.0.13',
        port: 1,
        weight: 1,
        priority: 1,
        health: 'unhealthy',
        locality: { region: 'us', zone: 'us-1b', subZone: 'r1' },
      },
      {
        address: '127.0.0.14',
        port: 1,
        weight: 1,
        priority: 1,
        health: 'unknown',
        locality: { region: 'us', zone: 'us-1b', subZone: 'r1' },
      },
    ]);
  });

  void it('weights localities when locality_weighted_lb_config is set', () => {
    const load = res(TYPE.endpoint, A, {
      cluster_name: A,
      endpoints: [
        {
          locality: { zone: 'a' },
          load_balancing_weight: 3,
          lb_endpoints: [1, 2, 3].map((i) => ({
            endpoint: { address: { socket_address: { address: `127.0.0.${i}`, port_value: 1 } } },
          })),
        },
        {
          locality: { zone: 'b' },
          load_balancing_weight: 1,
          lb_endpoints: [
            { endpoint: { address: { socket_address: { address: '127.0.0.9', port_value: 1 } } } },
          ],
        },
      ],
    });
    const r = translate({
      resources: [
        edsCluster(A, { common_lb_config: { locality_weighted_lb_config: {} } }),
        load,
        tcpListener('127.100.0.1', 5000, A),
      ],
    });
    // the service carries each locality's weight; the dataplane weighs them (plan.ts)
    const s = r.desired.services[0]!;
    assert.equal(s.localityWeighted, true);
    assert.deepEqual(
      s.endpoints.map((e) => [e.weight, e.localityWeight]),
      [
        [1, 3],
        [1, 3],
        [1, 3],
        [1, 1],
      ],
    );
    // zone a gets 3/4 of connections split over three endpoints, zone b 1/4 on one
    const slots = planService(s).slots.filter((x) => x.priority === 0);
    const share = (a: string): number => slots.filter((x) => x.backend === `${a}|1`).length / slots.length;
    assert.deepEqual(
      ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.9'].map(share),
      [0.25, 0.25, 0.25, 0.25],
    );
  });

  void it('refuses a cluster whose endpoints need Istio mTLS, and takes the plaintext match for unlabelled endpoints', () => {
    const mtls = {
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
        common_tls_context: { alpn_protocols: ['istio-peer-exchange', 'istio'] },
        sni: `outbound_.80_._.${A}`,
      },
    };
    const matches: JsonObject = {
      transport_socket_matches: [
        { name: 'tlsMode-istio', match: { tlsMode: 'istio' }, transport_socket: mtls },
        {
          name: 'tlsMode-disabled',
          match: {},
          transport_socket: { name: 'envoy.transport_sockets.raw_buffer' },
        },
      ],
    };
    const labelled = {
      metadata: { filter_metadata: { 'envoy.transport_socket_match': { tlsMode: 'istio' } } },
    };
    const withSidecar = translate({
      resources: [
        edsCluster(A, matches),
        cla(A, [['127.0.0.11', 7001, labelled]]),
        tcpListener('127.100.0.1', 5000, A),
      ],
    });
    assert.deepEqual(withSidecar.desired.frontends, []);
    assert.equal(withSidecar.rejected[0]?.typeUrl, TYPE.cluster);
    assert.match(
      withSidecar.rejected[0]?.reason ?? '',
      /^transport_socket_matches\[0\]: endpoint 127\.0\.0\.11:7001 \(\{"tlsMode":"istio"\}\): transport_socket_matches\[0\] "tlsMode-istio" requires Istio mTLS/,
    );
    const plain = translate({
      resources: [
        edsCluster(A, matches),
        cla(A, [['127.0.0.11', 7001]]),
        tcpListener('127.100.0.1', 5000, A),
      ],
    });
    assert.deepEqual(plain.rejected, []);
    assert.equal(plain.desired.frontends.length, 1);
    // With no match at all, mTLS on the cluster itself is refused at CDS time.
    const always = validate(TYPE.cluster, [edsCluster(A, { transport_socket: mtls })]);
    assert.match(always[0]?.reason ?? '', /^transport_socket: transport_socket requires Istio mTLS/);
  });

  void it('refuses HBONE (internal address) endpoints with the reason', () => {
    const load = res(TYPE.endpoint, A, {
      cluster_name: A,
      endpoints: [
        {
          lb_endpoints: [
            {
              endpoint: {
                address: {
                  envoy_internal_address: {
                    server_listener_name: 'connect_originate',
                    endpoint_id: '10.1.2.3:80',
                  },
                },
              },
            },
          ],
        },
      ],
    });
    const r = translate({ resources: [edsCluster(A), load, tcpListener('127.100.0.1', 5000, A)] });
    assert.match(
      r.rejected[0]?.reason ?? '',
      /endpoint 10\.1\.2\.3:80 is reached through internal listener connect_originate \(HBONE/,
    );
    assert.deepEqual(r.desired.frontends, []);
  });

  void it('splits dual-stack endpoints by the frontend’s address family', () => {
    const load = cla(A, [['127.0.0.11', 7001, {}]]);
    const lb = ((load.resource.endpoints as JsonObject[])[0]?.lb_endpoints as JsonObject[])[0] as JsonObject;
    (lb.endpoint as JsonObject).additional_addresses = [
      { address: { socket_address: { address: '::1', port_value: 7001 } } },
    ];
    const listener = tcpListener('127.100.0.1', 5000, A);
    listener.resource.additional_addresses = [
      { address: { socket_address: { address: 'fd00::1', port_value: 5000 } } },
    ];
    const r = translate({ resources: [edsCluster(A), load, listener] });
    assert.deepEqual(r.desired.frontends, [
      { address: '127.100.0.1', port: 5000, protocol: 'tcp', service: A },
      { address: 'fd00::1', port: 5000, protocol: 'tcp', service: `${A}|ipv6` },
    ]);
    assert.deepEqual(
      r.desired.services.map((s) => [s.name, s.endpoints.map((e) => e.address)]),
      [
        [A, ['127.0.0.11']],
        [`${A}|ipv6`, ['::1']],
      ],
    );
  });

  void it('flattens weighted clusters into one service keeping each cluster’s share', () => {
    const rc = routeConfig('80', [
      vhost(
        'reviews',
        ['127.100.0.3'],
        [
          {
            match: { prefix: '/' },
            route: {
              weighted_clusters: {
                clusters: [
                  { name: C, weight: 90 },
                  { name: C2, weight: 10 },
                ],
              },
            },
          },
        ],
      ),
    ]);
    const r = translate({
      resources: [
        edsCluster(C),
        edsCluster(C2),
        cla(C, [
          ['127.0.0.14', 1],
          ['127.0.0.15', 1],
        ]),
        cla(C2, [['127.0.0.16', 1]]),
        httpListener(80),
        rc,
      ],
    });
    const name = `weighted(${C}=90,${C2}=10)`;
    assert.deepEqual(r.desired.frontends, [
      { address: '127.100.0.3', port: 80, protocol: 'tcp', service: name },
    ]);
    assert.deepEqual(
      r.desired.services[0]?.endpoints.map((e) => [e.address, e.weight]),
      [
        ['127.0.0.14', 4500],
        ['127.0.0.15', 4500],
        ['127.0.0.16', 1000],
      ],
    );
  });

  void it('sends a service VIP with a waypoint to the waypoint instead of its endpoints', () => {
    const waypoints: ServiceWaypoint[] = [
      {
        namespace: 'default',
        hostname: 'tcp-echo.default.svc.cluster.local',
        vips: ['127.100.0.1'],
        ports: [{ servicePort: 5000, targetPort: 7001 }],
        waypoint: { address: '127.0.0.50', port: 15008 },
      },
    ];
    const r = translate({ resources: threeServices(), waypoints });
    assert.deepEqual(r.desired.frontends[0], {
      address: '127.100.0.1',
      port: 5000,
      protocol: 'tcp',
      service: 'waypoint|127.0.0.50|15008',
    });
    assert.deepEqual(
      r.desired.services.find((s) => s.kind === 'waypoint'),
      {
        name: 'waypoint|127.0.0.50|15008',
        kind: 'waypoint',
        lbPolicy: 'random',
        endpoints: [],
        waypoint: { address: '127.0.0.50', port: 15008 },
      },
    );
    assert.deepEqual(r.clusters.find((c) => c.name === A)?.waypoint, { address: '127.0.0.50', port: 15008 });
  });

  void it('finds a waypoint named by hostname through its own outbound listener', () => {
    const W = 'outbound|15008||waypoint.default.svc.cluster.local';
    const waypoints: ServiceWaypoint[] = [
      {
        namespace: 'default',
        hostname: 'tcp-echo.default.svc.cluster.local',
        vips: ['127.100.0.1'],
        ports: [],
        waypoint: {
          hostname: { namespace: 'default', hostname: 'waypoint.default.svc.cluster.local' },
          port: 15008,
        },
      },
    ];
    const resources = [
      ...threeServices(),
      edsCluster(W),
      cla(W, [['127.0.0.50', 15008]]),
      tcpListener('127.100.0.9', 15008, W),
    ];
    const r = translate({ resources, waypoints });
    assert.deepEqual(r.desired.frontends[0]?.service, 'waypoint|127.100.0.9|15008');
  });

  void it('programs ORIGINAL_DST as passthrough and BlackHoleCluster as blackhole', () => {
    const r = translate({
      resources: [
        res(TYPE.cluster, 'PassthroughCluster', {
          name: 'PassthroughCluster',
          type: 'ORIGINAL_DST',
          lb_policy: 'CLUSTER_PROVIDED',
        }),
        res(TYPE.cluster, 'BlackHoleCluster', { name: 'BlackHoleCluster', type: 'STATIC' }),
        tcpListener('127.100.0.1', 5000, 'PassthroughCluster'),
        tcpListener('127.100.0.2', 5000, 'BlackHoleCluster'),
      ],
    });
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(
      r.desired.services.map((s) => [s.name, s.kind]),
      [
        ['BlackHoleCluster', 'blackhole'],
        ['PassthroughCluster', 'passthrough'],
      ],
    );
  });

  void it('reads STATIC clusters’ inline endpoints and asks for DNS names of STRICT_DNS clusters', () => {
    const stat = res(TYPE.cluster, A, {
      name: A,
      type: 'STATIC',
      load_assignment: {
        cluster_name: A,
        endpoints: [
          {
            lb_endpoints: [
              { endpoint: { address: { socket_address: { address: '127.0.0.11', port_value: 9 } } } },
            ],
          },
        ],
      },
    });
    const dns = res(TYPE.cluster, B, {
      name: B,
      type: 'STRICT_DNS',
      dns_lookup_family: 'V4_ONLY',
      dns_refresh_rate: '30s',
      load_assignment: {
        cluster_name: B,
        endpoints: [
          {
            lb_endpoints: [
              {
                endpoint: {
                  address: { socket_address: { address: 'db.example.internal', port_value: 5432 } },
                },
              },
            ],
          },
        ],
      },
    });
    const resources = [stat, dns, tcpListener('127.100.0.1', 9, A), tcpListener('127.100.0.2', 5432, B)];
    const before = translate({ resources });
    assert.deepEqual(before.dnsQueries, [
      { hostname: 'db.example.internal', family: 'v4', refreshMs: 30000, respectTtl: false, clusters: [B] },
    ]);
    assert.deepEqual(
      before.desired.frontends.map((f) => f.service),
      [A],
    );
    const after = translate({
      resources,
      dns: new Map([['db.example.internal', ['127.0.0.31', '::1', '127.0.0.32']]]),
    });
    assert.deepEqual(
      after.desired.services.find((s) => s.name === B)?.endpoints.map((e) => `${e.address}:${e.port}`),
      ['127.0.0.31:5432', '127.0.0.32:5432'],
    );
  });

  void it('LOGICAL_DNS takes the first address, of the VIP’s family even when AUTO prefers IPv6', () => {
    const logical = res(TYPE.cluster, B, {
      name: B,
      type: 'LOGICAL_DNS',
      load_assignment: {
        cluster_name: B,
        endpoints: [
          {
            lb_endpoints: [
              {
                endpoint: {
                  address: { socket_address: { address: 'api.example.internal', port_value: 443 } },
                },
              },
            ],
          },
        ],
      },
    });
    const r = translate({
      resources: [logical, tcpListener('127.100.0.2', 443, B)],
      dns: new Map([['api.example.internal', ['::1', '127.0.0.41', '127.0.0.42']]]),
    });
    assert.equal(r.dnsQueries[0]?.family, 'any');
    assert.deepEqual(
      r.desired.services[0]?.endpoints.map((e) => e.address),
      ['127.0.0.41'],
    );
  });

  void it('validates a STATIC cluster’s inline endpoints at CDS time', () => {
    const bad = res(TYPE.cluster, A, {
      name: A,
      type: 'STATIC',
      load_assignment: {
        cluster_name: A,
        endpoints: [
          {
            lb_endpoints: [
              { endpoint: { address: { socket_address: { address: 'db.internal', port_value: 1 } } } },
            ],
          },
        ],
      },
    });
    assert.deepEqual(
      validate(TYPE.cluster, [bad]).map((r) => r.reason),
      [
        'load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "db.internal" is not an IP address',
      ],
    );
  });

  void it('takes the catch-all policy from virtualOutbound and recognises inbound and internal listeners', () => {
    const vo = res(TYPE.listener, 'virtualOutbound', {
      name: 'virtualOutbound',
      address: { socket_address: { address: '0.0.0.0', port_value: 15001 } },
      filter_chains: [
        { filter_chain_match: { destination_port: 15001 }, filters: [tcpProxy('BlackHoleCluster')] },
        { filters: [tcpProxy('BlackHoleCluster')], name: 'virtualOutbound-catchall-tcp' },
      ],
      use_original_dst: true,
      traffic_direction: 'OUTBOUND',
    });
    const vi = res(TYPE.listener, 'virtualInbound', {
      name: 'virtualInbound',
      address: { socket_address: { address: '0.0.0.0', port_value: 15006 } },
      filter_chains: [
        {
          filters: [
            { name: 'envoy.filters.network.rbac', typed_config: { rules: {} } },
            tcpProxy('InboundPassthroughClusterIpv4'),
          ],
        },
      ],
      traffic_direction: 'INBOUND',
    });
    const internal = res(TYPE.listener, 'connect_originate', {
      name: 'connect_originate',
      filter_chains: [{ filters: [tcpProxy('connect_originate')] }],
      internal_listener: {},
    });
    const r = translate({ resources: [vo, vi, internal] });
    assert.equal(r.outboundPolicy, 'blackhole');
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(
      r.status.map((s) => [s.name, s.note]),
      [
        [
          'virtualOutbound',
          'outbound catch-all: connections to no known service are refused (REGISTRY_ONLY)',
        ],
        ['virtualInbound', 'inbound listener: not on the outbound kernel path'],
        [
          'connect_originate',
          'internal listener (HBONE tunnel origination): not on the outbound kernel path',
        ],
      ],
    );
    // Inbound authorization is not enforced by kernmesh, and says so.
    assert.deepEqual(r.notEnforced, [
      {
        typeUrl: TYPE.listener,
        name: 'virtualInbound',
        field: 'filter_chains[0].filters[0] (authorization: deny all)',
      },
    ]);
  });

  void it('prefers a <VIP>_<port> listener over a VIP learnt from a wildcard listener’s routes', () => {
    const resources = [...threeServices(), tcpListener('127.100.0.2', 80, A)];
    const r = translate({ resources });
    assert.equal(r.desired.frontends.find((f) => f.address === '127.100.0.2')?.service, A);
  });

  void it('matches chains by prefix_ranges and destination_port', () => {
    const l = res(TYPE.listener, '0.0.0.0_5000', {
      name: '0.0.0.0_5000',
      address: { socket_address: { address: '0.0.0.0', port_value: 5000 } },
      filter_chains: [
        {
          filter_chain_match: {
            prefix_ranges: [{ address_prefix: '127.100.0.7', prefix_len: 32 }],
            destination_port: 5001,
          },
          filters: [tcpProxy(A)],
        },
        {
          filter_chain_match: { prefix_ranges: [{ address_prefix: '10.0.0.0', prefix_len: 8 }] },
          filters: [tcpProxy('PassthroughCluster')],
        },
      ],
      bind_to_port: false,
    });
    const r = translate({ resources: [edsCluster(A), cla(A, [['127.0.0.11', 7001]]), l] });
    assert.deepEqual(r.desired.frontends, [
      { address: '127.100.0.7', port: 5001, protocol: 'tcp', service: A },
    ]);
    const cidr = JSON.parse(JSON.stringify(l)) as XdsResource;
    ((cidr.resource.filter_chains as JsonObject[])[1]?.filters as JsonObject[])[0] = tcpProxy(A);
    assert.match(validate(TYPE.listener, [cidr])[0]?.reason ?? '', /10\.0\.0\.0\/8 is a range/);
  });

  void it('refuses chains that send the same address to different clusters by their first bytes', () => {
    const l = res(TYPE.listener, '127.100.0.1_443', {
      name: '127.100.0.1_443',
      address: { socket_address: { address: '127.100.0.1', port_value: 443 } },
      filter_chains: [
        { filter_chain_match: { transport_protocol: 'tls' }, filters: [tcpProxy(A)] },
        { filter_chain_match: { transport_protocol: 'raw_buffer' }, filters: [tcpProxy(B)] },
      ],
      bind_to_port: false,
    });
    assert.match(validate(TYPE.listener, [l])[0]?.reason ?? '', /depending on their first bytes/);
  });

  void it('refuses outbound authorization that the kernel cannot enforce (never fails open)', () => {
    const l = httpListener(80, [
      { name: 'envoy.filters.http.rbac', typed_config: { rules: { policies: { p: {} } } } },
    ]);
    assert.match(
      validate(TYPE.listener, [l])[0]?.reason ?? '',
      /http_filters\[0\]: request-level authorization/,
    );
    const shadow = httpListener(80, [
      { name: 'envoy.filters.http.rbac', typed_config: { shadow_rules: { action: 'DENY' } } },
    ]);
    assert.deepEqual(validate(TYPE.listener, [shadow]), []);
  });

  void it('keeps the last accepted entries of a service that is now refused, and does not rewrite a new one', () => {
    const before = translate({ resources: threeServices() });
    // The web service's route now matches on a header that leads elsewhere: refused.
    const changed = threeServices().map((r) => {
      if (r.typeUrl !== TYPE.route) return r;
      const copy = JSON.parse(JSON.stringify(r)) as XdsResource;
      const vh = (copy.resource.virtual_hosts as JsonObject[])[0] as JsonObject;
      vh.routes = [
        toCluster(C2, { prefix: '/', headers: [{ name: 'x-canary', present_match: true }] }),
        toCluster(B),
      ];
      return copy;
    });
    const after = translate({ resources: changed, previous: before.desired });
    assert.equal(after.rejected.length, 2);
    assert.deepEqual(after.desired.frontends, before.desired.frontends);
    assert.deepEqual(
      after.desired.services.find((s) => s.name === B),
      before.desired.services.find((s) => s.name === B),
    );
    assert.ok(
      after.status.some(
        (n) =>
          n.note.startsWith('127.100.0.2:80: virtual host') &&
          n.note.includes('keeps its last accepted entries'),
      ),
    );
    // Without a previous state, the refused VIPs are simply not rewritten.
    assert.deepEqual(
      translate({ resources: changed }).desired.frontends.map((f) => f.address),
      ['127.100.0.1'],
    );
  });

  void it('after a restart, the state rebuilt from the pinned maps is previous: the refused service keeps it with no map write', () => {
    const maps = memoryMaps();
    RouteWriter.recover(maps).apply(translate({ resources: threeServices() }).desired);

    // The agent restarts; meanwhile web's route gained a header match and tcp-echo moved.
    const restarted = RouteWriter.recover(maps);
    const previous = restarted.live();
    const changed = threeServices().map((r) => {
      const copy = JSON.parse(JSON.stringify(r)) as XdsResource;
      if (r.typeUrl === TYPE.route) {
        const vh = (copy.resource.virtual_hosts as JsonObject[])[0] as JsonObject;
        vh.routes = [
          toCluster(C2, { prefix: '/', headers: [{ name: 'x-canary', present_match: true }] }),
          toCluster(B),
        ];
      }
      return copy;
    });
    const refusedOnly = translate({ resources: changed, previous });
    assert.deepEqual(refusedOnly.desired.frontends, previous.frontends);
    assert.deepEqual(
      refusedOnly.desired.services.find((s) => s.name === B),
      previous.services.find((s) => s.name === B),
    );
    assert.ok(
      refusedOnly.status.some((n) => n.note.includes(`keeps its last accepted entries (service ${B})`)),
    );
    assert.deepEqual(restarted.apply(refusedOnly.desired).ops, [], 'the refused service re-plans to itself');

    const moved = changed.map((r) =>
      r.typeUrl === TYPE.endpoint && r.name === A ? cla(A, [['127.0.0.21', 7001]]) : r,
    );
    const after = translate({ resources: moved, previous });
    assert.deepEqual(
      after.desired.frontends.map((f) => [f.address, f.service]),
      [
        ['127.100.0.1', A],
        ['127.100.0.2', B],
      ],
      'reviews, refused from the start, is still not rewritten',
    );
    const r = restarted.apply(after.desired);
    assert.deepEqual(r.refused, []);
    const web = restarted.serviceId(B)!;
    assert.ok(r.ops.length > 0);
    assert.deepEqual(
      r.ops.filter(
        (o) =>
          (o.map === 'km_services' && o.key === u32(web).toString('hex')) ||
          (o.map === 'km_slots' && slotKeyCodec.decode(Buffer.from(o.key, 'hex')).serviceId === web) ||
          o.map === 'km_frontends',
      ),
      [],
      'only tcp-echo is written',
    );
    assert.deepEqual(
      restarted
        .live()
        .services.find((s) => s.name === A)
        ?.endpoints.map((e) => e.address),
      ['127.0.0.21'],
    );
  });

  void it('after a restart, a cluster the source refused (so no version of it is held) keeps its entries from previous', () => {
    const maps = memoryMaps();
    RouteWriter.recover(maps).apply(translate({ resources: threeServices() }).desired);
    const previous = RouteWriter.recover(maps).live();
    const withoutA = threeServices().filter((r) => !(r.typeUrl === TYPE.cluster && r.name === A));
    const kept = translate({
      resources: withoutA,
      previous,
      refusedBySource: [{ typeUrl: TYPE.cluster, name: A }],
    });
    assert.deepEqual(kept.desired.frontends, previous.frontends);
    assert.deepEqual(
      kept.desired.services.find((s) => s.name === A),
      previous.services.find((s) => s.name === A),
    );
    // The rebuilt state spells IPv6 VIPs canonically; the listener may not.
    const v6 = translate({
      resources: [tcpListener('fd00:0:0::7', 5000, A)],
      previous: {
        services: previous.services.filter((s) => s.name === A),
        frontends: [{ address: 'fd00::7', port: 5000, protocol: 'tcp', service: A }],
      },
      refusedBySource: [{ typeUrl: TYPE.cluster, name: A }],
    });
    assert.deepEqual(
      v6.desired.frontends.map((f) => [f.address, f.service]),
      [['fd00::7', A]],
    );
    // Not refused, just absent (deleted or never sent): nothing to keep.
    assert.deepEqual(
      translate({ resources: withoutA, previous }).desired.frontends.map((f) => f.address),
      ['127.100.0.2'],
    );
  });

  void it('is pure: the same input gives the same output and the input is not modified', () => {
    const input = threeServices();
    const copy = JSON.parse(JSON.stringify(input)) as XdsResource[];
    const a = translate({ resources: input });
    const b = translate({ resources: input });
    assert.deepEqual(a, b);
    assert.deepEqual(input, copy);
  });
});

void describe("validateAgainst (the xDS client's hook: refusals that show when CDS meets EDS)", () => {
  const mtls = {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      common_tls_context: { alpn_protocols: ['istio-peer-exchange', 'istio'] },
    },
  };
  const istioMatches: JsonObject = {
    transport_socket_matches: [
      { name: 'tlsMode-istio', match: { tlsMode: 'istio' }, transport_socket: mtls },
      {
        name: 'tlsMode-disabled',
        match: {},
        transport_socket: { name: 'envoy.transport_sockets.raw_buffer' },
      },
    ],
  };
  const labelled = {
    metadata: { filter_metadata: { 'envoy.transport_socket_match': { tlsMode: 'istio' } } },
  };
  const holding =
    (...held: XdsResource[]) =>
    (typeUrl: string) =>
      held.filter((r) => r.typeUrl === typeUrl);

  void it('refuses a cluster of a CDS response whose accepted endpoints would need mTLS', () => {
    const r = validateAgainst(
      TYPE.cluster,
      [edsCluster(A, istioMatches), edsCluster(B)],
      holding(cla(A, [['127.0.0.11', 7001, labelled]]), cla(B, [['127.0.0.12', 7002, labelled]])),
    );
    assert.equal(r.length, 1);
    assert.equal(r[0]?.typeUrl, TYPE.cluster);
    assert.equal(r[0]?.name, A);
    assert.match(r[0]?.reason ?? '', /127\.0\.0\.11:7001.*requires Istio mTLS.*no plaintext match/);
  });

  void it('refuses the ClusterLoadAssignment of an EDS response that makes an accepted cluster need mTLS, naming the cluster', () => {
    const accepted = holding(edsCluster(A, istioMatches), cla(A, [['127.0.0.11', 7001]]));
    const r = validateAgainst(TYPE.endpoint, [cla(A, [['127.0.0.11', 7001, labelled]])], accepted);
    assert.equal(r.length, 1);
    assert.equal(r[0]?.typeUrl, TYPE.endpoint);
    assert.equal(r[0]?.name, A);
    assert.match(
      r[0]?.reason ?? '',
      new RegExp(`^cluster ${A.replace(/\|/g, '\\|')}: .*requires Istio mTLS`),
    );
    // Plaintext endpoints for the same cluster are fine.
    assert.deepEqual(validateAgainst(TYPE.endpoint, [cla(A, [['127.0.0.12', 7001]])], accepted), []);
  });

  void it("keeps validate()'s own refusals, once, and checks only what changed", () => {
    const bad = cla(A, [['not-an-ip', 7001]]);
    const own = validate(TYPE.endpoint, [bad]);
    assert.equal(own.length, 1);
    assert.deepEqual(validateAgainst(TYPE.endpoint, [bad], holding(edsCluster(A, istioMatches))), own);
    // Content already accepted is not checked again: it was checked when it (or its cluster) arrived.
    const same = cla(A, [['127.0.0.11', 7001, labelled]]);
    assert.deepEqual(validateAgainst(TYPE.endpoint, [same], holding(edsCluster(A, istioMatches), same)), []);
    // Routes and listeners: validate() alone.
    const rds = [routeConfig('80', [vhost('web', ['127.100.0.2'], [toCluster(B)])])];
    assert.deepEqual(validateAgainst(TYPE.route, rds, holding()), validate(TYPE.route, rds));
  });
});
