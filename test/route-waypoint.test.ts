// issue 3: a service with a waypoint. The connection goes to the waypoint, whose first bytes are
// the TLV naming the original VIP and port (DESIGN.md "Waypoints"), then the payload intact.
import assert from 'node:assert/strict';

import { kernelTest } from './support/kernel.js';
import { openRouting } from './support/routing.js';
import { Client, payload, startBackend } from './support/net.js';

/** 0x01, length 6 (4 bytes BE), IPv4 address, port, then 0xfe with length 0. */
function tlv4(address: string, port: number): Buffer {
  const b = Buffer.alloc(16);
  b[0] = 0x01;
  b.writeUInt32BE(6, 1);
  address.split('.').forEach((o, i) => (b[5 + i] = Number(o)));
  b.writeUInt16BE(port, 9);
  b[11] = 0xfe;
  b.writeUInt32BE(0, 12);
  return b;
}

kernelTest(
  'waypoint: the waypoint receives exactly the 16-byte IPv4 TLV, then the payload intact (1 B, 64 KiB, 1 MiB)',
  async (t, env) => {
    const waypoint = await startBackend('127.0.0.111', { collect: true, silent: true });
    env.defer(() => waypoint.close());
    const dp = openRouting(env);
    const applied = await dp.apply({
      services: [
        {
          name: 'outbound|9080||reviews.default.svc.cluster.local',
          kind: 'waypoint',
          lbPolicy: 'random',
          endpoints: [],
          waypoint: { address: waypoint.address, port: waypoint.port },
        },
      ],
      frontends: [
        {
          address: '127.100.10.1',
          port: 9080,
          protocol: 'tcp',
          service: 'outbound|9080||reviews.default.svc.cluster.local',
        },
      ],
    });
    assert.deepEqual(applied.refused, []);
    const client = new Client(env.cgroup);
    env.defer(() => client.exit());

    for (const size of [1, 64 * 1024, 1024 * 1024]) {
      await t.test(`${size} bytes`, async () => {
        const before = waypoint.received.length;
        const r = await client.connect({ host: '127.100.10.1', port: 9080, sendSize: size });
        assert.equal(r.ok, true, r.err);
        assert.equal(r.peer, '127.100.10.1|9080', 'getpeername still reports the VIP');
        for (let i = 0; i < 500 && waypoint.received.length === before; i++)
          await new Promise((res) => setTimeout(res, 10));
        const got = waypoint.received[before];
        assert.ok(got, 'the waypoint saw the connection end');
        assert.equal(got.length, 16 + size);
        assert.deepEqual(got.subarray(0, 16), tlv4('127.100.10.1', 9080));
        assert.ok(got.subarray(16).equals(payload(size)), 'payload after the TLV is intact');
      });
    }
    const c = dp.counters().find((x) => x.service.includes('reviews'));
    assert.equal(c?.counters.waypoint, 3n);
  },
);
