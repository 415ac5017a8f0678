// /clusters with the kernel's counts as Envoy names them: cx_active per host, upstream_cx_* per cluster
// (text and /stats/prometheus). Unit tests on given counts, then an agent on the real kernel where
// the counts must equal the connections a client holds.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { ClusterStatsView, type KernelStats } from '../src/admin/cluster-stats.js';
import { buildClusters, clustersText } from '../src/admin/clusters.js';
import { startAdminServer, type AdminSource } from '../src/admin/server.js';
import { REASON_SLOTS, REASONS, u32, type Reason } from '../src/dataplane/codec.js';
import { memoryMaps } from './support/memory-maps.js';
import { RouteMapReader } from '../src/dataplane/reader.js';
import { RouteWriter } from '../src/dataplane/writer.js';
import { decodeToJson, encodeFromJson } from '../src/xds/proto-json.js';
import { TYPE, type JsonObject, type XdsResource } from '../src/xds/types.js';
import { adminGet, runAgentServing } from './support/cli.js';
import { tcpListener } from './support/control-plane-istiod.js';
import { kernelTest } from './support/kernel.js';
import { startBackend, type Backend } from './support/net.js';
import { assertPromtoolAccepts } from './support/prometheus.js';
import { eventually } from './support/wait.js';

const REVIEWS = 'outbound|9080||reviews.default.svc.cluster.local';
const RATINGS = 'outbound|9080||ratings.default.svc.cluster.local';

const edsCluster = (name: string, extra: JsonObject = {}): JsonObject => ({
  '@type': TYPE.cluster,
  name,
  type: 'EDS',
  eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' }, service_name: name },
  connect_timeout: '1s',
  lb_policy: 'ROUND_ROBIN',
  ...extra,
});

const assignment = (name: string, hosts: { address: string; port: number }[]): JsonObject => ({
  '@type': TYPE.endpoint,
  cluster_name: name,
  endpoints: [
    {
      locality: { region: 'eu', zone: 'eu-1' },
      lb_endpoints: hosts.map((h) => ({
        endpoint: { address: { socket_address: { address: h.address, port_value: h.port } } },
        health_status: 'HEALTHY',
      })),
    },
  ],
});

const asResources = (list: JsonObject[]): XdsResource[] =>
  list.map((r) => ({
    typeUrl: r['@type'] as string,
    name: (r['@type'] === TYPE.endpoint ? r.cluster_name : r.name) as string,
    version: '1',
    resource: r,
  }));

/** Host stats by "address:port" from /clusters?format=json, for one cluster. */
function hostStats(clusters: JsonObject, cluster: string): Map<string, Record<string, string>> {
  const c = (clusters.cluster_statuses as JsonObject[]).find((s) => s.name === cluster);
  assert.ok(c, `cluster ${cluster} listed`);
  const out = new Map<string, Record<string, string>>();
  for (const h of c.host_statuses as JsonObject[]) {
    const sock = (h.address as JsonObject).socket_address as JsonObject;
    const stats: Record<string, string> = {};
    for (const s of h.stats as JsonObject[]) stats[s.name as string] = (s.value as string | undefined) ?? '0';
    out.set(`${sock.address as string}:${sock.port_value as number}`, stats);
  }
  return out;
}

const given: KernelStats = {
  services: [
    { name: REVIEWS, activeConnections: 3, counters: { routed: 10n, no_endpoint: 2n, overflow: 1n } },
    { name: `${REVIEWS}|ipv6`, activeConnections: 1, counters: { routed: 4n, map_miss: 9n } },
  ],
  backends: [
    { address: '10.1.0.1', port: 9080, activeConnections: 2 },
    { address: '2001:db8::1', port: 9080, activeConnections: 1 },
  ],
};

const givenResources = asResources([
  edsCluster(REVIEWS),
  assignment(REVIEWS, [
    { address: '10.1.0.1', port: 9080 },
    { address: '10.1.0.2', port: 9080 },
    // Another spelling of the kernel's canonical 2001:db8::1.
    { address: '2001:0db8:0:0:0:0:0:1', port: 9080 },
  ]),
  edsCluster(RATINGS),
]);

void test('host stats carry cx_active per backend; the JSON is envoy.admin.v3.Clusters', () => {
  const json = buildClusters(givenResources, new ClusterStatsView(given));
  const back = decodeToJson(
    'envoy.admin.v3.Clusters',
    encodeFromJson('envoy.admin.v3.Clusters', json),
  ) as JsonObject;
  assert.equal((back.cluster_statuses as JsonObject[]).length, 2);
  const hosts = hostStats(json, REVIEWS);
  assert.deepEqual(hosts.get('10.1.0.1:9080'), { cx_active: '2' });
  assert.deepEqual(hosts.get('10.1.0.2:9080'), { cx_active: '0' }, 'a backend without connections reads 0');
  assert.deepEqual(hosts.get('2001:0db8:0:0:0:0:0:1:9080'), { cx_active: '1' });
  const stat = ((json.cluster_statuses as JsonObject[])[1]!.host_statuses as JsonObject[])[0]!
    .stats as JsonObject[];
  assert.deepEqual(stat, [{ name: 'cx_active', value: '2', type: 'GAUGE' }]);
  // Without kernel counts there are no stats at all rather than zeros.
  assert.deepEqual(hostStats(buildClusters(givenResources), REVIEWS).get('10.1.0.1:9080'), {});
});

void test('the text form has Envoy host lines and the cluster counters, IPv6 service included', () => {
  const view = new ClusterStatsView(given);
  const text = clustersText(buildClusters(givenResources, view), view);
  const lines = text.trim().split('\n');
  for (const l of [
    `${REVIEWS}::upstream_cx_total::14`,
    `${REVIEWS}::upstream_cx_none_healthy::2`,
    `${REVIEWS}::upstream_cx_overflow::1`,
    `${REVIEWS}::upstream_cx_active::4`,
    `${REVIEWS}::eds_service_name::${REVIEWS}`,
    `${REVIEWS}::10.1.0.1:9080::cx_active::2`,
    `${REVIEWS}::10.1.0.1:9080::health_flags::healthy`,
    `${REVIEWS}::10.1.0.1:9080::zone::eu-1`,
    `${REVIEWS}::[2001:0db8:0:0:0:0:0:1]:9080::cx_active::1`,
  ])
    assert.ok(lines.includes(l), `missing line ${l}`);
  assert.equal(
    lines.filter((l) => l.startsWith(`${RATINGS}::upstream_`)).length,
    0,
    'a cluster the kernel has no service for gets no counters',
  );
  assert.ok(
    !text.includes('map_miss') && !/:\d+::cx_total::/.test(text),
    'nothing the kernel does not count',
  );
});

/** Routing maps in memory, as the writer and the reader see them. */

void test('kernel counts are read from the maps by the dataplane’s one reader, by the ids the writer gave', () => {
  const maps = memoryMaps();
  const writer = RouteWriter.recover(maps);
  const endpoint = { address: '10.1.0.2', port: 9080, weight: 1, priority: 0, health: 'healthy' as const };
  const r = writer.apply({
    services: [{ name: REVIEWS, kind: 'endpoints', lbPolicy: 'round_robin', endpoints: [endpoint] }],
    frontends: [],
  });
  assert.deepEqual(r.refused, []);
  const ids = writer.ids();
  const service = ids.services.find((s) => s.name === REVIEWS)!.id;
  const backend = ids.backends.find((b) => b.address === '10.1.0.2')!.id;
  // what sockops and connect4 count in the kernel: u32 connection counts, u64 counters per CPU
  maps.km_service_conn.update(u32(service), u32(2));
  maps.km_backend_conn.update(u32(backend), u32(2));
  const count = (id: number, reason: Reason, perCpu: bigint[]): void => {
    const v = Buffer.alloc(8 * perCpu.length);
    perCpu.forEach((n, cpu) => v.writeBigUInt64LE(n, 8 * cpu));
    maps.km_counters.update(u32(id * REASON_SLOTS + REASONS.indexOf(reason)), v);
  };
  count(0, 'map_miss', [5n, 0n]);
  count(service, 'routed', [4n, 2n]);
  count(service, 'overflow', [0n, 3n]);
  const view = new ClusterStatsView(new RouteMapReader(maps).kernelStats(ids));
  assert.deepEqual(view.host('10.1.0.2', 9080), [{ name: 'cx_active', value: 2, type: 'GAUGE' }]);
  assert.deepEqual(
    view.cluster(REVIEWS).map((s) => [s.name, s.value]),
    [
      ['upstream_cx_total', 6],
      ['upstream_cx_none_healthy', 0],
      ['upstream_cx_overflow', 3],
      ['upstream_cx_active', 2],
    ],
  );
});

void test('/stats/prometheus adds the per-cluster series and promtool accepts them', async () => {
  const source: AdminSource = {
    readiness: () => ({ ready: true, reasons: [] }),
    serverInfo: () => ({}),
    configDump: () => ({ bootstrap: {}, startedAt: new Date().toISOString(), resources: givenResources }),
    kernelStats: () => given,
    debugXds: () => ({}),
    debugMaps: () => ({}),
    debugBpf: () => ({}),
    renderMetrics: () =>
      Promise.resolve({
        contentType: 'text/plain; version=0.0.4; charset=utf-8',
        body: '# HELP kernmesh_services x\n# TYPE kernmesh_services gauge\nkernmesh_services 2\n',
      }),
  };
  const server = await startAdminServer(source, { host: '127.0.0.1', port: 0 });
  try {
    const stats = (await adminGet(server.address, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    assert.match(stats, /^kernmesh_services 2$/m);
    const q = REVIEWS.replace(/\|/g, '\\|');
    assert.match(stats, new RegExp(`^envoy_cluster_upstream_cx_total\\{cluster_name="${q}"\\} 14$`, 'm'));
    assert.match(stats, new RegExp(`^envoy_cluster_upstream_cx_active\\{cluster_name="${q}"\\} 4$`, 'm'));
    assert.match(
      stats,
      new RegExp(`^envoy_cluster_upstream_cx_overflow_total\\{cluster_name="${q}"\\} 1$`, 'm'),
    );
    assert.match(
      stats,
      new RegExp(`^envoy_cluster_upstream_cx_none_healthy_total\\{cluster_name="${q}"\\} 2$`, 'm'),
    );
    assert.ok(!stats.includes(RATINGS), 'no series for a cluster the kernel has no service for');
    const text = (await adminGet(server.address, '/clusters')).text;
    assert.ok(text.includes(`${REVIEWS}::10.1.0.1:9080::cx_active::2\n`));
  } finally {
    await server.close();
  }
});

const VIP = '127.100.79.1';
const LIMITED_VIP = '127.100.79.2';
const PORT = 8079;
const ECHO = 'outbound|8079||echo.test.svc.cluster.local';
const LIMITED = 'outbound|8079||limited.test.svc.cluster.local';

kernelTest(
  '/clusters shows cx_active per host equal to the connections a client holds; cluster counters follow the kernel',
  async (_t, env) => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-admin-clusters-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const backends: Backend[] = [];
    for (const a of ['127.79.0.1', '127.79.0.2', '127.79.0.3']) {
      const b = await startBackend(a);
      env.defer(() => b.close());
      backends.push(b);
    }
    const [b1, b2, b3] = backends as [Backend, Backend, Backend];
    const file = join(dir, 'resources.json');
    writeFileSync(
      file,
      JSON.stringify({
        resources: [
          edsCluster(ECHO),
          assignment(ECHO, [b1, b2]),
          tcpListener(VIP, PORT, ECHO, {}),
          edsCluster(LIMITED, { circuit_breakers: { thresholds: [{ max_connections: 1 }] } }),
          assignment(LIMITED, [b3]),
          tcpListener(LIMITED_VIP, PORT, LIMITED, {}),
        ],
      }),
    );
    const { admin, client } = await runAgentServing(env, ['--xds-file', file]);
    await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);

    const clustersJson = async (): Promise<JsonObject> => {
      const json = JSON.parse((await adminGet(admin, '/clusters?format=json')).text) as JsonObject;
      encodeFromJson('envoy.admin.v3.Clusters', json);
      return json;
    };
    const active = async (cluster: string): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const [hp, s] of hostStats(await clustersJson(), cluster)) out[hp] = Number(s.cx_active);
      return out;
    };
    assert.deepEqual(await active(ECHO), {
      [`${b1.id.replace('|', ':')}`]: 0,
      [`${b2.id.replace('|', ':')}`]: 0,
    });

    // Hold five connections through the VIP; round robin spreads them, the greeting says where each went.
    const held: Record<string, number> = { [b1.id.replace('|', ':')]: 0, [b2.id.replace('|', ':')]: 0 };
    for (let i = 0; i < 5; i++) {
      const r = await client.connect({ host: VIP, port: PORT, readId: true, hold: true, tag: `c${i}` });
      assert.ok(r.ok, `connect ${i} to ${VIP}:${PORT}: ${r.err}`);
      const hp = r.backend!.replace('|', ':');
      held[hp] = (held[hp] ?? 0) + 1;
    }
    assert.equal(Object.keys(held).length, 2, `only the two endpoints are reached: ${JSON.stringify(held)}`);
    await eventually('cx_active per host equals the connections held to it', async () => {
      const now = await active(ECHO);
      return Object.entries(held).every(([hp, n]) => now[hp] === n);
    });
    const text = (await adminGet(admin, '/clusters')).text;
    for (const [hp, n] of Object.entries(held))
      assert.ok(text.includes(`${ECHO}::${hp}::cx_active::${n}\n`), text);
    assert.ok(text.includes(`${ECHO}::upstream_cx_active::5\n`), text);
    assert.match(text, new RegExp(`^${ECHO.replace(/\|/g, '\\|')}::upstream_cx_total::5$`, 'm'));

    // max_connections 1: the second held connection is refused and counted as an overflow.
    const first = await client.connect({
      host: LIMITED_VIP,
      port: PORT,
      readId: true,
      hold: true,
      tag: 'l1',
    });
    assert.ok(first.ok, `first connect to the limited cluster: ${first.err}`);
    await eventually('the limited cluster counts its connection', async () =>
      (await adminGet(admin, '/clusters')).text.includes(`${LIMITED}::upstream_cx_active::1\n`),
    );
    const second = await client.connect({
      host: LIMITED_VIP,
      port: PORT,
      readId: true,
      hold: true,
      tag: 'l2',
    });
    assert.equal(second.ok, false, 'over max_connections: refused');
    const stats = (await adminGet(admin, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    const label = (c: string) => `\\{cluster_name="${c.replace(/\|/g, '\\|')}"\\}`;
    assert.match(stats, new RegExp(`^envoy_cluster_upstream_cx_overflow_total${label(LIMITED)} 1$`, 'm'));
    assert.match(stats, new RegExp(`^envoy_cluster_upstream_cx_active${label(ECHO)} 5$`, 'm'));
    assert.match(stats, new RegExp(`^envoy_cluster_upstream_cx_total${label(ECHO)} 5$`, 'm'));
    assert.equal((await active(LIMITED))[b3.id.replace('|', ':')], 1);

    // Closing them brings cx_active back to 0 on every host.
    for (let i = 0; i < 5; i++) assert.ok((await client.close(`c${i}`)).ok);
    await eventually('cx_active is 0 once the client closed its connections', async () =>
      Object.values(await active(ECHO)).every((n) => n === 0),
    );
  },
);

void test('outlier detection: an ejected host reads /failed_outlier_check in /clusters, and the counts are Envoy outlier_detection stats', async () => {
  const withOutlier: KernelStats = {
    ...given,
    outlier: [
      {
        name: REVIEWS,
        active: 1,
        counters: { ejections_total: 3n, ejections_enforced_total: 2n, ejections_overflow: 1n },
        ejected: [{ address: '10.1.0.2', port: 9080 }],
      },
    ],
  };
  const view = new ClusterStatsView(withOutlier);
  const json = buildClusters(givenResources, view);
  encodeFromJson('envoy.admin.v3.Clusters', json);
  const hosts = ((json.cluster_statuses as JsonObject[])[1]!.host_statuses as JsonObject[]).map(
    (h) => h.health_status as JsonObject,
  );
  assert.deepEqual(
    hosts.map((h) => h.failed_outlier_check ?? false),
    [false, true, false],
  );
  const lines = clustersText(json, view).trim().split('\n');
  for (const l of [
    `${REVIEWS}::10.1.0.1:9080::health_flags::healthy`,
    `${REVIEWS}::10.1.0.2:9080::health_flags::/failed_outlier_check`,
    `${REVIEWS}::outlier_detection.ejections_active::1`,
    `${REVIEWS}::outlier_detection.ejections_enforced_total::2`,
  ])
    assert.ok(lines.includes(l), `missing line ${l}`);
  const source: AdminSource = {
    readiness: () => ({ ready: true, reasons: [] }),
    serverInfo: () => ({}),
    configDump: () => ({ bootstrap: {}, startedAt: new Date().toISOString(), resources: givenResources }),
    kernelStats: () => withOutlier,
    debugXds: () => ({}),
    debugMaps: () => ({}),
    debugBpf: () => ({}),
    renderMetrics: () =>
      Promise.resolve({ contentType: 'text/plain; version=0.0.4; charset=utf-8', body: '' }),
  };
  const server = await startAdminServer(source, { host: '127.0.0.1', port: 0 });
  try {
    const stats = (await adminGet(server.address, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    const label = `\\{cluster_name="${REVIEWS.replace(/\|/g, '\\|')}"\\}`;
    assert.match(stats, new RegExp(`^envoy_cluster_outlier_detection_ejections_active${label} 1$`, 'm'));
    assert.match(stats, new RegExp(`^envoy_cluster_outlier_detection_ejections_total${label} 3$`, 'm'));
    assert.match(
      stats,
      new RegExp(`^envoy_cluster_outlier_detection_ejections_overflow_total${label} 1$`, 'm'),
    );
  } finally {
    await server.close();
  }
});

kernelTest(
  'outlier detection through the agent: a backend that refuses is ejected by the kernel, and /clusters and the metrics say so',
  async (_t, env) => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-admin-outlier-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const up = await startBackend('127.79.1.1');
    env.defer(() => up.close());
    // nothing listens here: each connect to it is refused
    const down = await startBackend('127.79.1.2');
    const downPort = down.port;
    await down.close();
    const file = join(dir, 'resources.json');
    writeFileSync(
      file,
      JSON.stringify({
        resources: [
          edsCluster(ECHO, {
            outlier_detection: {
              consecutive_5xx: 2,
              interval: '0.1s',
              base_ejection_time: '600s',
              max_ejection_percent: 50,
              enforcing_success_rate: 0,
            },
          }),
          assignment(ECHO, [up, { address: '127.79.1.2', port: downPort }]),
          tcpListener(VIP, PORT, ECHO, {}),
        ],
      }),
    );
    const { admin, client } = await runAgentServing(env, ['--xds-file', file]);
    await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);
    const flag = `${ECHO}::127.79.1.2:${downPort}::health_flags::/failed_outlier_check\n`;
    for (let i = 0; !(await adminGet(admin, '/clusters')).text.includes(flag); i++) {
      assert.ok(i < 50, 'the refusing backend is ejected');
      await client.connect({ host: VIP, port: PORT, readId: true });
    }
    const text = (await adminGet(admin, '/clusters')).text;
    assert.ok(text.includes(`${ECHO}::${up.id.replace('|', ':')}::health_flags::healthy\n`), text);
    assert.ok(text.includes(`${ECHO}::outlier_detection.ejections_active::1\n`), text);
    // once ejected, every connect goes to the one that answers
    const after = await client.batch({ host: VIP, port: PORT, readId: true, count: 20 });
    assert.deepEqual(new Set(after.map((r) => r.backend)), new Set([up.id]));
    const stats = (await adminGet(admin, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    const label = `\\{cluster_name="${ECHO.replace(/\|/g, '\\|')}"\\}`;
    assert.match(stats, new RegExp(`^envoy_cluster_outlier_detection_ejections_active${label} 1$`, 'm'));
    assert.match(stats, new RegExp(`^envoy_cluster_outlier_detection_ejections_total${label} 1$`, 'm'));
  },
);
