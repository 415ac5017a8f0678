// issue 17: open connections to endpoints that are gone. When EDS removes an endpoint (or marks it
// DRAINING), new connects stop at once; connections enrolled pods hold to it are closed by the kernel
// (a TCP socket iterator calling bpf_sock_destroy, bpf/drain.bpf.c) once the node's drain window has
// passed, and the clients reconnect to the endpoints left. The order of events is read from one
// clock: the agent's apply and the client's socket closing (process.hrtime) and the kernel's close
// (bpf_ktime_get_ns) are all CLOCK_MONOTONIC; nothing is asserted about how fast this machine is.
import assert from 'node:assert/strict';

import { pino } from 'pino';

import { bpfObjectPath } from '../native/objects.js';
import { AgentKernel } from '../src/agent/kernel.js';
import { loadConfig } from '../src/config/config.js';
import { drainedCodec, DRAIN_CODECS } from '../src/dataplane/codec.js';
import { Dataplane } from '../src/dataplane/dataplane.js';
import type { Endpoint, EndpointHealth, Service } from '../src/dataplane/model.js';
import { btfStructs } from './support/btf.js';
import { kernelTest } from './support/kernel.js';
import {
  Client,
  createNetns,
  NetnsBackends,
  startBackend,
  type Backend,
  type NetnsServer,
} from './support/net.js';

const VIP = '127.100.19.1';
const WINDOW_MS = 1500;

const ep = (b: Backend, health: EndpointHealth = 'healthy'): Endpoint => ({
  address: b.address,
  port: b.port,
  weight: 1,
  priority: 0,
  health,
});

const svc = (endpoints: Endpoint[], extra: Partial<Service> = {}): Service => ({
  name: 'drain',
  kind: 'endpoints',
  lbPolicy: 'round_robin',
  endpoints,
  ...extra,
});

async function setup(env: Parameters<Parameters<typeof kernelTest>[1]>[1], drainAfterMs?: number) {
  const backends: Backend[] = [];
  for (const a of ['127.0.19.1', '127.0.19.2', '127.0.19.3']) {
    const b = await startBackend(a);
    env.defer(() => b.close());
    backends.push(b);
  }
  const dp = Dataplane.open({ pinDir: env.pinDir, ...(drainAfterMs !== undefined ? { drainAfterMs } : {}) });
  env.defer(() => dp.close());
  dp.attach(env.cgroup);
  const client = new Client(env.cgroup);
  env.defer(() => client.exit());
  const apply = async (s: Service): Promise<void> => {
    const r = await dp.apply({
      services: [s],
      frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'drain' }],
    });
    assert.deepEqual(r.refused, []);
  };
  /** Holds n connections and says which backend each reached. */
  const hold = async (prefix: string, n: number): Promise<Map<string, string>> => {
    const out = new Map<string, string>();
    for (let i = 0; i < n; i++) {
      const r = await client.connect({ host: VIP, port: 80, readId: true, hold: true, tag: `${prefix}${i}` });
      assert.ok(r.ok, JSON.stringify(r));
      out.set(`${prefix}${i}`, r.backend!);
    }
    return out;
  };
  return { backends: backends as [Backend, Backend, Backend], dp, client, apply, hold };
}

async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 600; i++) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`never: ${what}`);
}

kernelTest('drain structs: codecs match drain.bpf.o (BTF)', () => {
  const structs = btfStructs(bpfObjectPath('drain.bpf.o'));
  for (const codec of DRAIN_CODECS) {
    const s = structs.get(codec.struct);
    assert.ok(s, `struct ${codec.struct}`);
    assert.equal(codec.size, s.size, codec.struct);
    assert.deepEqual(
      codec.fields.map((f) => ({ ...f })),
      s.members.map((m) => ({ name: m.name, offset: m.offset, size: m.size })),
    );
  }
  assert.equal(drainedCodec.size, 64);
});

kernelTest(
  'an endpoint EDS removes: its held connections are closed by the kernel after the drain window and not before, the others stay, reconnects land on the endpoints left',
  async (t, env) => {
    const { backends, dp, client, apply, hold } = await setup(env, WINDOW_MS);
    const [a, b] = backends;
    await apply(svc([ep(a), ep(b)]));
    const held = await hold('h', 4); // round robin: two on each
    const onB = [...held].filter(([, backend]) => backend === b.id).map(([tag]) => tag);
    assert.equal(onB.length, 2);

    await apply(svc([ep(a)]));
    // new connects stop at once
    const fresh = await client.batch({ host: VIP, port: 80, readId: true, count: 10 });
    assert.deepEqual(new Set(fresh.map((r) => r.backend)), new Set([a.id]));

    const ends = await until('the connections to b are closed', async () => {
      const e = await client.ends();
      return onB.every((tag) => e[tag]?.closedNs !== undefined) ? e : undefined;
    });
    const events = dp.drainEvents();
    assert.equal(events.length, 1, 'one drain ran, none when the endpoint went');
    const event = events[0]!;
    // not before: the closer ran no sooner than the window after the change
    assert.ok(event.ranNs - event.changedNs >= BigInt(WINDOW_MS) * 1_000_000n);
    assert.deepEqual(
      event.targets.map((x) => [x.why, `${x.address}|${x.port}`]),
      [['removed', b.id]],
    );
    assert.equal(event.closed.length, 2, 'the two connections to b');
    for (const c of event.closed) {
      assert.equal(`${c.remoteAddress}|${c.remotePort}`, b.id);
      // by the kernel's own clock: closed no sooner than the window after the change
      const after = Number(c.ns - event.changedNs) / 1e6;
      t.diagnostic(`closed ${after.toFixed(1)} ms after b was removed (window ${WINDOW_MS} ms)`);
      assert.ok(after >= WINDOW_MS, `closed ${after} ms after removal`);
    }
    for (const tag of onB) {
      const e = ends[tag]!;
      // the client saw its connection end no sooner than the window after the change (one clock)
      assert.ok(BigInt(e.closedNs) >= event.changedNs + BigInt(WINDOW_MS) * 1_000_000n);
      assert.ok(e.err, `${tag}: the client saw an error (${JSON.stringify(e)})`);
    }
    assert.ok(
      [...held.keys()].filter((tag) => !onB.includes(tag)).every((tag) => !ends[tag]),
      'the connections to a stay open',
    );
    assert.deepEqual(dp.drainedConnections(), { removed: 2 });
    // the clients reconnect: to the endpoint left
    const again = await hold('r', 2);
    assert.deepEqual(new Set(again.values()), new Set([a.id]));
  },
);

kernelTest(
  'DRAINING closes after the window; an endpoint back before the window ends keeps its connections; no window, no closing',
  async (_t, env) => {
    const { backends, dp, client, apply, hold } = await setup(env, WINDOW_MS);
    const [a, b, c] = backends;
    await apply(svc([ep(a), ep(b), ep(c)]));
    const held = await hold('h', 3);
    const tagOf = (x: Backend): string => [...held].find(([, id]) => id === x.id)![0];
    // b drains for good; c drains and comes back before its window ends
    await apply(svc([ep(a), ep(b, 'draining'), ep(c, 'draining')]));
    await apply(svc([ep(a), ep(b, 'draining'), ep(c)]));
    await until('b is closed', async () =>
      (await client.ends())[tagOf(b)]?.closedNs !== undefined ? true : undefined,
    );
    // both windows have run (one timer each apply): only b's connection went
    await until('both windows ran', () => Promise.resolve(dp.drainEvents().length >= 1 ? true : undefined));
    await dp.idle();
    const ends = await client.ends();
    assert.ok(!ends[tagOf(a)] && !ends[tagOf(c)], JSON.stringify(ends));
    assert.deepEqual(
      dp.drainEvents().flatMap((e) => e.targets.map((x) => [x.why, `${x.address}|${x.port}`])),
      [['draining', b.id]],
    );
  },
);

kernelTest(
  'a cluster’s close_connections_on_host_set_change closes all its connections when a host is added; close_connections_on_host_health_failure closes a host’s when it turns unhealthy',
  async (_t, env) => {
    const { backends, dp, client, apply, hold } = await setup(env); // no node-wide window
    const [a, b, c] = backends;
    await apply(svc([ep(a), ep(b)], { closeConnections: { onHostHealthFailure: true } }));
    const first = await hold('h', 2);
    // b turns unhealthy: its connection goes at once, a's stays
    await apply(svc([ep(a), ep(b, 'unhealthy')], { closeConnections: { onHostHealthFailure: true } }));
    const tagB = [...first].find(([, id]) => id === b.id)![0];
    const tagA = [...first].find(([, id]) => id === a.id)![0];
    await until('b closed', async () =>
      (await client.ends())[tagB]?.closedNs !== undefined ? true : undefined,
    );
    assert.ok(!(await client.ends())[tagA]);
    assert.deepEqual(dp.drainedConnections(), { unhealthy: 1 });
    // adding c changes the host set: every connection of the cluster closes
    await apply(svc([ep(a), ep(b)], { closeConnections: { onHostSetChange: true } }));
    const second = await hold('s', 2);
    await apply(svc([ep(a), ep(b), ep(c)], { closeConnections: { onHostSetChange: true } }));
    await until('all closed', async () => {
      const e = await client.ends();
      return [tagA, ...second.keys()].every((tag) => e[tag]?.closedNs !== undefined) ? true : undefined;
    });
    assert.equal(dp.drainedConnections()['host set changed'], 3);
  },
);

kernelTest(
  'a pod with its own network namespace: its connections to a removed endpoint are closed there too (the iterator runs in each enrolled pod’s namespace)',
  async (t, env) => {
    // the pod: a client process in the test's cgroup and in a network namespace the test creates,
    // its backends in the same namespace (on its own loopback)
    const ns = createNetns('drain', ['127.0.19.1', '127.0.19.2']);
    env.defer(() => ns.remove());
    const servers = await new NetnsBackends(ns.name, [
      { address: '127.0.19.1' },
      { address: '127.0.19.2' },
    ]).start();
    env.defer(() => servers.stop());
    const [a, b] = [servers.server('127.0.19.1'), servers.server('127.0.19.2')];
    const config = loadConfig(
      [
        ...['--xds-file', '/dev/null', '--bpffs', env.pinDir, '--kubernetes', '--node-name', 'drain'],
        ...['--drain-removed-after', `${WINDOW_MS}ms`],
      ],
      {},
      { checkFiles: false },
    );
    const kernel = AgentKernel.open(config, pino({ level: 'silent' }), { stats: false });
    env.defer(() => kernel.close());
    kernel.enrollCgroup(env.cgroup); // as the enroller does for a pod
    const client = new Client(env.cgroup, ns.name);
    env.defer(() => client.exit());
    const apply = (endpoints: NetnsServer[]): Promise<void> =>
      kernel.apply({
        services: [
          svc(
            endpoints.map((s) => ({
              address: s.address,
              port: s.port,
              weight: 1,
              priority: 0,
              health: 'healthy',
            })),
          ),
        ],
        frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'drain' }],
      });
    await apply([a, b]);
    const held = new Map<string, string>();
    for (let i = 0; i < 4; i++) {
      const r = await client.connect({ host: VIP, port: 80, readId: true, hold: true, tag: `h${i}` });
      assert.ok(r.ok, JSON.stringify(r));
      held.set(`h${i}`, r.backend!);
    }
    const onB = [...held].filter(([, backend]) => backend === b.id).map(([tag]) => tag);
    assert.equal(onB.length, 2, 'round robin: two on each');

    await apply([a]);
    const ends = await until('the connections to b are closed', async () => {
      const e = await client.ends();
      return onB.every((tag) => e[tag]?.closedNs !== undefined) ? e : undefined;
    });
    const events = kernel.dataplane.drainEvents();
    assert.equal(events.length, 1);
    const event = events[0]!;
    assert.deepEqual(
      event.targets.map((x) => [x.why, `${x.address}|${x.port}`]),
      [['removed', b.id]],
    );
    assert.equal(event.closed.length, 2, "the pod's two connections to b, found in its namespace");
    for (const c of event.closed) {
      assert.equal(`${c.remoteAddress}|${c.remotePort}`, b.id);
      const after = Number(c.ns - event.changedNs) / 1e6;
      t.diagnostic(`closed ${after.toFixed(1)} ms after b was removed (window ${WINDOW_MS} ms)`);
      assert.ok(after >= WINDOW_MS, `closed ${after} ms after removal`);
    }
    for (const tag of onB)
      assert.ok(BigInt(ends[tag]!.closedNs) >= event.changedNs + BigInt(WINDOW_MS) * 1_000_000n);
    assert.ok(
      [...held.keys()].filter((tag) => !onB.includes(tag)).every((tag) => !ends[tag]),
      'the connections to a stay open',
    );
    assert.deepEqual(kernel.dataplane.drainedConnections(), { removed: 2 });
  },
);
