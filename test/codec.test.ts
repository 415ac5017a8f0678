import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { fileBtf } from '../native/index.js';
import { specDifferences } from '../native/spec.js';
import { Dataplane } from '../src/dataplane/dataplane.js';

import { canonicalAddress, decodeAddress, encodeAddress } from '../src/net/address.js';
import {
  backendCodec,
  frontendKeyCodec,
  ROUTING_CODECS,
  serviceCodec,
  serviceNameCodec,
  slotKeyCodec,
  sockRouteCodec,
  hostKeyCodec,
  memberCodec,
  hostStateCodec,
  ROUTE_SPEC,
} from '../src/dataplane/codec.js';
import { btfEnums, btfStructs } from './support/btf.js';
import { kernelTest } from './support/kernel.js';

const ROUTE_OBJECT = fileURLToPath(new URL('../bpf/route.bpf.o', import.meta.url));

function buildObjectIfMissing(): void {
  // the object is a build product; tests build it when a fresh checkout has not yet
  if (!existsSync(ROUTE_OBJECT))
    execFileSync('make', ['-C', fileURLToPath(new URL('../bpf', import.meta.url))]);
}

void describe('codecs match the compiled object (BTF)', () => {
  buildObjectIfMissing();
  const structs = btfStructs(ROUTE_OBJECT);
  for (const codec of ROUTING_CODECS) {
    void test(`struct ${codec.struct}: size and every member offset`, () => {
      const s = structs.get(codec.struct);
      assert.ok(s, `struct ${codec.struct} not in BTF of ${ROUTE_OBJECT}`);
      assert.equal(codec.size, s.size, `sizeof(struct ${codec.struct})`);
      assert.deepEqual(
        codec.fields.map((f) => ({ ...f })),
        s.members.map((m) => ({ name: m.name, offset: m.offset, size: m.size })),
      );
    });
  }
  void test('constants: every enum value the agent mirrors is the object’s', () => {
    const enums = btfEnums(ROUTE_OBJECT);
    for (const e of ROUTE_SPEC.enums) {
      const live = enums.get(e.enum);
      assert.ok(live, `enum ${e.enum} not in the BTF of ${ROUTE_OBJECT}`);
      for (const [name, value] of Object.entries(e.values)) assert.equal(live[name], value, name);
    }
  });
  void test('the agent’s own check at load (native’s BTF reader) finds no difference', () => {
    assert.deepEqual(specDifferences(ROUTE_SPEC, fileBtf(ROUTE_OBJECT)), []);
  });
});

kernelTest(
  'a routing object built from other sources is refused before it reaches the kernel, each difference named',
  (_t, env) => {
    const drift = fileURLToPath(new URL('./bpf/spec_drift.bpf.o', import.meta.url));
    assert.throws(
      () => Dataplane.open({ pinDir: env.pinDir, objectPath: drift }),
      (e: Error) => {
        for (const line of [
          'spec_drift.bpf.o does not match this agent',
          'struct km_frontend_key: member protocol at offset 19 (1 bytes) in spec_drift.bpf.o, at 18 (1 bytes) in the agent',
          'struct km_frontend_key: member family at offset 18 (1 bytes) in spec_drift.bpf.o, at 19 (1 bytes) in the agent',
          'enum km_lb_policy: KM_LB_MAGLEV = 4 in spec_drift.bpf.o, 3 in the agent',
          'struct km_service: not in spec_drift.bpf.o',
          'enum km_reason: not in spec_drift.bpf.o',
        ])
          assert.ok(e.message.includes(line), `${line}\nnot in: ${e.message}`);
        assert.ok(!e.message.includes('struct km_frontend:'), 'an equal struct is not named');
        return true;
      },
    );
    assert.deepEqual(readdirSync(env.pinDir), [], 'nothing was loaded or pinned');
  },
);

/** A service value's fields that the routing tests below do not set. */
const PLAIN = {
  lrPanicWeighted: 0,
  panicMask: 0,
  panicSlotCount: [0, 0, 0, 0, 0, 0, 0, 0],
  panicSeparate: 0,
  hostCount: [0, 0, 0, 0, 0, 0, 0, 0],
  healthyCount: [0, 0, 0, 0, 0, 0, 0, 0],
  load: [0, 0, 0, 0, 0, 0, 0, 0],
  overprovisioning: 0,
  panicThreshold: 0,
  failOnPanic: false,
  connectTimeoutMs: 0,
};

void describe('codecs round-trip', () => {
  void test('addresses: IPv4, IPv6 compressed, v4-mapped', () => {
    assert.equal(encodeAddress('127.100.0.1').toString('hex'), '7f640001' + '00'.repeat(12));
    assert.equal(encodeAddress('::1').toString('hex'), '00'.repeat(15) + '01');
    assert.equal(encodeAddress('::ffff:1.2.3.4').toString('hex'), '00'.repeat(10) + 'ffff01020304');
    assert.equal(decodeAddress(encodeAddress('2001:db8:0:0:1:0:0:1'), 6), '2001:db8::1:0:0:1');
    assert.equal(canonicalAddress('fd00:0:0::0001'), 'fd00::1');
    assert.throws(() => encodeAddress('127.100.0'), /not an IP address/);
  });

  void test('frontend key: port in network order, protocol number, family', () => {
    const b = frontendKeyCodec.encode({ address: '127.100.0.1', port: 80, protocol: 'tcp' });
    assert.equal(b.readUInt16BE(16), 80);
    assert.equal(b[18], 6);
    assert.equal(b[19], 4);
    assert.deepEqual(frontendKeyCodec.decode(b), { address: '127.100.0.1', port: 80, protocol: 'tcp' });
    const v6 = { address: 'fd00:100::1', port: 8443, protocol: 'udp' as const };
    assert.deepEqual(frontendKeyCodec.decode(frontendKeyCodec.encode(v6)), v6);
  });

  void test('service with waypoint and per-priority slot counts', () => {
    const v = {
      kind: 'waypoint' as const,
      lbPolicy: 'maglev' as const,
      generation: 1,
      maxConnections: 5,
      slotCount: [3, 0, 7, 0, 0, 0, 0, 65535],
      maglevSize: 1021,
      waypoint: { address: 'fd00::15', port: 15008 },
      lrWeighted: 0,
      activeRequestBias: 0,
      ...PLAIN,
    };
    const b = serviceCodec.encode(v);
    assert.equal(b.length, 152);
    assert.deepEqual(serviceCodec.decode(b), v);
  });

  void test('least_request service: weighted groups as a bit per priority, bias in 16.16 fixed point', () => {
    const v = {
      kind: 'endpoints' as const,
      lbPolicy: 'least_request' as const,
      generation: 0,
      maxConnections: 0,
      slotCount: [2, 3, 0, 0, 0, 0, 0, 0],
      maglevSize: 0,
      lrWeighted: 0b10,
      activeRequestBias: 1,
      ...PLAIN,
    };
    const b = serviceCodec.encode(v);
    assert.equal(b[44], 0b10);
    assert.equal(b.readUInt32LE(48), 65536);
    assert.deepEqual(serviceCodec.decode(b), v);
  });

  void test('service with priority loads, panic slots and outlier detection', () => {
    const v = {
      kind: 'endpoints' as const,
      lbPolicy: 'random' as const,
      generation: 1,
      maxConnections: 0,
      slotCount: [10, 4, 0, 0, 0, 0, 0, 0],
      maglevSize: 0,
      lrWeighted: 0,
      activeRequestBias: 0,
      lrPanicWeighted: 0b01,
      panicMask: 0b11,
      panicSlotCount: [12, 4, 0, 0, 0, 0, 0, 0],
      panicSeparate: 0b01,
      hostCount: [10, 10, 0, 0, 0, 0, 0, 0],
      healthyCount: [2, 2, 0, 0, 0, 0, 0, 0],
      load: [50, 50, 0, 0, 0, 0, 0, 0],
      overprovisioning: 1400,
      panicThreshold: 50,
      failOnPanic: true,
      connectTimeoutMs: 250,
      outlier: {
        hosts: 20,
        consecutive5xx: 3,
        consecutiveGateway: 5,
        consecutiveLocalOrigin: 7,
        enforcing5xx: 100,
        enforcingGateway: 0,
        enforcingLocalOrigin: 50,
        maxEjectionPercent: 34,
        intervalMs: 100,
        baseEjectionMs: 300,
        maxEjectionMs: 3000,
        maxJitterMs: 10,
        splitLocalOrigin: true,
        alwaysEjectOne: true,
      },
    };
    const b = serviceCodec.encode(v);
    assert.equal(b[46], 0x0f, 'flags: outlier, split, always eject one, fail on panic');
    assert.deepEqual(serviceCodec.decode(b), v);
  });

  void test('slot key, backend, name and socket route', () => {
    const k = { serviceId: 70000, index: 1020, priority: 7, generation: 1 };
    assert.deepEqual(slotKeyCodec.decode(slotKeyCodec.encode(k)), k);
    const be = { address: '127.0.0.9', port: 65535 };
    assert.deepEqual(backendCodec.decode(backendCodec.encode(be)), be);
    const name = { name: 'outbound|80||reviews.default.svc.cluster.local' };
    assert.deepEqual(serviceNameCodec.decode(serviceNameCodec.encode(name)), name);
    assert.throws(() => serviceNameCodec.encode({ name: 'x'.repeat(256) }), /longer than 255/);
    const r = {
      origAddress: '127.100.0.1',
      origPort: 80,
      family: 4 as const,
      flags: 3,
      serviceId: 2,
      backendId: 9,
    };
    assert.deepEqual(sockRouteCodec.decode(sockRouteCodec.encode(r)), r);
    const hk = { serviceId: 3, backendId: 65535 };
    assert.deepEqual(hostKeyCodec.decode(hostKeyCodec.encode(hk)), hk);
    const m = { priority: 7, healthy: true };
    assert.deepEqual(memberCodec.decode(memberCodec.encode(m)), m);
    const h = {
      ejectedNs: 123456789012n,
      unejectedNs: 0n,
      ejected: true,
      countedPriority: 255,
      consecutive5xx: 1,
      consecutiveGateway: 2,
      consecutiveLocalOrigin: 3,
      backoff: 4,
      numEjections: 5,
      jitterMs: 6,
      failures: 7n,
    };
    assert.deepEqual(hostStateCodec.decode(hostStateCodec.encode(h)), h);
  });
});
