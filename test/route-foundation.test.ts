// Foundation acceptance: the real object routes a VIP to a backend for processes in the test
// cgroup only, and its pinned maps and links outlive the process that wrote them.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import type { DesiredState } from '../src/dataplane/model.js';
import { kernelTest } from './support/kernel.js';
import { openRouting } from './support/routing.js';
import { Client, payload, startBackend } from './support/net.js';

const run = promisify(execFile);
const DATAPLANE_TS = fileURLToPath(new URL('../src/dataplane/dataplane.ts', import.meta.url));

function oneService(vip: string, vipPort: number, address: string, port: number): DesiredState {
  return {
    services: [
      {
        name: 'outbound|80||echo.default.svc.cluster.local',
        kind: 'endpoints',
        lbPolicy: 'round_robin',
        endpoints: [{ address, port, weight: 1, priority: 0, health: 'healthy' }],
      },
    ],
    frontends: [
      {
        address: vip,
        port: vipPort,
        protocol: 'tcp',
        service: 'outbound|80||echo.default.svc.cluster.local',
      },
    ],
  };
}

/** connect() from the test process itself, which is outside every test cgroup. */
function connectHere(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.on('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e)));
  });
}

kernelTest(
  'a connect to the VIP from the cgroup reaches the backend with its bytes; outside it is untouched',
  async (_t, env) => {
    const backend = await startBackend('127.0.0.2', { collect: true });
    env.defer(() => backend.close());
    const dp = openRouting(env);
    const result = await dp.apply(oneService('127.100.0.1', 80, backend.address, backend.port));
    assert.deepEqual(result.refused, []);

    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    const r = await client.connect({ host: '127.100.0.1', port: 80, readId: true, sendSize: 1000 });
    assert.equal(r.ok, true, r.err);
    assert.equal(r.backend, backend.id);
    // the server saw the bytes, from the client's real address
    for (let i = 0; i < 100 && backend.received.length === 0; i++)
      await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(backend.received[0], payload(1000));
    assert.equal(backend.peers.length, 1);

    // the test process is not in the cgroup: its connect goes to the VIP itself, where nothing listens
    assert.equal(await connectHere('127.100.0.1', 80), 'ECONNREFUSED');
    assert.equal(backend.peers.length, 1);
    const routed = dp.counters().find((c) => c.service.startsWith('outbound|80||echo'));
    assert.equal(routed?.counters.routed, 1n);
  },
);

kernelTest(
  'pinned maps and links outlive the writer: a new process finds the entry, traffic routes in between',
  async (_t, env) => {
    const backend = await startBackend('127.0.0.3');
    env.defer(() => backend.close());
    const script = (body: string): string =>
      `import { Dataplane } from ${JSON.stringify(DATAPLANE_TS)};
     const dp = Dataplane.open({ pinDir: ${JSON.stringify(env.pinDir)} });
     ${body}
     await dp.close();`;
    const node = (code: string) =>
      run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8' });

    // first process: load, attach (pinned links), write, exit
    await node(
      script(`dp.attach(${JSON.stringify(env.cgroup)});
     const r = await dp.apply(${JSON.stringify(oneService('127.100.0.2', 8080, backend.address, backend.port))});
     if (r.refused.length) throw new Error(JSON.stringify(r.refused));`),
    );

    // nobody holds the object now: the pinned link still runs the program over the pinned maps
    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    const r = await client.connect({ host: '127.100.0.2', port: 8080, readId: true });
    assert.equal(r.ok, true, r.err);
    assert.equal(r.backend, backend.id);

    // second process: reloads from the same pin directory, finds the entry and ids, writes nothing
    const { stdout } = await node(
      script(`const actual = dp.readActual();
     const again = await dp.apply(${JSON.stringify(oneService('127.100.0.2', 8080, backend.address, backend.port))});
     console.log(JSON.stringify({ frontends: actual.frontends, services: actual.services.map((s) => s.name), ops: again.ops.length }));`),
    );
    const seen = JSON.parse(stdout) as {
      frontends: { address: string; port: number; service?: string }[];
      services: string[];
      ops: number;
    };
    assert.deepEqual(seen.services, ['outbound|80||echo.default.svc.cluster.local']);
    assert.equal(seen.frontends.length, 1);
    assert.equal(seen.frontends[0]?.address, '127.100.0.2');
    assert.equal(seen.frontends[0]?.port, 8080);
    assert.equal(seen.ops, 0, 'an unchanged state after restart costs no map operation');

    const r2 = await client.connect({ host: '127.100.0.2', port: 8080, readId: true });
    assert.equal(r2.backend, backend.id);
  },
);
