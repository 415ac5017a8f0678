// Issue 6 end to end against the in-process test control plane (shaped as istiod serves a sidecar;
// no istiod runs): CDS/EDS/LDS/RDS for three services, `kernmesh run` programs the kernel, a client
// in the served cgroup connects. A TCP service and an HTTP service with a plain route are routed; an
// HTTP service with a header-match route in the SAME RouteConfiguration is refused in the NACK and
// left untouched.
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
import { runAgentServing, stopProcess } from './support/cli.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';
import { startBackend, type Backend } from './support/net.js';
import { TYPE } from '../src/xds/types.js';

const TCP_VIP = '127.100.79.1';
const TCP_PORT = 8091;
const WEB_VIP = '127.100.79.2';
const REVIEWS_VIP = '127.100.79.3';
const HTTP_PORT = 8092;

const TCP_HOST = 'tcp-echo.test.svc.cluster.local';
const WEB_HOST = 'web.test.svc.cluster.local';
const REVIEWS_HOST = 'reviews.test.svc.cluster.local';
const TCP = outbound(TCP_HOST, TCP_PORT);
const WEB = outbound(WEB_HOST, HTTP_PORT);
const REVIEWS = outbound(REVIEWS_HOST, HTTP_PORT);
const REVIEWS_V2 = outbound(REVIEWS_HOST, HTTP_PORT, 'v2');

const ep = (b: Backend) => ({ address: b.address, port: b.port });

interface DebugXds {
  xds: { types: { type_url: string; resources: { name: string; status: string; error?: string }[] }[] };
}

kernelTest(
  'istiod config for three services: TCP and plain HTTP routed, a header-match virtual host on the same port NACKed with its path and left untouched',
  async (_t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const tcp1 = await startBackend('127.79.0.1');
    const web1 = await startBackend('127.79.0.2');
    const web2 = await startBackend('127.79.0.3');
    const reviews1 = await startBackend('127.79.0.4');
    const reviews2 = await startBackend('127.79.0.5');
    // A listener on the refused service's VIP itself: a connect that is not rewritten lands here.
    const reviewsVip = await startBackend(REVIEWS_VIP, { port: HTTP_PORT });
    for (const b of [tcp1, web1, web2, reviews1, reviews2, reviewsVip]) env.defer(() => b.close());

    const webVhost = virtualHost(WEB_HOST, WEB_VIP, HTTP_PORT, [defaultRoute(WEB, WEB_HOST, HTTP_PORT)]);
    const reviewsVhost = virtualHost(REVIEWS_HOST, REVIEWS_VIP, HTTP_PORT, [
      headerRoute(REVIEWS_V2, 'reviews', 'end-user', 'jason'),
      defaultRoute(REVIEWS, REVIEWS_HOST, HTTP_PORT),
    ]);
    cp.setResources(TYPE.cluster, [
      passthroughCluster,
      blackHoleCluster,
      edsCluster(TCP),
      edsCluster(WEB),
      edsCluster(REVIEWS),
      edsCluster(REVIEWS_V2),
    ]);
    cp.setResources(TYPE.endpoint, [
      assignment(TCP, [ep(tcp1)]),
      assignment(WEB, [ep(web1)]),
      assignment(REVIEWS, [ep(reviews1)]),
      assignment(REVIEWS_V2, [ep(reviews2)]),
    ]);
    cp.setResources(TYPE.listener, [tcpListener(TCP_VIP, TCP_PORT, TCP), httpListener(HTTP_PORT)]);
    cp.setResources(TYPE.route, [routeConfig(HTTP_PORT, [webVhost, reviewsVhost])]);

    const { agent, admin, client } = await runAgentServing(env, [
      '--xds-address',
      cp.address,
      '--xds-protocol',
      'sotw',
      '--pod-name',
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
    ]);

    // The RouteConfiguration is NACKed: its path and reason, the Istio object named.
    const nack = await cp.waitForNack(TYPE.route);
    const message = (nack.json['error_detail'] as { message: string }).message;
    assert.match(message, /^8092: virtual_hosts\[1\]\.routes\[0\]\.match\.headers: /m, message);
    assert.equal(message.split('\n').length, 1, `only the reviews virtual host is refused: ${message}`);
    assert.match(message, /sends some requests to outbound\|8092\|v2\|reviews/);
    assert.match(message, /L7/);
    assert.match(message, /virtual host "reviews\.test\.svc\.cluster\.local:8092"/);
    assert.match(message, /VirtualService test\/reviews/);

    await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);
    // The other two services are routed, from the same RouteConfiguration for web.
    const tcp = await client.connect({ host: TCP_VIP, port: TCP_PORT, readId: true });
    assert.equal(tcp.backend, tcp1.id, `TCP service: ${tcp.err}`);
    assert.equal(tcp.peer, `${TCP_VIP}|${TCP_PORT}`, 'getpeername shows the VIP');
    const web = await client.connect({ host: WEB_VIP, port: HTTP_PORT, readId: true });
    assert.equal(web.backend, web1.id, `plain HTTP service on the NACKed RouteConfiguration: ${web.err}`);
    const reviews = await client.connect({ host: REVIEWS_VIP, port: HTTP_PORT, readId: true });
    assert.equal(reviews.backend, reviewsVip.id, 'the refused service is not rewritten: the VIP answers');
    assert.equal(reviews1.peers.length + reviews2.peers.length, 0);

    // What `istioctl proxy-status` shows: RDS in ERROR with our message, the rest SYNCED.
    const status = cp.proxyStatus();
    assert.equal(status.RouteConfiguration?.status, 'ERROR');
    assert.equal(status.RouteConfiguration?.error, message);
    for (const t of ['Cluster', 'Listener', 'ClusterLoadAssignment'])
      assert.equal(status[t]?.status, 'SYNCED', `${t}: ${JSON.stringify(status)}`);
    // The agent's own view: the route NACKED with its reason, applied all the same.
    const debug = (await getJson<DebugXds>(admin, '/debug/xds')).body;
    const rds = debug.xds.types
      .find((t) => t.type_url === TYPE.route)
      ?.resources.find((r) => r.name === '8092');
    assert.equal(rds?.status, 'NACKED');
    assert.match(rds?.error ?? '', /virtual_hosts\[1\]\.routes\[0\]\.match\.headers/);

    // Pushes after the NACK: an EDS change moves web, TCP keeps working, reviews stays untouched.
    cp.updateResources(TYPE.endpoint, [assignment(WEB, [ep(web2)])]);
    await eventually(
      'web follows the EDS push',
      async () =>
        (await client.connect({ host: WEB_VIP, port: HTTP_PORT, readId: true })).backend === web2.id,
    );
    assert.equal((await client.connect({ host: TCP_VIP, port: TCP_PORT, readId: true })).backend, tcp1.id);
    assert.equal(
      (await client.connect({ host: REVIEWS_VIP, port: HTTP_PORT, readId: true })).backend,
      reviewsVip.id,
    );
    assert.equal(cp.proxyStatus().RouteConfiguration?.status, 'ERROR', 'an EDS push does not clear RDS');

    // web gains a header match too: refused, it keeps its last accepted entries (not torn down).
    const from = cp.requests.length;
    const webCanary = virtualHost(WEB_HOST, WEB_VIP, HTTP_PORT, [
      headerRoute(REVIEWS_V2, 'web', 'x-canary', 'true'),
      defaultRoute(WEB, WEB_HOST, HTTP_PORT),
    ]);
    cp.setResources(TYPE.route, [routeConfig(HTTP_PORT, [reviewsVhost, webCanary])]);
    const second = await cp.waitForNack(TYPE.route, { from });
    const message2 = (second.json['error_detail'] as { message: string }).message;
    assert.equal(message2.split('\n').length, 2, message2);
    assert.match(message2, /VirtualService test\/web/);
    await eventually('the agent reports the web virtual host refused', async () => {
      const x = (await getJson<{ notes: { note: string }[] }>(admin, '/debug/xds')).body;
      return x.notes.some(
        (n) => n.note.includes(`${WEB_VIP}:${HTTP_PORT}`) && n.note.includes('keeps its last'),
      );
    });
    for (let i = 0; i < 3; i++) {
      const r = await client.connect({ host: WEB_VIP, port: HTTP_PORT, readId: true });
      assert.equal(r.backend, web2.id, `a refused service keeps its last accepted entries: ${r.err}`);
    }
    assert.equal((await client.connect({ host: TCP_VIP, port: TCP_PORT, readId: true })).backend, tcp1.id);

    assert.equal(await stopProcess(agent), 0);
  },
);
