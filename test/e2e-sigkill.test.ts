// The agent killed (issue 14): SIGKILL, no chance to close anything, while a client in the served
// cgroup connects without pause; the config changes while it is away; the restarted agent reconciles
// against the pinned maps. No connect fails at any point, each reaches a backend of the config
// before or after, the first apply is the difference (no flush), and no stale entry is left.
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
import { Client, startBackend, type ConnectResult } from './support/net.js';
import { TYPE } from '../src/xds/types.js';

const PORT = 8097;
const KEPT = { vip: '127.100.97.1', cluster: outbound('kept.test.svc.cluster.local', PORT) };
const GONE = { vip: '127.100.97.2', cluster: outbound('gone.test.svc.cluster.local', PORT) };
/** Services the change leaves alone: a flush would rewrite them, a reconcile does not touch them. */
const STEADY = Array.from({ length: 8 }, (_, i) => ({
  vip: `127.100.97.${10 + i}`,
  cluster: outbound(`steady-${i}.test.svc.cluster.local`, PORT),
  endpoints: [{ address: `127.97.1.${i + 1}`, port: 9000 }],
}));

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
  'agent SIGKILLed under connect load: 0 connects fail, the restart applies only the difference, nothing stale',
  async (t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const [k1, k2, k3, g1] = await Promise.all(
      ['127.97.0.1', '127.97.0.2', '127.97.0.3', '127.97.0.4'].map((a) => startBackend(a)),
    );
    // A listener on the removed service's VIP: once it is gone, a connect keeps its destination.
    const goneVip = await startBackend(GONE.vip, { port: PORT });
    for (const b of [k1, k2, k3, g1, goneVip]) env.defer(() => b!.close());
    serve(cp, [{ ...KEPT, endpoints: [k1!, k2!] }, { ...GONE, endpoints: [g1!] }, ...STEADY]);
    const args = [
      'run',
      '--xds-address',
      cp.address,
      '--cgroup',
      env.cgroup,
      '--bpffs',
      join(env.pinDir, 'agent'),
      '--admin',
      '127.0.0.1:0',
      '--pod-name',
      'kernmesh-kill',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--log-level',
      'debug',
    ];
    const first = startKernmesh(args);
    env.defer(async () => void (await stopProcess(first, 'SIGKILL')));
    const admin1 = await adminAddress(first);
    const fullOps = await firstApplyOps(first);
    await eventually('/ready is 200', async () => (await getJson(admin1, '/ready')).status === 200);

    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    const allowed = new Map([
      [KEPT.vip, new Set([k1!.id, k2!.id, k3!.id])],
      [GONE.vip, new Set([g1!.id, goneVip.id])],
    ]);
    const results: (ConnectResult & { vip: string })[] = [];
    let running = true;
    const started = process.hrtime.bigint();
    const loop = (async () => {
      while (running)
        for (const vip of allowed.keys())
          results.push(
            ...(await client.batch({ host: vip, port: PORT, readId: true, count: 100, concurrency: 4 })).map(
              (r) => ({
                ...r,
                vip,
              }),
            ),
          );
    })();
    env.defer(async () => {
      running = false;
      await loop.catch(() => undefined);
    });
    const more = async (what: string, n: number): Promise<void> => {
      const from = results.length;
      await eventually(what, () => results.length >= from + n, { attempts: 600, intervalMs: 50 });
    };
    await more('connects before the kill', 400);

    // SIGKILL: the process ends at once; pinned links and maps keep routing.
    first.kill('SIGKILL');
    await new Promise((resolve) => first.once('exit', resolve));
    await more('connects with the agent killed', 400);
    serve(cp, [{ ...KEPT, endpoints: [k1!, k2!, k3!] }, ...STEADY]);
    await more('connects while the config changes without the agent', 400);

    const second = startKernmesh(args);
    env.defer(async () => void (await stopProcess(second, 'SIGKILL')));
    const admin2 = await adminAddress(second);
    const ops = await firstApplyOps(second);
    await eventually(
      '/ready is 200 after the restart',
      async () => (await getJson(admin2, '/ready')).status === 200,
    );
    const after = results.length;
    await eventually(
      'connects reach the new endpoint and the removed VIP itself',
      () =>
        results.slice(after).some((r) => r.backend === k3!.id) &&
        results.slice(after).some((r) => r.backend === goneVip.id),
      { attempts: 600, intervalMs: 50 },
    );
    running = false;
    await loop;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;

    const failed = results.filter((r) => !r.ok || !allowed.get(r.vip)?.has(r.backend ?? ''));
    assert.deepEqual(
      failed.slice(0, 3),
      [],
      `${failed.length} of ${results.length} connects failed or strayed`,
    );
    // No flush: the first apply of the restarted agent is the difference, far less than a full program.
    assert.ok(
      ops > 0 && ops < fullOps / 2,
      `first apply after the kill: ${ops} operations (full: ${fullOps})`,
    );
    const maps = (
      await getJson<{ services: { name: string; slots: unknown[] }[]; frontends: { address: string }[] }>(
        admin2,
        '/debug/maps',
      )
    ).body;
    assert.deepEqual(
      maps.services
        .map((s) => [s.name, s.slots.length])
        .filter(([n]) => n !== 'PassthroughCluster')
        .sort(),
      [[KEPT.cluster, 3], ...STEADY.map((x) => [x.cluster, 1])].sort(),
      'no stale service',
    );
    assert.deepEqual(
      maps.frontends
        .map((f) => f.address)
        .filter((a) => a.startsWith('127.100.97.'))
        .sort(),
      [KEPT.vip, ...STEADY.map((x) => x.vip)].sort(),
      'no stale frontend',
    );
    t.diagnostic(
      `${results.length} connects in ${seconds.toFixed(1)} s (${(results.length / seconds).toFixed(0)}/s), 0 failed; first apply after SIGKILL ${ops} operations (full program ${fullOps})`,
    );
    assert.equal(await stopProcess(second), 0);
  },
);
