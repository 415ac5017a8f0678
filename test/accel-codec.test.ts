// The acceleration and telemetry codecs and constants against the compiled objects' BTF: a field
// moved or resized, or a constant changed, in bpf/accel.h or bpf/telemetry.h without the codec
// following fails here (and the agent refuses the object at load), not in the kernel.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

import { fileBtf } from '../native/index.js';
import { specDifferences, type ObjectSpec, type StructLayout } from '../native/spec.js';
import {
  ACCEL_SOCK_LAYOUT,
  ACCEL_SPEC,
  CAPTURE_CONFIG_LAYOUT,
  CAPTURE_RECORD_LAYOUT,
  decodeCaptureRecord,
  encodeCaptureConfig,
  encodeCaptureEndpoint,
  encodeConfig,
  decodeConfig,
  encodeRule,
  RULE_LAYOUT,
  SOCK_KEY_LAYOUT,
} from '../src/accel/codec.js';
import { parseAccelRules } from '../src/accel/rules.js';
import { CONN_EVENT_LAYOUT, decodeConnEvent, TELEMETRY_SPEC } from '../src/telemetry/codec.js';
import { btfEnums, btfStructs } from './support/btf.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

// telemetry.bpf.o also reads acceleration's per-socket state and keys (the same pinned maps)
const objects: [string, ObjectSpec, StructLayout[]][] = [
  ['bpf/accel.bpf.o', ACCEL_SPEC, []],
  ['bpf/telemetry.bpf.o', TELEMETRY_SPEC, [ACCEL_SOCK_LAYOUT, SOCK_KEY_LAYOUT]],
];

for (const [object, spec, shared] of objects) {
  const btf = btfStructs(object);
  for (const l of [...spec.structs, ...shared]) {
    void test(`struct ${l.struct} in ${object} matches its codec`, () => {
      const s = btf.get(l.struct);
      assert.ok(s, `struct ${l.struct} not in the BTF of ${object}`);
      assert.equal(s.size, l.size, 'sizeof');
      assert.deepEqual(s.members, l.fields);
    });
  }
  void test(`constants: every enum value the agent mirrors is ${object}’s, and its own check at load agrees`, () => {
    const enums = btfEnums(object);
    for (const e of spec.enums) {
      const live = enums.get(e.enum);
      assert.ok(live, `enum ${e.enum} not in the BTF of ${object}`);
      for (const [name, value] of Object.entries(e.values)) assert.equal(live[name], value, name);
    }
    assert.deepEqual(specDifferences(spec, fileBtf(object)), []);
  });
}

void test('a rule encodes its matches, action, address in network order and port in host order', () => {
  const [r] = parseAccelRules('chain --ip 10.1.0.0/16 --port 8080 --uid-owner 1337 --gid-owner 7 -j RETURN');
  const b = encodeRule(r!);
  assert.equal(b.length, RULE_LAYOUT.size);
  assert.equal(b[0], 0b1111, 'all four matches');
  assert.equal(b[1], 2, 'RETURN');
  assert.equal(b[2], 2, 'AF_INET');
  assert.equal(b[3], 16);
  assert.equal(b.readUInt16LE(4), 8080);
  assert.equal(b.readUInt32LE(8), 1337);
  assert.equal(b.readUInt32LE(12), 7);
  assert.deepEqual([...b.subarray(16, 20)], [10, 1, 0, 0]);
  const [v6] = parseAccelRules('chain --ip fd00::1/64 -j ACCEPT');
  const b6 = encodeRule(v6!);
  assert.deepEqual([b6[0], b6[1], b6[2], b6[3]], [1, 1, 10, 64]);
  assert.equal(b6.subarray(16).toString('hex'), 'fd000000000000000000000000000000');
});

void test('config round-trips', () => {
  const c = { enabled: true, ruleBank: 1, ruleCount: [3, 64] as [number, number] };
  assert.deepEqual(decodeConfig(encodeConfig(c)), c);
});

void test('a connection event decodes addresses, ports, original destination and flags', () => {
  const b = Buffer.alloc(CONN_EVENT_LAYOUT.size);
  b.writeBigUInt64LE(5n, 8);
  b.writeBigUInt64LE(1234n, 24);
  b.writeBigUInt64LE(99n, 32);
  b.writeUInt32LE(42, 48);
  b.writeUInt32LE(10, 52); // AF_INET6
  Buffer.from('00000000000000000000000000000001', 'hex').copy(b, 56);
  Buffer.from('fd000000000000000000000000000002', 'hex').copy(b, 72);
  Buffer.from([127, 100, 0, 1]).copy(b, 88);
  b.writeUInt16LE(40000, 104);
  b.writeUInt16LE(8080, 106);
  b.writeUInt16LE(80, 108);
  b.writeUInt8(2, 110); // close
  b.writeUInt8(1, 111); // outbound
  b.writeUInt32LE(3, 112);
  b.writeUInt8(2, 128); // aborted
  b.writeUInt8(3, 129); // rewritten + accelerated
  b.writeUInt8(4, 130); // original is IPv4 (v4-mapped connect)
  const e = decodeConnEvent(b);
  assert.equal(e.type, 'close');
  assert.equal(e.localAddress, '::1');
  assert.equal(e.remoteAddress, 'fd00::2');
  assert.equal(e.originalAddress, '127.100.0.1');
  assert.equal(e.originalPort, 80);
  assert.equal(e.localPort, 40000);
  assert.equal(e.remotePort, 8080);
  assert.equal(e.bytesSent, 1234n);
  assert.equal(e.bytesReceived, 99n);
  assert.equal(e.pid, 42);
  assert.equal(e.serviceId, 3);
  assert.equal(e.endReason, 'aborted');
  assert.equal(e.accelerated, true);
  assert.equal(e.direction, 'outbound');
});

void test('a capture config encodes its filters; endpoints fold IPv4-mapped addresses as the kernel does', () => {
  const b = encodeCaptureConfig({
    enabled: true,
    snaplen: 1500,
    maxMessagesPerSecond: 1000,
    maxBytesPerSecond: 1 << 20,
    port: 9080,
    ip: { family: 6, address: 'fd00::', prefixLength: 8 },
    service: true,
  });
  assert.equal(b.length, CAPTURE_CONFIG_LAYOUT.size);
  assert.deepEqual(
    [0, 4, 8, 12, 24, 28, 48].map((o) => b.readUInt32LE(o)),
    [1, 1500, 1 | 2 | 4, 1000, 10, 8, 9080],
  );
  assert.equal(b.readBigUInt64LE(16), 1048576n);
  assert.equal(b.subarray(32, 48).toString('hex'), 'fd000000000000000000000000000000');
  assert.deepEqual(encodeCaptureEndpoint('::ffff:127.0.0.5', 80), encodeCaptureEndpoint('127.0.0.5', 80));
  const e = encodeCaptureEndpoint('::1', 0);
  assert.equal(e.readUInt32LE(0), 10);
  assert.equal(e.readUInt32LE(20), 0);
});

void test('a capture record decodes the sender view, the offset and exactly caplen bytes', () => {
  const b = Buffer.alloc(CAPTURE_RECORD_LAYOUT.size + 8);
  b.writeBigUInt64LE(7n, 0);
  b.writeBigUInt64LE(1n << 33n, 8);
  b.writeUInt32LE(2, 16);
  Buffer.from([127, 0, 0, 1]).copy(b, 20);
  Buffer.from([127, 0, 0, 21]).copy(b, 36);
  b.writeUInt32LE(40000, 52);
  b.writeUInt32LE(9080, 56);
  b.writeUInt32LE(100, 60);
  b.writeUInt32LE(5, 64);
  Buffer.from('hello...').copy(b, CAPTURE_RECORD_LAYOUT.size);
  const r = decodeCaptureRecord(b);
  assert.deepEqual(
    [r.family, r.source, r.sourcePort, r.destination, r.destinationPort, r.size, r.offset],
    [4, '127.0.0.1', 40000, '127.0.0.21', 9080, 100, 1n << 33n],
  );
  assert.equal(r.data.toString(), 'hello');
  b.writeUInt32LE(9, 64);
  assert.throws(() => decodeCaptureRecord(b), /caplen 9/);
});
