// Codecs for the structs of bpf/telemetry.h. TELEMETRY_SPEC lists them with the constants mirrored
// here: the object is checked against it when it is loaded.
import { enumOf, enumSpec, layout, type ObjectSpec } from '../../native/spec.js';

export const CONN_EVENT_LAYOUT = layout(
  'km_conn_event',
  [
    ['timestamp_ns', 8],
    ['cookie', 8],
    ['cgroup_id', 8],
    ['bytes_sent', 8],
    ['bytes_received', 8],
    ['duration_ns', 8],
    ['pid', 4],
    ['family', 4],
    ['local_ip', 16],
    ['remote_ip', 16],
    ['orig_ip', 16],
    ['local_port', 2],
    ['remote_port', 2],
    ['orig_port', 2],
    ['type', 1],
    ['direction', 1],
    ['service_id', 4],
    ['backend_id', 4],
    ['srtt_us', 4],
    ['total_retrans', 4],
    ['end_reason', 1],
    ['flags', 1],
    ['orig_family', 1],
    ['pad', 1],
    ['connect_us', 4],
  ],
  136,
);

export type Direction = 'outbound' | 'inbound';
export type EndReason = 'none' | 'closed' | 'aborted';

export interface ConnEvent {
  type: 'open' | 'close';
  timestampNs: bigint;
  /** Socket cookie: the same for a connection's open and close. */
  cookie: bigint;
  cgroupId: bigint;
  pid: number;
  direction: Direction;
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  /** The destination the application asked for, when connect() was rewritten. */
  originalAddress?: string;
  originalPort?: number;
  /** Kernel service id (0: not routed to a service). */
  serviceId: number;
  backendId: number;
  /** Payload bytes (close only); include bytes that went through the sockmap. */
  bytesSent: bigint;
  bytesReceived: bigint;
  durationNs: bigint;
  srttUs: number;
  retransmits: number;
  /** Outbound: connect() (SYN sent) to established, in microseconds; 0 when unknown. */
  connectUs: number;
  endReason: EndReason;
  accelerated: boolean;
}

const AF_INET = 2;
/** enum km_family: routing's address family values (orig_family). */
const KM_AF_INET = 4;
/** enum km_conn_event_type, km_direction, km_end_reason, km_conn_flag */
export const EVENT_TYPE = { open: 1, close: 2 } as const;
export const DIRECTION = { outbound: 1, inbound: 2 } as const;
export const END_REASON = { none: 0, closed: 1, aborted: 2 } as const;
export const CONN_FLAGS = { rewritten: 1, accelerated: 2 } as const;

function ipString(b: Buffer, v4: boolean): string {
  if (v4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

export function decodeConnEvent(b: Buffer): ConnEvent {
  if (b.length < CONN_EVENT_LAYOUT.size) {
    throw new Error(`decode struct km_conn_event: ${b.length} bytes, need ${CONN_EVENT_LAYOUT.size}`);
  }
  const v4 = b.readUInt32LE(52) === AF_INET;
  const flags = b.readUInt8(129);
  const rewritten = (flags & CONN_FLAGS.rewritten) !== 0;
  const end = b.readUInt8(128);
  const ev: ConnEvent = {
    type: b.readUInt8(110) === EVENT_TYPE.close ? 'close' : 'open',
    timestampNs: b.readBigUInt64LE(0),
    cookie: b.readBigUInt64LE(8),
    cgroupId: b.readBigUInt64LE(16),
    bytesSent: b.readBigUInt64LE(24),
    bytesReceived: b.readBigUInt64LE(32),
    durationNs: b.readBigUInt64LE(40),
    pid: b.readUInt32LE(48),
    localAddress: ipString(b.subarray(56, 72), v4),
    remoteAddress: ipString(b.subarray(72, 88), v4),
    localPort: b.readUInt16LE(104),
    remotePort: b.readUInt16LE(106),
    direction: b.readUInt8(111) === DIRECTION.inbound ? 'inbound' : 'outbound',
    serviceId: b.readUInt32LE(112),
    backendId: b.readUInt32LE(116),
    srttUs: b.readUInt32LE(120),
    retransmits: b.readUInt32LE(124),
    connectUs: b.readUInt32LE(132),
    endReason: end === END_REASON.closed ? 'closed' : end === END_REASON.aborted ? 'aborted' : 'none',
    accelerated: (flags & CONN_FLAGS.accelerated) !== 0,
  };
  if (rewritten) {
    ev.originalAddress = ipString(b.subarray(88, 104), b.readUInt8(130) === KM_AF_INET);
    ev.originalPort = b.readUInt16LE(108);
  }
  return ev;
}

export const TELE_SOCK_LAYOUT = layout('km_tele_sock', [
  ['open_ns', 8],
  ['cgroup_id', 8],
  ['base_bytes_acked', 8],
  ['base_bytes_received', 8],
  ['pid', 4],
  ['flags', 4],
  ['direction', 4],
  ['connect_us', 4],
]);

export const TELEMETRY_CONFIG_LAYOUT = layout('km_telemetry_config', [
  ['enabled', 4],
  ['pad', 4],
]);

export function encodeTelemetryConfig(enabled: boolean): Buffer {
  const b = Buffer.alloc(TELEMETRY_CONFIG_LAYOUT.size);
  b.writeUInt32LE(enabled ? 1 : 0, 0);
  return b;
}

export const SERVICE_TRAFFIC_LAYOUT = layout('km_service_traffic', [
  ['rx_packets', 8],
  ['rx_bytes', 8],
  ['tx_packets', 8],
  ['tx_bytes', 8],
]);

export interface ServiceTraffic {
  rxPackets: bigint;
  rxBytes: bigint;
  txPackets: bigint;
  txBytes: bigint;
}

/** Sums a per-CPU km_service_traffic value (one 32-byte copy per possible CPU). */
export function decodeServiceTraffic(perCpu: Buffer): ServiceTraffic {
  const t: ServiceTraffic = { rxPackets: 0n, rxBytes: 0n, txPackets: 0n, txBytes: 0n };
  for (let off = 0; off + 32 <= perCpu.length; off += 32) {
    t.rxPackets += perCpu.readBigUInt64LE(off);
    t.rxBytes += perCpu.readBigUInt64LE(off + 8);
    t.txPackets += perCpu.readBigUInt64LE(off + 16);
    t.txBytes += perCpu.readBigUInt64LE(off + 24);
  }
  return t;
}

/** Indexes of km_telemetry_counters (enum km_tele_counter). */
export const TELEMETRY_COUNTERS = { eventsLost: 0, eventsSent: 1 } as const;

/** What user space relies on in telemetry.bpf.o: checked against its BTF when it is loaded. */
export const TELEMETRY_SPEC: ObjectSpec = {
  structs: [CONN_EVENT_LAYOUT, TELE_SOCK_LAYOUT, TELEMETRY_CONFIG_LAYOUT, SERVICE_TRAFFIC_LAYOUT],
  enums: [
    enumSpec('km_family', { KM_AF_INET }),
    enumOf('km_conn_event_type', 'KM_CONN_', EVENT_TYPE),
    enumOf('km_direction', 'KM_DIR_', DIRECTION),
    enumOf('km_end_reason', 'KM_END_', END_REASON),
    enumOf('km_conn_flag', 'KM_CONN_F_', CONN_FLAGS),
    enumOf('km_tele_counter', 'KM_TELE_', TELEMETRY_COUNTERS),
  ],
};
