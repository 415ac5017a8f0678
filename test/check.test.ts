// `kernmesh check` on the real istiod/Envoy fixtures in ../shared/fixtures/istio/. Each expectation
// was derived by reading the fixture by hand; the comments say where in the fixture it comes from.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { runCheck, type CheckReport } from '../src/cli/check.js';
import { fixturePath } from './support/fixtures.js';

async function check(argv: string[]): Promise<{ code: number; text: string }> {
  let text = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString();
      done();
    },
  });
  const code = await runCheck(argv, out);
  return { code, text };
}

async function checkJson(name: string): Promise<{ code: number; report: CheckReport }> {
  const { code, text } = await check([fixturePath(name), '--output', 'json']);
  return { code, report: JSON.parse(text) as CheckReport };
}

void describe('kernmesh check on the sidecar LDS fixture (sidecar-listeners.configdump.yaml)', () => {
  // The ten `<VIP>_<port>` listeners whose only chain is istio.stats + tcp_proxy (lines 116-505).
  const tcp: [string, number, string][] = [
    ['10.102.11.148', 15021, 'outbound|15021||ratings-istio-waypoint.ambient.svc.cluster.local'], // line 116
    ['10.108.65.203', 443, 'outbound|443||istiod.istio-system.svc.cluster.local'], // line 155
    ['10.96.0.1', 443, 'outbound|443||kubernetes.default.svc.cluster.local'], // line 194
    ['10.111.137.16', 15021, 'outbound|15021||reviews-istio-waypoint.ambient.svc.cluster.local'], // line 233
    ['10.98.166.148', 443, 'outbound|443||gateway-api-admission-server.gateway-system.svc.cluster.local'], // line 272
    ['10.100.160.191', 15021, 'outbound|15021||gateway-istio.istio-ingress.svc.cluster.local'], // line 311
    ['10.109.111.153', 15021, 'outbound|15021||httpbin-istio-waypoint.ambient.svc.cluster.local'], // line 350
    ['10.100.228.83', 15021, 'outbound|15021||productpage-istio-waypoint.ambient.svc.cluster.local'], // line 389
    ['10.96.0.10', 53, 'outbound|53||kube-dns.kube-system.svc.cluster.local'], // line 428
    ['10.108.65.203', 15012, 'outbound|15012||istiod.istio-system.svc.cluster.local'], // line 467
  ];
  // The six sniffed `<VIP>_<port>` listeners: an HTTP chain by RDS (route named in `route_config_name`)
  // plus a default tcp_proxy chain. The dump holds no RDS, so their HTTP routes are unknown.
  const sniffed: [string, number, string][] = [
    ['10.109.111.153', 15008, 'httpbin-istio-waypoint.ambient.svc.cluster.local:15008'], // line 1072
    ['10.111.137.16', 15008, 'reviews-istio-waypoint.ambient.svc.cluster.local:15008'], // line 1353
    ['10.96.0.10', 9153, 'kube-dns.kube-system.svc.cluster.local:9153'], // line 1634
    ['10.100.228.83', 15008, 'productpage-istio-waypoint.ambient.svc.cluster.local:15008'], // line 1915
    ['10.100.4.52', 443, 'webhook-service.metallb-system.svc.cluster.local:443'], // line 3045
    ['10.102.11.148', 15008, 'ratings-istio-waypoint.ambient.svc.cluster.local:15008'], // line 3609
  ];

  void it('turns every <VIP>_<port> TCP listener into a frontend to its cluster', async () => {
    const { code, report } = await checkJson('sidecar-listeners.configdump.yaml');
    assert.equal(code, 0, 'nothing in the LDS dump is refused');
    assert.deepEqual(report.rejected, []);
    for (const [address, port, cluster] of tcp) {
      const f = report.frontends.find((x) => x.address === address && x.port === port);
      assert.equal(f?.cluster, cluster, `${address}:${port}`);
      assert.equal(f?.protocol, 'tcp');
      // The dump has no CDS: the frontend is known but cannot be programmed yet.
      assert.equal(f?.pending, `cluster ${cluster} is not among the accepted clusters`);
    }
  });

  void it('holds the sniffed HTTP listeners until their RDS route arrives, as Envoy warms them', async () => {
    const { report } = await checkJson('sidecar-listeners.configdump.yaml');
    for (const [address, port, route] of sniffed) {
      const f = report.frontends.find((x) => x.address === address && x.port === port);
      assert.equal(f?.pending, `waiting for RDS route "${route}"`, `${address}:${port}`);
    }
    assert.equal(report.frontends.length, tcp.length + sniffed.length, 'no other frontend');
    // The six `0.0.0.0_<port>` HTTP listeners learn their VIPs from RDS "9080", "80", ... (lines 506, 789, 2196, 2479, 2762, 3326).
    for (const port of [9080, 80, 15014, 8000, 15010, 5000]) {
      assert.ok(
        report.status.some(
          (s) => s.name === `0.0.0.0_${port}` && s.note.includes(`waiting for RDS route "${port}"`),
        ),
        `0.0.0.0_${port}`,
      );
    }
  });

  void it('recognises the catch-all, inbound, internal and proxy-port listeners', async () => {
    const { report } = await checkJson('sidecar-listeners.configdump.yaml');
    const note = (name: string) => report.status.find((s) => s.type === 'listener' && s.name === name)?.note;
    // virtualOutbound (line 3890): its catch-all chain goes to PassthroughCluster (ALLOW_ANY).
    assert.equal(report.outboundPolicy, 'passthrough');
    assert.match(note('virtualOutbound') ?? '', /ALLOW_ANY/);
    // virtualInbound (line 3952) is INBOUND; main_internal (7134) and connect_originate (7747) are internal.
    assert.equal(note('virtualInbound'), 'inbound listener: not on the outbound kernel path');
    assert.equal(note('main_internal'), 'internal listener: not on the outbound kernel path');
    assert.match(note('connect_originate') ?? '', /^internal listener \(HBONE tunnel origination\)/);
    // connect_terminate (line 6949) binds 0.0.0.0:15008; the static listeners bind 15090 and 15021 (lines 13, 66).
    assert.match(note('connect_terminate') ?? '', /^HBONE termination on the proxy's own port 15008/);
    assert.match(note('0.0.0.0_15090') ?? '', /proxy's own port 15090/);
    assert.match(note('0.0.0.0_15021') ?? '', /proxy's own port 15021/);
  });

  void it('says the inbound AuthorizationPolicy is not enforced by kernmesh', async () => {
    const { report } = await checkJson('sidecar-listeners.configdump.yaml');
    // virtualInbound's HTTP chains carry RBAC policy ns[default]-policy[httpbin]-rule[0]; its TCP chains a deny-all RBAC.
    const inbound = report.notEnforced.filter((n) => n.name === 'virtualInbound').map((n) => n.field);
    assert.ok(inbound.some((f) => f.endsWith('(authorization: ns[default]-policy[httpbin]-rule[0])')));
    assert.ok(inbound.some((f) => f.endsWith('(authorization: deny all)')));
  });
});

void describe('kernmesh check on the sidecar EDS fixture (sidecar-endpoints.configdump.json)', () => {
  void it('lists every ClusterLoadAssignment with its endpoints, none programmed without CDS', async () => {
    const { code, report } = await checkJson('sidecar-endpoints.configdump.json');
    assert.equal(code, 0);
    assert.deepEqual(report.frontends, []);
    // 5 static (lines 9-103) + 32 dynamic endpoint configs.
    assert.equal(report.clusters.length, 37);
    assert.ok(report.clusters.every((c) => c.type === null && c.pending !== undefined));
    const endpoints = (name: string) =>
      report.clusters
        .find((c) => c.name === name)
        ?.endpoints.map((e) => `${e.address}:${e.port} w${e.weight} p${e.priority} ${e.health}`);
    // reviews (line 134): three HEALTHY endpoints, weight 1, in one locality of weight 3.
    assert.deepEqual(endpoints('outbound|9080||reviews.default.svc.cluster.local'), [
      '10.244.0.192:9080 w1 p0 healthy',
      '10.244.0.193:9080 w1 p0 healthy',
      '10.244.0.195:9080 w1 p0 healthy',
    ]);
    // kube-dns 53 (line 771): two pods.
    assert.deepEqual(endpoints('outbound|53||kube-dns.kube-system.svc.cluster.local'), [
      '10.244.0.8:53 w1 p0 healthy',
      '10.244.0.3:53 w1 p0 healthy',
    ]);
    // httpbin 8000 (line 294): the service port 8000 targets pod port 80.
    assert.deepEqual(endpoints('outbound|8000||httpbin.default.svc.cluster.local'), [
      '10.244.0.178:80 w1 p0 healthy',
    ]);
    // BlackHoleCluster (522), PassthroughCluster (688) and inbound|9080|| (642) have no endpoints.
    assert.deepEqual(endpoints('BlackHoleCluster'), []);
    assert.deepEqual(endpoints('PassthroughCluster'), []);
    // The localities are empty objects ({}): no locality.
    assert.ok(report.clusters.every((c) => c.endpoints.every((e) => e.locality === null)));
  });

  void it('skips unix-socket endpoints and says so', async () => {
    const { report } = await checkJson('sidecar-endpoints.configdump.json');
    // sds-grpc (line 18) and xds-grpc (line 75) are pipes.
    assert.deepEqual(report.clusters.find((c) => c.name === 'sds-grpc')?.endpoints, []);
    assert.ok(
      report.status.some(
        (s) =>
          s.name === 'sds-grpc' &&
          s.note.includes('unix socket ./var/run/secrets/workload-spiffe-uds/socket'),
      ),
    );
    assert.ok(
      report.status.some(
        (s) => s.name === 'xds-grpc' && s.note.includes('unix socket ./etc/istio/proxy/XDS'),
      ),
    );
  });
});

void describe('kernmesh check on the gateway fixture (gateway-route-and-dr-subset-cluster.configdump.json)', () => {
  void it('refuses the VirtualService path routes and shows the subset cluster waiting for EDS', async () => {
    const { code, report } = await checkJson('gateway-route-and-dr-subset-cluster.configdump.json');
    assert.equal(code, 1);
    // Route http.8080: five routes, all path/prefix matches (/productpage, /static, /login, /logout,
    // /api/v1/products), no catch-all: other paths get a 404 from the gateway. VirtualService default/bookinfo.
    assert.deepEqual(report.rejected, [
      {
        type: 'route',
        name: 'http.8080',
        reason:
          'virtual_hosts[0].routes: no route matches every request (path match /productpage); requests that match none get a 404 from the proxy: L7 (virtual host "*:80", VirtualService default/bookinfo)',
      },
    ]);
    // The DestinationRule subset cluster: EDS, LEAST_REQUEST, circuit breakers at uint32 max (no cap),
    // tlsMode-istio + tlsMode-disabled matches; its ClusterLoadAssignment is not in the dump.
    assert.deepEqual(report.clusters, [
      {
        name: 'outbound|9080|v1|productpage.default.svc.cluster.local',
        type: 'EDS',
        lbPolicy: 'least_request',
        kind: 'endpoints',
        endpoints: [],
        waypoint: null,
        pending:
          'waiting for its ClusterLoadAssignment "outbound|9080|v1|productpage.default.svc.cluster.local" (EDS)',
      },
    ]);
    assert.deepEqual(report.frontends, []); // dynamic_listeners is empty
    assert.ok(report.notEnforced.some((n) => n.type === 'cluster' && n.field === 'connect_timeout'));
    assert.ok(
      report.status.some((s) => s.name === 'http.8080' && s.note === 'not used by any outbound listener'),
    );
  });
});

void describe('kernmesh check on the waypoint fixture (waypoint-full.configdump.json)', () => {
  void it('shows the static clusters, the warming inbound-vip cluster and the HBONE endpoint', async () => {
    const { code, report } = await checkJson('waypoint-full.configdump.json');
    assert.equal(code, 0);
    assert.deepEqual(report.rejected, []);
    assert.deepEqual(report.frontends, []); // only main_internal (internal) and a static 0.0.0.0:15021
    const byName = new Map(report.clusters.map((c) => [c.name, c]));
    // static_clusters "agent" (127.0.0.1:15020) and "prometheus_stats" (127.0.0.1:15000): STATIC, no
    // circuit breaker (Envoy's 1024), no health_status (UNKNOWN).
    assert.deepEqual(byName.get('agent'), {
      name: 'agent',
      type: 'STATIC',
      lbPolicy: 'round_robin',
      kind: 'endpoints',
      maxConnections: 1024,
      endpoints: [
        { address: '127.0.0.1', port: 15020, priority: 0, weight: 1, health: 'unknown', locality: null },
      ],
      waypoint: null,
    });
    assert.deepEqual(
      byName.get('prometheus_stats')?.endpoints.map((e) => `${e.address}:${e.port}`),
      ['127.0.0.1:15000'],
    );
    // dynamic cluster inbound-vip|8000|http|httpbin: EDS; the dump's only dynamic CLA is for port 8100.
    assert.match(
      byName.get('inbound-vip|8000|http|httpbin.default.svc.cluster.local')?.pending ?? '',
      /waiting for its ClusterLoadAssignment/,
    );
    // inbound-vip|8100: envoy_internal_address via connect_originate, endpoint_id 192.168.195.248:800.
    const hbone = byName.get('inbound-vip|8100|http|httpbin.default.svc.cluster.local');
    assert.equal(hbone?.type, null);
    assert.deepEqual(
      hbone?.endpoints.map((e) => `${e.address}:${e.port}`),
      ['192.168.195.248:800'],
    );
    assert.ok(
      report.status.some((s) =>
        s.note.includes('192.168.195.248:800 is reached through internal listener connect_originate (HBONE)'),
      ),
    );
    assert.equal(report.clusters.length, 4);
    assert.ok(
      report.status.some((s) => s.name === 'main_internal' && s.note.startsWith('internal listener')),
    );
    // Bootstrap, scoped routes and secrets sections are not used.
    assert.deepEqual(
      report.status.filter((s) => s.type === 'file').map((s) => s.note),
      [
        'configs[0] (BootstrapConfigDump): not used by kernmesh',
        'configs[4] (ScopedRoutesConfigDump): not used by kernmesh',
        'configs[6] (SecretsConfigDump): not used by kernmesh',
      ],
    );
  });
});

void describe('kernmesh check on the ztunnel fixture (ztunnel-wds.dump.json)', () => {
  void it('finds no service waypoints and names the workload waypoints it does not apply', async () => {
    const { code, report } = await checkJson('ztunnel-wds.dump.json');
    assert.equal(code, 0);
    assert.deepEqual([report.frontends, report.clusters, report.rejected], [[], [], []]);
    // Six workloads (ratings, reviews v1-v3, details in bookinfo; productpage) name a waypoint; no service does.
    const notes = report.status.filter((s) =>
      s.note.includes('workload-addressed waypoints are not applied'),
    );
    assert.equal(notes.length, 6);
    assert.ok(
      notes.some((s) =>
        s.note.startsWith('workload bookinfo/productpage-v1-675fc69cf-jscn2 has waypoint 10.96.71.36:15008'),
      ),
    );
  });
});

void describe('kernmesh check exit codes and output', () => {
  void it('prints the issue’s JSON shape', async () => {
    const { report } = await checkJson('gateway-route-and-dr-subset-cluster.configdump.json');
    assert.deepEqual(Object.keys(report).slice(0, 4), ['frontends', 'clusters', 'rejected', 'notEnforced']);
    const c = report.clusters[0];
    assert.ok(c && ['name', 'type', 'lbPolicy', 'endpoints', 'waypoint'].every((k) => k in c));
  });

  void it('prints text by default', async () => {
    const { code, text } = await check([fixturePath('gateway-route-and-dr-subset-cluster.configdump.json')]);
    assert.equal(code, 1);
    assert.match(text, /^Refused: 1$/m);
    assert.match(text, /^ {2}route http\.8080: virtual_hosts\[0\]\.routes: no route matches every request/m);
  });

  void it('exits 2 for a missing file, a syntax error or an unknown layout, and for bad usage', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-check-'));
    try {
      const bad = join(dir, 'bad.yaml');
      writeFileSync(bad, 'configs:\n  - a: [1, 2\n');
      const other = join(dir, 'other.json');
      writeFileSync(other, '{"hello": 1}');
      assert.equal((await check([join(dir, 'absent.json')])).code, 2);
      assert.equal((await check([bad])).code, 2);
      assert.equal((await check([other])).code, 2);
      assert.equal((await check([])).code, 2);
      assert.equal((await check([other, '--output', 'xml'])).code, 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it('exits 0 for a resources file that is all accepted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-check-'));
    try {
      const file = join(dir, 'ok.json');
      const cluster = 'outbound|5000||echo.default.svc.cluster.local';
      writeFileSync(
        file,
        JSON.stringify({
          resources: [
            {
              '@type': 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
              name: cluster,
              type: 'STATIC',
              load_assignment: {
                cluster_name: cluster,
                endpoints: [
                  {
                    lb_endpoints: [
                      {
                        endpoint: {
                          address: { socket_address: { address: '127.0.0.11', port_value: 7001 } },
                        },
                      },
                    ],
                  },
                ],
              },
            },
            {
              '@type': 'type.googleapis.com/envoy.config.listener.v3.Listener',
              name: '127.100.0.1_5000',
              address: { socket_address: { address: '127.100.0.1', port_value: 5000 } },
              filter_chains: [
                {
                  filters: [
                    {
                      name: 'envoy.filters.network.tcp_proxy',
                      // An Any needs its @type in proto3 JSON: check decodes as istiod's protobuf would.
                      typed_config: {
                        '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
                        stat_prefix: cluster,
                        cluster,
                      },
                    },
                  ],
                },
              ],
              bind_to_port: false,
            },
          ],
        }),
      );
      const { code, text } = await check([file, '--output=json']);
      assert.equal(code, 0);
      const report = JSON.parse(text) as CheckReport;
      assert.deepEqual(report.frontends, [
        {
          address: '127.100.0.1',
          port: 5000,
          protocol: 'tcp',
          cluster,
          source: '127.100.0.1_5000 filter_chains[0]',
        },
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
