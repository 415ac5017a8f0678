// The acceleration and telemetry codecs against the compiled objects' BTF: a field moved or resized
// in bpf/kernmesh.h without the codec following fails here, not in the kernel.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

import {
  ACCEL_SOCK_LAYOUT,
  CONFIG_LAYOUT,
  encodeConfig,
  decodeConfig,
  encodeRule,
  LISTENER_KEY_LAYOUT,
  RULE_LAYOUT,
  SOCK_KEY_LAYOUT,
  SOCK_OWNER_LAYOUT,
} from '../src/accel/codec.js';
import type { StructLayout } from '../src/dataplane/codec.js';
import { parseAccelRules } from '../src/accel/rules.js';
import {
  CONN_EVENT_LAYOUT,
  decodeConnEvent,
  SERVICE_TRAFFIC_LAYOUT,
  TELE_SOCK_LAYOUT,
  TELEMETRY_CONFIG_LAYOUT,
} from '../src/telemetry/codec.js';
import { btfStructs } from './support/btf.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

const objects: [string, StructLayout[]][] = [
  [
    'bpf/accel.bpf.o',
    [RULE_LAYOUT, CONFIG_LAYOUT, SOCK_KEY_LAYOUT, LISTENER_KEY_LAYOUT, SOCK_OWNER_LAYOUT, ACCEL_SOCK_LAYOUT],
  ],
  [
    'bpf/telemetry.bpf.o',
    [
      CONN_EVENT_LAYOUT,
      TELE_SOCK_LAYOUT,
      TELEMETRY_CONFIG_LAYOUT,
      SERVICE_TRAFFIC_LAYOUT,
      ACCEL_SOCK_LAYOUT,
      SOCK_KEY_LAYOUT,
    ],
  ],
];

for (const [object, layouts] of objects) {
  const btf = btfStructs(object);
  for (const l of layouts) {
    void test(`struct ${l.struct} in ${object} matches its codec`, () => {
      const s = btf.get(l.struct);
      assert.ok(s, `struct ${l.struct} not in the BTF of ${object}`);
      assert.equal(s.size, l.size, 'sizeof');
      assert.deepEqual(s.members, l.fields);
    });
  }
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
