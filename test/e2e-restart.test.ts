// Issue 6 end to end: the agent restarts while a client in the served cgroup keeps connecting. The
// served config changes while the agent is away (one endpoint added, one service removed, one weight
// changed); the restarted agent reads the pinned maps and writes only the difference, and no
// connection fails at any point: each reaches a backend of the config current before or after.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  outbound,
  passthroughCluster,
  tcpListener,
  type ServedEndpoint,
} from './support/control-plane-istiod.js';
import { adminAddress, firstApplyOps, startKernmesh, stopProcess } from './support/cli.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';
import { Client, startBackend, type Backend, type ConnectResult } from './support/net.js';
import { TYPE } from '../src/xds/types.js';

const PORT = 8081;
const GROWS = { vip: '127.100.80.1', cluster: outbound('grows.test.svc.cluster.local', PORT) };
const REWEIGHED = { vip: '127.100.80.2', cluster: outbound('reweighed.test.svc.cluster.local', PORT) };
const REMOVED = { vip: '127.100.80.3', cluster: outbound('removed.test.svc.cluster.local', PORT) };

const ep = (b: Backend, weight = 1): ServedEndpoint => ({ address: b.address, port: b.port, weight });

/** Serves one version of the mesh: per service, its endpoints (absent: the service does not exist). */
function serve(
  cp: TestControlPlane,
  services: { vip: string; cluster: string; endpoints: ServedEndpoint[] }[],
): void {
  cp.setResources(TYPE.cluster, [passthroughCluster, ...services.map((s) => edsCluster(s.cluster))]);
  cp.setResources(
    TYPE.endpoint,
    services.map((s) => assignment(s.cluster, s.endpoints)),
  );
  cp.setResources(
    TYPE.listener,
    services.map((s) => tcpListener(s.vip, PORT, s.cluster)),
  );
}

kernelTest(
  'restart: the agent stops, the config changes, the new agent applies only the difference; no connection fails throughout',
  async (t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const [g1, g2, g3, w1, w2, r1] = await Promise.all(
      ['127.80.0.1', '127.80.0.2', '127.80.0.3', '127.80.0.4', '127.80.0.5', '127.80.0.6'].map((a) =>
        startBackend(a),
      ),
    );
    // After its removal, connects to the removed service go to its VIP itself: something answers there.
    const removedVip = await startBackend(REMOVED.vip, { port: PORT });
    for (const b of [g1, g2, g3, w1, w2, r1, removedVip]) env.defer(() => b!.close());

    serve(cp, [
      { ...GROWS, endpoints: [ep(g1!), ep(g2!)] },
      { ...REWEIGHED, endpoints: [ep(w1!), ep(w2!)] },
      { ...REMOVED, endpoints: [ep(r1!)] },
    ]);
    const bpffs = join(env.pinDir, 'agent');
    const args = [
      '--xds-address',
      cp.address,
      '--cgroup',
      env.cgroup,
      '--bpffs',
      bpffs,
      '--admin',
      '127.0.0.1:0',
      '--pod-name',
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--log-level',
      'debug',
    ];
    const first = startKernmesh(['run', ...args]);
    env.defer(async () => void (await stopProcess(first, 'SIGKILL')));
    const admin1 = await adminAddress(first);
    const fullOps = await firstApplyOps(first);
    await eventually('/ready is 200', async () => (await getJson(admin1, '/ready')).status === 200);

    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    const allowed = new Map([
      [GROWS.vip, new Set([g1!.id, g2!.id, g3!.id])],
      [REWEIGHED.vip, new Set([w1!.id, w2!.id])],
      [REMOVED.vip, new Set([r1!.id, removedVip.id])],
    ]);
    const results: (ConnectResult & { vip: string })[] = [];
    let running = true;
    const loop = (async () => {
      while (running) {
        for (const vip of allowed.keys()) {
          const rs = await client.batch({ host: vip, port: PORT, readId: true, count: 4, concurrency: 2 });
          results.push(...rs.map((r) => ({ ...r, vip })));
        }
      }
    })();
    env.defer(async () => {
      running = false;
      await loop.catch(() => undefined);
    });
    const seen = (vip: string, backend: string) =>
      results.some((r) => r.vip === vip && r.backend === backend);
    await eventually('connections flow before the restart', () =>
      [g1!, g2!, w1!, w2!].every((b) => seen(b === w1 || b === w2 ? REWEIGHED.vip : GROWS.vip, b.id)),
    );

    assert.equal(await stopProcess(first), 0);
    const during = results.length;
    await eventually('connections keep flowing with the agent down', () => results.length >= during + 24);

    // While the agent is away: grows gains an endpoint, removed goes, reweighed's first endpoint doubles.
    serve(cp, [
      { ...GROWS, endpoints: [ep(g1!), ep(g2!), ep(g3!)] },
      { ...REWEIGHED, endpoints: [ep(w1!, 2), ep(w2!)] },
    ]);
    const second = startKernmesh(['run', ...args]);
    env.defer(async () => void (await stopProcess(second, 'SIGKILL')));
    const admin2 = await adminAddress(second);
    const ops = await firstApplyOps(second);
    await eventually(
      '/ready is 200 after the restart',
      async () => (await getJson(admin2, '/ready')).status === 200,
    );
    const after = results.length;
    await eventually(
      'connections reach the new endpoint and the removed VIP itself',
      () => seen(GROWS.vip, g3!.id) && results.slice(after).some((r) => r.backend === removedVip.id),
    );
    running = false;
    await loop;

    // Every connect of the whole sequence reached a backend of the config before or after.
    const failed = results.filter((r) => !r.ok || !allowed.get(r.vip)?.has(r.backend ?? ''));
    assert.deepEqual(failed, [], `${failed.length} of ${results.length} connections failed`);
    assert.ok(results.length > after, 'connections were made after the restart');

    // The difference, in map operations of the dataplane's make-before-break scheme:
    //  grows +1 endpoint: new backend (km_backend_conn reset + km_backends) 2, the next generation's
    //    3 slots, the service switch 1, the old generation's 2 slots deleted: 8;
    //  reweighed 1:1 → 2:1: 3 new-generation slots, the switch 1, 2 old slots deleted: 6;
    //  removed: its frontend 1, km_services 1, its slot 1, km_svc_names 1, its unused backend 1: 5.
    t.diagnostic(`first apply after restart: ${ops} map operations (a full program was ${fullOps})`);
    assert.equal(ops, 8 + 6 + 5);
    const maps = (
      await getJson<{ services: { name: string; slots: unknown[] }[]; frontends: { address: string }[] }>(
        admin2,
        '/debug/maps',
      )
    ).body;
    assert.deepEqual(
      maps.services.map((s) => [s.name, s.slots.length]).filter(([n]) => n !== 'PassthroughCluster'),
      [
        [GROWS.cluster, 3],
        [REWEIGHED.cluster, 3],
      ].sort(),
    );
    assert.equal(
      maps.frontends.some((f) => f.address === REMOVED.vip),
      false,
    );
    assert.equal(await stopProcess(second), 0);
  },
);
