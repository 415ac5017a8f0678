// What one desired Service becomes in the kernel, before ids are known: its service value, its
// slots per priority group (weight-expanded, except least_request's one per endpoint) and its
// Maglev tables. Pure; errors name the problem.
import { canonicalAddress, familyOf } from '../net/address.js';
import { LR_MAX_WEIGHTED, MAX_PRIORITIES, type ServiceValue } from './codec.js';
import { maglevSize, maglevTable, normalizeWeights, smoothWeightedOrder } from './layout.js';
import type { Endpoint, Service } from './model.js';

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

/** Throws with the reason when the service cannot be expressed in the kernel. */
export function planService(s: Service, opts: PlanOptions = DEFAULT_PLAN_OPTIONS): ServicePlan {
  const plan: ServicePlan = {
    name: s.name,
    value: {
      kind: s.kind,
      lbPolicy: s.lbPolicy,
      maxConnections: Math.min(s.maxConnections ?? 0, 0xffffffff),
      slotCount: new Array<number>(MAX_PRIORITIES).fill(0),
      maglevSize: 0,
      lrWeighted: 0,
      activeRequestBias: 0,
    },
    slots: [],
    maglev: [],
    backends: new Set(),
  };
  if (s.kind === 'waypoint') {
    if (!s.waypoint) throw new Error('kind waypoint without a waypoint address');
    checkPort('waypoint', s.waypoint.port);
    familyOf(s.waypoint.address);
    plan.value.waypoint = { address: canonicalAddress(s.waypoint.address), port: s.waypoint.port };
    return plan;
  }
  if (s.kind !== 'endpoints') return plan;
  const leastRequest = s.lbPolicy === 'least_request';
  if (leastRequest) {
    const bias = s.activeRequestBias ?? 1;
    // (active + 1)^bias needs a pow the kernel does not have; translate refuses other values first
    if (bias !== 0 && bias !== 1)
      throw new Error(`active_request_bias ${bias}: the kernel computes only 0 and 1`);
    plan.value.activeRequestBias = bias;
  }

  // group selectable endpoints by priority; the same address twice in a group adds its weights
  const groups = new Map<number, Map<BackendKey, number>>();
  s.endpoints.forEach((e, i) => {
    checkPort(`endpoints[${i}] ${e.address}`, e.port);
    familyOf(e.address);
    if (!selectable(e)) return;
    if (!Number.isInteger(e.priority) || e.priority < 0)
      throw new Error(`endpoints[${i}]: priority ${e.priority}`);
    // groups past the kernel's last one share it: they are all fallbacks of last resort
    const p = Math.min(e.priority, MAX_PRIORITIES - 1);
    const g = groups.get(p) ?? new Map<BackendKey, number>();
    const k = backendKey(e.address, e.port);
    g.set(k, (g.get(k) ?? 0) + Math.max(1, e.weight));
    groups.set(p, g);
  });

  for (const [priority, group] of [...groups].sort((a, b) => a[0] - b[0])) {
    const keys = [...group.keys()].sort();
    if (keys.length > opts.maxSlotsPerPriority)
      throw new Error(
        `priority ${priority}: ${keys.length} endpoints exceed ${opts.maxSlotsPerPriority} slots`,
      );
    const weights = normalizeWeights(
      keys.map((k) => group.get(k)!),
      weightTotal(s.lbPolicy, opts),
    );
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
        plan.value.lrWeighted |= 1 << priority;
      }
    } else order = smoothWeightedOrder(items);
    order.forEach((backend, index) =>
      plan.slots.push({ priority, index, backend, weight: weightOf.get(backend)! }),
    );
    plan.value.slotCount[priority] = order.length;
    keys.forEach((k) => plan.backends.add(k));
    if (s.lbPolicy === 'maglev') {
      const size = maglevSize(keys.length, opts.maxMaglevSize);
      // every group's table has the same size: the kernel keeps one size per service
      plan.value.maglevSize = Math.max(plan.value.maglevSize, size);
    }
  }
  if (s.lbPolicy === 'maglev' && plan.value.maglevSize) {
    for (const [priority, group] of groups) {
      const keys = [...group.keys()].sort();
      const weights = normalizeWeights(
        keys.map((k) => group.get(k)!),
        opts.maxSlotsPerPriority,
      );
      const table = maglevTable(
        keys.map((key, i) => ({ key, weight: weights[i]! })),
        plan.value.maglevSize,
        (k) => k,
      );
      table.forEach((backend, index) => plan.maglev.push({ priority, index, backend, weight: 1 }));
    }
  }
  return plan;
}
