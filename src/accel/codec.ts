// Codecs for the acceleration structs of bpf/kernmesh.h. Each lists its C members with offset and
// size; test/accel-codec.test.ts checks them against the compiled object's BTF.
import { encodeAddress } from '../net/address.js';
import { layout } from '../dataplane/codec.js';
import type { AccelAction, AccelRule } from './rules.js';

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

/** Sums a per-CPU u64 value (each CPU's copy is 8-byte aligned). */
export function sumPerCpuU64(value: Buffer): bigint {
  let total = 0n;
  for (let off = 0; off + 8 <= value.length; off += 8) total += value.readBigUInt64LE(off);
  return total;
}

export function u32Key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
