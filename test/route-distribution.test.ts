// issue 3: how connections spread. Statistical bounds are loose enough never to flake (p < 0.001)
// and tight enough that a broken policy (one backend, wrong weights) fails.
import assert from 'node:assert/strict';

import { Dataplane } from '../src/dataplane/dataplane.js';
import type { Endpoint, LbPolicy } from '../src/dataplane/model.js';
import { kernelTest } from './support/kernel.js';
import { Client, tally, type Backend } from './support/net.js';
import { startRouting } from './support/routing.js';

/** Chi-square critical value for 2 degrees of freedom at p = 0.001. */
const CHI2_DF2_P001 = 13.82;
const CHI2_DF1_P001 = 10.83;

function chiSquare(observed: number[], expected: number[]): number {
  return observed.reduce((sum, o, i) => sum + (o - expected[i]!) ** 2 / expected[i]!, 0);
}

const ep = (b: Backend, weight = 1): Endpoint => ({
  address: b.address,
  port: b.port,
  weight,
  priority: 0,
  health: 'healthy',
});

async function spread(
  dp: Dataplane,
  client: Client,
  policy: LbPolicy,
  endpoints: Endpoint[],
  vip: string,
  count: number,
  concurrency = 4,
) {
  const applied = await dp.apply({
    services: [{ name: `spread-${policy}`, kind: 'endpoints', lbPolicy: policy, endpoints }],
    frontends: [{ address: vip, port: 80, protocol: 'tcp', service: `spread-${policy}` }],
  });
  assert.deepEqual(applied.refused, []);
  const results = await client.batch({ host: vip, port: 80, readId: true, count, concurrency });
  assert.equal(results.filter((r) => !r.ok).length, 0, JSON.stringify(results.find((r) => !r.ok)));
  return tally(results.map((r) => r.backend));
}

kernelTest(
  'RANDOM and ROUND_ROBIN spread 3000 connects within a chi-square bound; weights 1:3 give about 1:3',
  async (t, env) => {
    const { dp, backends, client } = await startRouting(env, ['127.0.0.81', '127.0.0.82', '127.0.0.83']);
    for (const policy of ['random', 'round_robin', 'least_request'] as const) {
      await t.test(`${policy}: 3000 connects over 3 backends`, async () => {
        const counts = await spread(
          dp,
          client,
          policy,
          backends.map((b) => ep(b)),
          '127.100.8.1',
          3000,
        );
        const observed = backends.map((b) => counts.get(b.id) ?? 0);
        const x2 = chiSquare(observed, [1000, 1000, 1000]);
        assert.ok(x2 < CHI2_DF2_P001, `chi-square ${x2.toFixed(2)} for ${observed.join('/')}`);
      });
    }
    for (const policy of ['random', 'round_robin', 'least_request', 'maglev'] as const) {
      await t.test(`${policy}: weights 1:3`, async () => {
        const [a, b] = backends as [Backend, Backend];
        // maglev hashes the client: vary the source so the table's weights show
        const counts =
          policy === 'maglev'
            ? await (async () => {
                await dp.apply({
                  services: [
                    { name: 'w', kind: 'endpoints', lbPolicy: 'maglev', endpoints: [ep(a, 1), ep(b, 3)] },
                  ],
                  frontends: [{ address: '127.100.8.2', port: 80, protocol: 'tcp', service: 'w' }],
                });
                const sources = Array.from(
                  { length: 2000 },
                  (_, i) => `127.2.${Math.floor(i / 250)}.${(i % 250) + 1}`,
                );
                const r = await client.batch({
                  host: '127.100.8.2',
                  port: 80,
                  readId: true,
                  count: 2000,
                  concurrency: 4,
                  localAddresses: sources,
                });
                return tally(r.map((x) => x.backend));
              })()
            : // least request follows the weights at equal load; under load it favours the less busy
              await spread(
                dp,
                client,
                policy,
                [ep(a, 1), ep(b, 3)],
                '127.100.8.3',
                2000,
                policy === 'least_request' ? 1 : 4,
              );
        const observed = [counts.get(a.id) ?? 0, counts.get(b.id) ?? 0];
        const x2 = chiSquare(observed, [500, 1500]);
        t.diagnostic(`${policy} 1:3 → ${observed.join('/')}, chi-square ${x2.toFixed(2)}`);
        assert.ok(
          x2 < CHI2_DF1_P001,
          `chi-square ${x2.toFixed(2)} for ${observed.join('/')} (want 500/1500)`,
        );
      });
    }
  },
);

kernelTest(
  'Maglev: a client address always reaches the same backend; removing one of 10 moves at most 15% of 1000 clients',
  async (_t, env) => {
    const addresses = Array.from({ length: 10 }, (_, i) => `127.0.0.${90 + i}`);
    const { dp, backends, client } = await startRouting(env, addresses);
    const sources = Array.from({ length: 1000 }, (_, i) => `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}`);
    const state = (bs: Backend[]) => ({
      services: [
        {
          name: 'maglev',
          kind: 'endpoints' as const,
          lbPolicy: 'maglev' as const,
          endpoints: bs.map((b) => ep(b)),
        },
      ],
      frontends: [{ address: '127.100.9.1', port: 80, protocol: 'tcp' as const, service: 'maglev' }],
    });
    const mapping = async (): Promise<Map<string, string>> => {
      const r = await client.batch({
        host: '127.100.9.1',
        port: 80,
        readId: true,
        count: sources.length,
        concurrency: 8,
        localAddresses: sources,
      });
      assert.equal(r.filter((x) => !x.ok).length, 0, JSON.stringify(r.find((x) => !x.ok)));
      return new Map(r.map((x) => [x.src!, x.backend!]));
    };

    const programmed = await dp.apply(state(backends));
    // the kernel takes the 4093-entry table in batches, not one bpf() call per entry
    assert.ok(
      programmed.syscalls * 100 < programmed.ops.length,
      `${programmed.syscalls} syscalls for ${programmed.ops.length} operations`,
    );
    const first = await mapping();
    const second = await mapping();
    assert.deepEqual(second, first, 'same client address, same backend');
    // every backend serves some clients (the hash spreads)
    assert.equal(new Set(first.values()).size, 10);

    const removed = backends[3]!;
    await dp.apply(state(backends.filter((b) => b !== removed)));
    const after = await mapping();
    let moved = 0;
    for (const [src, before] of first) if (after.get(src) !== before) moved++;
    const onRemoved = [...first.values()].filter((b) => b === removed.id).length;
    assert.ok(![...after.values()].includes(removed.id), 'nobody reaches the removed backend');
    assert.ok(moved <= 150, `${moved} of 1000 clients moved (${onRemoved} were on the removed backend)`);
  },
);
