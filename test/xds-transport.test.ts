// Transport and scale: a >4 MiB CDS response, TLS with a test CA and a bearer token, the node's
// identity as istiod parses it, and the real Istio fixtures served over ADS.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { XdsClient } from '../src/xds/client.js';
import { buildNodeIdentity } from '../src/xds/identity.js';
import { TYPE, type JsonObject, type JsonValue } from '../src/xds/types.js';
import { FakeClock } from './support/control-plane-clock.js';
import { makeTestPki, type TestPki } from './support/control-plane-tls.js';
import { TestControlPlane } from './support/control-plane.js';
import { readFixture } from './support/fixtures.js';
import {
  connectionState,
  makeClient,
  silentLogger as silent,
  testNode as node,
} from './support/xds-client.js';

const str = (v: JsonValue | undefined): string => (typeof v === 'string' ? v : JSON.stringify(v ?? null));

function bigCluster(i: number): JsonObject {
  const name = `outbound|${8000 + (i % 1000)}||svc-${i}.namespace-${i % 50}.svc.cluster.local`;
  return {
    '@type': TYPE.cluster,
    name,
    type: 'EDS',
    eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' }, service_name: name },
    connect_timeout: '10s',
    lb_policy: 'LEAST_REQUEST',
    circuit_breakers: {
      thresholds: [
        {
          max_connections: 4294967295,
          max_pending_requests: 4294967295,
          max_requests: 4294967295,
          max_retries: 4294967295,
          track_remaining: true,
        },
      ],
    },
    metadata: {
      filter_metadata: {
        istio: {
          services: [
            {
              host: `svc-${i}.namespace-${i % 50}.svc.cluster.local`,
              name: `svc-${i}`,
              namespace: `namespace-${i % 50}`,
            },
          ],
        },
      },
    },
    common_lb_config: { locality_weighted_lb_config: {} },
    filters: [
      {
        name: 'istio.metadata_exchange',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange',
          protocol: 'istio-peer-exchange',
        },
      },
    ],
  };
}

void describe('scale', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  for (const protocol of ['sotw', 'delta'] as const) {
    void test(`${protocol}: a 10,000-cluster CDS response larger than 4 MiB is received and ACKed`, async () => {
      const clusters = Array.from({ length: 10_000 }, (_, i) => bigCluster(i));
      cp.setResources(TYPE.cluster, clusters, { version: 'big-1' });
      cp.setResources(TYPE.listener, [], { version: 'l1' });
      cp.setResources(TYPE.endpoint, [], { version: 'e1' });
      const from = cp.requests.length;
      const client = makeClient(cp, { protocol });
      client.start();
      try {
        const ack = await cp.waitForAck(TYPE.cluster, { from, timeoutMs: 120_000 });
        const resp = cp.responses.find(
          (r) => r.typeUrl === TYPE.cluster && r.nonce === ack.json['response_nonce'],
        );
        assert.ok(resp && resp.bytes > 4 * 1024 * 1024, `response is ${resp?.bytes} bytes`);
        assert.equal(resp.names.length, 10_000);
        assert.equal(ack.json['error_detail'], undefined);
        const st = client.status().types.find((t) => t.typeUrl === TYPE.cluster)!;
        assert.equal(st.resources.length, 10_000);
        assert.ok(st.resources.every((r) => r.status === 'ACKED'));
        // The EDS subscription follows all 10,000 clusters.
        const eds = await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'initial', {
          from,
          timeoutMs: 60_000,
        });
        const names = (
          eds.json[protocol === 'sotw' ? 'resource_names' : 'resource_names_subscribe'] as JsonValue[]
        ).length;
        assert.equal(names, 10_000);
      } finally {
        client.stop();
      }
    });
  }
});

void describe('TLS and token', () => {
  let pki: TestPki;
  let cp: TestControlPlane;
  let tokenFile: string;
  before(async () => {
    pki = makeTestPki();
    tokenFile = join(pki.dir, 'istio-token');
    writeFileSync(tokenFile, 'token-one\n');
    cp = await TestControlPlane.start({
      tls: { certChain: pki.serverCert, privateKey: pki.serverKey },
      requireToken: 'token-one',
    });
    cp.setResources(TYPE.cluster, [], { version: 'c1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
  });
  after(async () => {
    await cp.stop();
    pki.cleanup();
  });

  void test('the server sees the bearer token and ClusterID; the token is re-read at each reconnect', async () => {
    const clock = new FakeClock();
    const client = makeClient(cp, {
      tls: { rootCaFile: pki.caCertFile, serverName: pki.serverName },
      tokenFile,
      clusterId: 'Kubernetes',
      clock,
    });
    const from = cp.requests.length;
    client.start();
    try {
      const ack = await cp.waitForAck(TYPE.listener, { from });
      const stream = cp.streamInfos().find((s) => s.id === ack.stream)!;
      assert.equal(stream.metadata['authorization'], 'Bearer token-one');
      assert.equal(stream.metadata['clusterid'], 'Kubernetes');
      assert.equal(cp.proxyStatus(ack.stream)['Cluster']?.status, 'SYNCED');
      // The token rotates: the next stream carries the new one (the server now wants it).
      writeFileSync(tokenFile, 'token-two\n');
      (cp as unknown as { opts: { requireToken: string } }).opts.requireToken = 'token-two';
      const backoff = connectionState(client, (s) => s.state === 'BACKOFF');
      cp.disconnectAll();
      clock.advance((await backoff).retryInMs ?? 0);
      const mark = cp.requests.length;
      const ack2 = await cp.waitForAck(TYPE.listener, { from: mark });
      assert.equal(
        cp.streamInfos().find((s) => s.id === ack2.stream)?.metadata['authorization'],
        'Bearer token-two',
      );
    } finally {
      client.stop();
    }
  });

  for (const [what, tls, expected] of [
    [
      'a CA that did not sign the server certificate',
      () => ({ rootCaFile: pki.otherCaCertFile, serverName: pki.serverName }),
      /certificate/i,
    ],
    [
      'a server name not in the certificate',
      () => ({ rootCaFile: pki.caCertFile, serverName: 'istiod.wrong.svc' }),
      /istiod\.wrong\.svc|altnames|Hostname/i,
    ],
  ] as const) {
    void test(`${what} fails with a clear error and retries with backoff`, async () => {
      const clock = new FakeClock();
      const client = makeClient(cp, { tls: tls(), tokenFile, clock });
      client.start();
      try {
        const first = await connectionState(client, (s) => s.state === 'BACKOFF');
        assert.match(
          first.lastError ?? '',
          /ADS stream to 127\.0\.0\.1:\d+ \(TLS, server name [^)]+\) closed: UNAVAILABLE/,
        );
        assert.match(first.lastError ?? '', expected);
        assert.equal(first.retryInMs, 500);
        const second = connectionState(client, (s) => s.state === 'BACKOFF');
        clock.advance(500);
        assert.equal((await second).retryInMs, 1000, 'it keeps retrying, backing off');
        assert.equal(client.status().connection.attempts, 2);
      } finally {
        client.stop();
      }
    });
  }
});

void describe('node identity', () => {
  void test('node id and metadata have the types istiod parses (string INSTANCE_IPS, string booleans, object PROXY_CONFIG)', async () => {
    const cp = await TestControlPlane.start();
    cp.setResources(TYPE.cluster, [], { version: 'c1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    const id = buildNodeIdentity({
      env: {
        POD_NAME: 'reviews-v1-abc',
        POD_NAMESPACE: 'bookinfo',
        INSTANCE_IP: '10.244.1.7',
        SERVICE_ACCOUNT: 'bookinfo-reviews',
        NODE_NAME: 'worker-1',
        ISTIO_META_MESH_ID: 'cluster.local',
        ISTIO_META_CLUSTER_ID: 'Kubernetes',
        ISTIO_META_WORKLOAD_NAME: 'reviews-v1',
        ISTIO_METAJSON_LABELS: '{"app":"reviews","version":"v1"}',
        ISTIO_META_ISTIO_VERSION: '1.24.0',
      },
      instanceIps: ['10.244.1.7', 'fd00::7'],
      metadata: { ENABLE_HBONE: true, DNS_CAPTURE: false },
      locality: { region: 'eu-west1', zone: 'eu-west1-b' },
    });
    const client = new XdsClient({ address: cp.address, node: id, logger: silent, protocol: 'sotw' });
    client.start();
    try {
      const first = await cp.waitFor((r) => r.kind === 'initial');
      const n = first.json['node'] as JsonObject;
      assert.equal(n['id'], 'sidecar~10.244.1.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local');
      assert.equal(n['cluster'], 'reviews-v1.bookinfo');
      assert.deepStrictEqual(n['locality'], { region: 'eu-west1', zone: 'eu-west1-b' });
      assert.equal(n['user_agent_name'], 'kernmesh');
      const md = n['metadata'] as JsonObject;
      assert.equal(md['INSTANCE_IPS'], '10.244.1.7,fd00::7');
      assert.equal(typeof md['INSTANCE_IPS'], 'string');
      assert.equal(md['ENABLE_HBONE'], 'true');
      assert.equal(md['DNS_CAPTURE'], 'false');
      assert.deepStrictEqual(md['PROXY_CONFIG'], {});
      assert.deepStrictEqual(md['LABELS'], { app: 'reviews', version: 'v1' });
      assert.equal(md['NAMESPACE'], 'bookinfo');
      assert.equal(md['NAME'], 'reviews-v1-abc');
      assert.equal(md['SERVICE_ACCOUNT'], 'bookinfo-reviews');
      assert.equal(md['NODE_NAME'], 'worker-1');
      assert.equal(md['CLUSTER_ID'], 'Kubernetes');
      assert.equal(md['MESH_ID'], 'cluster.local');
      assert.equal(md['ISTIO_VERSION'], '1.24.0');
      assert.equal(md['WORKLOAD_NAME'], 'reviews-v1');
      for (const [k, v] of Object.entries(md)) {
        if (k === 'PROXY_CONFIG' || k === 'LABELS') assert.equal(typeof v, 'object', k);
        else assert.equal(typeof v, 'string', `${k} is a string`);
      }
    } finally {
      client.stop();
      await cp.stop();
    }
  });

  void test('PROXY_CONFIG from the environment is sent as an object; without it, {} is sent', () => {
    assert.deepStrictEqual(
      buildNodeIdentity({ env: { PROXY_CONFIG: '{"concurrency":2}' } }).metadata['PROXY_CONFIG'],
      { concurrency: 2 },
    );
    assert.deepStrictEqual(buildNodeIdentity({ env: {} }).metadata['PROXY_CONFIG'], {});
  });
});

/**
 * A dump's endpoints are Envoy's rendering of its host sets, where a locality with no weight reads
 * `load_balancing_weight: 0`; sent as config that value breaks Envoy's own rule (>= 1).
 */
function asSent(cla: JsonObject): JsonObject {
  const groups = cla['endpoints'];
  if (!Array.isArray(groups)) return cla;
  return {
    ...cla,
    endpoints: groups.map((g) => {
      if (!g || typeof g !== 'object' || Array.isArray(g) || g['load_balancing_weight'] !== 0) return g;
      const { load_balancing_weight: _w, ...rest } = g;
      return rest;
    }),
  };
}

function fixtureResources(file: string, typeUrl: string): JsonObject[] {
  const dump: JsonValue = readFixture(file);
  const out: JsonObject[] = [];
  const seen = new Set<string>();
  const walk = (v: JsonValue): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      if (v['@type'] === typeUrl) {
        const name = JSON.stringify(v['name'] ?? v['cluster_name'] ?? null);
        // Static and dynamic sections may repeat a name; one response carries each name once.
        if (!seen.has(name)) {
          seen.add(name);
          out.push(typeUrl === TYPE.endpoint ? asSent(v) : v);
        }
        return;
      }
      Object.values(v).forEach(walk);
    }
  };
  walk(dump);
  return out;
}

void describe('real Istio fixtures over ADS', () => {
  void test('every cluster, listener, route and endpoint in the fixtures arrives decoded without loss', async () => {
    const uniq = (xs: JsonObject[], key: string): JsonObject[] => [
      ...new Map(xs.filter((x) => typeof x[key] === 'string').map((x) => [str(x[key]), x])).values(),
    ];
    const cds = uniq(
      [
        ...fixtureResources('gateway-route-and-dr-subset-cluster.configdump.json', TYPE.cluster),
        ...fixtureResources('waypoint-full.configdump.json', TYPE.cluster),
      ],
      'name',
    );
    const lds = uniq(
      [
        ...fixtureResources('sidecar-listeners.configdump.yaml', TYPE.listener),
        ...fixtureResources('waypoint-full.configdump.json', TYPE.listener),
      ],
      'name',
    );
    const rds = uniq(
      [
        ...fixtureResources('gateway-route-and-dr-subset-cluster.configdump.json', TYPE.route),
        ...fixtureResources('waypoint-full.configdump.json', TYPE.route),
      ],
      'name',
    );
    const eds = uniq(
      [
        ...fixtureResources('sidecar-endpoints.configdump.json', TYPE.endpoint),
        ...fixtureResources('waypoint-full.configdump.json', TYPE.endpoint),
      ],
      'cluster_name',
    );
    assert.ok(cds.length > 0 && lds.length > 20 && rds.length > 0 && eds.length > 30);
    // The fixtures come from different proxies: add plain clusters and listeners so that every
    // fixture CLA and route is subscribed, and plain CLAs for fixture EDS clusters that lack one.
    const edsOf = (c: JsonObject): string =>
      str((c['eds_cluster_config'] as JsonObject | undefined)?.['service_name'] ?? c['name']);
    const extraClusters = eds
      .filter((e) => !cds.some((c) => c['type'] === 'EDS' && edsOf(c) === e['cluster_name']))
      .map((e, k) => ({
        '@type': TYPE.cluster,
        name: `eds-holder-${k}`,
        type: 'EDS',
        eds_cluster_config: { eds_config: { ads: {} }, service_name: str(e['cluster_name']) },
      }));
    const extraCla = cds
      .filter((c) => c['type'] === 'EDS' && !eds.some((e) => e['cluster_name'] === edsOf(c)))
      .map((c) => ({ '@type': TYPE.endpoint, cluster_name: edsOf(c) }));
    const extraListeners = rds.map((r, i) => ({
      '@type': TYPE.listener,
      name: `route-holder-${i}`,
      address: { socket_address: { address: '127.0.0.1', port_value: 20000 + i } },
      filter_chains: [
        {
          filters: [
            {
              name: 'hcm',
              typed_config: {
                '@type':
                  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
                stat_prefix: 'x',
                rds: { config_source: { ads: {} }, route_config_name: str(r['name']) },
              },
            },
          ],
        },
      ],
    }));
    const cp = await TestControlPlane.start();
    cp.setResources(TYPE.cluster, [...cds, ...extraClusters]);
    cp.setResources(TYPE.listener, [...lds, ...extraListeners]);
    cp.setResources(TYPE.route, rds);
    cp.setResources(TYPE.endpoint, [...eds, ...extraCla]);
    for (const protocol of ['sotw', 'delta'] as const) {
      const from = cp.requests.length;
      const client = new XdsClient({ address: cp.address, node, logger: silent, protocol });
      client.start();
      try {
        await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack', { from });
        await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack', { from });
        assert.equal(cp.requests.slice(from).filter((r) => r.kind === 'nack').length, 0);
        const check = (typeUrl: string, want: JsonObject[], key: string): void => {
          const got = new Map(client.snapshot(typeUrl).map((x) => [x.name, x.resource]));
          for (const w of want)
            assert.deepStrictEqual(got.get(str(w[key])), w, `${protocol} ${typeUrl} ${str(w[key])}`);
        };
        check(TYPE.cluster, cds, 'name');
        check(TYPE.listener, lds, 'name');
        check(TYPE.route, rds, 'name');
        check(TYPE.endpoint, eds, 'cluster_name');
        assert.deepStrictEqual(
          Object.values(cp.proxyStatus()).map((x) => x.status),
          ['SYNCED', 'SYNCED', 'SYNCED', 'SYNCED'],
        );
      } finally {
        client.stop();
      }
    }
    await cp.stop();
  });
});
