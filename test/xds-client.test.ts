// The xDS client against the in-process test control plane: SotW and Delta ADS as istiod sees them.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { XdsClient, type XdsClientOptions, type XdsUpdate } from '../src/xds/client.js';
import { buildNodeIdentity } from '../src/xds/identity.js';
import type { Validator } from '../src/xds/state.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';
import { FakeClock } from './support/control-plane-clock.js';
import { TestControlPlane } from './support/control-plane.js';

const silent = pino({ level: 'silent' });
const node = buildNodeIdentity({ podName: 'sleep-1', namespace: 'demo', instanceIps: ['10.1.2.3'], env: {} });

export function cluster(name: string, extra: JsonObject = {}): JsonObject {
  return {
    '@type': TYPE.cluster,
    name,
    type: 'EDS',
    eds_cluster_config: { eds_config: { ads: {} }, service_name: name },
    connect_timeout: '10s',
    ...extra,
  };
}
export function cla(name: string, ip = '127.0.0.2', port = 8080): JsonObject {
  return {
    '@type': TYPE.endpoint,
    cluster_name: name,
    endpoints: [
      { lb_endpoints: [{ endpoint: { address: { socket_address: { address: ip, port_value: port } } } }] },
    ],
  };
}
export function listener(name: string, route: string): JsonObject {
  return {
    '@type': TYPE.listener,
    name,
    address: { socket_address: { address: '0.0.0.0', port_value: 80 } },
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type':
                'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
              stat_prefix: name,
              rds: { config_source: { ads: {} }, route_config_name: route },
            },
          },
        ],
      },
    ],
  };
}
export function route(name: string, clusterName: string): JsonObject {
  return {
    '@type': TYPE.route,
    name,
    virtual_hosts: [
      { name: 'vh', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { cluster: clusterName } }] },
    ],
  };
}

/** Refuses clusters whose lb_policy is MAGLEV, naming the path, as translate/ would. */
const refuseMaglev: Validator = (typeUrl, resources) =>
  resources
    .filter((r) => r.resource['lb_policy'] === 'MAGLEV')
    .map((r) => ({
      typeUrl,
      name: r.name,
      reason: 'lb_policy: MAGLEV needs a hash policy the kernel cannot see',
    }));

function collect(client: XdsClient): XdsUpdate[] {
  const updates: XdsUpdate[] = [];
  client.on('update', (u) => updates.push(u));
  return updates;
}

function makeClient(cp: TestControlPlane, extra: Partial<XdsClientOptions> = {}): XdsClient {
  return new XdsClient({ address: cp.address, node, logger: silent, random: () => 0.5, ...extra });
}

describe('SotW ADS', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  test('initial requests, ACKs and EDS/RDS subscriptions carry exactly the fields istiod expects; all SYNCED', async () => {
    cp.setResources(
      TYPE.cluster,
      [cluster('outbound|80||a.demo.svc.cluster.local'), cluster('outbound|80||b.demo.svc.cluster.local')],
      { version: 'c1' },
    );
    cp.setResources(
      TYPE.endpoint,
      [
        cla('outbound|80||a.demo.svc.cluster.local'),
        cla('outbound|80||b.demo.svc.cluster.local', '127.0.0.3'),
      ],
      { version: 'e1' },
    );
    cp.setResources(TYPE.listener, [listener('0.0.0.0_80', '80')], { version: 'l1' });
    cp.setResources(TYPE.route, [route('80', 'outbound|80||a.demo.svc.cluster.local')], { version: 'r1' });
    const from = cp.requests.length;
    const client = makeClient(cp, { protocol: 'sotw' });
    const updates = collect(client);
    client.start();
    try {
      const rdsAck = await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack', { from });
      await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack', { from });
      const mine = cp.requests.slice(from);
      const stream = mine[0]!.stream;
      // First request: CDS with the node, no version, no nonce, no names (wildcard).
      assert.deepStrictEqual(mine[0]!.json, { node: mine[0]!.json['node'], type_url: TYPE.cluster });
      assert.equal((mine[0]!.json['node'] as JsonObject)['id'], node.id);
      assert.deepStrictEqual(mine[1]!.json, { type_url: TYPE.listener }, 'node only on the first request');
      const cdsAck = mine.find((r) => r.typeUrl === TYPE.cluster && r.kind === 'ack')!;
      assert.deepStrictEqual(cdsAck.json, {
        version_info: 'c1',
        type_url: TYPE.cluster,
        response_nonce: cdsAck.json['response_nonce'],
      });
      const edsInitial = mine.find((r) => r.typeUrl === TYPE.endpoint)!;
      assert.equal(edsInitial.kind, 'initial');
      assert.deepStrictEqual(edsInitial.json, {
        resource_names: ['outbound|80||a.demo.svc.cluster.local', 'outbound|80||b.demo.svc.cluster.local'],
        type_url: TYPE.endpoint,
      });
      assert.deepStrictEqual(rdsAck.json, {
        version_info: 'r1',
        resource_names: ['80'],
        type_url: TYPE.route,
        response_nonce: cp.lastNonce(TYPE.route),
      });
      assert.deepStrictEqual(cp.proxyStatus(stream), {
        Cluster: { status: 'SYNCED' },
        Listener: { status: 'SYNCED' },
        ClusterLoadAssignment: { status: 'SYNCED' },
        RouteConfiguration: { status: 'SYNCED' },
      });
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['outbound|80||a.demo.svc.cluster.local', 'outbound|80||b.demo.svc.cluster.local'],
      );
      assert.deepStrictEqual(
        client.snapshot(TYPE.route)[0]?.resource,
        route('80', 'outbound|80||a.demo.svc.cluster.local'),
      );
      assert.ok(updates.some((u) => u.typeUrl === TYPE.cluster && u.resources.length === 2));
      const st = client.status();
      assert.equal(st.connection.state, 'CONNECTED');
      assert.deepStrictEqual(
        st.types.map((t) => [t.typeUrl, t.status, t.version]),
        [
          [TYPE.cluster, 'ACKED', 'c1'],
          [TYPE.listener, 'ACKED', 'l1'],
          [TYPE.endpoint, 'ACKED', 'e1'],
          [TYPE.route, 'ACKED', 'r1'],
        ],
      );
    } finally {
      client.stop();
    }
  });
});
