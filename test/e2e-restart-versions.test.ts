// issue 17: a restart that needs no full push. The agent keeps every accepted resource with its
// version (--xds-state-dir, bound to the pinned maps); a restarted agent takes them back before its
// first stream and sends them as Delta's initial_resource_versions (SotW: the last accepted
// version_info), so the control plane sends only what changed while it was away. Run against the
// test control plane, which answers a Delta stream as istiod does: only resources whose version
// differs from what the client says it holds, plus removals.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { TYPE } from '../src/xds/types.js';
import {
  adminAddress,
  firstApplyOps,
  startKernmesh,
  stopProcess,
  type KernmeshProcess,
} from './support/cli.js';
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
import { kernelTest } from './support/kernel.js';
import { Client, startBackend, type Backend } from './support/net.js';
import { eventually } from './support/wait.js';

const PORT = 8083;
const A = { vip: '127.100.83.1', cluster: outbound('a.test.svc.cluster.local', PORT) };
const B = { vip: '127.100.83.2', cluster: outbound('b.test.svc.cluster.local', PORT) };
const TYPES = [TYPE.cluster, TYPE.endpoint, TYPE.listener];

const ep = (b: Backend): ServedEndpoint => ({ address: b.address, port: b.port });

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
  'restart without a full push: nothing changed sends no resource; one endpoint changed sends only that ClusterLoadAssignment',
  async (_t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const backends: Backend[] = [];
    for (const a of ['127.83.0.1', '127.83.0.2', '127.83.0.3']) {
      const b = await startBackend(a);
      env.defer(() => b.close());
      backends.push(b);
    }
    const [a1, b1, b2] = backends as [Backend, Backend, Backend];
    serve(cp, [
      { ...A, endpoints: [ep(a1)] },
      { ...B, endpoints: [ep(b1)] },
    ]);
    const stateDir = mkdtempSync(join(tmpdir(), 'kernmesh-xds-state-'));
    env.defer(() => rmSync(stateDir, { recursive: true, force: true }));
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
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--xds-state-dir',
      stateDir,
      '--log-level',
      'debug',
    ];
    const client = new Client(env.cgroup);
    env.defer(() => client.exit());

    /** Starts an agent, waits until it is ready and its stream answered every type; what it was sent. */
    const run = async (): Promise<{
      agent: KernmeshProcess;
      ops: number;
      sent: Map<string, string[]>;
      initial: Map<string, Record<string, string>>;
    }> => {
      const streamsBefore = cp.streamInfos().length;
      const agent = startKernmesh(args);
      env.defer(async () => void (await stopProcess(agent, 'SIGKILL')));
      const admin = await adminAddress(agent);
      const ops = await firstApplyOps(agent);
      await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);
      await eventually('the agent opened a stream', () => cp.streamInfos().length > streamsBefore);
      const stream = cp.streamInfos()[streamsBefore]!;
      await eventually('every type was answered on the new stream', () =>
        TYPES.every((t) => cp.responses.some((r) => r.stream === stream.id && r.typeUrl === t)),
      );
      const sent = new Map<string, string[]>();
      for (const r of cp.responses.filter((x) => x.stream === stream.id))
        sent.set(r.typeUrl, [...(sent.get(r.typeUrl) ?? []), ...r.names]);
      const initial = new Map<string, Record<string, string>>();
      for (const r of cp.requests.filter((x) => x.stream === stream.id && x.kind === 'initial'))
        initial.set(
          r.typeUrl,
          (r.json['initial_resource_versions'] as Record<string, string> | undefined) ?? {},
        );
      return { agent, ops, sent, initial };
    };

    const first = await run();
    assert.deepEqual(
      [...first.sent].map(([t, names]) => [t, names.length]).sort(),
      [
        [TYPE.cluster, 3],
        [TYPE.endpoint, 2],
        [TYPE.listener, 2],
      ].sort(),
      'the first start gets everything',
    );
    assert.equal((await client.connect({ host: B.vip, port: PORT, readId: true })).backend, b1.id);
    assert.equal(await stopProcess(first.agent), 0);

    // nothing changed: the restarted agent says what it holds and is sent no resource
    const second = await run();
    for (const t of TYPES) assert.deepEqual(second.sent.get(t), [], `${t}: no resource sent`);
    assert.deepEqual(
      Object.keys(second.initial.get(TYPE.cluster) ?? {}).sort(),
      ['PassthroughCluster', A.cluster, B.cluster].sort(),
    );
    assert.deepEqual(
      Object.keys(second.initial.get(TYPE.endpoint) ?? {}).sort(),
      [A.cluster, B.cluster].sort(),
    );
    assert.equal(second.ops, 0, 'the kept config is what the kernel holds: no map operation');
    assert.equal((await client.connect({ host: A.vip, port: PORT, readId: true })).backend, a1.id);
    assert.equal(await stopProcess(second.agent), 0);

    // one endpoint added while the agent is away: only that ClusterLoadAssignment is sent
    serve(cp, [
      { ...A, endpoints: [ep(a1)] },
      { ...B, endpoints: [ep(b1), ep(b2)] },
    ]);
    const third = await run();
    assert.deepEqual(third.sent.get(TYPE.cluster), []);
    assert.deepEqual(third.sent.get(TYPE.listener), []);
    assert.deepEqual(third.sent.get(TYPE.endpoint), [B.cluster]);
    await eventually('the new endpoint is reached', async () =>
      (await client.batch({ host: B.vip, port: PORT, readId: true, count: 10 })).some(
        (r) => r.backend === b2.id,
      ),
    );
  },
);

kernelTest(
  'SotW: a restarted agent’s first request carries the version it last accepted per type',
  async (_t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const b = await startBackend('127.83.0.9');
    env.defer(() => b.close());
    serve(cp, [{ ...A, endpoints: [ep(b)] }]);
    const stateDir = mkdtempSync(join(tmpdir(), 'kernmesh-xds-state-'));
    env.defer(() => rmSync(stateDir, { recursive: true, force: true }));
    const args = [
      'run',
      '--xds-address',
      cp.address,
      '--xds-protocol',
      'sotw',
      '--cgroup',
      env.cgroup,
      '--bpffs',
      join(env.pinDir, 'agent'),
      '--admin',
      '127.0.0.1:0',
      '--pod-name',
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--xds-state-dir',
      stateDir,
    ];
    const versionsOf = (stream: number): Map<string, string> =>
      new Map(
        cp.requests
          .filter((r) => r.stream === stream && r.kind === 'initial')
          .map((r) => [r.typeUrl, (r.json['version_info'] as string | undefined) ?? '']),
      );
    const first = startKernmesh(args);
    env.defer(async () => void (await stopProcess(first, 'SIGKILL')));
    const admin = await adminAddress(first);
    await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);
    const firstStream = cp.lastStream()!.id;
    // what it accepted: the version of the last response of each type it ACKed
    await eventually('the responses were ACKed', () =>
      [TYPE.cluster, TYPE.listener].every((t) =>
        cp.requests.some((r) => r.stream === firstStream && r.typeUrl === t && r.kind === 'ack'),
      ),
    );
    const accepted = new Map(
      cp.responses.filter((r) => r.stream === firstStream).map((r) => [r.typeUrl, r.version]),
    );
    assert.ok(
      [...versionsOf(firstStream).values()].every((v) => v === ''),
      'a first start holds nothing',
    );
    assert.equal(await stopProcess(first), 0);

    const second = startKernmesh(args);
    env.defer(async () => void (await stopProcess(second, 'SIGKILL')));
    await adminAddress(second);
    await eventually('a new stream', () => (cp.lastStream()?.id ?? firstStream) !== firstStream);
    const stream = cp.lastStream()!;
    await eventually('its initial requests', () => versionsOf(stream.id).size >= 2);
    for (const t of [TYPE.cluster, TYPE.listener]) {
      assert.ok(accepted.get(t), `${t} was accepted under a version`);
      assert.equal(
        versionsOf(stream.id).get(t),
        accepted.get(t),
        `${t}: the version accepted before the restart`,
      );
    }
  },
);
