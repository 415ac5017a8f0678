// What one desired Service becomes in the kernel, before ids are known: its service value (with
// Envoy's priority loads and panic computed), its slots per priority group (weight-expanded, except
// least_request's one per endpoint: the healthy hosts, and every host for panic when that differs)
// and its Maglev tables. Pure; errors name the problem.
import { canonicalAddress, familyOf } from '../net/address.js';
import {
  LR_MAX_WEIGHTED,
  MAX_PRIORITIES,
  PANIC_TABLE,
  type MemberValue,
  type ServiceValue,
} from './codec.js';
import { maglevSize, maglevTable, normalizeWeights, smoothWeightedOrder } from './layout.js';
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_OVERPROVISIONING,
  DEFAULT_PANIC_THRESHOLD,
  type Endpoint,
  type Service,
} from './model.js';

/** "address|port" with the address in canonical text: a backend's identity. */
export type BackendKey = string;

export function backendKey(address: string, port: number): BackendKey {
  return `${canonicalAddress(address)}|${port}`;
}

export function splitBackendKey(key: BackendKey): { address: string; port: number } {
  const i = key.lastIndexOf('|');
  return { address: key.slice(0, i), port: Number(key.slice(i + 1)) };
}

export interface PlannedEntry {
  /** km_slot_key.priority: the priority, with PANIC_TABLE set for its own panic slots. */
  priority: number;
  index: number;
  backend: BackendKey;
  weight: number;
}

export interface ServicePlan {
  name: string;
  value: Omit<ServiceValue, 'generation'>;
  slots: PlannedEntry[];
  maglev: PlannedEntry[];
  /** Every backend the slots and tables name. */
  backends: Set<BackendKey>;
  /** Outlier detection only: each host's priority and EDS health, for km_members. */
  members: Map<BackendKey, MemberValue>;
}

export interface PlanOptions {
  /** Slots per priority group after weight normalisation (the ratio precision). */
  maxSlotsPerPriority: number;
  /** Largest Maglev table (a prime from layout.ts's list). */
  maxMaglevSize: number;
}

export const DEFAULT_PLAN_OPTIONS: PlanOptions = { maxSlotsPerPriority: 1024, maxMaglevSize: 65521 };

/**
 * least_request's slots are not expanded, so its weights keep more precision: a group's weights sum
 * to at most 2^16, which the kernel's draw (32 fraction bits, 64-bit total) handles with a skew
 * below 2^-16 (route.bpf.c).
 */
export const LR_WEIGHT_TOTAL = 65536;

/** What one group's weights are normalised to sum to at most, for a policy. */
export function weightTotal(policy: Service['lbPolicy'], opts: PlanOptions): number {
  return policy === 'least_request'
    ? Math.max(LR_WEIGHT_TOTAL, opts.maxSlotsPerPriority)
    : opts.maxSlotsPerPriority;
}

function selectable(e: Endpoint): boolean {
  return e.health === 'healthy' || e.health === 'unknown';
}

function checkPort(what: string, port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error(`${what}: port ${port} out of range`);
}

/** Envoy's priority loads: what share of connects each priority takes, and which are in panic. */
export interface PriorityLoad {
  /** Percent per priority (MAX_PRIORITIES entries) summing to 100, or all 0 when there are no hosts. */
  load: number[];
  /** Bit p: priority p is in panic (a connect there picks among every host, healthy or not). */
  panicMask: number;
}

/**
 * Envoy's priority load (LoadBalancerBase::recalculatePerPriorityState and
 * recalculatePerPriorityPanic), in the same integer arithmetic; route.bpf.c's loads_with_ejections
 * is the same function with ejected hosts taken out of `healthy`:
 * - health(P) = min(100, overprovisioning × healthy(P) / hosts(P)), 0 for a level without hosts;
 * - normalized total = min(100, Σ health); levels take load in order, each
 *   min(what is left, health(P) × 100 / normalized total); what rounding leaves goes to the first
 *   level with health;
 * - unless the normalized total is 100, a level is in panic when 100 × healthy / hosts < threshold
 *   (a level without hosts: when the threshold is not 0); with every level in panic the load
 *   follows the host counts, 100 × hosts(P) / Σ hosts, the remainder to the first level with hosts;
 * - nothing healthy and the threshold 0: all load on the first level (whose healthy hosts are none).
 */
export function envoyPriorityLoad(
  hosts: readonly number[],
  healthy: readonly number[],
  overprovisioning: number,
  threshold: number,
): PriorityLoad {
  const n = MAX_PRIORITIES;
  const t = Array.from({ length: n }, (_, p) => hosts[p] ?? 0);
  const h = Array.from({ length: n }, (_, p) => healthy[p] ?? 0);
  const load = new Array<number>(n).fill(0);
  const health = t.map((tp, p) => (tp ? Math.min(100, Math.floor((overprovisioning * h[p]!) / tp)) : 0));
  const norm = Math.min(
    100,
    health.reduce((a, b) => a + b, 0),
  );
  if (norm === 0 && threshold === 0) {
    load[0] = 100;
    return { load, panicMask: 0 };
  }
  if (norm > 0) {
    let left = 100;
    let first = -1;
    for (let p = 0; p < n; p++) {
      if (first < 0 && health[p]! > 0) first = p;
      const x = Math.min(left, Math.floor((health[p]! * 100) / norm));
      load[p] = x;
      left -= x;
    }
    if (left && first >= 0) load[first]! += left;
  }
  let panicMask = 0;
  if (norm < 100)
    for (let p = 0; p < n; p++) {
      const inPanic = t[p] ? 100 * h[p]! < threshold * t[p]! : threshold > 0;
      if (inPanic) panicMask |= 1 << p;
    }
  const all = t.reduce((a, b) => a + b, 0);
  if (panicMask === (1 << n) - 1 && all) {
    let left = 100;
    let first = -1;
    for (let p = 0; p < n; p++) {
      if (first < 0 && t[p]) first = p;
      load[p] = Math.floor((100 * t[p]!) / all);
      left -= load[p]!;
    }
    if (first >= 0) load[first]! += left;
  }
  return { load, panicMask };
}

interface Host {
  key: BackendKey;
  weight: number;
  healthy: boolean;
  /** Locality key within the priority. */
  locality: string;
  localityWeight: number;
}

/**
 * Envoy's locality-weighted shares within one priority (locality_weight.rst): a locality's
 * effective weight is its weight × min(1, overprovisioning/100 × healthy/hosts), and a healthy host
 * gets its locality's effective weight split by host weight among the locality's healthy hosts.
 * Undefined when every locality's effective weight is 0: Envoy then balances over the healthy hosts.
 */
export function localityShares(
  hosts: readonly Host[],
  overprovisioning: number,
): Map<BackendKey, number> | undefined {
  const byLocality = new Map<string, Host[]>();
  for (const h of hosts) byLocality.set(h.locality, [...(byLocality.get(h.locality) ?? []), h]);
  const out = new Map<BackendKey, number>();
  let any = false;
  for (const group of byLocality.values()) {
    const healthy = group.filter((h) => h.healthy);
    if (!healthy.length) continue;
    const availability = Math.min(1, (overprovisioning / 100) * (healthy.length / group.length));
    const effective = group[0]!.localityWeight * availability;
    if (effective <= 0) continue;
    any = true;
    const sum = healthy.reduce((a, h) => a + h.weight, 0);
    for (const h of healthy) out.set(h.key, (effective * h.weight) / sum);
  }
  return any ? out : undefined;
}

const bgcd = (a: bigint, b: bigint): bigint => {
  while (b) [a, b] = [b, a % b];
  return a;
};

/**
 * The same shares as localityShares, as exact integers (weights in their ratio, before the slot
 * normalisation): locality L's hosts get weight(L) × min(100 × hosts(L), overprovisioning ×
 * healthy(L)) × weight(host) / (100 × hosts(L) × Σ weight(healthy of L)), over a common denominator.
 * A single locality thus keeps its hosts' own weights exactly.
 */
export function localityWeights(
  hosts: readonly Host[],
  overprovisioning: number,
): Map<BackendKey, number> | undefined {
  const byLocality = new Map<string, Host[]>();
  for (const h of hosts) byLocality.set(h.locality, [...(byLocality.get(h.locality) ?? []), h]);
  const parts: { healthy: Host[]; factor: bigint; denominator: bigint }[] = [];
  for (const group of byLocality.values()) {
    const healthy = group.filter((h) => h.healthy);
    const factor =
      BigInt(group[0]!.localityWeight) *
      BigInt(Math.min(100 * group.length, overprovisioning * healthy.length));
    if (!healthy.length || factor === 0n) continue;
    const sum = healthy.reduce((a, h) => a + BigInt(h.weight), 0n);
    parts.push({ healthy, factor, denominator: 100n * BigInt(group.length) * sum });
  }
  if (!parts.length) return undefined;
  const lcm = parts.reduce((l, p) => (l * p.denominator) / bgcd(l, p.denominator), 1n);
  const raw = new Map<BackendKey, bigint>();
  for (const p of parts)
    for (const h of p.healthy) raw.set(h.key, p.factor * BigInt(h.weight) * (lcm / p.denominator));
  const g = [...raw.values()].reduce((a, b) => bgcd(a, b));
  const reduced = [...raw].map(([k, v]): [BackendKey, bigint] => [k, v / g]);
  const max = reduced.reduce((m, [, v]) => (v > m ? v : m), 0n);
  // past double precision the ratio is kept to 2^-40, far finer than the slots
  const scale = max > 2n ** 40n ? Number(max) / 2 ** 40 : 1;
  return new Map(reduced.map(([k, v]) => [k, Math.max(1, Math.round(Number(v) / scale))]));
}

/** Throws with the reason when the service cannot be expressed in the kernel. */
export function planService(s: Service, opts: PlanOptions = DEFAULT_PLAN_OPTIONS): ServicePlan {
  const overprovisioning = s.overprovisioningFactor ?? DEFAULT_OVERPROVISIONING;
  const panicThreshold = s.panicThreshold ?? DEFAULT_PANIC_THRESHOLD;
  const zeros = (): number[] => new Array<number>(MAX_PRIORITIES).fill(0);
  const plan: ServicePlan = {
    name: s.name,
    value: {
      kind: s.kind,
      lbPolicy: s.lbPolicy,
      maxConnections: Math.min(s.maxConnections ?? 0, 0xffffffff),
      slotCount: zeros(),
      maglevSize: 0,
      lrWeighted: 0,
      activeRequestBias: 0,
      lrPanicWeighted: 0,
      panicMask: 0,
      panicSlotCount: zeros(),
      panicSeparate: 0,
      hostCount: zeros(),
      healthyCount: zeros(),
      load: zeros(),
      overprovisioning: 0,
      panicThreshold: 0,
      failOnPanic: false,
      connectTimeoutMs: 0,
    },
    slots: [],
    maglev: [],
    backends: new Set(),
    members: new Map(),
  };
  if (s.kind === 'waypoint') {
    if (!s.waypoint) throw new Error('kind waypoint without a waypoint address');
    checkPort('waypoint', s.waypoint.port);
    familyOf(s.waypoint.address);
    plan.value.waypoint = { address: canonicalAddress(s.waypoint.address), port: s.waypoint.port };
    return plan;
  }
  if (s.kind !== 'endpoints') return plan;
  if (!Number.isInteger(overprovisioning) || overprovisioning < 1 || overprovisioning > 0xffff)
    throw new Error(`overprovisioning factor ${overprovisioning} is not in 1..65535`);
  if (!Number.isInteger(panicThreshold) || panicThreshold < 0 || panicThreshold > 100)
    throw new Error(`panic threshold ${panicThreshold} is not in 0..100`);
  plan.value.overprovisioning = overprovisioning;
  plan.value.panicThreshold = panicThreshold;
  plan.value.failOnPanic = s.failTrafficOnPanic === true;
  const leastRequest = s.lbPolicy === 'least_request';
  if (leastRequest) {
    const bias = s.activeRequestBias ?? 1;
    // (active + 1)^bias needs a pow the kernel does not have; translate refuses other values first
    if (bias !== 0 && bias !== 1)
      throw new Error(`active_request_bias ${bias}: the kernel computes only 0 and 1`);
    plan.value.activeRequestBias = bias;
  }

  // hosts by priority (draining ones are excluded, as Envoy excludes them); the same address twice
  // in a group adds its weights and is healthy if either is
  const groups = new Map<number, Map<BackendKey, Host>>();
  const everyHost = new Set<BackendKey>();
  s.endpoints.forEach((e, i) => {
    checkPort(`endpoints[${i}] ${e.address}`, e.port);
    familyOf(e.address);
    if (!Number.isInteger(e.priority) || e.priority < 0)
      throw new Error(`endpoints[${i}]: priority ${e.priority}`);
    const k = backendKey(e.address, e.port);
    everyHost.add(k);
    if (e.health === 'draining') return;
    // groups past the kernel's last one share it: they are all fallbacks of last resort
    const p = Math.min(e.priority, MAX_PRIORITIES - 1);
    const g = groups.get(p) ?? new Map<BackendKey, Host>();
    const before = g.get(k);
    const l = e.locality;
    g.set(k, {
      key: k,
      weight: (before?.weight ?? 0) + Math.max(1, e.weight),
      healthy: (before?.healthy ?? false) || selectable(e),
      locality: before?.locality ?? `${l?.region ?? ''}/${l?.zone ?? ''}/${l?.subZone ?? ''}`,
      localityWeight: before?.localityWeight ?? e.localityWeight ?? 0,
    });
    groups.set(p, g);
  });

  const sets: { priority: number; hosts: BackendKey[]; weights: number[]; panic: boolean }[] = [];
  for (const [priority, group] of [...groups].sort((a, b) => a[0] - b[0])) {
    const all = [...group.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const healthy = all.filter((h) => h.healthy);
    plan.value.hostCount[priority] = all.length;
    plan.value.healthyCount[priority] = healthy.length;
    const shares = s.localityWeighted ? localityWeights(all, overprovisioning) : undefined;
    // a host with no locality share gets no traffic while the priority is not in panic
    const served = shares ? healthy.filter((h) => shares.has(h.key)) : healthy;
    const weights = served.map((h) => (shares ? shares.get(h.key)! : h.weight));
    sets.push({ priority, hosts: served.map((h) => h.key), weights, panic: false });
    // in panic every host counts, with its own weight: its own slots unless they would be these
    const total = weightTotal(s.lbPolicy, opts);
    const same =
      served.length === all.length &&
      all.length <= total &&
      normalizeWeights(weights, total).join() ===
        normalizeWeights(
          all.map((h) => h.weight),
          total,
        ).join();
    if (!same)
      sets.push({ priority, hosts: all.map((h) => h.key), weights: all.map((h) => h.weight), panic: true });
    if (s.outlierDetection)
      for (const h of all)
        if (!plan.members.has(h.key)) plan.members.set(h.key, { priority, healthy: h.healthy });
  }

  for (const set of sets) {
    const { priority, hosts: keys, panic } = set;
    if (!keys.length) continue;
    const tableKey = panic ? priority | PANIC_TABLE : priority;
    if (keys.length > opts.maxSlotsPerPriority)
      throw new Error(
        `priority ${priority}${panic ? ' (panic)' : ''}: ${keys.length} endpoints exceed ${opts.maxSlotsPerPriority} slots`,
      );
    const weights = normalizeWeights(set.weights, weightTotal(s.lbPolicy, opts));
    const items = keys.map((key, i) => ({ key, weight: weights[i]! }));
    const weightOf = new Map(items.map((i) => [i.key, i.weight]));
    let order: BackendKey[];
    if (leastRequest) {
      // one slot per endpoint: two random choices among endpoints, or the weighted draw over them
      order = keys;
      if (new Set(weights).size > 1) {
        if (keys.length > LR_MAX_WEIGHTED)
          throw new Error(
            `priority ${priority}: ${keys.length} endpoints with unequal weights exceed least_request's ${LR_MAX_WEIGHTED}`,
          );
        if (panic) plan.value.lrPanicWeighted |= 1 << priority;
        else plan.value.lrWeighted |= 1 << priority;
      }
    } else order = smoothWeightedOrder(items);
    order.forEach((backend, index) =>
      plan.slots.push({ priority: tableKey, index, backend, weight: weightOf.get(backend)! }),
    );
    if (panic) {
      plan.value.panicSlotCount[priority] = order.length;
      plan.value.panicSeparate |= 1 << priority;
    } else plan.value.slotCount[priority] = order.length;
    keys.forEach((k) => plan.backends.add(k));
    if (s.lbPolicy === 'maglev') {
      const size = maglevSize(keys.length, opts.maxMaglevSize);
      // every group's table has the same size: the kernel keeps one size per service
      plan.value.maglevSize = Math.max(plan.value.maglevSize, size);
    }
  }
  for (let p = 0; p < MAX_PRIORITIES; p++) {
    if (!((plan.value.panicSeparate >> p) & 1)) {
      plan.value.panicSlotCount[p] = plan.value.slotCount[p]!;
      if ((plan.value.lrWeighted >> p) & 1) plan.value.lrPanicWeighted |= 1 << p;
    }
  }
  if (s.lbPolicy === 'maglev' && plan.value.maglevSize) {
    for (const set of sets) {
      if (!set.hosts.length) continue;
      const weights = normalizeWeights(set.weights, opts.maxSlotsPerPriority);
      const table = maglevTable(
        set.hosts.map((key, i) => ({ key, weight: weights[i]! })),
        plan.value.maglevSize,
        (k) => k,
      );
      const priority = set.panic ? set.priority | PANIC_TABLE : set.priority;
      table.forEach((backend, index) => plan.maglev.push({ priority, index, backend, weight: 1 }));
    }
  }
  const { load, panicMask } = envoyPriorityLoad(
    plan.value.hostCount,
    plan.value.healthyCount,
    overprovisioning,
    panicThreshold,
  );
  plan.value.load = load;
  plan.value.panicMask = panicMask;
  const od = s.outlierDetection;
  if (od) {
    plan.value.connectTimeoutMs = s.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    // Envoy refuses a cluster whose max_ejection_time is below base_ejection_time; translate does too
    plan.value.outlier = {
      hosts: everyHost.size,
      consecutive5xx: od.consecutive5xx,
      consecutiveGateway: od.consecutiveGatewayFailure,
      consecutiveLocalOrigin: od.consecutiveLocalOriginFailure,
      enforcing5xx: od.enforcingConsecutive5xx,
      enforcingGateway: od.enforcingConsecutiveGatewayFailure,
      enforcingLocalOrigin: od.enforcingConsecutiveLocalOriginFailure,
      maxEjectionPercent: Math.min(100, od.maxEjectionPercent),
      intervalMs: od.intervalMs,
      baseEjectionMs: od.baseEjectionTimeMs,
      maxEjectionMs: od.maxEjectionTimeMs,
      maxJitterMs: od.maxEjectionTimeJitterMs,
      splitLocalOrigin: od.splitExternalLocalOriginErrors,
      alwaysEjectOne: od.alwaysEjectOneHost,
    };
  }
  return plan;
}
