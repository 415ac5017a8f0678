// A restarted or upgraded agent runs its own program instances: the links pinned by the previous run
// are updated in place (BPF_LINK_UPDATE), the sockhashes get the new sk_msg, and traffic never sees a
// hook without a program while that happens.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

import { BpfLink, enableStats, type BpfProgram } from '../native/index.js';
import { Accelerator } from '../src/accel/accel.js';
import { Dataplane, type Attachment } from '../src/dataplane/dataplane.js';
import type { DesiredState } from '../src/dataplane/model.js';
import { Telemetry } from '../src/telemetry/telemetry.js';
import { kernelTest, spawnInCgroup, type KernelEnv } from './support/kernel.js';
import { Client, startBackend } from './support/net.js';

const ECHO = 'outbound|80||echo.default.svc.cluster.local';
const REVIEWS = 'outbound|9080||reviews.default.svc.cluster.local';

function desired(backend: { address: string; port: number }, waypoint: { address: string; port: number }) {
  const state: DesiredState = {
    services: [
      {
        name: ECHO,
        kind: 'endpoints',
        lbPolicy: 'round_robin',
        endpoints: [
          { address: backend.address, port: backend.port, weight: 1, priority: 0, health: 'healthy' },
        ],
      },
      { name: REVIEWS, kind: 'waypoint', lbPolicy: 'random', endpoints: [], waypoint },
    ],
    frontends: [
      { address: '127.100.0.1', port: 80, protocol: 'tcp', service: ECHO },
      { address: '127.100.10.1', port: 9080, protocol: 'tcp', service: REVIEWS },
    ],
  };
  return state;
}

function byName(programs: BpfProgram[], name: string): BpfProgram {
  const p = programs.find((x) => x.name === name);
  assert.ok(p, `program ${name} loaded`);
  return p;
}

/** The program a pinned link runs now, as the kernel reports it. */
function linkedProgram(pinned: string): number {
  const link = BpfLink.openPinned(pinned);
  try {
    return link.info().programId;
  } finally {
    link.close();
  }
}

/** Program ids by name, read while the object is open. */
function idsByName(programs: BpfProgram[]): Map<string, number> {
  return new Map(programs.map((p) => [p.name, p.id]));
}

/**
 * Every attachment of this run drives this run's program instance; after a restart, the hooks ran
 * the previous run's instances (ids read before it closed) until this attach.
 */
function assertRunsOwnPrograms(
  dp: Dataplane,
  attachments: Attachment[],
  previous?: Map<string, number>,
): void {
  assert.equal(attachments.length, 6);
  for (const a of attachments) {
    const own = byName(dp.programs(), a.program).id;
    if (a.via === 'sockmap') {
      const onMap = dp.map('km_waypoint_sk').attachedPrograms(a.attachType);
      assert.deepEqual(
        onMap.map((p) => p.id),
        [own],
        `km_waypoint_sk holds this run's ${a.program}`,
      );
    } else {
      assert.equal(a.via, previous ? 'existing bpf_link' : 'bpf_link', a.program);
      assert.ok(a.pinned, `${a.program} is pinned`);
      assert.equal(linkedProgram(a.pinned), own, `the pinned link of ${a.program} runs this run's instance`);
    }
    assert.equal(a.replacedProgramId, previous?.get(a.program), `${a.program}: what the hook ran before`);
  }
}

kernelTest(
  'routing: each restart updates the pinned links and the waypoint sockhash to the new instances; a client connecting throughout never fails',
  async (t, env) => {
    const backend = await startBackend('127.0.0.2');
    env.defer(() => backend.close());
    const waypoint = await startBackend('127.0.0.111', { collect: true, silent: true });
    env.defer(() => waypoint.close());

    let dp = Dataplane.open({ pinDir: env.pinDir });
    env.defer(() => dp.close());
    assertRunsOwnPrograms(dp, dp.attach(env.cgroup));
    assert.deepEqual((await dp.apply(desired(backend, waypoint))).refused, []);

    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    // Restart the dataplane (close, load new instances, attach) over and over while the client
    // connects in chunks; connects go on until at least 400 were made and 3 restarts ended while a
    // chunk was in flight: the overlap is reached by continuing, not assumed from the machine's speed.
    let inFlight = false;
    let restarting = true;
    let restarts = 0;
    let overlapped = 0;
    const restarter = (async () => {
      while (restarting) {
        const previous = idsByName(dp.programs());
        await dp.close();
        dp = Dataplane.open({ pinDir: env.pinDir });
        const fresh = dp.programs().map((p) => p.id);
        assert.ok(
          fresh.every((id) => ![...previous.values()].includes(id)),
          'the restart loaded new program instances',
        );
        assertRunsOwnPrograms(dp, dp.attach(env.cgroup), previous);
        restarts++;
        if (inFlight) overlapped++;
        // A pause between restarts lets connects through; how many restarts overlap is counted, not assumed.
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    const results: Awaited<ReturnType<typeof client.batch>> = [];
    try {
      while (results.length < 400 || overlapped < 3) {
        assert.ok(results.length < 40_000, 'the restarts never overlapped the connects');
        inFlight = true;
        results.push(...(await client.batch({ host: '127.100.0.1', port: 80, readId: true, count: 100 })));
        inFlight = false;
      }
    } finally {
      restarting = false;
      await restarter;
    }
    t.diagnostic(
      `${restarts} restarts (${overlapped} while connects were in flight) during ${results.length} connects`,
    );
    const failed = results.filter((r) => !r.ok || r.backend !== backend.id);
    assert.deepEqual(
      failed.slice(0, 5),
      [],
      `${failed.length} of ${results.length} connects failed or strayed`,
    );

    // The new instances are the ones that run: their stats count the connects and the waypoint sends.
    const stats = enableStats();
    env.defer(() => stats.close());
    const connect4 = byName(dp.programs(), 'km_connect4');
    const msg = byName(dp.programs(), 'km_waypoint_msg');
    const [connectRuns, msgRuns] = [connect4.stats().runCount, msg.stats().runCount];
    for (let i = 0; i < 3; i++)
      assert.equal(
        (await client.connect({ host: '127.100.0.1', port: 80, readId: true })).backend,
        backend.id,
      );
    assert.equal(connect4.stats().runCount - connectRuns, 3n);
    const w = await client.connect({ host: '127.100.10.1', port: 9080, sendSize: 100 });
    assert.equal(w.ok, true, w.err);
    for (let i = 0; i < 500 && waypoint.received.length === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(waypoint.received[0]?.length, 16 + 100, 'the waypoint got the TLV and the payload');
    assert.ok(msg.stats().runCount > msgRuns, "the new km_waypoint_msg wrote the waypoint's TLV");
  },
);

/** An echo server inside the cgroup, so both ends of a connection are there (acceleration needs it). */
async function echoServer(env: KernelEnv): Promise<number> {
  const js = `require('net').createServer((s) => { s.pipe(s); s.on('error', () => {}); })
    .listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;
  const child = spawnInCgroup(env.cgroup, process.execPath, ['-e', js]);
  env.defer(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await once(child, 'close');
    }
  });
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
  return Number(line);
}

kernelTest(
  'acceleration and telemetry: a restart updates their pinned links and the acceleration sockhash to the new instances',
  async (_t, env) => {
    const open = () => {
      const accel = Accelerator.open({ pinDir: env.pinDir });
      const telemetry = Telemetry.open({ pinDir: env.pinDir });
      const attached = [accel.attach(env.cgroup, env.pinDir), telemetry.attach(env.cgroup, env.pinDir)];
      const links = attached.flatMap((a) => a.links);
      const via = attached.flatMap((a) => a.via);
      const programs = [...accel.object.programs(), ...telemetry.object.programs()];
      // links follow ACCEL_CGROUP_PROGRAMS then TELEMETRY_CGROUP_PROGRAMS; each runs this run's instance
      const running = links.map((l) => l.info().programId);
      for (const l of links) l.close();
      return { accel, telemetry, programs, running, via };
    };
    const first = open();
    // sockets created after the attach: acceleration learns a socket's owner when it is created
    const port = await echoServer(env);
    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    first.accel.setEnabled(true);
    first.accel.setRules([]);
    first.telemetry.setEnabled(true);
    const initial = first.accel.counters();
    assert.equal((await client.connect({ host: '127.0.0.1', port, sendSize: 10 })).ok, true);
    assert.equal(first.accel.counters().socketsInserted - initial.socketsInserted, 2n);
    assert.deepEqual(first.via, Array(6).fill('bpf_link'));
    const firstIds = first.programs.map((p) => p.id);
    assert.ok(first.running.every((id) => firstIds.includes(id)));
    first.accel.close();
    first.telemetry.close();

    const second = open();
    env.defer(() => {
      second.accel.close();
      second.telemetry.close();
    });
    const secondIds = second.programs.map((p) => p.id);
    assert.equal(second.running.length, 6);
    assert.deepEqual(second.via, Array(6).fill('existing bpf_link'));
    for (const id of second.running) {
      assert.ok(secondIds.includes(id), `link runs program ${id}, one of the new instances`);
      assert.ok(!firstIds.includes(id));
    }
    const redirect = second.accel.object.program('km_accel_redirect');
    assert.deepEqual(
      second.accel.object
        .map('km_accel_sockhash')
        .attachedPrograms(redirect.attachType)
        .map((p) => p.id),
      [redirect.id],
    );
    // config maps are pinned: acceleration and telemetry stay on across the restart
    assert.equal(second.accel.config().enabled, true);
    assert.equal(second.telemetry.enabled(), true);

    const stats = enableStats();
    env.defer(() => stats.close());
    const sockops = second.telemetry.object.program('km_telemetry_sockops');
    const before = { redirect: redirect.stats().runCount, sockops: sockops.stats().runCount };
    const counters = second.accel.counters();
    const r = await client.connect({ host: '127.0.0.1', port, sendSize: 1000 });
    assert.equal(r.ok, true, r.err);
    assert.equal(second.accel.counters().socketsInserted - counters.socketsInserted, 2n);
    assert.ok(redirect.stats().runCount > before.redirect, 'the new sk_msg redirected the bytes');
    assert.ok(sockops.stats().runCount > before.sockops, 'the new telemetry sockops ran');
  },
);
