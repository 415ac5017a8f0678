// A refused service keeps its last accepted entries across an agent restart too. The agent programs
// a TCP service and an HTTP service with a plain route (a third HTTP service is refused from the
// start); while it is away the TCP service moves and the HTTP service's route gains a header match.
// The restarted agent starts from what is pinned: the TCP service follows, the refused one keeps
// routing to its old endpoint without a single map write, the never-accepted one is not rewritten.
import assert from 'node:assert/strict';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  blackHoleCluster,
  defaultRoute,
  edsCluster,
  getJson,
  headerRoute,
  httpListener,
  outbound,
  passthroughCluster,
  routeConfig,
  tcpListener,
  virtualHost,
} from './support/control-plane-istiod.js';
import { firstApplyOps, runAgentServing, stopProcess } from './support/cli.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';
import { startBackend, type Backend, type Client } from './support/net.js';
import { TYPE } from '../src/xds/types.js';

const TCP_VIP = '127.100.81.1';
const TCP_PORT = 8093;
const WEB_VIP = '127.100.81.2';
const REVIEWS_VIP = '127.100.81.3';
const HTTP_PORT = 8094;

const TCP_HOST = 'tcp-echo.test.svc.cluster.local';
const WEB_HOST = 'web.test.svc.cluster.local';
const REVIEWS_HOST = 'reviews.test.svc.cluster.local';
const TCP = outbound(TCP_HOST, TCP_PORT);
const WEB = outbound(WEB_HOST, HTTP_PORT);
const WEB_CANARY = outbound(WEB_HOST, HTTP_PORT, 'canary');
const REVIEWS = outbound(REVIEWS_HOST, HTTP_PORT);
const REVIEWS_V2 = outbound(REVIEWS_HOST, HTTP_PORT, 'v2');

const ep = (b: Backend) => ({ address: b.address, port: b.port });

/** reviews matches on a header in every version served: refused from the agent's first start. */
const reviewsVhost = virtualHost(REVIEWS_HOST, REVIEWS_VIP, HTTP_PORT, [
  headerRoute(REVIEWS_V2, 'reviews', 'end-user', 'jason'),
  defaultRoute(REVIEWS, REVIEWS_HOST, HTTP_PORT),
]);

async function backendOf(client: Client, host: string, port: number): Promise<string | undefined> {
  const r = await client.connect({ host, port, readId: true });
  assert.ok(r.ok, `connect ${host}:${port}: ${r.err}`);
  return r.backend;
}

kernelTest(
  'restart with a route refused while the agent was away: the refused service keeps its pinned entries, the others follow the config',
  async (t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const [tcp1, tcp2, web1, web2, canary, reviews1, reviews2] = await Promise.all(
      ['127.81.0.1', '127.81.0.2', '127.81.0.3', '127.81.0.4', '127.81.0.5', '127.81.0.6', '127.81.0.7'].map(
        (a) => startBackend(a),
      ),
    );
    // Listeners on the VIPs of the HTTP services: a connect that is not rewritten lands there.
    const reviewsVip = await startBackend(REVIEWS_VIP, { port: HTTP_PORT });
    const webVip = await startBackend(WEB_VIP, { port: HTTP_PORT });
    for (const b of [tcp1, tcp2, web1, web2, canary, reviews1, reviews2, reviewsVip, webVip])
      env.defer(() => b!.close());

    cp.setResources(TYPE.cluster, [
      passthroughCluster,
      blackHoleCluster,
      edsCluster(TCP),
      edsCluster(WEB),
      edsCluster(WEB_CANARY),
      edsCluster(REVIEWS),
      edsCluster(REVIEWS_V2),
    ]);
    cp.setResources(TYPE.endpoint, [
      assignment(TCP, [ep(tcp1!)]),
      assignment(WEB, [ep(web1!)]),
      assignment(WEB_CANARY, [ep(canary!)]),
      assignment(REVIEWS, [ep(reviews1!)]),
      assignment(REVIEWS_V2, [ep(reviews2!)]),
    ]);
    cp.setResources(TYPE.listener, [tcpListener(TCP_VIP, TCP_PORT, TCP), httpListener(HTTP_PORT)]);
    cp.setResources(TYPE.route, [
      routeConfig(HTTP_PORT, [
        virtualHost(WEB_HOST, WEB_VIP, HTTP_PORT, [defaultRoute(WEB, WEB_HOST, HTTP_PORT)]),
        reviewsVhost,
      ]),
    ]);
    const args = [
      '--xds-address',
      cp.address,
      '--pod-name',
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--log-level',
      'debug',
    ];

    // First run: tcp-echo and web routed, reviews refused and left alone.
    const first = await runAgentServing(env, args);
    const nack1 = await cp.waitForNack(TYPE.route);
    const message1 = (nack1.json['error_detail'] as { message: string }).message;
    assert.equal(message1.split('\n').length, 1, message1);
    assert.match(message1, /virtual host "reviews\.test\.svc\.cluster\.local:8094"/);
    await eventually('/ready is 200', async () => (await getJson(first.admin, '/ready')).status === 200);
    const client = first.client;
    assert.equal(await backendOf(client, TCP_VIP, TCP_PORT), tcp1!.id);
    assert.equal(await backendOf(client, WEB_VIP, HTTP_PORT), web1!.id);
    assert.equal(await backendOf(client, REVIEWS_VIP, HTTP_PORT), reviewsVip.id);
    assert.equal(await stopProcess(first.agent), 0);

    // While the agent is away: tcp-echo moves to tcp2, web gains a header match (refused) and its
    // endpoints move to web2, which the refused service must not follow.
    cp.setResources(TYPE.endpoint, [
      assignment(TCP, [ep(tcp2!)]),
      assignment(WEB, [ep(web2!)]),
      assignment(WEB_CANARY, [ep(canary!)]),
      assignment(REVIEWS, [ep(reviews1!)]),
      assignment(REVIEWS_V2, [ep(reviews2!)]),
    ]);
    cp.setResources(TYPE.route, [
      routeConfig(HTTP_PORT, [
        virtualHost(WEB_HOST, WEB_VIP, HTTP_PORT, [
          headerRoute(WEB_CANARY, 'web', 'x-canary', 'true'),
          defaultRoute(WEB, WEB_HOST, HTTP_PORT),
        ]),
        reviewsVhost,
      ]),
    ]);
    assert.equal(await backendOf(client, WEB_VIP, HTTP_PORT), web1!.id, 'pinned routing while away');

    const from = cp.requests.length;
    const second = await runAgentServing(env, args);
    const nack2 = await cp.waitForNack(TYPE.route, { from });
    const message2 = (nack2.json['error_detail'] as { message: string }).message;
    assert.equal(message2.split('\n').length, 2, message2);
    assert.match(message2, /^8094: virtual_hosts\[0\]\.routes\[0\]\.match\.headers: /m, message2);
    assert.match(message2, /virtual host "web\.test\.svc\.cluster\.local:8094"/);
    assert.match(message2, /VirtualService test\/web/);
    assert.match(message2, /virtual host "reviews\.test\.svc\.cluster\.local:8094"/);
    const ops = await firstApplyOps(second.agent);
    await eventually('/ready is 200 after the restart', async () => {
      return (await getJson(second.admin, '/ready')).status === 200;
    });

    assert.equal(await backendOf(second.client, TCP_VIP, TCP_PORT), tcp2!.id, 'tcp-echo follows the change');
    for (let i = 0; i < 3; i++)
      assert.equal(
        await backendOf(second.client, WEB_VIP, HTTP_PORT),
        web1!.id,
        'the refused service keeps its last accepted entries',
      );
    assert.equal(
      await backendOf(second.client, REVIEWS_VIP, HTTP_PORT),
      reviewsVip.id,
      'a service refused from the first start is never rewritten',
    );
    assert.deepEqual(
      [web2!, canary!, webVip, reviews1!, reviews2!].map((b) => [b.id, b.peers.length]),
      [web2!, canary!, webVip, reviews1!, reviews2!].map((b) => [b.id, 0]),
      'no connection reached an endpoint of a refused route or the refused VIP itself',
    );

    // The first apply wrote tcp-echo's move only: its new backend (connection count reset + address)
    // 2, the next generation's slot 1, the switch 1, the old slot 1, the old backend 1. web: 0.
    t.diagnostic(`first apply after restart: ${ops} map operations`);
    assert.equal(ops, 6);
    const debug = (await getJson<{ notes: { note: string }[] }>(second.admin, '/debug/xds')).body;
    assert.ok(
      debug.notes.some(
        (n) =>
          n.note.includes(`${WEB_VIP}:${HTTP_PORT}`) && n.note.includes(`keeps its last accepted entries`),
      ),
      JSON.stringify(debug.notes),
    );
    const maps = (
      await getJson<{ services: { name: string; slots: { backend?: string }[] }[] }>(
        second.admin,
        '/debug/maps',
      )
    ).body;
    assert.deepEqual(
      maps.services.find((s) => s.name === WEB)?.slots.map((s) => s.backend),
      [`${web1!.address}:${web1!.port}`],
    );
    assert.equal(
      maps.services.some((s) => s.name === REVIEWS || s.name === REVIEWS_V2),
      false,
    );
    assert.equal(await stopProcess(second.agent), 0);
  },
);
