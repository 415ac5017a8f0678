// issue 17: passive outlier detection in the kernel, as Envoy's consecutive-failure detector with
// connects as results. Every backend lives in a network namespace the test creates, where nftables
// rules (in that namespace only) make one drop SYNs and another answer them with ICMP host
// unreachable; a third stops listening (RST). Ejection, return and the multiplier are read back from
// the kernel's own maps and clock (bpf_ktime_get_ns), never from how fast this machine runs: a phase
// that must see a state unchanged checks it before and after, and runs again if it changed.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';

import type { Dataplane } from '../src/dataplane/dataplane.js';
import type { LbPolicy, OutlierDetection, Service } from '../src/dataplane/model.js';
import { OUTLIER_DEFAULTS } from '../src/dataplane/model.js';
import type { ServiceOutlier } from '../src/dataplane/reader.js';
import { kernelTest } from './support/kernel.js';
import { Client, createNetns, NetnsBackends, type ConnectResult } from './support/net.js';
import { openRouting } from './support/routing.js';
import { binomialUpperTail } from './support/stats.js';

const PORT = 9000;
const VIP = '127.100.17.1';

/** An nftables table in the test's namespace whose input chain takes per-address rules. */
function nftables(netns: string) {
  const nft = (...args: string[]): string =>
    execFileSync('ip', ['netns', 'exec', netns, 'nft', ...args], { encoding: 'utf8' });
  nft('add', 'table', 'inet', 'km');
  nft('add', 'chain', 'inet', 'km', 'input', '{ type filter hook input priority 0; }');
  const handles = new Map<string, string>();
  return {
    /** SYNs to the address are dropped. */
    block(address: string, how: 'drop'): void {
      const verdict = how;
      const out = nft(
        '--echo',
        '--handle',
        'add',
        'rule',
        'inet',
        'km',
        'input',
        ...`ip daddr ${address} tcp dport ${PORT} tcp flags & (syn | ack) == syn ${verdict}`.split(' '),
      );
      const handle = /# handle (\d+)/.exec(out)?.[1];
      assert.ok(handle, out);
      handles.set(address, handle);
    },
    unblock(address: string): void {
      const handle = handles.get(address);
      if (!handle) return;
      nft('delete', 'rule', 'inet', 'km', 'input', 'handle', handle);
      handles.delete(address);
    },
  };
}

/**
 * A router's ICMP host unreachable, answered from another process (python3, raw sockets) to each SYN
 * for `address`: it reaches the client's socket after connect() returned, as an ICMP from another
 * machine would. (nftables' own reject answers within the connect() call on loopback, while the
 * socket is still locked: the kernel keeps that error as a soft one for SO_ERROR, which sockops
 * cannot see; docs/translation.md.) The SYN itself is dropped by nftables.
 */
const ICMP_RESPONDER = String.raw`
import socket, struct, sys
target, port = sys.argv[1], int(sys.argv[2])
rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
rx.bind(('lo', 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def csum(b):
    if len(b) % 2: b += bytes(1)
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
print('ready', flush=True)
while True:
    pkt, addr = rx.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING or pkt[9] != 6: continue
    ihl = (pkt[0] & 0xf) * 4
    tcp = pkt[ihl:]
    if socket.inet_ntoa(pkt[16:20]) != target or struct.unpack('!H', tcp[2:4])[0] != port: continue
    if tcp[13] & 0x12 != 0x02: continue
    icmp = struct.pack('!BBHI', 3, 1, 0, 0) + pkt[:ihl + 8]
    icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
    tx.sendto(icmp, (socket.inet_ntoa(pkt[12:16]), 0))
`;

async function icmpResponder(netns: string, address: string): Promise<{ stop(): Promise<void> }> {
  const child = spawn(
    'ip',
    ['netns', 'exec', netns, 'python3', '-c', ICMP_RESPONDER, address, String(PORT)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  await once(createInterface({ input: child.stdout }), 'line');
  return {
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const closed = once(child, 'close');
      child.kill('SIGKILL');
      await closed;
    },
  };
}

/** One server process per address, so one of them can stop listening. */
class Servers {
  private readonly running = new Map<string, NetnsBackends>();
  constructor(private readonly netns: string) {}

  async start(address: string): Promise<void> {
    this.running.set(address, await new NetnsBackends(this.netns, [{ address, port: PORT }]).start());
  }

  async stop(address: string): Promise<void> {
    await this.running.get(address)?.stop();
    this.running.delete(address);
  }

  async stopAll(): Promise<void> {
    for (const a of [...this.running.keys()]) await this.stop(a);
  }
}

const od = (o: Partial<OutlierDetection>): OutlierDetection => ({ ...OUTLIER_DEFAULTS, ...o });

function service(addresses: string[], lbPolicy: LbPolicy, outlier: OutlierDetection): Service {
  return {
    name: 'outlier',
    kind: 'endpoints',
    lbPolicy,
    endpoints: addresses.map((address) => ({
      address,
      port: PORT,
      weight: 1,
      priority: 0,
      health: 'healthy',
    })),
    outlierDetection: outlier,
    connectTimeoutMs: 300,
  };
}

function state(dp: Dataplane): ServiceOutlier {
  const s = dp.outlier().find((x) => x.service === 'outlier');
  assert.ok(s, 'the service has outlier detection');
  return s;
}

const ejectedHosts = (s: ServiceOutlier): string[] =>
  s.hosts
    .filter((h) => h.ejected)
    .map((h) => h.address)
    .sort();

const hostOf = (s: ServiceOutlier, address: string) => s.hosts.find((h) => h.address === address);

/** Where connects landed: the backends' greetings are "address|port". */
const landedOn = (results: ConnectResult[]): string[] =>
  results.filter((r) => r.ok).map((r) => r.backend!.split('|')[0]!);

async function until<T>(
  what: string | (() => string),
  probe: () => Promise<T | undefined> | T | undefined,
  tries = 600,
): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`never: ${typeof what === 'string' ? what : what()}`);
}

kernelTest(
  'outlier detection: a host that refuses is ejected on the configured consecutive failure, skipped by round robin, and returns after base_ejection_time by the kernel clock',
  async (t: TestContext, env) => {
    const ns = createNetns('od-rr', []);
    env.defer(() => ns.remove());
    const servers = new Servers(ns.name);
    env.defer(() => servers.stopAll());
    const [a, c] = ['127.0.0.41', '127.0.0.43'];
    await servers.start(a);
    const dp = openRouting(env);
    const client = new Client(env.cgroup, ns.name);
    env.defer(() => client.exit());
    // c has no listener: every connect to it is answered with a RST (ECONNREFUSED)
    const config = od({
      consecutive5xx: 3,
      intervalMs: 50,
      baseEjectionTimeMs: 60_000,
      maxEjectionPercent: 50,
    });
    assert.deepEqual(
      (
        await dp.apply({
          services: [service([a, c], 'round_robin', config)],
          frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'outlier' }],
        })
      ).refused,
      [],
    );

    // round robin alternates a and c, one connect at a time: c's failures are counted one by one
    let failures = 0;
    for (let i = 0; failures < 3; i++) {
      assert.ok(i < 20, 'c got its three connects');
      const r = await client.connect({ host: VIP, port: 80, readId: true });
      const s = state(dp);
      if (r.ok) {
        assert.equal(r.backend, `${a}|${PORT}`);
        continue;
      }
      assert.equal(r.err, 'ECONNREFUSED');
      failures++;
      const h = hostOf(s, c);
      assert.ok(h, 'c is remembered from its first failure');
      // ejected exactly at the configured third consecutive failure, not before
      assert.equal(h.ejected, failures === 3, `after ${failures} failures`);
      assert.equal(s.active, failures === 3 ? 1 : 0);
      if (failures < 3) assert.equal(h.consecutive5xx, failures);
    }
    const ejected = state(dp);
    assert.equal(ejected.counters.ejections_enforced_consecutive_5xx, 1n);
    assert.equal(ejected.counters.ejections_detected_consecutive_5xx, 1n);
    assert.equal(ejected.counters.ejections_enforced_total, 1n);

    // skipped while ejected: c listens again, and still no connect goes there
    await servers.start(c);
    const skipped = await client.batch({ host: VIP, port: 80, readId: true, count: 50, concurrency: 1 });
    assert.deepEqual(new Set(landedOn(skipped)), new Set([a]));
    assert.equal(skipped.filter((r) => !r.ok).length, 0);
    assert.equal(hostOf(state(dp), c)?.ejectedNs, hostOf(ejected, c)?.ejectedNs, 'still the same ejection');

    // a shorter base_ejection_time takes effect at the next sweep: c returns, and is tried again
    const base = 200;
    await dp.apply({
      services: [service([a, c], 'round_robin', { ...config, baseEjectionTimeMs: base })],
      frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'outlier' }],
    });
    const back = await until('c returns', () => {
      const h = hostOf(state(dp), c);
      return h && !h.ejected ? h : undefined;
    });
    const ejectedFor = Number(back.unejectedNs - back.ejectedNs) / 1e6;
    t.diagnostic(`c was ejected for ${ejectedFor.toFixed(1)} ms by the kernel clock (base ${base} ms × 1)`);
    assert.ok(ejectedFor >= base, `returned after ${ejectedFor} ms`);
    assert.equal(state(dp).active, 0);
    const again = await client.batch({ host: VIP, port: 80, readId: true, count: 10, concurrency: 1 });
    assert.deepEqual(new Set(landedOn(again)), new Set([a, c]), 'round robin takes c again');
  },
);

kernelTest(
  'outlier detection: RST, dropped SYNs and ICMP unreachable are failures; never more than max_ejection_percent ejected; every policy skips ejected hosts; the multiplier lengthens a second ejection',
  async (t: TestContext, env) => {
    const ns = createNetns('od', []);
    env.defer(() => ns.remove());
    const servers = new Servers(ns.name);
    env.defer(() => servers.stopAll());
    const nft = nftables(ns.name);
    const [a, b, refuses, drops, unreachable] = [
      '127.0.0.51',
      '127.0.0.52',
      '127.0.0.53',
      '127.0.0.54',
      '127.0.0.55',
    ];
    const all = [a, b, refuses, drops, unreachable];
    for (const x of all) await servers.start(x);
    const dp = openRouting(env);
    const client = new Client(env.cgroup, ns.name);
    env.defer(() => client.exit());
    const frontends = [{ address: VIP, port: 80, protocol: 'tcp' as const, service: 'outlier' }];
    // 40% of 5 hosts: two may be ejected, never three
    const config = od({
      consecutive5xx: 3,
      intervalMs: 50,
      baseEjectionTimeMs: 60_000,
      maxEjectionPercent: 40,
    });
    const apply = async (policy: LbPolicy, o = config): Promise<void> => {
      assert.deepEqual((await dp.apply({ services: [service(all, policy, o)], frontends })).refused, []);
    };
    await apply('random');
    const healthy = await client.batch({ host: VIP, port: 80, readId: true, count: 50, concurrency: 4 });
    assert.equal(healthy.filter((r) => !r.ok).length, 0);

    await servers.stop(refuses);
    nft.block(drops, 'drop');
    nft.block(unreachable, 'drop');
    const router = await icmpResponder(ns.name, unreachable);
    env.defer(() => router.stop());
    // connects until two hosts are ejected and the third reached its threshold too (overflow);
    // a dropped SYN is a failure at the first retransmission past connect_timeout (300 ms)
    const results: ConnectResult[] = [];
    let s = state(dp);
    for (let i = 0; !(s.active === 2 && s.counters.ejections_overflow > 0n); i++) {
      assert.ok(
        i < 200,
        `two ejections and an overflow: ${JSON.stringify(s, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`,
      );
      results.push(
        ...(await client.batch({
          host: VIP,
          port: 80,
          readId: true,
          count: 12,
          concurrency: 6,
          timeoutMs: 1500,
        })),
      );
      s = state(dp);
      assert.ok(
        s.active <= 2 && ejectedHosts(s).length <= 2,
        `at most 40% ejected: ${ejectedHosts(s).join(', ')}`,
      );
    }
    const bad = [refuses, drops, unreachable];
    const twice = ejectedHosts(s);
    assert.equal(twice.length, 2);
    assert.ok(
      twice.every((x) => bad.includes(x)),
      `only failing hosts are ejected: ${twice.join(', ')}`,
    );
    for (const x of bad) assert.ok((hostOf(s, x)?.failures ?? 0n) >= 3n, `${x}: its failures were counted`);
    const errs = new Set(results.filter((r) => !r.ok).map((r) => r.err));
    t.diagnostic(`client saw ${[...errs].join(', ')}; ejected ${twice.join(', ')}`);
    // the healthy ones served every connect that reached them
    assert.ok(landedOn(results).every((x) => x === a || x === b));

    // every host healthy again while two stay ejected: no policy picks them
    await servers.start(refuses);
    nft.unblock(drops);
    nft.unblock(unreachable);
    await router.stop();
    for (const policy of ['random', 'round_robin', 'least_request', 'maglev'] as const) {
      await apply(policy);
      for (let attempt = 0; ; attempt++) {
        const before = state(dp);
        const r = await client.batch({ host: VIP, port: 80, readId: true, count: 40, concurrency: 4 });
        const after = state(dp);
        const same =
          JSON.stringify(ejectedHosts(before)) === JSON.stringify(twice) &&
          twice.every(
            (x) => hostOf(after, x)?.ejected && hostOf(after, x)?.ejectedNs === hostOf(before, x)?.ejectedNs,
          );
        assert.ok(same || attempt < 3, 'the ejections held through a batch');
        if (!same) continue;
        assert.equal(r.filter((x) => !x.ok).length, 0, `${policy}: every connect succeeds`);
        const landed = landedOn(r);
        assert.ok(
          !landed.some((x) => twice.includes(x)),
          `${policy} skipped ${twice.join(', ')}: ${landed.join(' ')}`,
        );
        break;
      }
    }

    // a short base_ejection_time: both return, by the kernel clock no sooner than base × 1
    const base = 200;
    await apply('random', { ...config, baseEjectionTimeMs: base });
    let last: ServiceOutlier | undefined;
    const returned = await until(
      () =>
        `both return: ${JSON.stringify(last, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`,
      () => {
        last = state(dp);
        return last.active === 0 ? last : undefined;
      },
    );
    for (const x of twice) {
      const h = hostOf(returned, x)!;
      assert.equal(h.numEjections, 1);
      assert.ok(Number(h.unejectedNs - h.ejectedNs) / 1e6 >= base, `${x} returned after base`);
    }
    // tried again: with 5 hosts drawn uniformly, each returned host gets some of 200 connects
    const n = 200;
    const miss = binomialUpperTail(n, 1 - 1 / 5, n); // P(a given host gets none)
    const retried = landedOn(
      await client.batch({ host: VIP, port: 80, readId: true, count: n, concurrency: 4 }),
    );
    t.diagnostic(`a returned host missed by all ${n} connects: probability ${miss.toExponential(1)}`);
    for (const x of twice) assert.ok(retried.includes(x), `${x} gets connects again`);

    // a host failing on and on is ejected for base × multiplier: the multiplier rises by one per
    // ejection and comes down by one per interval after a return, so one that fails again at once is
    // ejected for longer. Each ejection's multiplier is read while it lasts, its length at its end.
    const victim = twice.includes(refuses) ? refuses : unreachable;
    const long = { ...config, baseEjectionTimeMs: base, intervalMs: 1000, maxEjectionTimeMs: 60_000 };
    await apply('random', long);
    if (victim === refuses) await servers.stop(refuses);
    else {
      nft.block(victim, 'drop');
      const again = await icmpResponder(ns.name, victim);
      env.defer(() => again.stop());
    }
    const multiplier = new Map<bigint, number>();
    let longest = 0;
    for (let i = 0; longest < 2; i++) {
      assert.ok(
        i < 600,
        `an ejection with multiplier 2 was seen: ${JSON.stringify([...multiplier].map(([k, v]) => [String(k), v]))}`,
      );
      await client.batch({ host: VIP, port: 80, readId: true, count: 10, concurrency: 5, timeoutMs: 1500 });
      await new Promise((r) => setTimeout(r, 50));
      const h = hostOf(state(dp), victim);
      if (!h) continue;
      if (h.ejected) {
        if (!multiplier.has(h.ejectedNs)) multiplier.set(h.ejectedNs, h.backoff);
        continue;
      }
      const m = multiplier.get(h.ejectedNs);
      if (m === undefined || h.unejectedNs < h.ejectedNs) continue;
      const lasted = Number(h.unejectedNs - h.ejectedNs) / 1e6;
      assert.ok(lasted >= base * m, `an ejection with multiplier ${m} lasted ${lasted} ms`);
      t.diagnostic(
        `${victim}: ejection ${h.numEjections} with multiplier ${m} lasted ${lasted.toFixed(1)} ms`,
      );
      longest = Math.max(longest, m);
      multiplier.delete(h.ejectedNs);
    }
  },
);
