// The xDS client against the in-process test control plane: SotW and Delta ADS as istiod sees them.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { XdsClient, type XdsUpdate } from '../src/xds/client.js';
import type { Validator } from '../src/xds/state.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';
import { FakeClock } from './support/control-plane-clock.js';
import { TestControlPlane } from './support/control-plane.js';
import { makeClient, nextState, testNode as node } from './support/xds-client.js';

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

void describe('SotW ADS', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  void test('initial requests, ACKs and EDS/RDS subscriptions carry exactly the fields istiod expects; all SYNCED', async () => {
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

  void test('a bad resource is NACKed with its path and reason while the good ones of the response apply; ERROR in proxy-status', async () => {
    cp.setResources(TYPE.cluster, [cluster('good-1'), cluster('bad', { lb_policy: 'MAGLEV' })], {
      version: 'c1',
    });
    cp.setResources(TYPE.endpoint, [cla('good-1'), cla('bad')], { version: 'e1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    const from = cp.requests.length;
    const client = makeClient(cp, { protocol: 'sotw', validate: refuseMaglev });
    const rejected: string[] = [];
    client.on('rejected', (e) => rejected.push(...e.rejections.map((r) => r.name)));
    client.start();
    try {
      const nack = await cp.waitForNack(TYPE.cluster, { from });
      // No version accepted yet: version_info is empty, so proto3 leaves it out.
      assert.deepStrictEqual(nack.json, {
        type_url: TYPE.cluster,
        response_nonce: nack.json['response_nonce'],
        error_detail: {
          code: 3,
          message: 'bad: lb_policy: MAGLEV needs a hash policy the kernel cannot see',
        },
      });
      await cp.waitForAck(TYPE.endpoint, { from });
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['good-1'],
      );
      assert.deepStrictEqual(
        client.snapshot(TYPE.endpoint).map((r) => r.name),
        ['good-1'],
        'only the accepted cluster is subscribed',
      );
      assert.deepStrictEqual(cp.proxyStatus(nack.stream)['Cluster'], {
        status: 'ERROR',
        error: 'bad: lb_policy: MAGLEV needs a hash policy the kernel cannot see',
      });
      assert.deepStrictEqual(rejected, ['bad']);
      const cds = client.status().types.find((t) => t.typeUrl === TYPE.cluster)!;
      assert.equal(cds.status, 'NACKED');
      assert.match(cds.lastError ?? '', /MAGLEV/);
      assert.equal(cds.resources.find((r) => r.name === 'bad')?.status, 'NACKED');
      assert.equal(cds.resources.find((r) => r.name === 'good-1')?.status, 'ACKED');
      // The operator fixes the config: the next push is ACKed with its version, ERROR clears.
      const fix = cp.requests.length;
      cp.setResources(TYPE.cluster, [cluster('good-1'), cluster('bad', { lb_policy: 'RANDOM' })], {
        version: 'c2',
      });
      const ack = await cp.waitForAck(TYPE.cluster, { from: fix });
      assert.equal(ack.json['version_info'], 'c2');
      await cp.waitForAck(TYPE.endpoint, { from: fix });
      assert.equal(cp.proxyStatus(nack.stream)['Cluster']?.status, 'SYNCED');
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['bad', 'good-1'],
      );
      // Bad again: this NACK carries the version accepted last (c2) with the rejected nonce.
      const again = cp.requests.length;
      cp.setResources(TYPE.cluster, [cluster('good-1'), cluster('bad', { lb_policy: 'MAGLEV' })], {
        version: 'c3',
      });
      const nack2 = await cp.waitForNack(TYPE.cluster, { from: again });
      assert.deepStrictEqual(nack2.json, {
        version_info: 'c2',
        type_url: TYPE.cluster,
        response_nonce: cp.lastNonce(TYPE.cluster),
        error_detail: {
          code: 3,
          message: 'bad: lb_policy: MAGLEV needs a hash policy the kernel cannot see',
        },
      });
      assert.equal(
        client.snapshot(TYPE.cluster).find((r) => r.name === 'bad')?.resource['lb_policy'],
        'RANDOM',
      );
    } finally {
      client.stop();
    }
  });

  void test('EDS follows CDS (added, removed, renamed) with the latest nonce; partial EDS pushes; empty CDS deletes all', async () => {
    cp.setResources(TYPE.cluster, [cluster('a'), cluster('b')], { version: 'c1' });
    cp.setResources(TYPE.endpoint, [cla('a'), cla('b'), cla('c'), cla('b2')], { version: 'e1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    const from = cp.requests.length;
    const client = makeClient(cp, { protocol: 'sotw' });
    const updates = collect(client);
    client.start();
    try {
      await cp.waitForAck(TYPE.endpoint, { from });
      // Add c, rename b → b2.
      let mark = cp.requests.length;
      cp.setResources(TYPE.cluster, [cluster('a'), cluster('b2'), cluster('c')], { version: 'c2' });
      const sub = await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'subscription', {
        from: mark,
      });
      assert.deepStrictEqual(sub.json['resource_names'], ['a', 'b2', 'c']);
      assert.equal(sub.json['version_info'], 'e1', 'the last accepted EDS version');
      assert.equal(
        cp.responses.filter((r) => r.typeUrl === TYPE.endpoint && r.stream === sub.stream).at(-2)?.nonce,
        sub.json['response_nonce'],
        'the latest EDS nonce',
      );
      await cp.waitForAck(TYPE.endpoint, { from: cp.requests.indexOf(sub) + 1 });
      assert.deepStrictEqual(
        client.snapshot(TYPE.endpoint).map((r) => r.name),
        ['a', 'b2', 'c'],
      );
      // Remove c.
      mark = cp.requests.length;
      cp.setResources(TYPE.cluster, [cluster('a'), cluster('b2')], { version: 'c3' });
      const sub2 = await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'subscription', {
        from: mark,
      });
      assert.deepStrictEqual(sub2.json['resource_names'], ['a', 'b2']);
      await cp.waitForAck(TYPE.endpoint, { from: cp.requests.indexOf(sub2) + 1 });
      // A partial EDS push carries only b2: a is unchanged.
      mark = cp.requests.length;
      const before = client.snapshot(TYPE.endpoint).find((r) => r.name === 'a');
      cp.updateResources(TYPE.endpoint, [cla('b2', '127.0.0.9', 9090)], { version: 'e2' });
      await cp.waitForAck(TYPE.endpoint, { from: mark });
      assert.deepStrictEqual(cp.responses.at(-1)?.names, ['b2']);
      const snap = client.snapshot(TYPE.endpoint);
      assert.deepStrictEqual(
        snap.find((r) => r.name === 'a'),
        before,
        'a untouched by the partial push',
      );
      assert.equal(snap.find((r) => r.name === 'b2')?.version, 'e2');
      assert.deepStrictEqual(snap.find((r) => r.name === 'b2')?.resource, cla('b2', '127.0.0.9', 9090));
      // An empty CDS response deletes every cluster and the endpoint subscriptions with them.
      mark = cp.requests.length;
      const n = updates.length;
      cp.setResources(TYPE.cluster, [], { version: 'c4' });
      const ack = await cp.waitForAck(TYPE.cluster, { from: mark });
      assert.equal(ack.json['version_info'], 'c4');
      await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'subscription', { from: mark });
      assert.deepStrictEqual(client.snapshot(TYPE.cluster), []);
      assert.deepStrictEqual(client.snapshot(TYPE.endpoint), []);
      assert.ok(updates.slice(n).some((u) => u.typeUrl === TYPE.cluster && u.resources.length === 0));
    } finally {
      client.stop();
    }
  });
});

void describe('Delta ADS', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  void test('subscribe/unsubscribe in their own requests, ACKs without names, removed resources, NACK detail, SYNCED', async () => {
    cp.setResources(TYPE.cluster, [cluster('a'), cluster('b')], { version: 'c1' });
    cp.setResources(TYPE.endpoint, [cla('a'), cla('b')], { version: 'e1' });
    cp.setResources(TYPE.listener, [listener('0.0.0.0_80', '80')], { version: 'l1' });
    cp.setResources(TYPE.route, [route('80', 'a')], { version: 'r1' });
    const from = cp.requests.length;
    const client = makeClient(cp, { validate: refuseMaglev });
    client.start();
    try {
      await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack', { from });
      await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack', { from });
      const mine = cp.requests.slice(from);
      assert.equal(mine[0]!.mode, 'delta');
      assert.deepStrictEqual(mine[0]!.json, { node: mine[0]!.json['node'], type_url: TYPE.cluster });
      assert.deepStrictEqual(mine[1]!.json, { type_url: TYPE.listener });
      const cdsAck = mine.find((r) => r.typeUrl === TYPE.cluster && r.kind === 'ack')!;
      assert.deepStrictEqual(cdsAck.json, {
        type_url: TYPE.cluster,
        response_nonce: cdsAck.json['response_nonce'],
      });
      const edsSub = mine.find((r) => r.typeUrl === TYPE.endpoint)!;
      assert.deepStrictEqual(edsSub.json, { type_url: TYPE.endpoint, resource_names_subscribe: ['a', 'b'] });
      assert.deepStrictEqual(cp.proxyStatus(mine[0]!.stream), {
        Cluster: { status: 'SYNCED' },
        Listener: { status: 'SYNCED' },
        ClusterLoadAssignment: { status: 'SYNCED' },
        RouteConfiguration: { status: 'SYNCED' },
      });
      // Cluster b goes away: CDS removal, then an EDS unsubscribe in a request of its own.
      let mark = cp.requests.length;
      cp.setResources(TYPE.cluster, [cluster('a'), cluster('c')], { version: 'c2' });
      cp.setResources(TYPE.endpoint, [cla('a'), cla('c')], { version: 'e2' });
      const sub = await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'subscription', {
        from: mark,
      });
      assert.deepStrictEqual(sub.json, {
        type_url: TYPE.endpoint,
        resource_names_subscribe: ['c'],
        resource_names_unsubscribe: ['b'],
      });
      const ackAfter = await cp.waitForAck(TYPE.endpoint, { from: cp.requests.indexOf(sub) + 1 });
      assert.deepStrictEqual(Object.keys(ackAfter.json).sort(), ['response_nonce', 'type_url']);
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['a', 'c'],
      );
      assert.deepStrictEqual(
        client.snapshot(TYPE.endpoint).map((r) => r.name),
        ['a', 'c'],
      );
      // A bad cluster: NACK with the error detail, the good change applies.
      mark = cp.requests.length;
      cp.setResources(
        TYPE.cluster,
        [cluster('a', { lb_policy: 'RANDOM' }), cluster('c', { lb_policy: 'MAGLEV' })],
        { version: 'c3' },
      );
      const nack = await cp.waitForNack(TYPE.cluster, { from: mark });
      assert.deepStrictEqual(nack.json, {
        type_url: TYPE.cluster,
        response_nonce: nack.json['response_nonce'],
        error_detail: { code: 3, message: 'c: lb_policy: MAGLEV needs a hash policy the kernel cannot see' },
      });
      assert.equal(
        client.snapshot(TYPE.cluster).find((r) => r.name === 'a')?.resource['lb_policy'],
        'RANDOM',
      );
      assert.equal(
        client.snapshot(TYPE.cluster).find((r) => r.name === 'c')?.resource['lb_policy'],
        undefined,
      );
      assert.equal(cp.proxyStatus(nack.stream)['Cluster']?.status, 'ERROR');
    } finally {
      client.stop();
    }
  });

  void test('waypoints: istio.workload.Address over Delta tells which service uses which waypoint', async () => {
    const address = (ns: string, host: string, vip: number[], wp?: JsonObject): JsonObject => ({
      '@type': TYPE.address,
      service: {
        name: host.split('.')[0]!,
        namespace: ns,
        hostname: host,
        addresses: [{ network: '', address: Buffer.from(vip).toString('base64') }],
        ports: [{ service_port: 80, target_port: 8080 }],
        ...(wp ? { waypoint: wp } : {}),
      },
    });
    cp.setResources(TYPE.cluster, [], { version: 'c1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    cp.setResources(TYPE.address, [
      {
        typeUrl: TYPE.address,
        name: 'demo/reviews.demo.svc.cluster.local',
        version: '1',
        resource: address('demo', 'reviews.demo.svc.cluster.local', [127, 100, 0, 10], {
          address: { network: '', address: Buffer.from([127, 100, 0, 200]).toString('base64') },
          hbone_mtls_port: 15008,
        }),
      },
      {
        typeUrl: TYPE.address,
        name: 'demo/ratings.demo.svc.cluster.local',
        version: '1',
        resource: address('demo', 'ratings.demo.svc.cluster.local', [127, 100, 0, 11], {
          hostname: { namespace: 'demo', hostname: 'waypoint.demo.svc.cluster.local' },
          hbone_mtls_port: 15008,
        }),
      },
      {
        typeUrl: TYPE.address,
        name: 'demo/plain.demo.svc.cluster.local',
        version: '1',
        resource: address('demo', 'plain.demo.svc.cluster.local', [127, 100, 0, 12]),
      },
    ]);
    const from = cp.requests.length;
    const client = makeClient(cp, { protocol: 'sotw', waypoints: true });
    const seen: unknown[] = [];
    client.on('waypoints', (w) => seen.push(w));
    client.start();
    try {
      const ack = await cp.waitForAck(TYPE.address, { from });
      assert.equal(ack.mode, 'delta', 'the workload API goes over Delta even when Envoy types use SotW');
      assert.deepStrictEqual(client.waypoints(), [
        {
          namespace: 'demo',
          hostname: 'ratings.demo.svc.cluster.local',
          vips: ['127.100.0.11'],
          ports: [{ servicePort: 80, targetPort: 8080 }],
          waypoint: {
            port: 15008,
            hostname: { namespace: 'demo', hostname: 'waypoint.demo.svc.cluster.local' },
          },
        },
        {
          namespace: 'demo',
          hostname: 'reviews.demo.svc.cluster.local',
          vips: ['127.100.0.10'],
          ports: [{ servicePort: 80, targetPort: 8080 }],
          waypoint: { port: 15008, address: '127.100.0.200' },
        },
      ]);
      assert.equal(seen.length, 1);
      assert.equal(cp.proxyStatus(ack.stream)['Address']?.status, 'SYNCED');
    } finally {
      client.stop();
    }
  });
});

void describe('disconnects', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  for (const protocol of ['sotw', 'delta'] as const) {
    void test(`${protocol}: config is kept, the reconnect waits the backoff, versions are resent, nothing is applied twice`, async () => {
      cp.respond = true;
      cp.setResources(TYPE.cluster, [cluster('a'), cluster('b')], { version: 'c1' });
      cp.setResources(TYPE.endpoint, [cla('a'), cla('b')], { version: 'e1' });
      cp.setResources(TYPE.listener, [listener('0.0.0.0_80', '80')], { version: 'l1' });
      cp.setResources(TYPE.route, [route('80', 'a')], { version: 'r1' });
      const clock = new FakeClock();
      const from = cp.requests.length;
      const client = makeClient(cp, { protocol, clock });
      const updates = collect(client);
      client.start();
      try {
        await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack', { from });
        await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack', { from });
        const firstStream = cp.requests[from]!.stream;
        const applied = updates.length;
        const before = TYPE_LIST.map((t) => client.snapshot(t));

        const backoff = nextState(client, 'BACKOFF');
        cp.disconnectAll();
        const st = await backoff;
        assert.equal(st.retryInMs, 500, 'first retry after 0.5 s (jitter source fixed at the middle)');
        assert.deepStrictEqual(clock.pending(), [500]);
        assert.deepStrictEqual(
          TYPE_LIST.map((t) => client.snapshot(t)),
          before,
          'config kept while disconnected',
        );
        assert.equal(client.status().connection.state, 'BACKOFF');

        const mark = cp.requests.length;
        clock.advance(499);
        assert.equal(cp.requests.length, mark, 'no reconnect before the backoff elapsed');
        clock.advance(1);
        await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack', { from: mark });
        await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack', { from: mark });
        const again = cp.requests.slice(mark).filter((r) => r.kind === 'initial');
        assert.ok(again[0]!.stream > firstStream);
        const byType = new Map(again.map((r) => [r.typeUrl, r.json]));
        if (protocol === 'sotw') {
          assert.equal(byType.get(TYPE.cluster)?.['version_info'], 'c1');
          assert.equal(byType.get(TYPE.listener)?.['version_info'], 'l1');
          assert.deepStrictEqual(byType.get(TYPE.endpoint), {
            version_info: 'e1',
            resource_names: ['a', 'b'],
            type_url: TYPE.endpoint,
          });
          assert.deepStrictEqual(byType.get(TYPE.route), {
            version_info: 'r1',
            resource_names: ['80'],
            type_url: TYPE.route,
          });
        } else {
          const versions = (t: string): string[] =>
            Object.keys(
              (byType.get(t)?.['initial_resource_versions'] as JsonObject | undefined) ?? {},
            ).sort();
          assert.deepStrictEqual(versions(TYPE.cluster), ['a', 'b']);
          assert.deepStrictEqual(versions(TYPE.endpoint), ['a', 'b']);
          assert.deepStrictEqual(byType.get(TYPE.endpoint)?.['resource_names_subscribe'], ['a', 'b']);
          assert.deepStrictEqual(versions(TYPE.route), ['80']);
        }
        assert.ok(
          (byType.get(TYPE.cluster)?.['node'] as JsonObject | undefined)?.['id'],
          "the node goes on the new stream's first request",
        );
        assert.equal(updates.length, applied, 'the same config resent is not applied again');
        assert.deepStrictEqual(
          Object.values(cp.proxyStatus()).map((x) => x.status),
          ['SYNCED', 'SYNCED', 'SYNCED', 'SYNCED'],
        );
      } finally {
        client.stop();
      }
    });
  }

  void test('backoff grows 0.5 s → 1 → 2 → 4 s while streams fail without config, and resets after a healthy one', async () => {
    cp.setResources(TYPE.cluster, [cluster('a')], { version: 'c1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    const clock = new FakeClock();
    const client = makeClient(cp, { protocol: 'sotw', clock });
    cp.respond = false;
    let mark = cp.requests.length;
    client.start();
    try {
      const delays: number[] = [];
      for (let i = 0; i < 4; i++) {
        await cp.waitFor((r) => r.typeUrl === TYPE.listener && r.kind === 'initial', { from: mark });
        const backoff = nextState(client, 'BACKOFF');
        cp.disconnectAll();
        delays.push((await backoff).retryInMs ?? -1);
        mark = cp.requests.length;
        clock.advance(delays[i]!);
      }
      assert.deepStrictEqual(delays, [500, 1000, 2000, 4000]);
      cp.respond = true;
      await cp.waitFor((r) => r.typeUrl === TYPE.listener && r.kind === 'initial', { from: mark });
      // The stream is answered: healthy. Its next failure starts again at 0.5 s.
      mark = cp.requests.length;
      cp.push(TYPE.cluster);
      await cp.waitForAck(TYPE.cluster, { from: mark });
      const backoff = nextState(client, 'BACKOFF');
      cp.disconnectAll();
      assert.equal((await backoff).retryInMs, 500);
      assert.match(
        client.status().connection.lastError ?? '',
        /UNAVAILABLE test control plane closed the stream/,
      );
    } finally {
      cp.respond = true;
      client.stop();
    }
  });
});

const TYPE_LIST = [TYPE.cluster, TYPE.endpoint, TYPE.listener, TYPE.route];

void describe('warming and start-up', () => {
  let cp: TestControlPlane;
  before(async () => {
    cp = await TestControlPlane.start();
  });
  after(async () => {
    await cp.stop();
  });

  void test('a new EDS cluster is held back until its endpoints arrive, or until the 15 s initial fetch timeout', async () => {
    cp.setResources(TYPE.cluster, [cluster('ready'), cluster('slow')], { version: 'c1' });
    cp.setResources(TYPE.endpoint, [cla('ready')], { version: 'e1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    const clock = new FakeClock();
    const from = cp.requests.length;
    const client = makeClient(cp, { protocol: 'sotw', clock });
    const updates = collect(client);
    client.start();
    try {
      await cp.waitForAck(TYPE.endpoint, { from });
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['ready'],
      );
      assert.deepStrictEqual(client.status().warming, ['slow']);
      assert.ok(clock.pending().includes(15_000), 'initial fetch timer armed');
      const cdsUpdates = (): string[][] =>
        updates.filter((u) => u.typeUrl === TYPE.cluster).map((u) => u.resources.map((r) => r.name));
      assert.deepStrictEqual(cdsUpdates().at(-1), ['ready']);
      // The endpoints of "slow" never come: after 15 s it is used without them (DOES_NOT_EXIST).
      clock.advance(15_000);
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['ready', 'slow'],
      );
      assert.deepStrictEqual(cdsUpdates().at(-1), ['ready', 'slow']);
      assert.deepStrictEqual(client.status().warming, []);
      const eds = client.status().types.find((t) => t.typeUrl === TYPE.endpoint)!;
      assert.equal(eds.resources.find((r) => r.name === 'slow')?.status, 'DOES_NOT_EXIST');
      // A third cluster whose endpoints arrive in the same push is released when they do.
      const mark = cp.requests.length;
      cp.setResources(TYPE.endpoint, [cla('ready'), cla('third')], { version: 'e2', push: false });
      cp.setResources(TYPE.cluster, [cluster('ready'), cluster('slow'), cluster('third')], { version: 'c2' });
      await cp.waitForAck(TYPE.endpoint, { from: mark });
      assert.deepStrictEqual(
        client.snapshot(TYPE.cluster).map((r) => r.name),
        ['ready', 'slow', 'third'],
      );
      assert.deepStrictEqual(client.status().warming, []);
      assert.deepStrictEqual(
        clock.pending(),
        [],
        'the initial fetch timer of third was cancelled when its endpoints came',
      );
    } finally {
      client.stop();
    }
  });

  void test('istiod\'s "not ready" Unavailable at start-up is retried with backoff until config arrives', async () => {
    cp.setResources(TYPE.cluster, [], { version: 'c1' });
    cp.setResources(TYPE.listener, [], { version: 'l1' });
    cp.refuseNextStreams(2);
    const clock = new FakeClock();
    const client = makeClient(cp, { protocol: 'delta', clock });
    const from = cp.requests.length;
    const first = nextState(client, 'BACKOFF');
    client.start();
    try {
      const b1 = await first;
      assert.match(b1.lastError ?? '', /UNAVAILABLE server is not ready to serve discovery information/);
      const second = nextState(client, 'BACKOFF');
      clock.advance(b1.retryInMs ?? 0);
      const b2 = await second;
      assert.equal(b2.retryInMs, 1000);
      const connected = nextState(client, 'CONNECTED');
      clock.advance(b2.retryInMs ?? 0);
      await connected;
      await cp.waitForAck(TYPE.listener, { from });
      assert.equal(client.status().connection.attempts, 3);
      assert.deepStrictEqual(
        Object.values(cp.proxyStatus()).map((x) => x.status),
        ['SYNCED', 'SYNCED'],
      );
    } finally {
      client.stop();
    }
  });
});

void test('istiod restarts (GOAWAY, connection refused): the client keeps its config and resyncs with the new instance', async () => {
  const first = await TestControlPlane.start();
  const port = Number(first.address.split(':')[1]);
  first.setResources(TYPE.cluster, [cluster('a')], { version: 'c1' });
  first.setResources(TYPE.endpoint, [cla('a')], { version: 'e1' });
  first.setResources(TYPE.listener, [], { version: 'l1' });
  const clock = new FakeClock();
  const client = makeClient(first, { protocol: 'sotw', clock });
  const updates = collect(client);
  client.start();
  let second: TestControlPlane | undefined;
  try {
    await first.waitForAck(TYPE.endpoint);
    const applied = updates.length;
    const down = nextState(client, 'BACKOFF');
    await first.stop();
    await down;
    assert.deepStrictEqual(
      client.snapshot(TYPE.cluster).map((r) => r.name),
      ['a'],
    );
    second = await TestControlPlane.start({ port });
    second.setResources(TYPE.cluster, [cluster('a')], { version: 'c1' });
    second.setResources(TYPE.endpoint, [cla('a')], { version: 'e1' });
    second.setResources(TYPE.listener, [], { version: 'l1' });
    assert.deepStrictEqual(clock.pending(), [500]);
    clock.advance(500);
    const cds = await second.waitFor((r) => r.typeUrl === TYPE.cluster && r.kind === 'initial');
    assert.equal(cds.json['version_info'], 'c1');
    await second.waitForAck(TYPE.endpoint);
    assert.equal(updates.length, applied, 'same config from the new instance: nothing re-applied');
    assert.deepStrictEqual(
      Object.values(second.proxyStatus()).map((x) => x.status),
      ['SYNCED', 'SYNCED', 'SYNCED'],
    );
  } finally {
    client.stop();
    await second?.stop();
  }
});

void test('initial fetch: complete once CDS, LDS, every EDS cluster and every named route arrived; or at its timeout', async () => {
  const cp = await TestControlPlane.start();
  const clock = new FakeClock();
  const client = makeClient(cp, { protocol: 'delta', clock, initialFetchTimeoutMs: 15_000 });
  const events: string[] = [];
  client.on('update', (u) => events.push(u.typeUrl));
  client.on('initialized', (i) => events.push(`initialized ${String(i.timedOut)}`));
  try {
    cp.setResources(TYPE.cluster, [cluster('a')]);
    cp.setResources(TYPE.listener, [listener('0.0.0.0_80', '80')]);
    client.start();
    await cp.waitFor((r) => r.typeUrl === TYPE.listener && r.kind === 'ack');
    await cp.waitFor((r) => r.typeUrl === TYPE.endpoint && r.kind === 'initial');
    assert.equal(client.initialized(), false);
    assert.match(client.initialFetchMissing().join(', '), /endpoints of 1 cluster\(s\) \(EDS\)/);
    // Delta: istiod answers a route it does not have with removed_resources, which ends its wait.
    await cp.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack');
    assert.deepStrictEqual(client.initialFetchMissing(), ['endpoints of 1 cluster(s) (EDS)']);
    assert.equal(
      events.some((e) => e.startsWith('initialized')),
      false,
    );
    cp.setResources(TYPE.route, [route('80', 'a')]);
    await cp.waitForAck(TYPE.route, { nonce: cp.lastNonce(TYPE.route) });
    cp.setResources(TYPE.endpoint, [cla('a')]);
    await cp.waitForAck(TYPE.endpoint, { nonce: cp.lastNonce(TYPE.endpoint) });
    assert.equal(client.initialized(), true);
    assert.equal(events.filter((e) => e.startsWith('initialized')).length, 1);
    assert.equal(events[events.length - 1], 'initialized false', 'after the update events it covers');
    cp.setResources(TYPE.endpoint, [cla('a', '127.0.0.9')]);
    await cp.waitForAck(TYPE.endpoint, { nonce: cp.lastNonce(TYPE.endpoint) });
    assert.equal(events.filter((e) => e.startsWith('initialized')).length, 1, 'emitted once');
  } finally {
    client.stop();
    await cp.stop();
  }

  // A route istiod never sends: the initial fetch timeout ends the wait with what is there.
  const cp2 = await TestControlPlane.start();
  const clock2 = new FakeClock();
  const client2 = makeClient(cp2, { protocol: 'sotw', clock: clock2, initialFetchTimeoutMs: 15_000 });
  const done: { timedOut: boolean; missing: string[] }[] = [];
  client2.on('initialized', (i) => done.push(i));
  try {
    cp2.setResources(TYPE.cluster, []);
    cp2.setResources(TYPE.listener, [listener('0.0.0.0_80', 'missing')]);
    client2.start();
    await cp2.waitFor((r) => r.typeUrl === TYPE.route && r.kind === 'ack');
    assert.equal(client2.initialized(), false);
    clock2.advance(15_000);
    assert.deepStrictEqual(done, [{ timedOut: true, missing: ['route(s) missing (RDS)'] }]);
  } finally {
    client2.stop();
    await cp2.stop();
  }
});
