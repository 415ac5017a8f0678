// Issue 12's cluster in miniature: two nodes, each a network namespace (joined to the other by a veth
// pair) with its own kubelet cgroup root (one systemd driver, one cgroupfs), its own agent and its own
// pinned state, one control plane and one API server for both. A pod on node 1 reaches a service
// whose only endpoint is on node 2 and gets its answer back (and the reverse); the unenrolled pod on
// each node is untouched. The agents run in the host's namespace talking to the control plane and
// the API on 127.0.0.1, as a DaemonSet pod talks to istiod; what they serve is chosen by cgroup only,
// which is what the pods' own namespaces would not change.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  outbound,
  passthroughCluster,
  tcpListener,
} from './support/control-plane-istiod.js';
import { stopProcess } from './support/cli.js';
import { KubeApiServer } from './support/k8s-api.js';
import { SimNode, type SimPod } from './support/k8s-node.js';
import { kernelTest } from './support/kernel.js';
import { createNetns, NetnsBackends } from './support/net.js';
import { eventually } from './support/wait.js';
import { TYPE } from '../src/xds/types.js';

const PORT = 8083;
const MODE = 'istio.io/dataplane-mode';
/** Node addresses on the veth between the two namespaces (RFC 2544's test range; nothing else sees it). */
const NODE1_IP = '198.18.0.1';
const NODE2_IP = '198.18.0.2';
const ON_NODE2 = { vip: '127.100.93.1', cluster: outbound('ratings.shop.svc.cluster.local', PORT) };
const ON_NODE1 = { vip: '127.100.93.2', cluster: outbound('details.shop.svc.cluster.local', PORT) };

kernelTest(
  'kubernetes, two nodes: an enrolled pod reaches a service whose endpoint is on the other node and back; unenrolled pods untouched',
  async (t, env) => {
    const n1 = createNetns('node1', []);
    env.defer(() => n1.remove());
    const n2 = createNetns('node2', []);
    env.defer(() => n2.remove());
    const tag = `${process.pid % 100000}`;
    execFileSync('ip', [
      'link',
      'add',
      `kmv1-${tag}`,
      'netns',
      n1.name,
      'type',
      'veth',
      'peer',
      'name',
      `kmv2-${tag}`,
      'netns',
      n2.name,
    ]);
    for (const [ns, dev, ip] of [
      [n1.name, `kmv1-${tag}`, NODE1_IP],
      [n2.name, `kmv2-${tag}`, NODE2_IP],
    ] as const) {
      execFileSync('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', dev]);
      execFileSync('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    }
    // in each node: the node's backend, and listeners on both VIPs that catch an unrewritten connect
    const servers = await Promise.all(
      [
        [n1.name, NODE1_IP],
        [n2.name, NODE2_IP],
      ].map(([ns, ip]) =>
        new NetnsBackends(ns!, [
          { address: ip! },
          { address: ON_NODE2.vip, port: PORT },
          { address: ON_NODE1.vip, port: PORT },
        ]).start(),
      ),
    );
    for (const s of servers) env.defer(() => s.stop());
    const [node1Servers, node2Servers] = servers as [NetnsBackends, NetnsBackends];
    const node1Backend = node1Servers.server(NODE1_IP);
    const node2Backend = node2Servers.server(NODE2_IP);

    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    cp.setResources(TYPE.cluster, [
      passthroughCluster,
      edsCluster(ON_NODE2.cluster),
      edsCluster(ON_NODE1.cluster),
    ]);
    cp.setResources(TYPE.endpoint, [
      assignment(ON_NODE2.cluster, [{ address: NODE2_IP, port: node2Backend.port }]),
      assignment(ON_NODE1.cluster, [{ address: NODE1_IP, port: node1Backend.port }]),
    ]);
    cp.setResources(TYPE.listener, [
      tcpListener(ON_NODE2.vip, PORT, ON_NODE2.cluster),
      tcpListener(ON_NODE1.vip, PORT, ON_NODE1.cluster),
    ]);

    const api = await new KubeApiServer().start();
    env.defer(() => api.close());
    const dir = mkdtempSync(join(tmpdir(), 'km-kube-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    process.env.KUBECONFIG = api.writeKubeconfig(dir);
    api.namespace('shop', { [MODE]: 'kernmesh' });
    api.namespace('plain');
    api.namespace('kernmesh-system');
    api.node('node-1', { 'topology.kubernetes.io/region': 'r', 'topology.kubernetes.io/zone': 'r-a' });
    api.node('node-2', { 'topology.kubernetes.io/region': 'r', 'topology.kubernetes.io/zone': 'r-b' });

    const node1 = new SimNode(env, 'node-1', 'systemd', api, n1.name);
    const node2 = new SimNode(env, 'node-2', 'cgroupfs', api, n2.name);
    const client1 = node1.addPod({ namespace: 'shop', name: 'productpage-1', qosClass: 'Burstable' });
    const plain1 = node1.addPod({ namespace: 'plain', name: 'batch-1' });
    const client2 = node2.addPod({ namespace: 'shop', name: 'reviews-2', qosClass: 'Guaranteed' });
    const plain2 = node2.addPod({ namespace: 'plain', name: 'batch-2' });

    for (const node of [node1, node2]) {
      await node.startAgent(cp.address);
      await eventually(
        `${node.name} /ready`,
        async () => (await getJson(node.admin!, '/ready')).status === 200,
      );
    }

    const reach = async (pod: SimPod, vip: string): Promise<string | undefined> => {
      const r = await pod.client.connect({ host: vip, port: PORT, readId: true });
      assert.ok(r.ok, `${pod.spec.name} → ${vip}: ${r.err}`);
      return r.backend;
    };
    for (let i = 0; i < 5; i++) {
      assert.equal(
        await reach(client1, ON_NODE2.vip),
        node2Backend.id,
        'node 1 → endpoint on node 2 and back',
      );
      assert.equal(
        await reach(client2, ON_NODE1.vip),
        node1Backend.id,
        'node 2 → endpoint on node 1 and back',
      );
      assert.equal(
        await reach(plain1, ON_NODE2.vip),
        `${ON_NODE2.vip}|${PORT}`,
        'unenrolled pod on node 1 untouched',
      );
      assert.equal(
        await reach(plain2, ON_NODE1.vip),
        `${ON_NODE1.vip}|${PORT}`,
        'unenrolled pod on node 2 untouched',
      );
    }
    // the connections crossed the veth: each backend saw the other node's address
    await eventually(
      'backends report the connections',
      () =>
        node2Servers.connections.filter((c) => c.server === node2Backend.id).length >= 5 &&
        node1Servers.connections.filter((c) => c.server === node1Backend.id).length >= 5,
    );
    assert.ok(
      node2Servers.connections
        .filter((c) => c.server === node2Backend.id)
        .every((c) => c.peer.startsWith(`${NODE1_IP}|`)),
    );
    assert.ok(
      node1Servers.connections
        .filter((c) => c.server === node1Backend.id)
        .every((c) => c.peer.startsWith(`${NODE2_IP}|`)),
    );

    // each agent pinned links only for its own node's enrolled pod, in its own pin directory
    const pinnedCgroups = (node: SimNode): Set<number> =>
      new Set(
        readdirSync(node.pinDir).flatMap((f) =>
          /^link_(\d+)_/.exec(f) ? [Number(/^link_(\d+)_/.exec(f)![1])] : [],
        ),
      );
    assert.deepEqual([...pinnedCgroups(node1)], [statSync(client1.cgroup).ino]);
    assert.deepEqual([...pinnedCgroups(node2)], [statSync(client2.cgroup).ino]);

    // one xDS identity per node, each with its node's locality
    const identities = cp
      .streamInfos()
      .filter((s) => s.open && s.node)
      .map((s) => {
        const n = s.node as { id: string; locality?: { zone?: string } };
        return `${n.id} ${n.locality?.zone}`;
      })
      .sort();
    assert.deepEqual(identities, [
      'sidecar~10.0.0.1~kernmesh-node-1.kernmesh-system~kernmesh-system.svc.cluster.local r-a',
      'sidecar~10.0.0.1~kernmesh-node-2.kernmesh-system~kernmesh-system.svc.cluster.local r-b',
    ]);
    t.diagnostic(`node 1 (systemd driver) and node 2 (cgroupfs driver) each routed their own enrolled pod`);
    for (const node of [node1, node2]) assert.equal(await stopProcess(node.agent!), 0);
  },
);
