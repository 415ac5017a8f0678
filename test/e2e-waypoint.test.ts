// Waypoints end to end through the agent: the test control plane serves Istio's workload API
// (istio.workload.Address over Delta) with a Service whose waypoint is a local test server, next to
// the sidecar's CDS/EDS/LDS. `kernmesh run --waypoints` sends the service's connections to the
// waypoint, which receives the TLV naming the original VIP and port, then the application's bytes.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { TestControlPlane } from './support/control-plane.js';
import { assignment, edsCluster, getJson, outbound, tcpListener } from './support/control-plane-istiod.js';
import { runAgentServing, stopProcess } from './support/cli.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';
import { payload, startBackend } from './support/net.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';

const VIP = '127.100.81.1';
const PORT = 8093;
const HOST = 'ratings.test.svc.cluster.local';
const CLUSTER = outbound(HOST, PORT);

const ipBytes = (ip: string) => Buffer.from(ip.split('.').map(Number));

/** The workload API's Service for ratings, with its waypoint at an IP address. */
function serviceWithWaypoint(waypoint: { address: string; port: number }): XdsResource {
  return {
    typeUrl: TYPE.address,
    name: `test/${HOST}`,
    version: '',
    resource: {
      '@type': TYPE.address,
      service: {
        name: 'ratings',
        namespace: 'test',
        hostname: HOST,
        addresses: [{ network: '', address: ipBytes(VIP).toString('base64') }],
        ports: [{ service_port: PORT, target_port: 9080 }],
        waypoint: {
          address: { network: '', address: ipBytes(waypoint.address).toString('base64') },
          hbone_mtls_port: waypoint.port,
        },
      },
    },
  };
}

kernelTest(
  'waypoints through the workload API: the waypoint receives the TLV with the VIP, then the payload; without it, the endpoints',
  async (_t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const endpoint = await startBackend('127.81.0.1');
    const waypoint = await startBackend('127.81.0.9', { collect: true, silent: true });
    env.defer(() => endpoint.close());
    env.defer(() => waypoint.close());
    cp.setResources(TYPE.cluster, [edsCluster(CLUSTER)]);
    cp.setResources(TYPE.endpoint, [
      assignment(CLUSTER, [{ address: endpoint.address, port: endpoint.port }]),
    ]);
    cp.setResources(TYPE.listener, [tcpListener(VIP, PORT, CLUSTER)]);
    cp.setResources(TYPE.address, [serviceWithWaypoint({ address: waypoint.address, port: waypoint.port })]);

    const { agent, admin, client } = await runAgentServing(env, [
      '--xds-address',
      cp.address,
      '--waypoints',
      '--pod-name',
      'kernmesh-e2e',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
    ]);
    await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);
    const subscribed = cp.requests.find((r) => r.typeUrl === TYPE.address && r.kind === 'initial');
    assert.equal(subscribed?.mode, 'delta', 'the workload API is subscribed over Delta');

    const sent = 4096;
    const r = await client.connect({ host: VIP, port: PORT, sendSize: sent });
    assert.ok(r.ok, `connect to ${VIP}:${PORT}: ${r.err}`);
    assert.equal(r.peer, `${VIP}|${PORT}`, 'getpeername shows the VIP');
    await eventually('the waypoint saw the connection end', () => waypoint.received.length > 0);
    const got = waypoint.received[0]!;
    const port = Buffer.alloc(2);
    port.writeUInt16BE(PORT);
    const tlv = Buffer.concat([
      Buffer.from([0x01, 0, 0, 0, 6]),
      ipBytes(VIP),
      port,
      Buffer.from([0xfe, 0, 0, 0, 0]),
    ]);
    assert.equal(tlv.length, 16);
    assert.deepEqual(got.subarray(0, 16), tlv, 'the TLV names the original VIP and port');
    assert.ok(got.subarray(16).equals(payload(sent)), 'then the payload, intact');
    assert.equal(endpoint.peers.length, 0, 'nothing went to the endpoints');

    // The service loses its waypoint (removed from the workload API): connections go to its endpoints.
    cp.setResources(TYPE.address, []);
    // The waypoint is silent: connect without waiting for a greeting, and see where it arrived.
    await eventually('connections follow the workload API back to the endpoints', async () => {
      const before = endpoint.peers.length;
      const c = await client.connect({ host: VIP, port: PORT });
      assert.ok(c.ok, c.err);
      for (let i = 0; i < 100 && endpoint.peers.length === before; i++) await sleep(10);
      return endpoint.peers.length > before;
    });
    assert.equal(await stopProcess(agent), 0);
  },
);
