// Codecs for the structs of bpf/accel.h. Each lists its C members with offset and size, and
// ACCEL_SPEC lists them with the constants mirrored here: the object is checked against it at load.
import { decodeAddress, encodeAddress } from '../net/address.js';
import { enumOf, enumOfList, enumSpec, layout, type ObjectSpec } from '../../native/spec.js';
import { MAX_ACCEL_RULES, type AccelAction, type AccelRule } from './rules.js';

// Socket families as sockops and sk_msg report them (AF_INET, AF_INET6).
export const AF_INET = 2;
export const AF_INET6 = 10;

export const MATCH = { ip: 1, port: 2, uid: 4, gid: 8 } as const;
export const ACTION: Record<AccelAction, number> = { ACCEPT: 1, RETURN: 2 };

export const RULE_LAYOUT = layout('km_accel_rule', [
  ['matches', 1],
  ['action', 1],
  ['family', 1],
  ['prefix_len', 1],
  ['port', 2],
  ['pad', 2],
  ['uid', 4],
  ['gid', 4],
  ['addr', 16],
]);

export function encodeRule(rule: AccelRule): Buffer {
  const b = Buffer.alloc(RULE_LAYOUT.size);
  let matches = 0;
  if (rule.ip) {
    matches |= MATCH.ip;
    b.writeUInt8(rule.ip.family === 4 ? AF_INET : AF_INET6, 2);
    b.writeUInt8(rule.ip.prefixLength, 3);
    encodeAddress(rule.ip.address).copy(b, 16);
  }
  if (rule.port !== undefined) {
    matches |= MATCH.port;
    b.writeUInt16LE(rule.port, 4);
  }
  if (rule.uid !== undefined) {
    matches |= MATCH.uid;
    b.writeUInt32LE(rule.uid, 8);
  }
  if (rule.gid !== undefined) {
    matches |= MATCH.gid;
    b.writeUInt32LE(rule.gid, 12);
  }
  b.writeUInt8(matches, 0);
  b.writeUInt8(ACTION[rule.action], 1);
  return b;
}

export interface AccelConfig {
  enabled: boolean;
  /** The live half of km_accel_rules (0 or 1). */
  ruleBank: number;
  ruleCount: [number, number];
}

export const CONFIG_LAYOUT = layout('km_accel_config', [
  ['enabled', 4],
  ['rule_bank', 4],
  ['rule_count', 8],
]);

export function encodeConfig(c: AccelConfig): Buffer {
  const b = Buffer.alloc(CONFIG_LAYOUT.size);
  b.writeUInt32LE(c.enabled ? 1 : 0, 0);
  b.writeUInt32LE(c.ruleBank, 4);
  b.writeUInt32LE(c.ruleCount[0], 8);
  b.writeUInt32LE(c.ruleCount[1], 12);
  return b;
}

export function decodeConfig(b: Buffer): AccelConfig {
  return {
    enabled: b.readUInt32LE(0) !== 0,
    ruleBank: b.readUInt32LE(4) & 1,
    ruleCount: [b.readUInt32LE(8), b.readUInt32LE(12)],
  };
}

export const SOCK_KEY_LAYOUT = layout('km_sock_key', [
  ['family', 4],
  ['local_ip', 16],
  ['remote_ip', 16],
  ['local_port', 4],
  ['remote_port', 4],
]);

export const LISTENER_KEY_LAYOUT = layout('km_listener_key', [
  ['family', 4],
  ['ip', 16],
  ['port', 4],
]);

export const SOCK_OWNER_LAYOUT = layout('km_sock_owner', [
  ['uid', 4],
  ['gid', 4],
]);

export const SOCK_STATE = { ownerKnown: 1, accelerated: 2, refused: 4, fellBack: 8 } as const;

export const ACCEL_SOCK_LAYOUT = layout('km_accel_sock', [
  ['uid', 4],
  ['gid', 4],
  ['state', 4],
  ['pad', 4],
  ['bytes_out', 8],
]);

/** Indexes of km_accel_counters (KM_ACCEL_* in kernmesh.h). */
export const ACCEL_COUNTERS = [
  'socketsInserted',
  'messagesRedirected',
  'redirectFailures',
  'bytesRedirected',
  'socketsRefused',
  'insertFailures',
  'messagesFallback',
] as const;
export type AccelCounterName = (typeof ACCEL_COUNTERS)[number];
/** KM_ACCEL_COUNTER_MAX */
export const ACCEL_COUNTER_SLOTS = 8;

export const RULE_STATS_LAYOUT = layout('km_accel_rule_stats', [
  ['matched', 8],
  ['accelerated', 8],
  ['refused', 8],
]);

/** What one rule decided, summed over CPUs; each connection counted once, by its connecting socket. */
export interface RuleStats {
  matched: bigint;
  accelerated: bigint;
  refused: bigint;
}

/** Sums a per-CPU km_accel_rule_stats value (one 24-byte copy per possible CPU, 8-byte aligned). */
export function decodeRuleStats(perCpu: Buffer): RuleStats {
  const s: RuleStats = { matched: 0n, accelerated: 0n, refused: 0n };
  for (let off = 0; off + RULE_STATS_LAYOUT.size <= perCpu.length; off += RULE_STATS_LAYOUT.size) {
    s.matched += perCpu.readBigUInt64LE(off);
    s.accelerated += perCpu.readBigUInt64LE(off + 8);
    s.refused += perCpu.readBigUInt64LE(off + 16);
  }
  return s;
}

// ---- capture ----

export const CAPTURE_MATCH = { port: 1, ip: 2, service: 4, pod: 8 } as const;
/** KM_CAPTURE_MAX_SNAPLEN */
export const MAX_SNAPLEN = 65535;

export const CAPTURE_CONFIG_LAYOUT = layout('km_capture_config', [
  ['enabled', 4],
  ['snaplen', 4],
  ['match', 4],
  ['max_messages_per_sec', 4],
  ['max_bytes_per_sec', 8],
  ['family', 4],
  ['prefix_len', 4],
  ['addr', 16],
  ['port', 4],
  ['pad', 4],
]);

export interface CaptureConfig {
  enabled: boolean;
  snaplen: number;
  maxMessagesPerSecond: number;
  maxBytesPerSecond: number;
  port?: number;
  ip?: { family: 4 | 6; address: string; prefixLength: number };
  /** Filters resolved to km_capture_endpoints entries. */
  service?: boolean;
  pod?: boolean;
}

export function encodeCaptureConfig(c: CaptureConfig): Buffer {
  const b = Buffer.alloc(CAPTURE_CONFIG_LAYOUT.size);
  let match = 0;
  if (c.port !== undefined) {
    match |= CAPTURE_MATCH.port;
    b.writeUInt32LE(c.port, 48);
  }
  if (c.ip) {
    match |= CAPTURE_MATCH.ip;
    b.writeUInt32LE(c.ip.family === 4 ? AF_INET : AF_INET6, 24);
    b.writeUInt32LE(c.ip.prefixLength, 28);
    encodeAddress(c.ip.address).copy(b, 32);
  }
  if (c.service) match |= CAPTURE_MATCH.service;
  if (c.pod) match |= CAPTURE_MATCH.pod;
  b.writeUInt32LE(c.enabled ? 1 : 0, 0);
  b.writeUInt32LE(c.snaplen, 4);
  b.writeUInt32LE(match, 8);
  b.writeUInt32LE(c.maxMessagesPerSecond, 12);
  b.writeBigUInt64LE(BigInt(c.maxBytesPerSecond), 16);
  return b;
}

export const CAPTURE_ENDPOINT_LAYOUT = layout('km_capture_endpoint', [
  ['family', 4],
  ['ip', 16],
  ['port', 4],
]);

/** A km_capture_endpoints key: an address and port (0: any port), IPv4-mapped folded as the kernel does. */
export function encodeCaptureEndpoint(address: string, port: number): Buffer {
  const b = Buffer.alloc(CAPTURE_ENDPOINT_LAYOUT.size);
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const a = v4 ? v4[1]! : address;
  b.writeUInt32LE(a.includes(':') ? AF_INET6 : AF_INET, 0);
  encodeAddress(a).copy(b, 4);
  b.writeUInt32LE(port, 20);
  return b;
}

export const CAPTURE_WINDOW_LAYOUT = layout('km_capture_window', [
  ['start_ns', 8],
  ['messages', 8],
  ['bytes', 8],
]);

export const CAPTURE_RECORD_LAYOUT = layout('km_capture_record', [
  ['timestamp_ns', 8],
  ['offset', 8],
  ['sender', 44],
  ['size', 4],
  ['caplen', 4],
  ['pad', 4],
]);

/** One redirected message as the kernel copied it: the sender's view of the connection and its head. */
export interface CaptureRecord {
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC). */
  timestampNs: bigint;
  /** Bytes the sender had sent through the sockmap before this message: its TCP stream offset. */
  offset: bigint;
  family: 4 | 6;
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  /** The whole message; `data` holds its first caplen bytes. */
  size: number;
  data: Buffer;
}

function keyAddress(b: Buffer, v4: boolean): string {
  return decodeAddress(v4 ? b.subarray(0, 4) : b, v4 ? 4 : 6);
}

export function decodeCaptureRecord(b: Buffer): CaptureRecord {
  const head = CAPTURE_RECORD_LAYOUT.size;
  if (b.length < head) throw new Error(`decode struct km_capture_record: ${b.length} bytes, need ${head}`);
  const v4 = b.readUInt32LE(16) === AF_INET;
  const caplen = b.readUInt32LE(64);
  if (head + caplen > b.length)
    throw new Error(`km_capture_record: caplen ${caplen} past the record's ${b.length} bytes`);
  return {
    timestampNs: b.readBigUInt64LE(0),
    offset: b.readBigUInt64LE(8),
    family: v4 ? 4 : 6,
    source: keyAddress(b.subarray(20, 36), v4),
    destination: keyAddress(b.subarray(36, 52), v4),
    sourcePort: b.readUInt32LE(52),
    destinationPort: b.readUInt32LE(56),
    size: b.readUInt32LE(60),
    data: Buffer.from(b.subarray(head, head + caplen)),
  };
}

/** Indexes of km_capture_counters (KM_CAPTURE_* in kernmesh.h). */
export const CAPTURE_COUNTERS = [
  'messages',
  'bytes',
  'lostRate',
  'lostBytes',
  'lostRing',
  'lostPull',
] as const;
export type CaptureCounterName = (typeof CAPTURE_COUNTERS)[number];

/** KM_CAPTURE_COUNTER_MAX */
export const CAPTURE_COUNTER_SLOTS = 8;

/** What user space relies on in accel.bpf.o: checked against its BTF when it is loaded. */
export const ACCEL_SPEC: ObjectSpec = {
  structs: [
    RULE_LAYOUT,
    CONFIG_LAYOUT,
    SOCK_KEY_LAYOUT,
    LISTENER_KEY_LAYOUT,
    SOCK_OWNER_LAYOUT,
    ACCEL_SOCK_LAYOUT,
    RULE_STATS_LAYOUT,
    CAPTURE_CONFIG_LAYOUT,
    CAPTURE_ENDPOINT_LAYOUT,
    CAPTURE_WINDOW_LAYOUT,
    CAPTURE_RECORD_LAYOUT,
  ],
  enums: [
    enumSpec('km_accel_limits', { KM_ACCEL_MAX_RULES: MAX_ACCEL_RULES, KM_CAPTURE_MAX_SNAPLEN: MAX_SNAPLEN }),
    enumOf('km_accel_match', 'KM_ACCEL_MATCH_', MATCH),
    enumOf('km_accel_action', 'KM_ACCEL_', ACTION),
    enumOf('km_accel_sock_state', 'KM_ACCEL_SOCK_', SOCK_STATE),
    enumOfList('km_accel_counter', 'KM_ACCEL_', ACCEL_COUNTERS, {
      KM_ACCEL_COUNTER_MAX: ACCEL_COUNTER_SLOTS,
    }),
    enumOf('km_capture_match', 'KM_CAPTURE_MATCH_', CAPTURE_MATCH),
    enumOfList('km_capture_counter', 'KM_CAPTURE_', CAPTURE_COUNTERS, {
      KM_CAPTURE_COUNTER_MAX: CAPTURE_COUNTER_SLOTS,
    }),
  ],
};
