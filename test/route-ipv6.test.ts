// issue 3: IPv6 end to end inside a network namespace the test creates (and deletes): IPv6 VIPs,
// v4-mapped destinations on the IPv4 path, getpeername, and the 28-byte waypoint TLV.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

import { encodeAddress } from '../src/net/address.js';
import { kernelTest } from './support/kernel.js';
import { openRouting } from './support/routing.js';
import { Client, createNetns, NetnsBackends, payload, tally } from './support/net.js';

function tlv6(address: string, port: number): Buffer {
  const b = Buffer.alloc(28);
  b[0] = 0x01;
  b.writeUInt32BE(18, 1);
  encodeAddress(address).copy(b, 5);
  b.writeUInt16BE(port, 21);
  b[23] = 0xfe;
  return b;
}

kernelTest(
  'IPv6 in a network namespace: VIPs, v4-mapped, getpeername, waypoint TLV of 28 bytes',
  async (t, env) => {
    const ns = createNetns('v6', ['fd00:6::11', 'fd00:6::12', 'fd00:6::13', 'fd00:6::20']);
    env.defer(() => ns.remove());
    const servers = await new NetnsBackends(ns.name, [
      { address: 'fd00:6::11' },
      { address: 'fd00:6::12' },
      { address: 'fd00:6::13' },
      { address: '127.0.0.1' },
      { address: 'fd00:6::20', silent: true },
    ]).start();
    env.defer(() => servers.stop());
    const [b1, b2, direct, v4, waypoint] = [
      servers.server('fd00:6::11'),
      servers.server('fd00:6::12'),
      servers.server('fd00:6::13'),
      servers.server('127.0.0.1'),
      servers.server('fd00:6::20'),
    ];

    const dp = openRouting(env);
    const ep = (s: { address: string; port: number }) => ({
      address: s.address,
      port: s.port,
      weight: 1,
      priority: 0,
      health: 'healthy' as const,
    });
    const applied = await dp.apply({
      services: [
        { name: 'v6', kind: 'endpoints', lbPolicy: 'round_robin', endpoints: [ep(b1), ep(b2)] },
        { name: 'v4', kind: 'endpoints', lbPolicy: 'random', endpoints: [ep(v4)] },
        { name: 'v6-blackhole', kind: 'blackhole', lbPolicy: 'random', endpoints: [] },
        {
          name: 'v6-waypoint',
          kind: 'waypoint',
          lbPolicy: 'random',
          endpoints: [],
          waypoint: { address: waypoint.address, port: waypoint.port },
        },
      ],
      frontends: [
        { address: 'fd00:100::1', port: 80, protocol: 'tcp', service: 'v6' },
        { address: '127.100.12.1', port: 80, protocol: 'tcp', service: 'v4' },
        { address: 'fd00:100::3', port: 80, protocol: 'tcp', service: 'v6-blackhole' },
        { address: 'fd00:100::2', port: 9080, protocol: 'tcp', service: 'v6-waypoint' },
      ],
    });
    assert.deepEqual(applied.refused, []);
    const client = new Client(env.cgroup, ns.name);
    env.defer(() => client.exit());

    await t.test('IPv6 VIP reaches both IPv6 backends; getpeername gives the VIP', async () => {
      const results = await client.batch({
        host: 'fd00:100::1',
        port: 80,
        readId: true,
        count: 40,
        detail: true,
      });
      assert.deepEqual(
        [...tally(results.map((r) => r.backend ?? r.err))].sort(),
        [
          [b1.id, 20],
          [b2.id, 20],
        ].sort(),
      );
      assert.ok(
        results.every((r) => r.peer === 'fd00:100::1|80'),
        JSON.stringify(results[0]),
      );
    });

    await t.test('a v4-mapped VIP on an IPv6 socket takes the IPv4 path', async () => {
      const r = await client.connect({ host: '::ffff:127.100.12.1', port: 80, readId: true });
      assert.equal(r.backend, v4.id, r.err);
      assert.equal(r.peer, '::ffff:127.100.12.1|80');
    });

    await t.test('blackhole refuses, an unknown IPv6 address is untouched', async () => {
      const refused = await client.connect({ host: 'fd00:100::3', port: 80, readId: true });
      assert.equal(refused.err, 'ECONNREFUSED');
      const untouched = await client.connect({ host: direct.address, port: direct.port, readId: true });
      assert.equal(untouched.backend, direct.id);
    });

    for (const size of [1, 64 * 1024, 1024 * 1024]) {
      await t.test(`waypoint: 28-byte TLV then ${size} bytes intact`, async () => {
        const before = servers.connections.filter((c) => c.server === waypoint.id).length;
        const r = await client.connect({ host: 'fd00:100::2', port: 9080, sendSize: size });
        assert.equal(r.ok, true, r.err);
        let got;
        for (let i = 0; i < 500; i++) {
          got = servers.connections.filter((c) => c.server === waypoint.id)[before];
          if (got) break;
          await new Promise((res) => setTimeout(res, 10));
        }
        assert.ok(got, 'the waypoint saw the connection end');
        const expected = Buffer.concat([tlv6('fd00:100::2', 9080), payload(size)]);
        assert.equal(got.length, expected.length);
        assert.equal(got.head, expected.subarray(0, 64).toString('hex'));
        assert.equal(got.sha256, createHash('sha256').update(expected).digest('hex'));
      });
    }
  },
);
