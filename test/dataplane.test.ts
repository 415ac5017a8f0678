// Unit tests of the dataplane writer and its pure layout functions, without a kernel: the maps are
// in-memory stand-ins with the kernel's update-flag and size semantics, and after EVERY single map
// operation a reader walks the maps as connect4 does, so a half-written service would be seen.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  backendCodec,
  frontendCodec,
  frontendKeyCodec,
  serviceCodec,
  slotCodec,
  slotKeyCodec,
  u32,
} from '../src/dataplane/codec.js';
import { maglevSize, maglevTable, normalizeWeights, smoothWeightedOrder } from '../src/dataplane/layout.js';
import { ROUTE_MAPS, type MapHandle, type RouteMaps } from '../src/dataplane/maps.js';
import type { DesiredState, Endpoint, Service } from '../src/dataplane/model.js';
import { RouteWriter, weightsPlanningTo } from '../src/dataplane/writer.js';

class MemMap implements MapHandle {
  readonly data = new Map<string, Buffer>();
  constructor(
    readonly name: string,
    readonly maxEntries: number,
    readonly keySize: number,
    readonly valueSize: number,
    private readonly afterWrite: () => void,
  ) {}
  lookup(key: Buffer): Buffer | undefined {
    return this.data.get(key.toString('hex'));
  }
  update(key: Buffer, value: Buffer, flag: 'any' | 'noexist' | 'exist' = 'any'): void {
    const k = key.toString('hex');
    const has = this.data.has(k);
    if (flag === 'noexist' && has) throw Object.assign(new Error(`${this.name}: EEXIST`), { code: 'EEXIST' });
    if (flag === 'exist' && !has) throw Object.assign(new Error(`${this.name}: ENOENT`), { code: 'ENOENT' });
    if (!has && this.data.size >= this.maxEntries)
      throw Object.assign(new Error(`${this.name}: E2BIG`), { code: 'E2BIG' });
    this.data.set(k, Buffer.from(value));
    this.afterWrite();
  }
  delete(key: Buffer): boolean {
    const had = this.data.delete(key.toString('hex'));
    this.afterWrite();
    return had;
  }
  batchCalls = 0;
  // The kernel applies a batch element by element, so a connect may run between any two of them:
  // modelled by single writes, each followed by the afterWrite invariant check.
  updateBatch(keys: Buffer[], values: Buffer[]): void {
    this.batchCalls++;
    keys.forEach((k, i) => this.update(k, values[i]!));
  }
  deleteBatch(keys: Buffer[]): number {
    this.batchCalls++;
    for (const k of keys)
      if (!this.data.has(k.toString('hex')))
        throw Object.assign(new Error(`${this.name}: ENOENT`), { code: 'ENOENT' });
    keys.forEach((k) => this.delete(k));
    return keys.length;
  }
  keys(): Buffer[] {
    return [...this.data.keys()].map((k) => Buffer.from(k, 'hex'));
  }
  entries(): [Buffer, Buffer][] {
    return [...this.data].map(([k, v]) => [Buffer.from(k, 'hex'), v]);
  }
}

function memMaps(sizes: Partial<Record<string, number>> = {}, afterWrite: () => void = () => {}): RouteMaps {
  return Object.fromEntries(
    ROUTE_MAPS.map((n) => [n, new MemMap(n, sizes[n] ?? 10000, 0, 0, () => afterWrite())]),
  ) as unknown as RouteMaps;
}

/** What connect4 could pick for a frontend right now: every slot of the lowest non-empty group. */
function reachable(
  maps: RouteMaps,
  address: string,
  port: number,
): { ok: boolean; backends: Set<string>; why?: string } {
  const fe = maps.km_frontends.lookup(frontendKeyCodec.encode({ address, port, protocol: 'tcp' }));
  if (!fe) return { ok: false, backends: new Set(), why: 'no frontend' };
  const id = frontendCodec.decode(fe).serviceId;
  const sv = maps.km_services.lookup(u32(id));
  if (!sv) return { ok: false, backends: new Set(), why: `service ${id} missing` };
  const svc = serviceCodec.decode(sv);
  const prio = svc.slotCount.findIndex((c) => c > 0);
  const backends = new Set<string>();
  if (prio < 0) return { ok: true, backends };
  for (let index = 0; index < svc.slotCount[prio]!; index++) {
    const s = maps.km_slots.lookup(
      slotKeyCodec.encode({ serviceId: id, index, priority: prio, generation: svc.generation }),
    );
    if (!s)
      return { ok: false, backends, why: `slot ${index} of priority ${prio} gen ${svc.generation} missing` };
    const b = maps.km_backends.lookup(u32(slotCodec.decode(s).backendId));
    if (!b) return { ok: false, backends, why: `backend ${slotCodec.decode(s).backendId} missing` };
    const v = backendCodec.decode(b);
    backends.add(`${v.address}:${v.port}`);
  }
  if (svc.lbPolicy === 'maglev') {
    for (let index = 0; index < svc.maglevSize; index++) {
      const s = maps.km_maglev.lookup(
        slotKeyCodec.encode({ serviceId: id, index, priority: prio, generation: svc.generation }),
      );
      if (!s) return { ok: false, backends, why: `maglev entry ${index} missing` };
      const b = maps.km_backends.lookup(u32(slotCodec.decode(s).backendId));
      if (!b) return { ok: false, backends, why: 'maglev backend missing' };
    }
  }
  return { ok: true, backends };
}

const ep = (n: number, extra: Partial<Endpoint> = {}): Endpoint => ({
  address: `127.0.0.${n}`,
  port: 8000 + n,
  weight: 1,
  priority: 0,
  health: 'healthy',
  ...extra,
});
const state = (services: Service[], vip = '127.100.0.1'): DesiredState => ({
  services,
  frontends: services.map((s, i) => ({
    address: vip.replace(/\d+$/, String(i + 1)),
    port: 80,
    protocol: 'tcp',
    service: s.name,
  })),
});
const live = (eps: Endpoint[]): Set<string> => {
  const sel = eps.filter((e) => e.health === 'healthy' || e.health === 'unknown');
  const top = Math.min(...sel.map((e) => e.priority));
  return new Set(sel.filter((e) => e.priority === top).map((e) => `${e.address}:${e.port}`));
};

void test('layout: weights normalised by gcd and capped, smooth order, Maglev sizes', () => {
  assert.deepEqual(normalizeWeights([10, 30], 1024), [1, 3]);
  assert.deepEqual(normalizeWeights([1, 1, 1], 1024), [1, 1, 1]);
  const capped = normalizeWeights([1, 1000, 5000], 100);
  assert.ok(
    capped.reduce((a, b) => a + b) <= 100 && capped[0] === 1 && capped[2]! > capped[1]!,
    String(capped),
  );
  assert.deepEqual(
    smoothWeightedOrder([
      { key: 'a', weight: 1 },
      { key: 'b', weight: 3 },
    ]),
    ['b', 'a', 'b', 'b'],
  );
  assert.equal(maglevSize(10), 4093);
  assert.equal(maglevSize(50), 8191);
});

// Deterministic, not statistical: the table is a pure function of fixed keys, so these bounds hold
// or fail the same way on every run (the kernel test checks clients against such a table exactly).
void test('maglev table: weights respected, removing one of 10 moves about a tenth', () => {
  const keys = Array.from({ length: 10 }, (_, i) => `10.0.0.${i}|80`);
  const table = maglevTable(
    keys.map((key) => ({ key, weight: 1 })),
    1021,
    (k) => k,
  );
  const counts = new Map<string, number>();
  for (const k of table) counts.set(k, (counts.get(k) ?? 0) + 1);
  assert.equal(counts.size, 10);
  for (const c of counts.values()) assert.ok(c >= 100 && c <= 105, `entries per backend ${c}`);
  const fewer = maglevTable(
    keys.filter((k) => k !== keys[3]).map((key) => ({ key, weight: 1 })),
    1021,
    (k) => k,
  );
  const moved = table.filter((k, i) => k !== keys[3] && fewer[i] !== k).length;
  assert.ok(moved < 1021 * 0.05, `${moved} entries of surviving backends moved`);
  const weighted = maglevTable(
    [
      { key: 'a', weight: 1 },
      { key: 'b', weight: 3 },
    ],
    1021,
    (k) => k,
  );
  const a = weighted.filter((k) => k === 'a').length;
  assert.ok(Math.abs(a - 1021 / 4) < 3, `a has ${a} entries`);
});

void test('every intermediate map state is routable: make-before-break across adds, removals, priorities, policies', () => {
  let checking: { vip: string; allowed: Set<string> }[] = [];
  const violations: string[] = [];
  const maps: RouteMaps = memMaps({}, () => {
    for (const c of checking) {
      const r = reachable(maps, c.vip, 80);
      if (!r.ok) violations.push(`${c.vip}: ${r.why}`);
      for (const b of r.backends)
        if (!c.allowed.has(b)) violations.push(`${c.vip}: ${b} outside old and new groups`);
    }
  });
  const w = RouteWriter.recover(maps);
  const sequence: Endpoint[][] = [
    [ep(1), ep(2)],
    [ep(1), ep(2), ep(3, { weight: 3 })],
    [ep(2), ep(3, { priority: 1 }), ep(4, { health: 'draining' })],
    [ep(5, { priority: 1 }), ep(6, { priority: 2 })],
    [ep(1, { weight: 7 }), ep(6, { health: 'unknown' })],
  ];
  let prev: Endpoint[] | undefined;
  for (const [i, eps] of sequence.entries()) {
    const policy = (['random', 'maglev', 'round_robin', 'least_request', 'maglev'] as const)[i]!;
    checking = prev ? [{ vip: '127.100.0.1', allowed: new Set([...live(prev), ...live(eps)]) }] : [];
    const r = w.apply(state([{ name: 'svc', kind: 'endpoints', lbPolicy: policy, endpoints: eps }]));
    assert.deepEqual(r.refused, []);
    checking = [];
    assert.deepEqual(reachable(maps, '127.100.0.1', 80).backends, live(eps), `step ${i}`);
    prev = eps;
  }
  assert.deepEqual(violations, []);
  // only the live generation remains, and unused backends are gone
  const svc = serviceCodec.decode(maps.km_services.lookup(u32(w.serviceId('svc')!))!);
  assert.ok(
    [...(maps.km_slots as MemMap).data.keys()].every(
      (k) => slotKeyCodec.decode(Buffer.from(k, 'hex')).generation === svc.generation,
    ),
  );
  assert.equal((maps.km_backends as MemMap).data.size, 2);
});

void test('a Maglev table goes to the maps in batches: the same operations, a handful of syscalls', () => {
  const maglev = (eps: Endpoint[]) =>
    state([{ name: 'mg', kind: 'endpoints', lbPolicy: 'maglev', endpoints: eps }]);
  const ten = Array.from({ length: 10 }, (_, i) => ep(i + 1));
  const batched = memMaps();
  const single = memMaps();
  // the same maps without batch operations: the writer falls back to one syscall per entry
  for (const m of Object.values(single)) Object.assign(m, { supportsBatch: false });
  const [wb, ws] = [RouteWriter.recover(batched), RouteWriter.recover(single)];
  for (const eps of [ten, ten.filter((_, i) => i !== 3), [...ten, ep(11)]]) {
    const b = wb.apply(maglev(eps));
    const s = ws.apply(maglev(eps));
    assert.deepEqual(b.ops, s.ops, 'batching changes no operation and no order within a map');
    assert.equal(s.syscalls, s.ops.length);
    assert.ok(b.ops.length > 4000, `${b.ops.length} operations (a 4093-entry table at least)`);
    assert.ok(b.syscalls <= 12, `${b.syscalls} syscalls for ${b.ops.length} operations`);
  }
  assert.ok((batched.km_maglev as MemMap).batchCalls >= 3);
  for (const name of ['km_maglev', 'km_slots', 'km_services'] as const)
    assert.deepEqual((batched[name] as MemMap).data, (single[name] as MemMap).data, name);
});

void test('ids are stable across updates and recovered after a restart; an unchanged state costs no operation', () => {
  const maps = memMaps();
  const first = RouteWriter.recover(maps);
  const s = state([
    { name: 'a', kind: 'endpoints', lbPolicy: 'random', endpoints: [ep(1), ep(2)] },
    { name: 'b', kind: 'endpoints', lbPolicy: 'maglev', endpoints: [ep(2), ep(3)] },
    {
      name: 'c',
      kind: 'waypoint',
      lbPolicy: 'random',
      endpoints: [],
      waypoint: { address: 'fd00::1', port: 15008 },
    },
  ]);
  assert.ok(first.apply(s).ops.length > 0);
  const ids = ['a', 'b', 'c'].map((n) => first.serviceId(n));
  const backendIds = [1, 2, 3].map((n) => first.backendId(`127.0.0.${n}`, 8000 + n));
  assert.deepEqual(first.apply(s).ops, []);

  const restarted = RouteWriter.recover(maps);
  assert.deepEqual(
    ['a', 'b', 'c'].map((n) => restarted.serviceId(n)),
    ids,
  );
  assert.deepEqual(
    [1, 2, 3].map((n) => restarted.backendId(`127.0.0.${n}`, 8000 + n)),
    backendIds,
  );
  assert.deepEqual(restarted.apply(s).ops, []);

  // removing 'a' and changing 'b' keeps the others' ids; a new service does not take a's id at once
  const r = restarted.apply(
    state([
      { name: 'd', kind: 'passthrough', lbPolicy: 'random', endpoints: [] },
      { name: 'b', kind: 'endpoints', lbPolicy: 'maglev', endpoints: [ep(3)] },
      {
        name: 'c',
        kind: 'waypoint',
        lbPolicy: 'random',
        endpoints: [],
        waypoint: { address: 'fd00::1', port: 15008 },
      },
    ]),
  );
  assert.deepEqual(r.refused, []);
  assert.equal(restarted.serviceId('b'), ids[1]);
  assert.equal(restarted.serviceId('c'), ids[2]);
  assert.equal(restarted.serviceId('a'), undefined);
  assert.notEqual(restarted.serviceId('d'), ids[0]);
  assert.equal(restarted.backendId('127.0.0.3', 8003), backendIds[2]);
  assert.equal(restarted.backendId('127.0.0.1', 8001), undefined);
});

void test('capacity: what does not fit is refused with a reason, live entries are never dropped', () => {
  const maps = memMaps({ km_slots: 8, km_backends: 4, km_services: 3 });
  const w = RouteWriter.recover(maps);
  const small = {
    name: 'small',
    kind: 'endpoints' as const,
    lbPolicy: 'random' as const,
    endpoints: [ep(1), ep(2)],
  };
  assert.deepEqual(w.apply(state([small])).refused, []);

  // needs 5 slots while 2 are live of 8: the new generation cannot be written next to the old one... it can (2+5 <= 8)
  const grown = { ...small, endpoints: [ep(1), ep(2), ep(3, { weight: 4 })] };
  const r1 = w.apply(state([grown]));
  assert.deepEqual(r1.refused, []);
  // 6 live slots + 6 more would exceed 8: refused, and the service keeps routing as before
  const regrown = { ...small, endpoints: [ep(1, { weight: 2 }), ep(2), ep(3, { weight: 3 })] };
  const r2 = w.apply(state([regrown]));
  assert.equal(r2.refused.length, 1);
  assert.match(r2.refused[0]!.reason, /km_slots full: needs 6 slots, 2 free/);
  assert.deepEqual(reachable(maps, '127.100.0.1', 80).backends, live(grown.endpoints));

  // backends: 3 ids (1..3) exist and are used; a service needing a 4th new one is refused whole
  const other = {
    name: 'other',
    kind: 'endpoints' as const,
    lbPolicy: 'random' as const,
    endpoints: [ep(9)],
  };
  const r3 = w.apply(state([grown, other]));
  assert.deepEqual(
    r3.refused.map((x) => [x.kind, x.name]),
    [
      ['service', 'other'],
      ['frontend', '127.100.0.2:80/tcp'],
    ],
  );
  assert.match(r3.refused[0]!.reason, /km_backends full/);
  assert.equal(reachable(maps, '127.100.0.2', 80).why, 'no frontend');
  assert.deepEqual(reachable(maps, '127.100.0.1', 80).backends, live(grown.endpoints));
});

void test('invalid services are refused with the reason; the rest still applies', () => {
  const w = RouteWriter.recover(memMaps());
  const r = w.apply(
    state([
      { name: 'bad-port', kind: 'endpoints', lbPolicy: 'random', endpoints: [ep(1, { port: 70000 })] },
      {
        name: 'bad-address',
        kind: 'endpoints',
        lbPolicy: 'random',
        endpoints: [ep(1, { address: 'reviews' })],
      },
      { name: 'no-waypoint', kind: 'waypoint', lbPolicy: 'random', endpoints: [] },
      { name: 'good', kind: 'endpoints', lbPolicy: 'random', endpoints: [ep(1)] },
    ]),
  );
  const reasons = Object.fromEntries(
    r.refused.filter((x) => x.kind === 'service').map((x) => [x.name, x.reason]),
  );
  assert.match(reasons['bad-port']!, /port 70000 out of range/);
  assert.match(reasons['bad-address']!, /not an IP address/);
  assert.match(reasons['no-waypoint']!, /without a waypoint/);
  assert.equal(reasons.good, undefined);
  assert.ok(w.serviceId('good'));
});

void test('after a restart the writer rebuilds what is live as a DesiredState that re-plans to the same entries (0 operations)', () => {
  const maps = memMaps({ km_maglev: 100000 });
  const first = RouteWriter.recover(maps);
  const services: Service[] = [
    {
      name: 'weighted',
      kind: 'endpoints',
      lbPolicy: 'round_robin',
      maxConnections: 100,
      // draining and unhealthy endpoints are never in the maps: the rebuilt service leaves them out
      endpoints: [
        ep(1, { weight: 10 }),
        ep(2, { weight: 30 }),
        ep(3, { priority: 1 }),
        ep(4, { health: 'draining' }),
      ],
    },
    // scaled down past 1024 slots to weights 3 and 1020 (gcd 3): the input must be rebuilt, not copied
    {
      name: 'scaled',
      kind: 'endpoints',
      lbPolicy: 'least_request',
      endpoints: [ep(5, { weight: 7 }), ep(6, { weight: 2500 })],
    },
    { name: 'hashed', kind: 'endpoints', lbPolicy: 'maglev', endpoints: [ep(1), ep(7, { weight: 2 })] },
    { name: 'v6', kind: 'endpoints', lbPolicy: 'random', endpoints: [ep(8, { address: '::1' })] },
    { name: 'PassthroughCluster', kind: 'passthrough', lbPolicy: 'random', endpoints: [] },
    { name: 'BlackHoleCluster', kind: 'blackhole', lbPolicy: 'random', endpoints: [] },
    {
      name: 'waypoint|127.0.0.9|15008',
      kind: 'waypoint',
      lbPolicy: 'random',
      endpoints: [],
      waypoint: { address: '127.0.0.9', port: 15008 },
    },
  ];
  const desired = state(services);
  desired.frontends.push({ address: '::1', port: 443, protocol: 'tcp', service: 'v6' });
  assert.deepEqual(first.apply(desired).refused, []);
  // one service switched generation since: the rebuild reads the live one
  const weighted = services[0]!;
  const reweighted = { ...weighted, endpoints: [ep(1, { weight: 2 }), ...weighted.endpoints.slice(1)] };
  assert.ok(first.apply({ ...desired, services: [reweighted, ...services.slice(1)] }).ops.length > 0);
  const before = new Map(ROUTE_MAPS.map((n) => [n, new Map((maps[n] as MemMap).data)]));

  const restarted = RouteWriter.recover(maps);
  const live = restarted.live();
  assert.deepEqual(live, first.live(), 'the rebuild from the maps is what the running writer holds');
  assert.deepEqual(
    live.services.find((s) => s.name === 'weighted'),
    {
      name: 'weighted',
      kind: 'endpoints',
      lbPolicy: 'round_robin',
      maxConnections: 100,
      endpoints: [
        { address: '127.0.0.1', port: 8001, weight: 1, priority: 0, health: 'healthy' },
        { address: '127.0.0.2', port: 8002, weight: 15, priority: 0, health: 'healthy' },
        { address: '127.0.0.3', port: 8003, weight: 1, priority: 1, health: 'healthy' },
      ],
    },
  );
  assert.deepEqual(live.services.find((s) => s.name === 'waypoint|127.0.0.9|15008')?.waypoint, {
    address: '127.0.0.9',
    port: 15008,
  });
  const sortFe = (fs: DesiredState['frontends']) =>
    [...fs].sort((a, b) => `${a.address}|${a.port}`.localeCompare(`${b.address}|${b.port}`));
  assert.deepEqual(sortFe(live.frontends), sortFe(desired.frontends));
  assert.deepEqual(
    live.services.map((s) => s.name),
    services.map((s) => s.name).sort(),
  );

  const r = restarted.apply(live);
  assert.deepEqual(r.refused, []);
  assert.deepEqual(r.ops, [], 'every rebuilt service re-plans to exactly its live entries');
  assert.equal(r.syscalls, 0);
  for (const n of ROUTE_MAPS) assert.deepEqual((maps[n] as MemMap).data, before.get(n), n);

  // A state that keeps one rebuilt service as it is and drops the rest touches only the others.
  const kept = live.services.find((s) => s.name === 'scaled')!;
  const r2 = restarted.apply({
    services: [kept],
    frontends: live.frontends.filter((f) => f.service === 'scaled'),
  });
  const id = restarted.serviceId('scaled')!;
  const touchesKept = r2.ops.filter(
    (o) =>
      (o.map === 'km_services' && o.key === u32(id).toString('hex')) ||
      (o.map === 'km_slots' && slotKeyCodec.decode(Buffer.from(o.key, 'hex')).serviceId === id),
  );
  assert.ok(r2.ops.length > 0);
  assert.deepEqual(touchesKept, []);
  assert.deepEqual(
    reachable(maps, '127.100.0.2', 80).backends,
    new Set(['127.0.0.5:8005', '127.0.0.6:8006']),
  );
});

void test('weightsPlanningTo: planning the result gives back the live weights, scaled-down groups included', () => {
  const cases: [number[], number][] = [
    [[1, 3], 1024],
    [[3, 1020], 1024],
    [[1, 1, 1], 3],
    [normalizeWeights([7, 2500, 13, 999], 64), 64],
    [normalizeWeights([100, 200, 301, 400, 500], 16), 16],
  ];
  for (const [w, max] of cases) {
    const input = weightsPlanningTo(w, max);
    assert.ok(input, `${w.join(',')} / ${max}`);
    assert.deepEqual(normalizeWeights(input, max), w, `${w.join(',')} / ${max}`);
  }
  assert.equal(weightsPlanningTo([2, 2], 1024), undefined, 'no input normalises to 2:2');
});
