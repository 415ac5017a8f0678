// issue 17: how connects spread over priorities and localities, against Envoy's formulas
// (docs/translation.md, Priorities, localities and panic). Each row sets EDS health states (or ejects
// a host through outlier detection) and makes many connects with the random policy, whose draws are
// independent: the counts are multinomial with the probabilities Envoy's formulas give, written out
// in each row rather than computed by the code under test, and each check's bound is computed
// exactly (test/support/stats.ts) for a false failure at most PER_CHECK; the rows' rates are printed.
// A kernel that ignored the overprovisioning factor (failing over only when a level is empty) puts
// 100% on P0 in the 70/30 row: chi-square in the thousands against a bound near 30.
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';

import type { Dataplane } from '../src/dataplane/dataplane.js';
import type { Endpoint, EndpointHealth, Service } from '../src/dataplane/model.js';
import { OUTLIER_DEFAULTS } from '../src/dataplane/model.js';
import { planService } from '../src/dataplane/plan.js';
import { kernelTest } from './support/kernel.js';
import { startRouting } from './support/routing.js';
import type { Backend, Client } from './support/net.js';
import { chiSquare, chiSquareBound } from './support/stats.js';

const VIP = '127.100.18.1';

function assertSpread(t: TestContext, what: string, observed: number[], probs: number[]): void {
  const n = observed.reduce((a, b) => a + b, 0);
  const expected = probs.map((p) => n * p);
  const bound = chiSquareBound(n, probs);
  const x2 = chiSquare(observed, expected);
  t.diagnostic(
    `${what}: ${observed.join('/')} (expected ${expected.map((e) => e.toFixed(1)).join('/')}), chi-square ` +
      `${x2.toFixed(2)} <= ${bound.critical.toFixed(2)} (exact bound, false-failure rate ${bound.rate.toExponential(2)})`,
  );
  assert.ok(x2 <= bound.critical, `${what}: chi-square ${x2.toFixed(2)} for ${observed.join('/')}`);
}

async function spread(
  dp: Dataplane,
  client: Client,
  service: Service,
  count: number,
): Promise<Map<string, number>> {
  assert.deepEqual(
    (
      await dp.apply({
        services: [service],
        frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: service.name }],
      })
    ).refused,
    [],
  );
  const results = await client.batch({ host: VIP, port: 80, readId: true, count, concurrency: 4 });
  const failed = results.filter((r) => !r.ok);
  assert.equal(failed.length, 0, JSON.stringify(failed[0]));
  const m = new Map<string, number>();
  for (const r of results) m.set(r.backend!, (m.get(r.backend!) ?? 0) + 1);
  return m;
}

const ep = (
  b: Backend,
  priority: number,
  health: EndpointHealth,
  extra: Partial<Endpoint> = {},
): Endpoint => ({
  address: b.address,
  port: b.port,
  weight: 1,
  priority,
  health,
  ...extra,
});

/** Connects that landed on each group of backends. */
const countsOf = (landed: Map<string, number>, groups: Backend[][]): number[] =>
  groups.map((g) => g.reduce((n, b) => n + (landed.get(b.id) ?? 0), 0));

const healthyFirst = (k: number, n: number): EndpointHealth[] =>
  Array.from({ length: n }, (_, i) => (i < k ? 'healthy' : 'unhealthy'));

kernelTest(
  'priority spillover and panic as Envoy computes them: the split over many connects matches the formulas for a table of health states',
  async (t, env) => {
    const addresses = Array.from({ length: 20 }, (_, i) => `127.0.18.${i + 1}`);
    const { dp, backends, client } = await startRouting(env, addresses);
    const p0 = backends.slice(0, 10);
    const p1 = backends.slice(10, 20);
    const N = 2000;
    const service = (h0: EndpointHealth[], h1: EndpointHealth[], extra: Partial<Service> = {}): Service => ({
      name: 'spread',
      kind: 'endpoints',
      lbPolicy: 'random',
      endpoints: [...p0.map((b, i) => ep(b, 0, h0[i]!)), ...p1.map((b, i) => ep(b, 1, h1[i]!))],
      ...extra,
    });

    // [P0 healthy of 10, P1 healthy of 10] → Envoy's loads: health = min(100, 140 × healthy / 10)
    const rows: { healthy: [number, number]; load: [number, number] }[] = [
      { healthy: [7, 10], load: [0.98, 0.02] }, // 98, and 2 spill over before P0 is anywhere near empty
      { healthy: [5, 10], load: [0.7, 0.3] },
      { healthy: [2, 10], load: [0.28, 0.72] },
      { healthy: [3, 6], load: [0.42, 0.58] }, // 42 + 84: normalized to 100, P1 takes what is left
    ];
    for (const { healthy, load } of rows) {
      await t.test(
        `P0 ${healthy[0]}/10 healthy, P1 ${healthy[1]}/10: ${load[0] * 100}/${load[1] * 100}`,
        async () => {
          const s = service(healthyFirst(healthy[0], 10), healthyFirst(healthy[1], 10));
          assert.deepEqual(
            planService(s).value.load.slice(0, 2),
            load.map((x) => Math.round(x * 100)),
          );
          const landed = await spread(dp, client, s, N);
          const healthy0 = p0.slice(0, healthy[0]);
          const healthy1 = p1.slice(0, healthy[1]);
          // no connect reaches an unhealthy host: no level is in panic
          assert.equal(
            countsOf(landed, [healthy0, healthy1]).reduce((a, b) => a + b, 0),
            N,
          );
          assertSpread(t, `${healthy.join('/')} healthy`, countsOf(landed, [healthy0, healthy1]), load);
        },
      );
    }

    await t.test('P0 2/10 and P1 2/10: every level in panic, load by host count over all hosts', async () => {
      const s = service(healthyFirst(2, 10), healthyFirst(2, 10));
      const landed = await spread(dp, client, s, N);
      // 50/50 by host count; within a level every host alike, healthy or not: P0's 2 healthy get 0.1
      assertSpread(t, 'total panic', countsOf(landed, [p0.slice(0, 2), p0.slice(2), p1]), [0.1, 0.4, 0.5]);
    });

    await t.test(
      'P0 6/10 and P1 0/10: P0 takes everything among its healthy hosts (P1 in panic has no load)',
      async () => {
        const s = service(healthyFirst(6, 10), healthyFirst(0, 10));
        const landed = await spread(dp, client, s, 500);
        assert.equal(countsOf(landed, [p0.slice(0, 6)])[0], 500);
      },
    );

    await t.test('overprovisioning factor 100 and panic threshold 0 from the cluster', async () => {
      // factor 100: P0 with 9 of 10 keeps 90%
      const s = service(healthyFirst(9, 10), healthyFirst(10, 10), { overprovisioningFactor: 100 });
      assertSpread(t, 'factor 100, 9/10', countsOf(await spread(dp, client, s, N), [p0, p1]), [0.9, 0.1]);
      // threshold 0: 1 of 10 healthy on P0 and none on P1 is no panic: all on P0's one healthy host
      const off = service(healthyFirst(1, 10), healthyFirst(0, 10), { panicThreshold: 0 });
      assert.equal(countsOf(await spread(dp, client, off, 300), [p0.slice(0, 1)])[0], 300);
      // fail_traffic_on_panic: the same health in panic refuses
      const fail = service(healthyFirst(2, 10), healthyFirst(2, 10), { failTrafficOnPanic: true });
      await dp.apply({
        services: [fail],
        frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'spread' }],
      });
      const refused = await client.batch({ host: VIP, port: 80, readId: true, count: 20, concurrency: 4 });
      assert.deepEqual(new Set(refused.map((r) => r.err)), new Set(['ECONNREFUSED']));
    });
  },
);

kernelTest(
  'an ejected host lowers its priority’s health in the kernel: 2 hosts per priority, one of P0 ejected, spill 70/30',
  async (t, env) => {
    const { dp, backends, client } = await startRouting(env, [
      '127.0.18.41',
      '127.0.18.42',
      '127.0.18.43',
      '127.0.18.44',
    ]);
    const [a, x, c, d] = backends as [Backend, Backend, Backend, Backend];
    // x refuses its first connect and is ejected (threshold 1) for long enough
    await x.close();
    const s: Service = {
      name: 'spread',
      kind: 'endpoints',
      lbPolicy: 'random',
      endpoints: [ep(a, 0, 'healthy'), ep(x, 0, 'healthy'), ep(c, 1, 'healthy'), ep(d, 1, 'healthy')],
      outlierDetection: {
        ...OUTLIER_DEFAULTS,
        consecutive5xx: 1,
        baseEjectionTimeMs: 600_000,
        maxEjectionPercent: 50,
      },
    };
    await dp.apply({
      services: [s],
      frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'spread' }],
    });
    const ejected = () => dp.outlier()[0]?.hosts.find((h) => h.ejected && h.address === x.address);
    for (let i = 0; !ejected(); i++) {
      assert.ok(i < 200, 'x is ejected');
      await client.connect({ host: VIP, port: 80, readId: true });
    }
    const before = ejected()!;
    const results = await client.batch({ host: VIP, port: 80, readId: true, count: 2000, concurrency: 4 });
    assert.equal(ejected()?.ejectedNs, before.ejectedNs, 'the same ejection throughout');
    assert.equal(results.filter((r) => !r.ok).length, 0);
    const landed = new Map<string, number>();
    for (const r of results) landed.set(r.backend!, (landed.get(r.backend!) ?? 0) + 1);
    assert.equal(landed.get(x.id) ?? 0, 0);
    // P0: 1 healthy of 2 → health 140 × 1 / 2 = 70 → 70/30
    assertSpread(t, 'P0 with one of two ejected', countsOf(landed, [[a], [c, d]]), [0.7, 0.3]);
  },
);

kernelTest(
  'locality weights as Envoy weighs them: weight × min(1, 1.4 × healthy / hosts) per locality, for a table of health states',
  async (t, env) => {
    const addresses = Array.from({ length: 12 }, (_, i) => `127.0.18.${i + 61}`);
    const { dp, backends, client } = await startRouting(env, addresses);
    const zones = [backends.slice(0, 4), backends.slice(4, 8), backends.slice(8, 12)];
    const weights = [1, 2, 1];
    const names = ['a', 'b', 'c'];
    const rows: { healthy: number[]; probs: number[] }[] = [
      { healthy: [4, 4, 4], probs: [1 / 4, 2 / 4, 1 / 4] },
      // a: 2 of 4 → availability min(1, 1.4 × 0.5) = 0.7 → 0.7 : 2 : 1
      { healthy: [2, 4, 4], probs: [0.7 / 3.7, 2 / 3.7, 1 / 3.7] },
      // b: 2 of 4 → 2 × 0.7 = 1.4; c: 3 of 4 → min(1, 1.05) = 1
      { healthy: [4, 2, 3], probs: [1 / 3.4, 1.4 / 3.4, 1 / 3.4] },
    ];
    for (const { healthy, probs } of rows) {
      await t.test(`healthy ${healthy.join('/')} of 4 in localities weighted 1:2:1`, async () => {
        const s: Service = {
          name: 'spread',
          kind: 'endpoints',
          lbPolicy: 'random',
          localityWeighted: true,
          endpoints: zones.flatMap((z, zi) =>
            z.map((b, i) =>
              ep(b, 0, i < healthy[zi]! ? 'healthy' : 'unhealthy', {
                locality: { zone: names[zi]! },
                localityWeight: weights[zi]!,
              }),
            ),
          ),
        };
        // the kernel holds the shares as slot weights (at most 1024 slots): the planned shares are
        // what its draws follow, and they are Envoy's to within a slot each
        const slots = planService(s).slots.filter((e) => e.priority === 0);
        const planned = zones.map(
          (z) =>
            slots.filter((e) => z.some((b) => e.backend === `${b.address}|${b.port}`)).length / slots.length,
        );
        planned.forEach((p, i) =>
          assert.ok(Math.abs(p - probs[i]!) <= 4 / slots.length, `zone ${names[i]}: ${p} vs ${probs[i]}`),
        );
        const landed = await spread(dp, client, s, 2000);
        const healthyHosts = zones.map((z, zi) => z.slice(0, healthy[zi]));
        assert.equal(
          countsOf(landed, healthyHosts).reduce((a, b) => a + b, 0),
          2000,
          'only healthy hosts',
        );
        assertSpread(t, `localities ${healthy.join('/')}`, countsOf(landed, healthyHosts), planned);
      });
    }
  },
);
