// One codec per struct of bpf/route.h and bpf/drain.h (and the shared ones of bpf/kernmesh.h they
// use). Each declares its C members with offset and size once; ROUTE_SPEC and DRAIN_SPEC list them
// with every constant mirrored here, and each object is checked against its spec when it is loaded.
import { decodeAddress, encodeAddress, familyOf, type Family } from '../net/address.js';
import {
  enumOf,
  enumOfList,
  enumSpec,
  layout,
  type ObjectSpec,
  type StructLayout,
} from '../../native/spec.js';
import type { LbPolicy, Protocol, ServiceKind } from './model.js';

export { u32 } from '../../native/spec.js';
export type { FieldLayout, StructLayout } from '../../native/spec.js';

export interface Codec<T> extends StructLayout {
  encode(value: T): Buffer;
  decode(bytes: Buffer): T;
}

function checkSize(struct: string, bytes: Buffer, size: number): void {
  if (bytes.length < size) throw new Error(`decode struct ${struct}: ${bytes.length} bytes, need ${size}`);
}

// Constants of route.h and kernmesh.h, each in ROUTE_SPEC below: checked against the object at load.
export const MAX_PRIORITIES = 8;
export const AF = { inet: 4, inet6: 6 } as const;
export const IPPROTO: Record<Protocol, number> = { tcp: 6, udp: 17 };
export const KINDS: readonly ServiceKind[] = ['endpoints', 'passthrough', 'blackhole', 'waypoint'];
export const LB_POLICIES: readonly LbPolicy[] = ['random', 'round_robin', 'least_request', 'maglev'];
export const REASONS = [
  'routed',
  'no_endpoint',
  'overflow',
  'passthrough',
  'blackhole',
  'waypoint',
  'map_miss',
] as const;
export type Reason = (typeof REASONS)[number];
/** KM_REASON_COUNT: counters are indexed service_id * REASON_SLOTS + reason. */
export const REASON_SLOTS = 8;
export const SOCK_FLAGS = {
  routed: 0x01,
  waypointPending: 0x02,
  counted: 0x04,
  v4Mapped: 0x08,
  passthrough: 0x10,
  connectDone: 0x20,
} as const;

function protocolName(n: number): Protocol {
  if (n === 6) return 'tcp';
  if (n === 17) return 'udp';
  throw new Error(`unknown IP protocol ${n}`);
}

// ---- struct km_frontend_key ----
export interface FrontendKey {
  address: string;
  port: number;
  protocol: Protocol;
}
export const frontendKeyCodec: Codec<FrontendKey> = {
  ...layout('km_frontend_key', [
    ['address', 16],
    ['port', 2],
    ['protocol', 1],
    ['family', 1],
  ]),
  encode(v) {
    const b = Buffer.alloc(20);
    encodeAddress(v.address).copy(b, 0);
    b.writeUInt16BE(v.port, 16);
    b.writeUInt8(IPPROTO[v.protocol], 18);
    b.writeUInt8(familyOf(v.address), 19);
    return b;
  },
  decode(b) {
    checkSize('km_frontend_key', b, 20);
    return {
      address: decodeAddress(b.subarray(0, 16), b.readUInt8(19)),
      port: b.readUInt16BE(16),
      protocol: protocolName(b.readUInt8(18)),
    };
  },
};

// ---- struct km_frontend ----
export interface FrontendValue {
  serviceId: number;
}
export const frontendCodec: Codec<FrontendValue> = {
  ...layout('km_frontend', [['service_id', 4]]),
  encode(v) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v.serviceId, 0);
    return b;
  },
  decode(b) {
    checkSize('km_frontend', b, 4);
    return { serviceId: b.readUInt32LE(0) };
  },
};

// ---- struct km_service ----
/** Envoy's outlier detector settings as the kernel applies them (outlier_detection, issue 17). */
export interface OutlierValue {
  /** The cluster's hosts: max_ejection_percent's denominator. */
  hosts: number;
  /** Thresholds of consecutive failed connects; 0 never fires. */
  consecutive5xx: number;
  consecutiveGateway: number;
  consecutiveLocalOrigin: number;
  /** Percent chance an ejection is enforced. */
  enforcing5xx: number;
  enforcingGateway: number;
  enforcingLocalOrigin: number;
  maxEjectionPercent: number;
  intervalMs: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  maxJitterMs: number;
  splitLocalOrigin: boolean;
  alwaysEjectOne: boolean;
}

export interface ServiceValue {
  kind: ServiceKind;
  lbPolicy: LbPolicy;
  /** Which half of the double-buffered slots and Maglev tables is live (0 or 1). */
  generation: number;
  /** 0: no cap. */
  maxConnections: number;
  /** Healthy slots per priority group, length MAX_PRIORITIES. */
  slotCount: number[];
  maglevSize: number;
  waypoint?: { address: string; port: number };
  /** least_request: bit p set when priority group p has unequal weights (Envoy's weighted mode). */
  lrWeighted: number;
  /** least_request: Envoy's active_request_bias, carried as 16.16 fixed point (0 or 1 in the kernel). */
  activeRequestBias: number;
  /** least_request: lrWeighted for the panic slots. */
  lrPanicWeighted: number;
  /** Priorities in panic with no host ejected (bit p). */
  panicMask: number;
  /** Slots a connect in panic picks from, per priority. */
  panicSlotCount: number[];
  /** Bit p: priority p's panic slots are their own (keyed p | PANIC_TABLE); else the healthy ones. */
  panicSeparate: number;
  /** Non-draining and EDS-healthy hosts per priority: Envoy's health inputs. */
  hostCount: number[];
  healthyCount: number[];
  /** Percent of connects per priority with no host ejected. */
  load: number[];
  overprovisioning: number;
  panicThreshold: number;
  failOnPanic: boolean;
  /** Present when outlier detection is on. */
  outlier?: OutlierValue;
  /** connect_timeout: a connect unanswered this long is a failure (outlier detection). */
  connectTimeoutMs: number;
}
/** KM_LR_BIAS_ONE: the fixed-point unit of km_service.lr_bias. */
export const LR_BIAS_ONE = 65536;
/** KM_LR_MAX_WEIGHTED: endpoints a least_request group with unequal weights may hold. */
export const LR_MAX_WEIGHTED = 1024;
/** KM_PANIC_TABLE: the km_slot_key.priority bit of a priority's own panic slots and Maglev table. */
export const PANIC_TABLE = 0x08;
/** km_service.flags */
export const SVC_FLAGS = {
  outlier: 0x01,
  splitLocalOrigin: 0x02,
  alwaysEjectOne: 0x04,
  failOnPanic: 0x08,
} as const;
const SERVICE_SIZE = 152;
const u16s = (b: Buffer, off: number): number[] =>
  Array.from({ length: MAX_PRIORITIES }, (_, p) => b.readUInt16LE(off + 2 * p));
export const serviceCodec: Codec<ServiceValue> = {
  ...layout('km_service', [
    ['kind', 1],
    ['lb_policy', 1],
    ['generation', 1],
    ['waypoint_family', 1],
    ['max_connections', 4],
    ['slot_count', 2 * MAX_PRIORITIES],
    ['maglev_size', 2],
    ['waypoint_port', 2],
    ['waypoint_address', 16],
    ['lr_weighted', 1],
    ['lr_panic_weighted', 1],
    ['flags', 1],
    ['panic_mask', 1],
    ['lr_bias', 4],
    ['panic_slot_count', 2 * MAX_PRIORITIES],
    ['host_count', 2 * MAX_PRIORITIES],
    ['healthy_count', 2 * MAX_PRIORITIES],
    ['load', MAX_PRIORITIES],
    ['overprovisioning', 2],
    ['panic_threshold', 1],
    ['panic_separate', 1],
    ['outlier_hosts', 4],
    ['consecutive_5xx', 4],
    ['consecutive_gateway', 4],
    ['consecutive_local_origin', 4],
    ['enforcing_5xx', 1],
    ['enforcing_gateway', 1],
    ['enforcing_local_origin', 1],
    ['max_ejection_percent', 1],
    ['interval_ms', 4],
    ['base_ejection_ms', 4],
    ['max_ejection_ms', 4],
    ['max_jitter_ms', 4],
    ['connect_timeout_ms', 4],
  ]),
  encode(v) {
    const b = Buffer.alloc(SERVICE_SIZE);
    b.writeUInt8(KINDS.indexOf(v.kind), 0);
    b.writeUInt8(LB_POLICIES.indexOf(v.lbPolicy), 1);
    b.writeUInt8(v.generation, 2);
    b.writeUInt32LE(v.maxConnections, 4);
    for (let p = 0; p < MAX_PRIORITIES; p++) {
      b.writeUInt16LE(v.slotCount[p] ?? 0, 8 + 2 * p);
      b.writeUInt16LE(v.panicSlotCount[p] ?? 0, 52 + 2 * p);
      b.writeUInt16LE(v.hostCount[p] ?? 0, 68 + 2 * p);
      b.writeUInt16LE(v.healthyCount[p] ?? 0, 84 + 2 * p);
      b.writeUInt8(v.load[p] ?? 0, 100 + p);
    }
    b.writeUInt16LE(v.maglevSize, 24);
    if (v.waypoint) {
      b.writeUInt8(familyOf(v.waypoint.address), 3);
      b.writeUInt16BE(v.waypoint.port, 26);
      encodeAddress(v.waypoint.address).copy(b, 28);
    }
    b.writeUInt8(v.lrWeighted, 44);
    b.writeUInt8(v.lrPanicWeighted, 45);
    const o = v.outlier;
    b.writeUInt8(
      (o ? SVC_FLAGS.outlier : 0) |
        (o?.splitLocalOrigin ? SVC_FLAGS.splitLocalOrigin : 0) |
        (o?.alwaysEjectOne ? SVC_FLAGS.alwaysEjectOne : 0) |
        (v.failOnPanic ? SVC_FLAGS.failOnPanic : 0),
      46,
    );
    b.writeUInt8(v.panicMask, 47);
    b.writeUInt32LE(Math.round(v.activeRequestBias * LR_BIAS_ONE), 48);
    b.writeUInt16LE(v.overprovisioning, 108);
    b.writeUInt8(v.panicThreshold, 110);
    b.writeUInt8(v.panicSeparate, 111);
    if (o) {
      b.writeUInt32LE(o.hosts, 112);
      b.writeUInt32LE(o.consecutive5xx, 116);
      b.writeUInt32LE(o.consecutiveGateway, 120);
      b.writeUInt32LE(o.consecutiveLocalOrigin, 124);
      b.writeUInt8(o.enforcing5xx, 128);
      b.writeUInt8(o.enforcingGateway, 129);
      b.writeUInt8(o.enforcingLocalOrigin, 130);
      b.writeUInt8(o.maxEjectionPercent, 131);
      b.writeUInt32LE(o.intervalMs, 132);
      b.writeUInt32LE(o.baseEjectionMs, 136);
      b.writeUInt32LE(o.maxEjectionMs, 140);
      b.writeUInt32LE(o.maxJitterMs, 144);
    }
    b.writeUInt32LE(v.connectTimeoutMs, 148);
    return b;
  },
  decode(b) {
    checkSize('km_service', b, SERVICE_SIZE);
    const kind = KINDS[b.readUInt8(0)];
    const lbPolicy = LB_POLICIES[b.readUInt8(1)];
    if (!kind || !lbPolicy)
      throw new Error(`decode struct km_service: kind ${b[0]} / lb_policy ${b[1]} unknown`);
    const flags = b.readUInt8(46);
    const v: ServiceValue = {
      kind,
      lbPolicy,
      generation: b.readUInt8(2),
      maxConnections: b.readUInt32LE(4),
      slotCount: u16s(b, 8),
      maglevSize: b.readUInt16LE(24),
      lrWeighted: b.readUInt8(44),
      activeRequestBias: b.readUInt32LE(48) / LR_BIAS_ONE,
      lrPanicWeighted: b.readUInt8(45),
      panicMask: b.readUInt8(47),
      panicSlotCount: u16s(b, 52),
      panicSeparate: b.readUInt8(111),
      hostCount: u16s(b, 68),
      healthyCount: u16s(b, 84),
      load: [...b.subarray(100, 108)],
      overprovisioning: b.readUInt16LE(108),
      panicThreshold: b.readUInt8(110),
      failOnPanic: (flags & SVC_FLAGS.failOnPanic) !== 0,
      connectTimeoutMs: b.readUInt32LE(148),
    };
    const wf = b.readUInt8(3);
    if (wf) v.waypoint = { address: decodeAddress(b.subarray(28, 44), wf), port: b.readUInt16BE(26) };
    if (flags & SVC_FLAGS.outlier)
      v.outlier = {
        hosts: b.readUInt32LE(112),
        consecutive5xx: b.readUInt32LE(116),
        consecutiveGateway: b.readUInt32LE(120),
        consecutiveLocalOrigin: b.readUInt32LE(124),
        enforcing5xx: b.readUInt8(128),
        enforcingGateway: b.readUInt8(129),
        enforcingLocalOrigin: b.readUInt8(130),
        maxEjectionPercent: b.readUInt8(131),
        intervalMs: b.readUInt32LE(132),
        baseEjectionMs: b.readUInt32LE(136),
        maxEjectionMs: b.readUInt32LE(140),
        maxJitterMs: b.readUInt32LE(144),
        splitLocalOrigin: (flags & SVC_FLAGS.splitLocalOrigin) !== 0,
        alwaysEjectOne: (flags & SVC_FLAGS.alwaysEjectOne) !== 0,
      };
    return v;
  },
};

// ---- struct km_slot_key (km_slots and km_maglev) ----
export interface SlotKey {
  serviceId: number;
  index: number;
  priority: number;
  generation: number;
}
export const slotKeyCodec: Codec<SlotKey> = {
  ...layout('km_slot_key', [
    ['service_id', 4],
    ['index', 2],
    ['priority', 1],
    ['generation', 1],
  ]),
  encode(v) {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(v.serviceId, 0);
    b.writeUInt16LE(v.index, 4);
    b.writeUInt8(v.priority, 6);
    b.writeUInt8(v.generation, 7);
    return b;
  },
  decode(b) {
    checkSize('km_slot_key', b, 8);
    return { serviceId: b.readUInt32LE(0), index: b.readUInt16LE(4), priority: b[6]!, generation: b[7]! };
  },
};

// ---- struct km_slot ----
export interface SlotValue {
  backendId: number;
  weight: number;
}
export const slotCodec: Codec<SlotValue> = {
  ...layout('km_slot', [
    ['backend_id', 4],
    ['weight', 4],
  ]),
  encode(v) {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(v.backendId, 0);
    b.writeUInt32LE(v.weight, 4);
    return b;
  },
  decode(b) {
    checkSize('km_slot', b, 8);
    return { backendId: b.readUInt32LE(0), weight: b.readUInt32LE(4) };
  },
};

// ---- struct km_backend ----
export interface BackendValue {
  address: string;
  port: number;
}
export const backendCodec: Codec<BackendValue> = {
  ...layout('km_backend', [
    ['address', 16],
    ['port', 2],
    ['family', 1],
    ['pad', 1],
  ]),
  encode(v) {
    const b = Buffer.alloc(20);
    encodeAddress(v.address).copy(b, 0);
    b.writeUInt16BE(v.port, 16);
    b.writeUInt8(familyOf(v.address), 18);
    return b;
  },
  decode(b) {
    checkSize('km_backend', b, 20);
    return { address: decodeAddress(b.subarray(0, 16), b[18]!), port: b.readUInt16BE(16) };
  },
};

// ---- struct km_service_name ----
export const SERVICE_NAME_BYTES = 256;
export interface ServiceNameValue {
  name: string;
}
export const serviceNameCodec: Codec<ServiceNameValue> = {
  ...layout('km_service_name', [['name', SERVICE_NAME_BYTES]]),
  encode(v) {
    const b = Buffer.alloc(SERVICE_NAME_BYTES);
    const n = Buffer.from(v.name, 'utf8');
    // one byte stays NUL so the C side always sees a terminated string
    if (n.length >= SERVICE_NAME_BYTES)
      throw new Error(`service name longer than ${SERVICE_NAME_BYTES - 1} bytes`);
    n.copy(b, 0);
    return b;
  },
  decode(b) {
    checkSize('km_service_name', b, SERVICE_NAME_BYTES);
    const end = b.indexOf(0);
    return { name: b.subarray(0, end < 0 ? SERVICE_NAME_BYTES : end).toString('utf8') };
  },
};

// ---- struct km_sock_route ----
export interface SockRoute {
  origAddress: string;
  origPort: number;
  family: Family;
  flags: number;
  serviceId: number;
  backendId: number;
}
export const sockRouteCodec: Codec<SockRoute> = {
  ...layout('km_sock_route', [
    ['orig_address', 16],
    ['orig_port', 2],
    ['family', 1],
    ['flags', 1],
    ['service_id', 4],
    ['backend_id', 4],
    ['connect_ms', 4],
  ]),
  encode(v) {
    const b = Buffer.alloc(32);
    encodeAddress(v.origAddress).copy(b, 0);
    b.writeUInt16BE(v.origPort, 16);
    b.writeUInt8(v.family, 18);
    b.writeUInt8(v.flags, 19);
    b.writeUInt32LE(v.serviceId, 20);
    b.writeUInt32LE(v.backendId, 24);
    return b;
  },
  decode(b) {
    checkSize('km_sock_route', b, 32);
    const family = b[18] === 6 ? 6 : 4;
    return {
      origAddress: decodeAddress(b.subarray(0, 16), family),
      origPort: b.readUInt16BE(16),
      family,
      flags: b[19]!,
      serviceId: b.readUInt32LE(20),
      backendId: b.readUInt32LE(24),
    };
  },
};

// ---- outlier detection: struct km_host_key, km_member, km_host_state, km_outlier ----
export interface HostKey {
  serviceId: number;
  backendId: number;
}
export const hostKeyCodec: Codec<HostKey> = {
  ...layout('km_host_key', [
    ['service_id', 4],
    ['backend_id', 4],
  ]),
  encode(v) {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(v.serviceId, 0);
    b.writeUInt32LE(v.backendId, 4);
    return b;
  },
  decode(b) {
    checkSize('km_host_key', b, 8);
    return { serviceId: b.readUInt32LE(0), backendId: b.readUInt32LE(4) };
  },
};

export interface MemberValue {
  priority: number;
  healthy: boolean;
}
export const memberCodec: Codec<MemberValue> = {
  ...layout('km_member', [
    ['priority', 1],
    ['healthy', 1],
    ['pad', 2],
  ]),
  encode(v) {
    const b = Buffer.alloc(4);
    b.writeUInt8(v.priority, 0);
    b.writeUInt8(v.healthy ? 1 : 0, 1);
    return b;
  },
  decode(b) {
    checkSize('km_member', b, 4);
    return { priority: b[0]!, healthy: b[1] !== 0 };
  },
};

/** KM_HOST_UNCOUNTED */
export const HOST_UNCOUNTED = 0xff;
export interface HostState {
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last ejection and return; 0n before the first. */
  ejectedNs: bigint;
  unejectedNs: bigint;
  ejected: boolean;
  countedPriority: number;
  consecutive5xx: number;
  consecutiveGateway: number;
  consecutiveLocalOrigin: number;
  backoff: number;
  numEjections: number;
  jitterMs: number;
  failures: bigint;
}
export const hostStateCodec: Codec<HostState> = {
  ...layout('km_host_state', [
    ['ejected_ns', 8],
    ['unejected_ns', 8],
    ['ejected', 4],
    ['counted_priority', 4],
    ['consecutive_5xx', 4],
    ['consecutive_gateway', 4],
    ['consecutive_local_origin', 4],
    ['backoff', 4],
    ['num_ejections', 4],
    ['jitter_ms', 4],
    ['failures', 8],
  ]),
  encode(v) {
    const b = Buffer.alloc(56);
    b.writeBigUInt64LE(v.ejectedNs, 0);
    b.writeBigUInt64LE(v.unejectedNs, 8);
    b.writeUInt32LE(v.ejected ? 1 : 0, 16);
    b.writeUInt32LE(v.countedPriority, 20);
    b.writeUInt32LE(v.consecutive5xx, 24);
    b.writeUInt32LE(v.consecutiveGateway, 28);
    b.writeUInt32LE(v.consecutiveLocalOrigin, 32);
    b.writeUInt32LE(v.backoff, 36);
    b.writeUInt32LE(v.numEjections, 40);
    b.writeUInt32LE(v.jitterMs, 44);
    b.writeBigUInt64LE(v.failures, 48);
    return b;
  },
  decode(b) {
    checkSize('km_host_state', b, 56);
    return {
      ejectedNs: b.readBigUInt64LE(0),
      unejectedNs: b.readBigUInt64LE(8),
      ejected: b.readUInt32LE(16) !== 0,
      countedPriority: b.readUInt32LE(20),
      consecutive5xx: b.readUInt32LE(24),
      consecutiveGateway: b.readUInt32LE(28),
      consecutiveLocalOrigin: b.readUInt32LE(32),
      backoff: b.readUInt32LE(36),
      numEjections: b.readUInt32LE(40),
      jitterMs: b.readUInt32LE(44),
      failures: b.readBigUInt64LE(48),
    };
  },
};

/** km_outlier.counters, in KM_OD_* order, named as Envoy's cluster.<name>.outlier_detection.* stats. */
export const OUTLIER_COUNTERS = [
  'ejections_total',
  'ejections_enforced_total',
  'ejections_overflow',
  'ejections_detected_consecutive_5xx',
  'ejections_enforced_consecutive_5xx',
  'ejections_detected_consecutive_gateway_failure',
  'ejections_enforced_consecutive_gateway_failure',
  'ejections_detected_consecutive_local_origin_failure',
  'ejections_enforced_consecutive_local_origin_failure',
] as const;
export type OutlierCounter = (typeof OUTLIER_COUNTERS)[number];
/** Their enum km_outlier_counter names. */
const OUTLIER_COUNTER_C_NAMES: Record<OutlierCounter, string> = {
  ejections_total: 'KM_OD_EJECTIONS_TOTAL',
  ejections_enforced_total: 'KM_OD_ENFORCED_TOTAL',
  ejections_overflow: 'KM_OD_OVERFLOW',
  ejections_detected_consecutive_5xx: 'KM_OD_DETECTED_5XX',
  ejections_enforced_consecutive_5xx: 'KM_OD_ENFORCED_5XX',
  ejections_detected_consecutive_gateway_failure: 'KM_OD_DETECTED_GATEWAY',
  ejections_enforced_consecutive_gateway_failure: 'KM_OD_ENFORCED_GATEWAY',
  ejections_detected_consecutive_local_origin_failure: 'KM_OD_DETECTED_LOCAL_ORIGIN',
  ejections_enforced_consecutive_local_origin_failure: 'KM_OD_ENFORCED_LOCAL_ORIGIN',
};
/** KM_OD_COUNTERS: slots of km_outlier.counters. */
const OD_COUNTER_SLOTS = 10;
export interface OutlierState {
  /** ejections_active */
  active: number;
  sweepArmed: boolean;
  /** Ejected hosts counted out of each priority's healthy hosts. */
  ejected: number[];
  counters: Record<OutlierCounter, bigint>;
}
export const outlierCodec: Codec<OutlierState> = {
  ...layout('km_outlier', [
    ['timer', 16],
    ['active', 4],
    ['sweep_armed', 4],
    ['ejected', 4 * MAX_PRIORITIES],
    ['counters', 8 * OD_COUNTER_SLOTS],
  ]),
  encode(v) {
    // user space writes only zeroes (a fresh id) or what it read back; the timer bytes stay 0
    const b = Buffer.alloc(this.size);
    b.writeUInt32LE(v.active, 16);
    b.writeUInt32LE(v.sweepArmed ? 1 : 0, 20);
    for (let p = 0; p < MAX_PRIORITIES; p++) b.writeUInt32LE(v.ejected[p] ?? 0, 24 + 4 * p);
    OUTLIER_COUNTERS.forEach((name, i) => b.writeBigUInt64LE(v.counters[name], 56 + 8 * i));
    return b;
  },
  decode(b) {
    checkSize('km_outlier', b, this.size);
    return {
      active: b.readUInt32LE(16),
      sweepArmed: b.readUInt32LE(20) !== 0,
      ejected: Array.from({ length: MAX_PRIORITIES }, (_, p) => b.readUInt32LE(24 + 4 * p)),
      counters: Object.fromEntries(
        OUTLIER_COUNTERS.map((name, i) => [name, b.readBigUInt64LE(56 + 8 * i)]),
      ) as Record<OutlierCounter, bigint>,
    };
  },
};

// ---- struct km_drain, km_drained (drain.bpf.o) ----
export interface DrainValue {
  address: string;
  port: number;
  closed: bigint;
}
export const drainCodec: Codec<DrainValue> = {
  ...layout('km_drain', [
    ['address', 16],
    ['port', 2],
    ['family', 1],
    ['pad', 1],
    ['pad2', 4],
    ['closed', 8],
  ]),
  encode(v) {
    const b = Buffer.alloc(32);
    encodeAddress(v.address).copy(b, 0);
    b.writeUInt16BE(v.port, 16);
    b.writeUInt8(familyOf(v.address), 18);
    b.writeBigUInt64LE(v.closed, 24);
    return b;
  },
  decode(b) {
    checkSize('km_drain', b, 32);
    return {
      address: decodeAddress(b.subarray(0, 16), b[18]!),
      port: b.readUInt16BE(16),
      closed: b.readBigUInt64LE(24),
    };
  },
};

export interface DrainedSocket {
  cookie: bigint;
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the kernel closed it. */
  ns: bigint;
  serviceId: number;
  backendId: number;
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
}
export const drainedCodec: Codec<DrainedSocket> = {
  ...layout('km_drained', [
    ['cookie', 8],
    ['ns', 8],
    ['service_id', 4],
    ['backend_id', 4],
    ['local_address', 16],
    ['remote_address', 16],
    ['local_port', 2],
    ['remote_port', 2],
    ['family', 1],
    ['pad', 3],
  ]),
  encode() {
    throw new Error('km_drained is written by the kernel only');
  },
  decode(b) {
    checkSize('km_drained', b, 64);
    const family = b[60] === AF.inet6 ? 6 : 4;
    return {
      cookie: b.readBigUInt64LE(0),
      ns: b.readBigUInt64LE(8),
      serviceId: b.readUInt32LE(16),
      backendId: b.readUInt32LE(20),
      localAddress: decodeAddress(b.subarray(24, 40), family),
      remoteAddress: decodeAddress(b.subarray(40, 56), family),
      localPort: b.readUInt16LE(56),
      remotePort: b.readUInt16LE(58),
    };
  },
};

/** The codecs of drain.bpf.o. */
export const DRAIN_CODECS: readonly Codec<unknown>[] = [
  drainCodec,
  drainedCodec,
  hostKeyCodec,
] as Codec<unknown>[];

/** Every codec of route.bpf.o. */
export const ROUTING_CODECS: readonly Codec<unknown>[] = [
  frontendKeyCodec,
  frontendCodec,
  serviceCodec,
  slotKeyCodec,
  slotCodec,
  backendCodec,
  serviceNameCodec,
  sockRouteCodec,
  hostKeyCodec,
  memberCodec,
  hostStateCodec,
  outlierCodec,
] as Codec<unknown>[];

const familyEnum = enumSpec('km_family', { KM_AF_INET: AF.inet, KM_AF_INET6: AF.inet6 });

/** What user space relies on in route.bpf.o: checked against its BTF when it is loaded. */
export const ROUTE_SPEC: ObjectSpec = {
  structs: ROUTING_CODECS,
  enums: [
    familyEnum,
    enumOf('km_sock_flag', 'KM_SOCK_', SOCK_FLAGS),
    enumSpec('km_route_limits', {
      KM_MAX_PRIORITIES: MAX_PRIORITIES,
      KM_LR_BIAS_ONE: LR_BIAS_ONE,
      KM_LR_MAX_WEIGHTED: LR_MAX_WEIGHTED,
      KM_SERVICE_NAME_LEN: SERVICE_NAME_BYTES,
    }),
    enumOfList('km_service_kind', 'KM_KIND_', KINDS),
    enumOfList('km_lb_policy', 'KM_LB_', LB_POLICIES),
    enumOfList('km_reason', 'KM_REASON_', REASONS, { KM_REASON_COUNT: REASON_SLOTS }),
    enumOf('km_service_flag', 'KM_SVC_', SVC_FLAGS),
    enumSpec('km_slot_priority', { KM_PANIC_TABLE: PANIC_TABLE }),
    enumSpec('km_host_counted', { KM_HOST_UNCOUNTED: HOST_UNCOUNTED }),
    enumSpec('km_outlier_counter', {
      ...Object.fromEntries(OUTLIER_COUNTERS.map((name, i) => [OUTLIER_COUNTER_C_NAMES[name], i])),
      KM_OD_COUNTERS: OD_COUNTER_SLOTS,
    }),
  ],
};

/** What user space relies on in drain.bpf.o. */
export const DRAIN_SPEC: ObjectSpec = { structs: DRAIN_CODECS, enums: [familyEnum] };
