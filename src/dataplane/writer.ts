// Reconciles a DesiredState against the routing maps, make-before-break.
//
// Slots and Maglev tables are double-buffered per service: a changed service gets its complete
// new layout written into the generation that is not live, then one update of its km_services
// value switches counts, policy and generation together, and only then are the old generation's
// entries deleted. A connect that read the old value and then misses a deleted entry re-reads the
// service (route.bpf.c retries), so no connect sees a half-written service. This was chosen over
// in-place swap-with-last edits because weight and priority changes reorder whole groups.
//
// The writer keeps a mirror of what it wrote (it is the only writer), rebuilt from the pinned
// maps at start, so ids stay stable across restarts and an unchanged state costs no map operation.
import {
  backendCodec,
  frontendCodec,
  frontendKeyCodec,
  hostKeyCodec,
  memberCodec,
  PANIC_TABLE,
  REASON_SLOTS,
  serviceCodec,
  serviceNameCodec,
  slotCodec,
  slotKeyCodec,
  u32,
  type BackendValue,
  type FrontendKey,
  type ServiceValue,
} from './codec.js';
import { normalizeWeights } from './layout.js';
import {
  backendKey,
  DEFAULT_PLAN_OPTIONS,
  planService,
  splitBackendKey,
  weightTotal,
  type PlanOptions,
  type ServicePlan,
} from './plan.js';
import type { RouteMapName, RouteMaps } from './maps.js';
import { RouteMapReader, type RouteIds } from './reader.js';
import {
  DEFAULT_OVERPROVISIONING,
  DEFAULT_PANIC_THRESHOLD,
  type DesiredState,
  type Endpoint,
  type Frontend,
  type OutlierDetection,
  type Service,
} from './model.js';

export interface MapOp {
  map: RouteMapName;
  op: 'update' | 'delete';
  /** Key bytes in hex. */
  key: string;
}

export interface Refusal {
  kind: 'service' | 'frontend';
  /** Service name, or `address:port/protocol` of a frontend. */
  name: string;
  reason: string;
}

export interface ApplyResult {
  /** Every map write and delete this apply performed, in order. */
  ops: MapOp[];
  /** The bpf() calls that carried them: fewer than ops where writes went in batches. */
  syscalls: number;
  refused: Refusal[];
}

interface LiveService {
  id: number;
  name: string;
  value: ServiceValue;
  valueHex: string;
  /** km_slots / km_maglev entries of this service (all generations): key hex → value hex. */
  slots: Map<string, string>;
  maglev: Map<string, string>;
  /** km_members entries (outlier detection only): key hex → value hex. */
  members: Map<string, string>;
}

interface LiveBackend {
  id: number;
  value: BackendValue;
}

const hex = (b: Buffer): string => b.toString('hex');
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

function frontendName(k: FrontendKey): string {
  return `${k.address.includes(':') ? `[${k.address}]` : k.address}:${k.port}/${k.protocol}`;
}

/** Ids 1..max-1 not in use, lowest first; freed ids go to the back so reuse is as late as possible. */
function freeIds(max: number, used: Set<number>): number[] {
  const out: number[] = [];
  for (let i = 1; i < max; i++) if (!used.has(i)) out.push(i);
  return out;
}

/**
 * Weights that normalizeWeights turns into exactly `live` (one priority group's slot weights, as
 * written), so a service rebuilt from the maps re-plans to the same slots. Live weights with gcd 1
 * are their own answer. A gcd above 1 only comes out of the scale-down branch (sum over maxTotal),
 * whose output sums to more than maxTotal - n; so inputs (L-1)·M + c + 1, with the c (each < M)
 * adding up to M·(maxTotal - ΣL), take that branch and land on each L. Checked before use.
 */
export function weightsPlanningTo(live: readonly number[], maxTotal: number): number[] | undefined {
  const same = (w: number[]): boolean => {
    try {
      const out = normalizeWeights(w, maxTotal);
      return out.length === live.length && out.every((x, i) => x === live[i]);
    } catch {
      return false;
    }
  };
  if (same([...live])) return [...live];
  const n = live.length;
  const short = maxTotal - live.reduce((a, b) => a + b, 0);
  if (short < 0 || short >= n) return undefined;
  for (let m = Math.max(n, 2); m < Math.max(n, 2) + 64; m++) {
    let extra = short * m;
    const w = live.map((l) => {
      const c = Math.min(m - 1, extra);
      extra -= c;
      return (l - 1) * m + c + 1;
    });
    if (same(w)) return w;
  }
  return undefined;
}

/** The model's outlier settings back from a service value (what a restarted agent finds pinned). */
function outlierFromValue(o: NonNullable<ServiceValue['outlier']>): OutlierDetection {
  return {
    consecutive5xx: o.consecutive5xx,
    consecutiveGatewayFailure: o.consecutiveGateway,
    consecutiveLocalOriginFailure: o.consecutiveLocalOrigin,
    enforcingConsecutive5xx: o.enforcing5xx,
    enforcingConsecutiveGatewayFailure: o.enforcingGateway,
    enforcingConsecutiveLocalOriginFailure: o.enforcingLocalOrigin,
    splitExternalLocalOriginErrors: o.splitLocalOrigin,
    intervalMs: o.intervalMs,
    baseEjectionTimeMs: o.baseEjectionMs,
    maxEjectionTimeMs: o.maxEjectionMs,
    maxEjectionTimeJitterMs: o.maxJitterMs,
    maxEjectionPercent: o.maxEjectionPercent,
    alwaysEjectOneHost: o.alwaysEjectOne,
  };
}

export class RouteWriter {
  private readonly services = new Map<string, LiveService>();
  private readonly backends = new Map<string, LiveBackend>();
  /** km_frontends: key hex → service id. */
  private readonly frontends = new Map<string, number>();
  private freeServiceIds: number[] = [];
  private freeBackendIds: number[] = [];
  private slotEntries = 0;
  private maglevEntries = 0;
  /** Entries found at recovery that belong to nothing (a crash mid-apply); deleted by the next apply. */
  private garbage: { map: RouteMapName; key: string }[] = [];
  private ops: MapOp[] = [];
  private syscalls = 0;

  private readonly reader: RouteMapReader;

  private constructor(
    private readonly maps: RouteMaps,
    private readonly planOptions: PlanOptions,
  ) {
    this.reader = new RouteMapReader(maps);
  }

  /** Rebuilds the mirror from the (possibly pinned, pre-existing) maps, read through the one reader. */
  static recover(maps: RouteMaps, planOptions: PlanOptions = DEFAULT_PLAN_OPTIONS): RouteWriter {
    const w = new RouteWriter(maps, planOptions);
    const read = w.reader;
    const names = read.serviceNames();
    for (const s of read.services()) {
      const name = names.get(s.k);
      if (name === undefined || s.v === undefined || w.services.has(name)) {
        w.garbage.push({ map: 'km_services', key: hex(s.key) });
        continue;
      }
      w.services.set(name, {
        id: s.k,
        name,
        value: s.v,
        valueHex: hex(s.value),
        slots: new Map(),
        maglev: new Map(),
        members: new Map(),
      });
    }
    const byId = new Map([...w.services.values()].map((s) => [s.id, s]));
    for (const [id] of names) if (!byId.has(id)) w.garbage.push({ map: 'km_svc_names', key: hex(u32(id)) });
    for (const [map, field] of [
      ['km_slots', 'slots'],
      ['km_maglev', 'maglev'],
    ] as const) {
      for (const e of read.slots(map)) {
        const s = byId.get(e.k.serviceId);
        if (s) s[field].set(hex(e.key), hex(e.value));
        else w.garbage.push({ map, key: hex(e.key) });
      }
    }
    for (const e of read.members()) {
      const s = byId.get(e.k.serviceId);
      if (s) s.members.set(hex(e.key), hex(e.value));
      else w.garbage.push({ map: 'km_members', key: hex(e.key) });
    }
    for (const s of w.services.values()) {
      w.slotEntries += s.slots.size;
      w.maglevEntries += s.maglev.size;
    }
    for (const b of read.backends()) {
      const key = backendKey(b.v.address, b.v.port);
      if (w.backends.has(key)) w.garbage.push({ map: 'km_backends', key: hex(b.key) });
      else w.backends.set(key, { id: b.k, value: b.v });
    }
    for (const f of read.frontends()) {
      if (byId.has(f.v)) w.frontends.set(hex(f.key), f.v);
      else w.garbage.push({ map: 'km_frontends', key: hex(f.key) });
    }
    w.freeServiceIds = freeIds(maps.km_services.maxEntries, new Set(byId.keys()));
    w.freeBackendIds = freeIds(
      maps.km_backends.maxEntries,
      new Set([...w.backends.values()].map((b) => b.id)),
    );
    return w;
  }

  private update(
    map: RouteMapName,
    key: Buffer,
    value: Buffer,
    flag: 'any' | 'noexist' | 'exist' = 'any',
  ): void {
    this.ops.push({ map, op: 'update', key: hex(key) });
    this.syscalls++;
    try {
      this.maps[map].update(key, value, flag);
    } catch (e) {
      throw new Error(`update ${map} key ${hex(key)}: ${(e as Error).message}`, { cause: e });
    }
  }

  private delete(map: RouteMapName, key: Buffer): void {
    this.ops.push({ map, op: 'delete', key: hex(key) });
    this.syscalls++;
    this.maps[map].delete(key);
  }

  /**
   * Writes many entries of one map in one batch where the kernel allows it; otherwise, or if the
   * batch fails part-way, one by one (rewriting an entry with the same value is harmless), so a real
   * error is reported for the entry at fault.
   */
  private updateMany(map: RouteMapName, entries: [Buffer, Buffer][]): void {
    const m = this.maps[map];
    if (entries.length > 1 && m.updateBatch && m.supportsBatch !== false) {
      try {
        this.syscalls++;
        m.updateBatch(
          entries.map(([k]) => k),
          entries.map(([, v]) => v),
        );
        for (const [k] of entries) this.ops.push({ map, op: 'update', key: hex(k) });
        return;
      } catch {
        /* fall back to single updates below */
      }
    }
    for (const [k, v] of entries) this.update(map, k, v);
  }

  /** Deletes many entries of one map, in one batch where the kernel allows it. */
  private deleteMany(map: RouteMapName, keys: Buffer[]): void {
    const m = this.maps[map];
    if (keys.length > 1 && m.deleteBatch && m.supportsBatch !== false) {
      try {
        this.syscalls++;
        m.deleteBatch(keys);
        for (const k of keys) this.ops.push({ map, op: 'delete', key: hex(k) });
        return;
      } catch {
        /* some were absent or the batch stopped part-way: finish one by one */
      }
    }
    for (const k of keys) this.delete(map, k);
  }

  /** Applies the whole desired state; returns the operations performed and what was refused. */
  apply(desired: DesiredState): ApplyResult {
    this.ops = [];
    this.syscalls = 0;
    const refused: Refusal[] = [];
    const wanted = new Set<string>();

    for (const s of [...desired.services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (wanted.has(s.name)) {
        refused.push({ kind: 'service', name: s.name, reason: 'duplicate service name' });
        continue;
      }
      wanted.add(s.name);
      let plan: ServicePlan;
      try {
        if (Buffer.byteLength(s.name) >= 256) throw new Error('name longer than 255 bytes');
        plan = planService(s, this.planOptions);
      } catch (e) {
        refused.push({ kind: 'service', name: s.name, reason: (e as Error).message });
        continue;
      }
      const why = this.applyService(plan);
      if (why) refused.push({ kind: 'service', name: s.name, reason: why });
    }

    this.applyFrontends(desired, refused);

    for (const s of [...this.services.values()]) if (!wanted.has(s.name)) this.removeService(s);
    this.removeUnusedBackends();
    for (const map of new Set(this.garbage.map((g) => g.map)))
      this.deleteMany(
        map,
        this.garbage.filter((g) => g.map === map).map((g) => unhex(g.key)),
      );
    this.garbage = [];
    return { ops: this.ops, syscalls: this.syscalls, refused };
  }

  private membersFor(plan: ServicePlan, id: number): Map<string, string> {
    const m = new Map<string, string>();
    for (const [key, member] of plan.members) {
      const backendId = this.backends.get(key)?.id;
      if (backendId !== undefined)
        m.set(hex(hostKeyCodec.encode({ serviceId: id, backendId })), hex(memberCodec.encode(member)));
    }
    return m;
  }

  private entriesFor(
    plan: ServicePlan,
    id: number,
    generation: number,
  ): [Map<string, string>, Map<string, string>] {
    const build = (list: ServicePlan['slots']): Map<string, string> => {
      const m = new Map<string, string>();
      for (const e of list) {
        const backendId = this.backends.get(e.backend)?.id ?? 0;
        m.set(
          hex(slotKeyCodec.encode({ serviceId: id, index: e.index, priority: e.priority, generation })),
          hex(slotCodec.encode({ backendId, weight: e.weight })),
        );
      }
      return m;
    };
    return [build(plan.slots), build(plan.maglev)];
  }

  private static sameEntries(a: Map<string, string>, b: Map<string, string>): boolean {
    if (a.size !== b.size) return false;
    for (const [k, v] of a) if (b.get(k) !== v) return false;
    return true;
  }

  /** Writes one service make-before-break; returns a refusal reason, or undefined. */
  private applyService(plan: ServicePlan): string | undefined {
    const live = this.services.get(plan.name);
    const newBackends = [...plan.backends].filter((k) => !this.backends.has(k));

    if (live && newBackends.length === 0) {
      const value = { ...plan.value, generation: live.value.generation };
      const [slots, maglev] = this.entriesFor(plan, live.id, live.value.generation);
      if (
        hex(serviceCodec.encode(value)) === live.valueHex &&
        RouteWriter.sameEntries(slots, live.slots) &&
        RouteWriter.sameEntries(maglev, live.maglev) &&
        RouteWriter.sameEntries(this.membersFor(plan, live.id), live.members)
      )
        return undefined;
    }

    // capacity first: a service that does not fit is refused whole and its live entries stay
    if (!live && this.freeServiceIds.length === 0)
      return `km_services full: ${this.maps.km_services.maxEntries - 1} services`;
    if (newBackends.length > this.freeBackendIds.length)
      return `km_backends full: needs ${newBackends.length} new backends, ${this.freeBackendIds.length} free`;
    const slotRoom = this.maps.km_slots.maxEntries - this.slotEntries;
    if (plan.slots.length > slotRoom)
      return `km_slots full: needs ${plan.slots.length} slots, ${slotRoom} free`;
    const maglevRoom = this.maps.km_maglev.maxEntries - this.maglevEntries;
    if (plan.maglev.length > maglevRoom)
      return `km_maglev full: needs ${plan.maglev.length} table entries, ${maglevRoom} free`;

    // backends before the slots that name them: connection counts zeroed, then the addresses
    const conns: [Buffer, Buffer][] = [];
    const addresses: [Buffer, Buffer][] = [];
    for (const key of newBackends) {
      const id = this.freeBackendIds.shift()!;
      const [address, port] = [
        key.slice(0, key.lastIndexOf('|')),
        Number(key.slice(key.lastIndexOf('|') + 1)),
      ];
      const value = { address, port };
      conns.push([u32(id), u32(0)]);
      addresses.push([u32(id), backendCodec.encode(value)]);
      this.backends.set(key, { id, value });
    }
    this.updateMany('km_backend_conn', conns);
    this.updateMany('km_backends', addresses);

    let svc = live;
    if (!svc) {
      const id = this.freeServiceIds.shift()!;
      this.resetServiceState(id);
      this.update('km_svc_names', u32(id), serviceNameCodec.encode({ name: plan.name }));
      svc = {
        id,
        name: plan.name,
        value: { ...plan.value, generation: 1 },
        valueHex: '',
        slots: new Map(),
        maglev: new Map(),
        members: new Map(),
      };
    }
    // a host's place in the service before the switch, so an ejection is counted where it belongs
    const members = this.membersFor(plan, svc.id);
    const memberWrites: [Buffer, Buffer][] = [];
    for (const [k, v] of members) if (svc.members.get(k) !== v) memberWrites.push([unhex(k), unhex(v)]);
    this.updateMany('km_members', memberWrites);
    const generation = live ? live.value.generation ^ 1 : 0;
    const [slots, maglev] = this.entriesFor(plan, svc.id, generation);
    // new generation complete before the switch
    for (const [map, want, have] of [
      ['km_slots', slots, svc.slots],
      ['km_maglev', maglev, svc.maglev],
    ] as const) {
      const writes: [Buffer, Buffer][] = [];
      for (const [k, v] of want) {
        if (have.get(k) === v) continue;
        writes.push([unhex(k), unhex(v)]);
        if (!have.has(k)) {
          if (map === 'km_slots') this.slotEntries++;
          else this.maglevEntries++;
        }
        have.set(k, v);
      }
      this.updateMany(map, writes);
    }
    const value: ServiceValue = { ...plan.value, generation };
    const valueBytes = serviceCodec.encode(value);
    this.update('km_services', u32(svc.id), valueBytes, live ? 'exist' : 'noexist');
    svc.value = value;
    svc.valueHex = hex(valueBytes);
    this.services.set(plan.name, svc);
    // the old generation goes only after the switch
    for (const [map, want, have] of [
      ['km_slots', slots, svc.slots],
      ['km_maglev', maglev, svc.maglev],
    ] as const) {
      const gone = [...have.keys()].filter((k) => !want.has(k));
      this.deleteMany(map, gone.map(unhex));
      for (const k of gone) have.delete(k);
      if (map === 'km_slots') this.slotEntries -= gone.length;
      else this.maglevEntries -= gone.length;
    }
    // hosts that left: the kernel's sweep returns one that was ejected and forgets it
    const goneMembers = [...svc.members.keys()].filter((k) => !members.has(k));
    this.deleteMany('km_members', goneMembers.map(unhex));
    svc.members = members;
    return undefined;
  }

  /** A reused id starts with zero counters and no connections from its previous owner. */
  private resetServiceState(id: number): void {
    this.update('km_service_conn', u32(id), u32(0));
    // zeroing the value also cancels a sweep timer the previous owner left armed
    const od = this.maps.km_outlier.lookup(u32(id));
    if (od?.some((b) => b !== 0)) this.update('km_outlier', u32(id), Buffer.alloc(od.length));
    this.deleteMany('km_hosts', this.reader.hostKeysOf(id));
    const sample = this.maps.km_counters.lookup(u32(id * REASON_SLOTS));
    if (!sample) return;
    for (let r = 0; r < REASON_SLOTS; r++) {
      const key = u32(id * REASON_SLOTS + r);
      const cur = this.maps.km_counters.lookup(key);
      if (cur && cur.some((b) => b !== 0)) this.update('km_counters', key, Buffer.alloc(sample.length));
    }
  }

  private applyFrontends(desired: DesiredState, refused: Refusal[]): void {
    const want = new Map<string, number>();
    for (const f of desired.frontends) {
      let key: Buffer;
      const name = frontendName(f);
      try {
        key = frontendKeyCodec.encode({ address: f.address, port: f.port, protocol: f.protocol });
      } catch (e) {
        refused.push({ kind: 'frontend', name, reason: (e as Error).message });
        continue;
      }
      const k = hex(key);
      if (want.has(k)) {
        refused.push({ kind: 'frontend', name, reason: `already leads to another service` });
        continue;
      }
      const svc = this.services.get(f.service);
      if (!svc) {
        // a service that was never programmed: its traffic stays untouched
        refused.push({ kind: 'frontend', name, reason: `service ${f.service} is not programmed` });
        continue;
      }
      if (!this.frontends.has(k) && this.frontends.size + want.size >= this.maps.km_frontends.maxEntries) {
        refused.push({
          kind: 'frontend',
          name,
          reason: `km_frontends full: ${this.maps.km_frontends.maxEntries}`,
        });
        continue;
      }
      want.set(k, svc.id);
    }
    for (const [k, id] of want) {
      if (this.frontends.get(k) === id) continue;
      this.update('km_frontends', unhex(k), frontendCodec.encode({ serviceId: id }));
      this.frontends.set(k, id);
    }
    for (const k of [...this.frontends.keys()]) {
      if (want.has(k)) continue;
      this.delete('km_frontends', unhex(k));
      this.frontends.delete(k);
    }
  }

  private removeService(s: LiveService): void {
    for (const [k, id] of [...this.frontends]) {
      if (id !== s.id) continue;
      this.delete('km_frontends', unhex(k));
      this.frontends.delete(k);
    }
    this.delete('km_services', u32(s.id));
    this.deleteMany('km_slots', [...s.slots.keys()].map(unhex));
    this.deleteMany('km_maglev', [...s.maglev.keys()].map(unhex));
    this.slotEntries -= s.slots.size;
    this.maglevEntries -= s.maglev.size;
    this.delete('km_svc_names', u32(s.id));
    this.deleteMany('km_members', [...s.members.keys()].map(unhex));
    this.deleteMany('km_hosts', this.reader.hostKeysOf(s.id));
    this.services.delete(s.name);
    this.freeServiceIds.push(s.id);
  }

  private removeUnusedBackends(): void {
    const used = new Set<number>();
    for (const s of this.services.values())
      for (const m of [s.slots, s.maglev])
        for (const v of m.values()) used.add(slotCodec.decode(unhex(v)).backendId);
    for (const [key, b] of [...this.backends]) {
      if (used.has(b.id)) continue;
      this.delete('km_backends', u32(b.id));
      this.backends.delete(key);
      this.freeBackendIds.push(b.id);
    }
  }

  /**
   * What the kernel routes now, as a DesiredState: after recover(), the pinned state of the agent
   * that ran before. Each service re-plans to exactly its live entries (0 map operations), so a
   * restarted agent can hand it to translate as `previous` and a service refused at start keeps its
   * entries. Endpoints are those in the live slots, with the weights as planned and health
   * 'healthy'; endpoints the kernel never picks (draining, unhealthy) are not in the maps.
   */
  live(): DesiredState {
    const addressOf = new Map<number, string>();
    for (const [key, b] of this.backends) addressOf.set(b.id, key);
    const services: Service[] = [];
    const names = new Map<number, string>();
    for (const s of this.services.values()) {
      names.set(s.id, s.name);
      const service: Service = {
        name: s.name,
        kind: s.value.kind,
        lbPolicy: s.value.lbPolicy,
        endpoints: [],
      };
      if (s.value.maxConnections > 0) service.maxConnections = s.value.maxConnections;
      if (s.value.lbPolicy === 'least_request') service.activeRequestBias = s.value.activeRequestBias;
      if (s.value.waypoint) service.waypoint = { ...s.value.waypoint };
      if (s.value.kind === 'endpoints') {
        // Envoy's defaults stay implicit, as translate leaves them
        if (s.value.overprovisioning !== DEFAULT_OVERPROVISIONING)
          service.overprovisioningFactor = s.value.overprovisioning;
        if (s.value.panicThreshold !== DEFAULT_PANIC_THRESHOLD)
          service.panicThreshold = s.value.panicThreshold;
        if (s.value.failOnPanic) service.failTrafficOnPanic = true;
        if (s.value.outlier) {
          service.outlierDetection = outlierFromValue(s.value.outlier);
          service.connectTimeoutMs = s.value.connectTimeoutMs;
        }
      }
      // live generation only: the other one holds leftovers of an apply cut short
      const groups = new Map<number, Map<string, number>>();
      for (const [k, v] of s.slots) {
        const key = slotKeyCodec.decode(unhex(k));
        if (key.generation !== s.value.generation) continue;
        const slot = slotCodec.decode(unhex(v));
        const backend = addressOf.get(slot.backendId);
        if (backend === undefined) continue;
        const g = groups.get(key.priority) ?? new Map<string, number>();
        g.set(backend, slot.weight);
        groups.set(key.priority, g);
      }
      const total = weightTotal(s.value.lbPolicy, this.planOptions);
      const weightsOf = (group: Map<string, number>): Map<string, number> => {
        const keys = [...group.keys()].sort();
        const planned = keys.map((k) => group.get(k)!);
        const weights = weightsPlanningTo(planned, total) ?? planned;
        return new Map(keys.map((k, i) => [k, weights[i]!]));
      };
      for (let priority = 0; priority < PANIC_TABLE; priority++) {
        const healthy = groups.get(priority) ?? new Map<string, number>();
        const panic = groups.get(priority | PANIC_TABLE);
        // with its own panic slots, those hold every host in proportion: the healthy ones re-plan
        // from the same weights; without, every host is a healthy one
        const weights = weightsOf(panic ?? healthy);
        for (const [k, weight] of [...weights].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
          const e: Endpoint = {
            ...splitBackendKey(k),
            weight,
            priority,
            health: healthy.has(k) ? 'healthy' : 'unhealthy',
          };
          service.endpoints.push(e);
        }
      }
      services.push(service);
    }
    const frontends: Frontend[] = [];
    for (const [k, id] of this.frontends) {
      const service = names.get(id);
      if (service !== undefined) frontends.push({ ...frontendKeyCodec.decode(unhex(k)), service });
    }
    const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
    services.sort((a, b) => cmp(a.name, b.name));
    frontends.sort((a, b) => cmp(a.address, b.address) || a.port - b.port || cmp(a.protocol, b.protocol));
    return { services, frontends };
  }

  /** Service id by name, as programmed (undefined when not programmed). */
  serviceId(name: string): number | undefined {
    return this.services.get(name)?.id;
  }

  /** Backend id of an address and port, as programmed. */
  backendId(address: string, port: number): number | undefined {
    return this.backends.get(backendKey(address, port))?.id;
  }

  /**
   * Names and backends by id as programmed, for reading the kernel's counts by id; service id 0 ("")
   * collects what had no service.
   */
  ids(): RouteIds {
    return {
      services: [
        { name: '', id: 0, outlier: false },
        ...[...this.services.values()].map((s) => ({ name: s.name, id: s.id, outlier: !!s.value.outlier })),
      ],
      backends: [...this.backends.values()].map((b) => ({ ...b.value, id: b.id })),
    };
  }
}
