// One codec per struct of the routing section of bpf/kernmesh.h. Each lists its C members with
// offset and size, which test/codec.test.ts checks against the compiled object's BTF.
import { decodeAddress, encodeAddress, familyOf, type Family } from '../net/address.js';
import type { LbPolicy, Protocol, ServiceKind } from './model.js';

export interface FieldLayout {
  /** Member name in C. */
  name: string;
  offset: number;
  /** Bytes (the whole array for array members). */
  size: number;
}

export interface StructLayout {
  /** `struct <name>` in bpf/kernmesh.h. */
  readonly struct: string;
  readonly size: number;
  readonly fields: readonly FieldLayout[];
}

export interface Codec<T> extends StructLayout {
  encode(value: T): Buffer;
  decode(bytes: Buffer): T;
}

/** Members one after another: the structs of kernmesh.h spell out their padding, so there are no gaps. */
function fieldLayout(fields: [string, number][]): FieldLayout[] {
  let offset = 0;
  return fields.map(([name, size]) => {
    const f = { name, offset, size };
    offset += size;
    return f;
  });
}

/** A struct's layout from its members' sizes, in C order (for the acceleration and telemetry structs). */
export function layout(struct: string, fields: [string, number][]): StructLayout {
  const out = fieldLayout(fields);
  return { struct, size: out.reduce((n, f) => n + f.size, 0), fields: out };
}

function checkSize(struct: string, bytes: Buffer, size: number): void {
  if (bytes.length < size) throw new Error(`decode struct ${struct}: ${bytes.length} bytes, need ${size}`);
}

// Constants mirrored from kernmesh.h.
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
  struct: 'km_frontend_key',
  size: 20,
  fields: fieldLayout([
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
  struct: 'km_frontend',
  size: 4,
  fields: fieldLayout([['service_id', 4]]),
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
export interface ServiceValue {
  kind: ServiceKind;
  lbPolicy: LbPolicy;
  /** Which half of the double-buffered slots and Maglev tables is live (0 or 1). */
  generation: number;
  /** 0: no cap. */
  maxConnections: number;
  /** Selectable slots per priority group, length MAX_PRIORITIES. */
  slotCount: number[];
  maglevSize: number;
  waypoint?: { address: string; port: number };
  /** least_request: bit p set when priority group p has unequal weights (Envoy's weighted mode). */
  lrWeighted: number;
  /** least_request: Envoy's active_request_bias, carried as 16.16 fixed point (0 or 1 in the kernel). */
  activeRequestBias: number;
}
/** KM_LR_BIAS_ONE: the fixed-point unit of km_service.lr_bias. */
export const LR_BIAS_ONE = 65536;
/** KM_LR_MAX_WEIGHTED: endpoints a least_request group with unequal weights may hold. */
export const LR_MAX_WEIGHTED = 1024;
export const serviceCodec: Codec<ServiceValue> = {
  struct: 'km_service',
  size: 52,
  fields: fieldLayout([
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
    ['lr_pad', 3],
    ['lr_bias', 4],
  ]),
  encode(v) {
    const b = Buffer.alloc(52);
    b.writeUInt8(KINDS.indexOf(v.kind), 0);
    b.writeUInt8(LB_POLICIES.indexOf(v.lbPolicy), 1);
    b.writeUInt8(v.generation, 2);
    b.writeUInt32LE(v.maxConnections, 4);
    for (let p = 0; p < MAX_PRIORITIES; p++) b.writeUInt16LE(v.slotCount[p] ?? 0, 8 + 2 * p);
    b.writeUInt16LE(v.maglevSize, 24);
    if (v.waypoint) {
      b.writeUInt8(familyOf(v.waypoint.address), 3);
      b.writeUInt16BE(v.waypoint.port, 26);
      encodeAddress(v.waypoint.address).copy(b, 28);
    }
    b.writeUInt8(v.lrWeighted, 44);
    b.writeUInt32LE(Math.round(v.activeRequestBias * LR_BIAS_ONE), 48);
    return b;
  },
  decode(b) {
    checkSize('km_service', b, 52);
    const kind = KINDS[b.readUInt8(0)];
    const lbPolicy = LB_POLICIES[b.readUInt8(1)];
    if (!kind || !lbPolicy)
      throw new Error(`decode struct km_service: kind ${b[0]} / lb_policy ${b[1]} unknown`);
    const slotCount: number[] = [];
    for (let p = 0; p < MAX_PRIORITIES; p++) slotCount.push(b.readUInt16LE(8 + 2 * p));
    const v: ServiceValue = {
      kind,
      lbPolicy,
      generation: b.readUInt8(2),
      maxConnections: b.readUInt32LE(4),
      slotCount,
      maglevSize: b.readUInt16LE(24),
      lrWeighted: b.readUInt8(44),
      activeRequestBias: b.readUInt32LE(48) / LR_BIAS_ONE,
    };
    const wf = b.readUInt8(3);
    if (wf) v.waypoint = { address: decodeAddress(b.subarray(28, 44), wf), port: b.readUInt16BE(26) };
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
  struct: 'km_slot_key',
  size: 8,
  fields: fieldLayout([
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
  struct: 'km_slot',
  size: 8,
  fields: fieldLayout([
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
  struct: 'km_backend',
  size: 20,
  fields: fieldLayout([
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
  struct: 'km_service_name',
  size: SERVICE_NAME_BYTES,
  fields: fieldLayout([['name', SERVICE_NAME_BYTES]]),
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
  struct: 'km_sock_route',
  size: 32,
  fields: fieldLayout([
    ['orig_address', 16],
    ['orig_port', 2],
    ['family', 1],
    ['flags', 1],
    ['service_id', 4],
    ['backend_id', 4],
    ['reserved', 4],
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

/** Every routing codec, for the BTF layout test. */
export const ROUTING_CODECS: readonly Codec<unknown>[] = [
  frontendKeyCodec,
  frontendCodec,
  serviceCodec,
  slotKeyCodec,
  slotCodec,
  backendCodec,
  serviceNameCodec,
  sockRouteCodec,
] as Codec<unknown>[];

/** u32 keys and values of the id-indexed maps (host byte order, little-endian on our targets). */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}
