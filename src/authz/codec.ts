// Codecs for the structs of bpf/authz.h. Each lists its C members with offset and size, and
// AUTHZ_SPEC lists them with the constants the compiler mirrors: the object is checked against it
// when it is loaded.
import { decodeAddress, encodeAddress, familyOf, type Family } from '../net/address.js';
import { enumOf, enumSpec, layout, type ObjectSpec } from '../../native/spec.js';
import type { Cidr } from './policy.js';
import { ACTION_CODE, DEST_FLAGS, MAX_TERMS, REASONS, TERM_FLAGS, type Dest, type Term } from './compile.js';

export const ADDR_LAYOUT = layout('km_authz_addr', [
  ['family', 4],
  ['ip', 16],
]);
export const DEST_LAYOUT = layout('km_authz_dest', [
  ['workload', 4],
  ['first', 4],
  ['count', 4],
  ['flags', 4],
  ['list', 4],
]);
export const INDEX_KEY_LAYOUT = layout('km_authz_index_key', [
  ['list', 4],
  ['kind', 4],
  ['value', 4],
]);
export const INDEX_LAYOUT = layout('km_authz_index', [
  ['deny', 4],
  ['reason', 1],
  ['allow', 1],
  ['pad', 2],
]);
export const INDEX_KIND = { identity: 0, port: 1 } as const;
export const TERM_LAYOUT = layout('km_authz_term', [
  ['policy', 4],
  ['set', 4],
  ['flags', 2],
  ['action', 1],
  ['reason', 1],
]);
export const ID_KEY_LAYOUT = layout('km_authz_id_key', [
  ['set', 4],
  ['identity', 4],
]);
export const PORT_KEY_LAYOUT = layout('km_authz_port_key', [
  ['set', 4],
  ['port', 2],
  ['negated', 1],
  ['pad', 1],
]);
export const CIDR_KEY_LAYOUT = layout('km_authz_cidr_key', [
  ['prefixlen', 4],
  ['set', 4],
  ['negated', 1],
  ['family', 1],
  ['ip', 16],
  ['pad', 2],
]);
export const COUNTER_KEY_LAYOUT = layout('km_authz_counter_key', [
  ['id', 4],
  ['reason', 4],
]);
export const EVENT_LAYOUT = layout('km_authz_event', [
  ['timestamp_ns', 8],
  ['family', 4],
  ['src_ip', 16],
  ['dst_ip', 16],
  ['src_port', 2],
  ['dst_port', 2],
  ['id', 4],
  ['workload', 4],
  ['identity', 4],
  ['reason', 1],
  ['closed', 1],
  ['pad', 2],
]);
export const CONFIG_LAYOUT = layout('km_authz_config', [['iter_run', 8]]);
export const LISTENER_KEY_LAYOUT = layout('km_authz_listener_key', [
  ['family', 4],
  ['ip', 16],
  ['port', 4],
]);

/** Counter keys of open connections closed after a policy change carry this bit beside the reason. */
export const CLOSED_BIT = 0x100;
/** The LPM key's fixed part (set, negated, family) in bits, before the CIDR's own length. */
const CIDR_FIXED_BITS = 48;

export function encodeAddr(address: string): Buffer {
  const b = Buffer.alloc(ADDR_LAYOUT.size);
  b.writeUInt32LE(familyOf(address), 0);
  encodeAddress(address).copy(b, 4);
  return b;
}

export function decodeAddr(b: Buffer): string {
  return decodeAddress(b.subarray(4, 20), b.readUInt32LE(0));
}

export interface DestValue {
  workload: number;
  first: number;
  count: number;
  flags: number;
  list: number;
}

export function encodeDest(d: DestValue): Buffer {
  const b = Buffer.alloc(DEST_LAYOUT.size);
  b.writeUInt32LE(d.workload, 0);
  b.writeUInt32LE(d.first, 4);
  b.writeUInt32LE(d.count, 8);
  b.writeUInt32LE(d.flags, 12);
  b.writeUInt32LE(d.list, 16);
  return b;
}

export function decodeDest(b: Buffer): DestValue {
  return {
    workload: b.readUInt32LE(0),
    first: b.readUInt32LE(4),
    count: b.readUInt32LE(8),
    flags: b.readUInt32LE(12),
    list: b.readUInt32LE(16),
  };
}

export function indexKey(list: number, kind: number, value: number): Buffer {
  const b = Buffer.alloc(INDEX_KEY_LAYOUT.size);
  b.writeUInt32LE(list, 0);
  b.writeUInt32LE(kind, 4);
  b.writeUInt32LE(value, 8);
  return b;
}

export function encodeIndex(e: { deny: number; reason: number; allow: boolean }): Buffer {
  const b = Buffer.alloc(INDEX_LAYOUT.size);
  b.writeUInt32LE(e.deny, 0);
  b.writeUInt8(e.reason, 4);
  b.writeUInt8(e.allow ? 1 : 0, 5);
  return b;
}

export function encodeTerm(t: Term): Buffer {
  const b = Buffer.alloc(TERM_LAYOUT.size);
  b.writeUInt32LE(t.id, 0);
  b.writeUInt32LE(t.set, 4);
  b.writeUInt16LE(t.flags, 8);
  b.writeUInt8(t.action, 10);
  b.writeUInt8(t.reason, 11);
  return b;
}

export function decodeTerm(b: Buffer): Term {
  return {
    id: b.readUInt32LE(0),
    set: b.readUInt32LE(4),
    flags: b.readUInt16LE(8),
    action: b[10]!,
    reason: b[11]!,
  };
}

/** A destination's term list as bytes: equal lists are equal strings (the writer's change test). */
export function termListSignature(d: Pick<Dest, 'terms'>): string {
  return Buffer.concat(d.terms.map(encodeTerm)).toString('hex');
}

export function idKey(set: number, identity: number): Buffer {
  const b = Buffer.alloc(ID_KEY_LAYOUT.size);
  b.writeUInt32LE(set, 0);
  b.writeUInt32LE(identity, 4);
  return b;
}

export function portKey(set: number, port: number, negated: boolean): Buffer {
  const b = Buffer.alloc(PORT_KEY_LAYOUT.size);
  b.writeUInt32LE(set, 0);
  b.writeUInt16LE(port, 4);
  b.writeUInt8(negated ? 1 : 0, 6);
  return b;
}

export function cidrKey(set: number, c: Cidr, negated: boolean): Buffer {
  const b = Buffer.alloc(CIDR_KEY_LAYOUT.size);
  b.writeUInt32LE(CIDR_FIXED_BITS + c.length, 0);
  b.writeUInt32LE(set, 4);
  b.writeUInt8(negated ? 1 : 0, 8);
  b.writeUInt8(c.family, 9);
  c.bytes.copy(b, 10, 0, 16);
  return b;
}

export function decodeCidrKey(b: Buffer): { set: number; negated: boolean; cidr: Cidr } {
  const family = b[9] === 6 ? 6 : 4;
  return {
    set: b.readUInt32LE(4),
    negated: b[8] === 1,
    cidr: { family, bytes: Buffer.from(b.subarray(10, 26)), length: b.readUInt32LE(0) - CIDR_FIXED_BITS },
  };
}

export function decodeCounterKey(b: Buffer): { id: number; reason: number; closed: boolean } {
  const r = b.readUInt32LE(4);
  return { id: b.readUInt32LE(0), reason: r & ~CLOSED_BIT, closed: (r & CLOSED_BIT) !== 0 };
}

export interface AuthzEvent {
  /** CLOCK_MONOTONIC, ns. */
  timestampNs: bigint;
  family: Family;
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  id: number;
  workload: number;
  identity: number;
  reason: number;
  closed: boolean;
}

export function decodeEvent(b: Buffer): AuthzEvent {
  if (b.length < EVENT_LAYOUT.size) throw new Error(`decode struct km_authz_event: ${b.length} bytes`);
  const family = b.readUInt32LE(8) === 6 ? 6 : 4;
  return {
    timestampNs: b.readBigUInt64LE(0),
    family,
    source: decodeAddress(b.subarray(12, 28), family),
    destination: decodeAddress(b.subarray(28, 44), family),
    sourcePort: b.readUInt16LE(44),
    destinationPort: b.readUInt16LE(46),
    id: b.readUInt32LE(48),
    workload: b.readUInt32LE(52),
    identity: b.readUInt32LE(56),
    reason: b[60]!,
    closed: b[61] === 1,
  };
}

export function encodeConfig(iterRun: bigint): Buffer {
  const b = Buffer.alloc(CONFIG_LAYOUT.size);
  b.writeBigUInt64LE(iterRun, 0);
  return b;
}

/** What user space relies on in authz.bpf.o: checked against its BTF when it is loaded. */
export const AUTHZ_SPEC: ObjectSpec = {
  structs: [
    ADDR_LAYOUT,
    DEST_LAYOUT,
    TERM_LAYOUT,
    ID_KEY_LAYOUT,
    PORT_KEY_LAYOUT,
    CIDR_KEY_LAYOUT,
    COUNTER_KEY_LAYOUT,
    EVENT_LAYOUT,
    CONFIG_LAYOUT,
    LISTENER_KEY_LAYOUT,
    INDEX_KEY_LAYOUT,
    INDEX_LAYOUT,
  ],
  enums: [
    enumSpec('km_family', { KM_AF_INET: 4, KM_AF_INET6: 6 }),
    enumSpec('km_authz_limits', { KM_AUTHZ_MAX_TERMS: MAX_TERMS }),
    enumOf('km_authz_action', 'KM_AUTHZ_', ACTION_CODE),
    enumOf('km_authz_term_flag', 'KM_AUTHZ_T_', TERM_FLAGS),
    enumOf('km_authz_dest_flag', 'KM_AUTHZ_D_', DEST_FLAGS),
    enumSpec('km_authz_reason', {
      KM_AUTHZ_R_DENY_POLICY: REASONS.deny_policy,
      KM_AUTHZ_R_NO_ALLOW_MATCH: REASONS.no_allow_match,
      KM_AUTHZ_R_UNKNOWN_DEST: REASONS.unknown_destination,
      KM_AUTHZ_R_POLICY_PENDING: REASONS.policy_pending,
      KM_AUTHZ_R_POLICY_REFUSED: REASONS.policy_refused,
      KM_AUTHZ_R_OVER_BUDGET: REASONS.over_budget,
      KM_AUTHZ_R_DRY_RUN_DENY: REASONS.dry_run_deny,
      KM_AUTHZ_R_DRY_RUN_NO_ALLOW: REASONS.dry_run_no_allow_match,
      KM_AUTHZ_R_UNEXPRESSIBLE: REASONS.unexpressible,
    }),
    enumSpec('km_authz_counter_bit', { KM_AUTHZ_CLOSED_BIT: CLOSED_BIT }),
    enumOf('km_authz_index_kind', 'KM_AUTHZ_IDX_', INDEX_KIND),
  ],
};
