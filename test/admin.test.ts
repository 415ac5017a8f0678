// The admin endpoint's Envoy-compatible views, rendered from real istiod output (the shared fixtures)
// and served over HTTP. The agent end-to-end tests check the same routes against a running agent.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClusterStatsView } from '../src/admin/cluster-stats.js';
import { buildClusters } from '../src/admin/clusters.js';
import { applyMask, buildConfigDump } from '../src/admin/config-dump.js';
import { startAdminServer, type AdminSource } from '../src/admin/server.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { TYPE, type JsonObject, type XdsResource } from '../src/xds/types.js';
import { decodeToJson, encodeFromJson } from '../src/xds/proto-json.js';
import { fixturesMissing, readFixture } from './support/fixtures.js';
import { assertPromtoolAccepts } from './support/prometheus.js';

const missing = fixturesMissing();

/** Resources as xds/ would hold them, taken from an Envoy config dump (each entry's inner Any). */
function resourcesFrom(file: string): XdsResource[] {
  const dump = readFixture(file) as unknown as { configs: JsonObject[] };
  const out: XdsResource[] = [];
  const add = (resource: JsonObject | undefined, version: unknown, lastUpdated: unknown) => {
    if (!resource) return;
    const typeUrl = resource['@type'] as string;
    const name = (typeUrl === TYPE.endpoint ? resource.cluster_name : resource.name) as string;
    out.push({
      typeUrl,
      name,
      version: typeof version === 'string' ? version : 'v1',
      resource,
      lastUpdated: lastUpdated as string | undefined,
    });
  };
  for (const c of dump.configs) {
    for (const e of (c.dynamic_active_clusters ?? []) as JsonObject[])
      add(e.cluster as JsonObject, e.version_info, e.last_updated);
    for (const e of (c.dynamic_endpoint_configs ?? []) as JsonObject[])
      add(e.endpoint_config as JsonObject, e.version_info, e.last_updated);
    for (const e of (c.dynamic_listeners ?? []) as JsonObject[]) {
      const s = e.active_state as JsonObject | undefined;
      add(s?.listener as JsonObject, s?.version_info, s?.last_updated);
    }
    for (const e of (c.dynamic_route_configs ?? []) as JsonObject[])
      add(e.route_config as JsonObject, e.version_info, e.last_updated);
  }
  return out;
}

function fixtureResources(): XdsResource[] {
  return [
    ...resourcesFrom('gateway-route-and-dr-subset-cluster.configdump.json'),
    ...resourcesFrom('sidecar-endpoints.configdump.json'),
    ...resourcesFrom('waypoint-full.configdump.json'),
  ];
}

const node = {
  id: 'sidecar~10.0.0.7~kernmesh-node-a.istio-system~istio-system.svc.cluster.local',
  metadata: { CLUSTER_ID: 'Kubernetes' },
};

void test(
  'config_dump has the sections of an Envoy dump, clusters with their versions, endpoints only with include_eds',
  { skip: missing },
  () => {
    const resources = fixtureResources();
    const input = {
      bootstrap: { node },
      startedAt: '2026-01-01T00:00:00.000Z',
      resources,
      versions: { [TYPE.cluster]: 'v7' },
    };
    const dump = buildConfigDump(input) as { configs: JsonObject[] };
    const types = dump.configs.map((c) => c['@type']);
    assert.deepEqual(types, [
      'type.googleapis.com/envoy.admin.v3.BootstrapConfigDump',
      'type.googleapis.com/envoy.admin.v3.ClustersConfigDump',
      'type.googleapis.com/envoy.admin.v3.ListenersConfigDump',
      'type.googleapis.com/envoy.admin.v3.RoutesConfigDump',
    ]);
    const clusters = dump.configs[1]!;
    assert.equal(clusters.version_info, 'v7');
    const active = clusters.dynamic_active_clusters as JsonObject[];
    const sentClusters = resources.filter((r) => r.typeUrl === TYPE.cluster);
    assert.equal(active.length, sentClusters.length);
    for (const e of active) {
      assert.equal((e.cluster as JsonObject)['@type'], TYPE.cluster);
      assert.ok(typeof e.version_info === 'string' && typeof e.last_updated === 'string');
    }

    const withEds = buildConfigDump(input, { includeEds: true }) as { configs: JsonObject[] };
    const eds = withEds.configs.find(
      (c) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.EndpointsConfigDump',
    )!;
    const names = (eds.dynamic_endpoint_configs as JsonObject[]).map(
      (e) => (e.endpoint_config as JsonObject).cluster_name,
    );
    assert.ok(names.includes('outbound|9080||reviews.default.svc.cluster.local'));
    assert.equal(names.length, resources.filter((r) => r.typeUrl === TYPE.endpoint).length);

    // Same layout as the real waypoint dump: every section keeps the keys Envoy uses.
    const real = readFixture('waypoint-full.configdump.json') as unknown as {
      configs: JsonObject[];
    };
    const realClusters = real.configs.find((c) => c['@type'] === clusters['@type'])!;
    const realEntry = (realClusters.dynamic_active_clusters as JsonObject[])[0]!;
    for (const k of Object.keys(realEntry)) assert.ok(k in active[0]!, `cluster entry lacks ${k}`);
  },
);

void test(
  'config_dump is protobuf JSON of envoy.admin.v3.ConfigDump, and so is /clusters of envoy.admin.v3.Clusters',
  { skip: missing },
  () => {
    const resources = fixtureResources();
    const dump = buildConfigDump(
      { bootstrap: { node }, startedAt: new Date().toISOString(), resources },
      { includeEds: true },
    );
    decodesAs('envoy.admin.v3.ConfigDump', dump);
    decodesAs('envoy.admin.v3.Clusters', buildClusters(resources));
    // With kernel counts too: host stats are SimpleMetrics Envoy's protos accept.
    const counts = new ClusterStatsView({
      services: [
        { name: 'outbound|9080||reviews.default.svc.cluster.local', activeConnections: 1, counters: {} },
      ],
      backends: [{ address: '10.244.0.192', port: 9080, activeConnections: 1 }],
    });
    decodesAs('envoy.admin.v3.Clusters', buildClusters(resources, counts));
  },
);

void test('mask keeps only the named fields; an Any keeps its @type', () => {
  const masked = applyMask(
    {
      '@type': 'x.ClustersConfigDump',
      version_info: '1',
      dynamic_active_clusters: [
        { version_info: '1', cluster: { '@type': 'x.Cluster', name: 'a', type: 'EDS' } },
      ],
    },
    ['dynamic_active_clusters.cluster.name'],
  );
  assert.deepEqual(masked, {
    '@type': 'x.ClustersConfigDump',
    dynamic_active_clusters: [{ cluster: { '@type': 'x.Cluster', name: 'a' } }],
  });
});

void test(
  'clusters lists each host with address, EDS health, weight, priority and locality',
  { skip: missing },
  () => {
    const clusters = buildClusters(
      resourcesFrom('sidecar-endpoints.configdump.json').concat(
        resourcesFrom('gateway-route-and-dr-subset-cluster.configdump.json'),
      ),
    );
    const statuses = clusters.cluster_statuses as JsonObject[];
    const subset = statuses.find((s) => (s.name as string).startsWith('outbound|'))!;
    assert.ok(subset, 'the DestinationRule subset cluster is listed');
    const withHosts = buildClusters([
      {
        typeUrl: TYPE.cluster,
        name: 'outbound|9080||reviews.default.svc.cluster.local',
        version: '1',
        resource: { name: 'outbound|9080||reviews.default.svc.cluster.local', type: 'EDS' },
      },
      ...resourcesFrom('sidecar-endpoints.configdump.json'),
    ]);
    const reviews = (withHosts.cluster_statuses as JsonObject[])[0]!;
    const hosts = reviews.host_statuses as JsonObject[];
    assert.equal(hosts.length, 3);
    assert.deepEqual(hosts[0]!.address, { socket_address: { address: '10.244.0.192', port_value: 9080 } });
    assert.deepEqual(hosts[0]!.health_status, { eds_health_status: 'HEALTHY' });
    assert.equal(hosts[0]!.weight, 1);
  },
);

void test('the admin server answers Envoy routes over HTTP and stats pass promtool', async () => {
  let ready = false;
  const metrics = new AgentMetrics();
  metrics.pushes.inc({ type: 'cds' });
  metrics.applyDuration.observe(0.002);
  metrics.setKernel({
    maps: () => [{ name: 'services', entries: 3, capacity: 1024 }],
    fallbacks: () => ({ no_endpoint: 2 }),
    programs: () => [{ name: 'connect4', runTimeNs: 1500n, runCount: 3n }],
  });
  const resources: XdsResource[] = [
    {
      typeUrl: TYPE.cluster,
      name: 'c1',
      version: '3',
      resource: { '@type': TYPE.cluster, name: 'c1', type: 'EDS' },
    },
  ];
  const source: AdminSource = {
    readiness: () => ({ ready, reasons: ready ? [] : ['waiting for the first config'] }),
    serverInfo: () => ({ version: 'kernmesh/test', state: 'LIVE' }),
    configDump: () => ({ bootstrap: { node }, startedAt: new Date().toISOString(), resources }),
    debugXds: () => ({ types: {} }),
    debugMaps: () => ({ counters: { x: 1n } }),
    debugBpf: () => ({ programs: [] }),
    renderMetrics: () => metrics.render(),
  };
  const server = await startAdminServer(source, { host: '127.0.0.1', port: 0 });
  try {
    const get = async (path: string) => {
      const r = await fetch(`http://${server.address}${path}`);
      return { status: r.status, text: await r.text() };
    };
    let r = await get('/ready');
    assert.equal(r.status, 503);
    assert.match(r.text, /waiting for the first config/);
    ready = true;
    r = await get('/ready');
    assert.equal(r.status, 200);
    assert.equal((await get('/healthz')).status, 200);
    const dump = JSON.parse((await get('/config_dump?mask=dynamic_active_clusters.cluster.name')).text) as {
      configs: JsonObject[];
    };
    assert.deepEqual(dump.configs[1], {
      '@type': 'type.googleapis.com/envoy.admin.v3.ClustersConfigDump',
      dynamic_active_clusters: [{ cluster: { '@type': TYPE.cluster, name: 'c1' } }],
    });
    const one = JSON.parse((await get('/config_dump?resource=dynamic_active_clusters')).text) as {
      configs: JsonObject[];
    };
    assert.equal(
      one.configs[0]!['@type'],
      'type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster',
    );
    assert.equal((await get('/config_dump?resource=nonsense')).status, 400);
    assert.deepEqual(JSON.parse((await get('/debug/maps')).text), { counters: { x: '1' } });
    assert.equal((await get('/nope')).status, 404);
    const stats = await get('/stats/prometheus');
    assert.match(stats.text, /kernmesh_xds_pushes_total\{type="cds"\} 1/);
    assert.match(stats.text, /kernmesh_map_capacity\{map="services"\} 1024/);
    assert.match(stats.text, /kernmesh_fallback_total\{reason="no_endpoint"\} 2/);
    assert.equal((await get('/metrics')).text.length > 0, true);
    assertPromtoolAccepts(stats.text);
  } finally {
    await server.close();
  }
});

/** Encodes with the Envoy protos (strict: unknown fields fail) and decodes back: the JSON is that message. */
function decodesAs(typeName: string, json: JsonObject): void {
  const bytes = encodeFromJson(typeName, json);
  assert.ok(bytes.length > 0);
  const back = decodeToJson(typeName, bytes) as JsonObject;
  assert.equal(Array.isArray(back.configs ?? back.cluster_statuses), true);
}
