// issue 3: connect-time routing in the kernel, with real sockets from a process in the test cgroup.
// Table-driven like the kernel's sock_addr selftests: requested address → where it must land.
import assert from 'node:assert/strict';

import { Dataplane } from '../src/dataplane/dataplane.js';
import type { Endpoint, LbPolicy, Service } from '../src/dataplane/model.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';
import { Client, startBackend, type Backend } from './support/net.js';
import { connectsAtBaseline, startRouting } from './support/routing.js';
import { binomialUpperBound } from './support/stats.js';

function ep(b: Backend, extra: Partial<Endpoint> = {}): Endpoint {
  return { address: b.address, port: b.port, weight: 1, priority: 0, health: 'healthy', ...extra };
}

function svc(name: string, lbPolicy: LbPolicy, endpoints: Endpoint[], extra: Partial<Service> = {}): Service {
  return { name, kind: 'endpoints', lbPolicy, endpoints, ...extra };
}

/** Waits (bounded) until sockops has seen the closes: counts are updated asynchronously. */
function until(cond: () => boolean, what: string): Promise<void> {
  return eventually(what, cond, { attempts: 250, intervalMs: 20 });
}

kernelTest(
  'connect table: every policy, passthrough, blackhole, no endpoints, draining, unknown VIP',
  async (t, env) => {
    const { dp, backends, client } = await startRouting(env, ['127.0.0.11', '127.0.0.12', '127.0.0.13']);
    const [b1, b2, b3] = backends as [Backend, Backend, Backend];
    // "VIPs" that nothing routes: a server listens on the address itself, so untouched connects land there
    const direct = await startBackend('127.100.1.200');
    env.defer(() => direct.close());
    const passthroughTarget = await startBackend('127.100.1.201');
    env.defer(() => passthroughTarget.close());

    const services: Service[] = [
      svc('random', 'random', [ep(b1)]),
      svc('round-robin', 'round_robin', [ep(b2)]),
      svc('least-request', 'least_request', [ep(b3)]),
      svc('maglev', 'maglev', [ep(b1)]),
      svc('weighted-random', 'random', [ep(b2, { weight: 5 })]),
      svc('passthrough', 'random', [], { kind: 'passthrough' }),
      svc('blackhole', 'random', [], { kind: 'blackhole' }),
      svc('no-endpoints', 'random', []),
      // panic off: with no healthy host nothing is selectable
      svc('all-draining', 'round_robin', [ep(b1, { health: 'draining' }), ep(b2, { health: 'unhealthy' })], {
        panicThreshold: 0,
      }),
      svc('unknown-health', 'round_robin', [ep(b3, { health: 'unknown' }), ep(b1, { health: 'draining' })]),
      // Envoy's default panic threshold: no healthy host puts the priority in panic, which uses every
      // host but a draining one
      svc('panic', 'round_robin', [ep(b1, { health: 'draining' }), ep(b2, { health: 'unhealthy' })]),
    ];
    const frontends = services.map((s, i) => ({
      address: `127.100.1.${i + 1}`,
      port: 80,
      protocol: 'tcp' as const,
      service: s.name,
    }));
    // passthrough keeps the destination, so its frontend is the address a server listens on
    frontends[5] = {
      address: passthroughTarget.address,
      port: passthroughTarget.port,
      protocol: 'tcp',
      service: 'passthrough',
    };
    const applied = await dp.apply({ services, frontends });
    assert.deepEqual(applied.refused, []);

    const table: { name: string; host: string; port: number; expect: string }[] = [
      { name: 'random', host: '127.100.1.1', port: 80, expect: b1.id },
      { name: 'round_robin', host: '127.100.1.2', port: 80, expect: b2.id },
      { name: 'least_request', host: '127.100.1.3', port: 80, expect: b3.id },
      { name: 'maglev', host: '127.100.1.4', port: 80, expect: b1.id },
      { name: 'weighted random', host: '127.100.1.5', port: 80, expect: b2.id },
      {
        name: 'passthrough',
        host: passthroughTarget.address,
        port: passthroughTarget.port,
        expect: passthroughTarget.id,
      },
      { name: 'blackhole', host: '127.100.1.7', port: 80, expect: 'ECONNREFUSED' },
      { name: 'no endpoints', host: '127.100.1.8', port: 80, expect: 'ECONNREFUSED' },
      {
        name: 'draining and unhealthy only, panic off',
        host: '127.100.1.9',
        port: 80,
        expect: 'ECONNREFUSED',
      },
      { name: 'unknown health is selectable, draining not', host: '127.100.1.10', port: 80, expect: b3.id },
      { name: 'unhealthy only: in panic, as Envoy', host: '127.100.1.11', port: 80, expect: b2.id },
      { name: 'unknown VIP untouched', host: direct.address, port: direct.port, expect: direct.id },
      { name: 'known VIP, other port untouched', host: '127.100.1.1', port: 81, expect: 'ECONNREFUSED' },
    ];
    for (const row of table) {
      await t.test(row.name, async () => {
        const r = await client.connect({ host: row.host, port: row.port, readId: true });
        assert.equal(r.ok ? r.backend : r.err, row.expect);
      });
    }

    const by = new Map(dp.counters().map((c) => [c.service, c.counters]));
    assert.equal(by.get('random')?.routed, 1n);
    assert.equal(by.get('passthrough')?.passthrough, 1n);
    assert.equal(by.get('blackhole')?.blackhole, 1n);
    assert.equal(by.get('no-endpoints')?.no_endpoint, 1n);
    assert.equal(by.get('all-draining')?.no_endpoint, 1n);
  },
);

kernelTest('getpeername on the client returns the VIP; the server sees the real client', async (_t, env) => {
  const { dp, backends, client } = await startRouting(env, ['127.0.0.21']);
  const b = backends[0]!;
  await dp.apply({
    services: [svc('peer', 'random', [ep(b)])],
    frontends: [{ address: '127.100.2.1', port: 443, protocol: 'tcp', service: 'peer' }],
  });
  const r = await client.connect({
    host: '127.100.2.1',
    port: 443,
    readId: true,
    localAddress: '127.0.0.22',
  });
  assert.equal(r.ok, true, r.err);
  assert.equal(r.backend, b.id);
  assert.equal(r.peer, '127.100.2.1|443');
  assert.deepEqual(b.peers, [r.local]);
  assert.match(r.local ?? '', /^127\.0\.0\.22\|/);
});

kernelTest(
  'circuit breaking: with max_connections 5 the sixth concurrent connect is refused, then one close frees a place',
  async (_t, env) => {
    const { dp, backends, client } = await startRouting(env, ['127.0.0.31']);
    const b = backends[0]!;
    await dp.apply({
      services: [svc('capped', 'round_robin', [ep(b)], { maxConnections: 5 })],
      frontends: [{ address: '127.100.3.1', port: 80, protocol: 'tcp', service: 'capped' }],
    });
    for (let i = 0; i < 5; i++) {
      const r = await client.connect({
        host: '127.100.3.1',
        port: 80,
        readId: true,
        hold: true,
        tag: `c${i}`,
      });
      assert.equal(r.backend, b.id, `connection ${i}: ${r.err}`);
    }
    assert.equal(dp.activeConnections().services.capped, 5);
    const sixth = await client.connect({ host: '127.100.3.1', port: 80, readId: true });
    assert.equal(sixth.err, 'ECONNREFUSED');
    assert.equal(dp.counters().find((c) => c.service === 'capped')?.counters.overflow, 1n);

    await client.close('c0');
    await until(() => dp.activeConnections().services.capped === 4, 'active count back to 4 after a close');
    const again = await client.connect({
      host: '127.100.3.1',
      port: 80,
      readId: true,
      hold: true,
      tag: 'c5',
    });
    assert.equal(again.backend, b.id, again.err);
  },
);

kernelTest(
  'failover: priority 0 emptied or unhealthy sends connections to priority 1, and back when it returns',
  async (_t, env) => {
    const { dp, backends, client } = await startRouting(env, ['127.0.0.41', '127.0.0.42', '127.0.0.43']);
    const [p0a, p0b, p1] = backends as [Backend, Backend, Backend];
    const state = (p0: Endpoint[]) => ({
      services: [svc('failover', 'round_robin', [...p0, ep(p1, { priority: 1 })])],
      frontends: [{ address: '127.100.4.1', port: 80, protocol: 'tcp' as const, service: 'failover' }],
    });
    const land = async (): Promise<Set<string>> =>
      new Set(
        (await client.batch({ host: '127.100.4.1', port: 80, readId: true, count: 20 })).map(
          (r) => r.backend ?? r.err ?? '?',
        ),
      );

    await dp.apply(state([ep(p0a), ep(p0b)]));
    assert.deepEqual(await land(), new Set([p0a.id, p0b.id]));
    await dp.apply(state([ep(p0a, { health: 'unhealthy' }), ep(p0b, { health: 'draining' })]));
    assert.deepEqual(await land(), new Set([p1.id]));
    await dp.apply(state([]));
    assert.deepEqual(await land(), new Set([p1.id]));
    await dp.apply(state([ep(p0b)]));
    assert.deepEqual(await land(), new Set([p0b.id]));
  },
);

kernelTest('least request sends new connections away from a backend holding open ones', async (t, env) => {
  const { dp, backends, client } = await startRouting(env, ['127.0.0.51', '127.0.0.52', '127.0.0.53']);
  const [busy, idle1, idle2] = backends as [Backend, Backend, Backend];
  const fe = [{ address: '127.100.5.1', port: 80, protocol: 'tcp' as const, service: 'lr' }];
  await dp.apply({ services: [svc('lr', 'least_request', [ep(busy)])], frontends: fe });
  for (let i = 0; i < 10; i++) {
    const r = await client.connect({ host: '127.100.5.1', port: 80, readId: true, hold: true, tag: `h${i}` });
    assert.equal(r.backend, busy.id);
  }
  await dp.apply({ services: [svc('lr', 'least_request', [ep(busy), ep(idle1), ep(idle2)])], frontends: fe });
  const key = (b: Backend): string => `${b.address}|${b.port}`;
  assert.equal(dp.activeConnections().backends[key(busy)], 10);
  // each connect made with busy at 10 and the others at 0: equal weights, two random choices, and
  // busy is chosen only when both fall on it, 1/9 of the time, independently: Binomial(300, 1/9)
  const baseline = new Map([
    [key(busy), 10],
    [key(idle1), 0],
    [key(idle2), 0],
  ]);
  const counts = await connectsAtBaseline(dp, client, '127.100.5.1', 300, baseline);
  const toBusy = counts.get(busy.id) ?? 0;
  // a policy blind to load sends busy 1/3 of them (100 of 300), far above the bound (66 at 1e-7)
  const { bound, rate } = binomialUpperBound(300, 1 / 9);
  t.diagnostic(
    `busy backend got ${toBusy} of 300 (about 33 due; fails at ${bound}, false-failure rate ${rate.toExponential(2)})`,
  );
  assert.ok(toBusy < bound, `busy backend got ${toBusy} of 300: ${JSON.stringify([...counts])}`);
  assert.equal((counts.get(idle1.id) ?? 0) + (counts.get(idle2.id) ?? 0) + toBusy, 300);
});

kernelTest(
  'map sizes come from the capacity; what does not fit is refused and the live service keeps routing',
  async (_t, env) => {
    const backends = await Promise.all(
      ['127.0.0.61', '127.0.0.62', '127.0.0.63'].map((a) => startBackend(a)),
    );
    for (const b of backends) env.defer(() => b.close());
    const [b1, b2, b3] = backends as [Backend, Backend, Backend];
    const dp = Dataplane.open({ pinDir: env.pinDir, capacity: { slots: 4, services: 8, frontends: 16 } });
    env.defer(() => dp.close());
    dp.attach(env.cgroup);
    assert.equal(dp.map('km_slots').maxEntries, 4);
    assert.equal(dp.map('km_counters').maxEntries, 8 * 8);
    const client = new Client(env.cgroup);
    env.defer(() => client.exit());
    const fe = [{ address: '127.100.6.1', port: 80, protocol: 'tcp' as const, service: 'fits' }];

    assert.deepEqual(
      (await dp.apply({ services: [svc('fits', 'round_robin', [ep(b1), ep(b2)])], frontends: fe })).refused,
      [],
    );
    const grown = await dp.apply({
      services: [svc('fits', 'round_robin', [ep(b1), ep(b2), ep(b3, { weight: 2 })])],
      frontends: fe,
    });
    assert.equal(grown.refused.length, 1);
    assert.match(grown.refused[0]!.reason, /km_slots full: needs 4 slots, 2 free/);
    const landed = new Set(
      (await client.batch({ host: '127.100.6.1', port: 80, readId: true, count: 10 })).map((r) => r.backend),
    );
    assert.deepEqual(landed, new Set([b1.id, b2.id]));

    const actual = dp.readActual();
    assert.deepEqual(
      actual.services.map((s) => [s.name, s.slots.map((x) => x.backend)]),
      [['fits', [`${b1.address}:${b1.port}`, `${b2.address}:${b2.port}`]]],
    );
    assert.deepEqual(
      actual.frontends.map((f) => [f.address, f.port, f.protocol, f.service]),
      [['127.100.6.1', 80, 'tcp', 'fits']],
    );
    // maps pinned with other sizes (another capacity, or another kernmesh's layout) cannot be
    // reused: the refusal names the way out
    assert.throws(
      () => Dataplane.open({ pinDir: env.pinDir }),
      /couldn't reuse pinned map .* parameter mismatch.*run `kernmesh cleanup --bpffs /,
    );
  },
);
