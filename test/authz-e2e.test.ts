// Issue 13 end to end: `kernmesh run --kubernetes --authorization` on a simulated node. The server pod
// (shop/reviews) is a real pod cgroup whose process runs in its own network namespace; the agent
// learns it from the Kubernetes API, finds its namespace through its cgroup and attaches the inbound
// check there. The test control plane serves Istio's workload API as istiod serves ztunnel (Delta,
// wildcard Address and Authorization). Every row of the acceptance table is pushed, then probed from
// another host (several addresses, IPv4 and IPv6), a local enrolled pod and the node itself; each
// probe asserts the connect outcome and the agent's own counter (/stats/prometheus). A policy update
// refuses new connections and closes the open ones it denies, within 1 s of the push by the agent's
// and the control plane's timestamps. An invalid Authorization is NACKed with its path; the others apply.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { JsonObject } from '../src/xds/types.js';
import { TYPE } from '../src/xds/types.js';
import { createAuthzTopology, NetnsClient, PodServers, type AuthzTopology } from './support/authz-net.js';
import { exact, policy, workloadUid } from './support/authz-resources.js';
import {
  DENY_ALL_OTHER,
  PENDING_ROW,
  PORTS,
  ROWS,
  workloads,
  type Outcome,
  type Probe,
  type Row,
  type Source,
} from './support/authz-table.js';
import { TestControlPlane } from './support/control-plane.js';
import { getJson, passthroughCluster } from './support/control-plane-istiod.js';
import { adminGet, stopProcess } from './support/cli.js';
import { KubeApiServer } from './support/k8s-api.js';
import { SimNode } from './support/k8s-node.js';
import { kernelTest, type KernelEnv } from './support/kernel.js';
import { eventually } from './support/wait.js';

const MODE = 'istio.io/dataplane-mode';
const REVIEWS = workloadUid('shop', 'reviews');
/** The bound the issue sets from a push to its effect on new connections. */
const BOUND_MS = 1000;

interface World {
  t: AuthzTopology;
  api: KubeApiServer;
  cp: TestControlPlane;
  node: SimNode;
  servers: PodServers;
  other: PodServers;
  clients: { host: NetnsClient; local: NetnsClient; node: NetnsClient };
}

/** A pod of the node whose process runs in its own network namespace (the sandbox's, as on a node). */
function podCgroup(node: SimNode, uid: string): string {
  const container = join(node.podCgroupPath(uid, 'BestEffort'), 'cri-containerd-app.scope');
  mkdirSync(container, { recursive: true });
  return container;
}

/** hold: the control plane does not answer the Authorization type until cp.release() (the agent is not ready meanwhile). */
async function world(env: KernelEnv, opts: { hold?: boolean } = {}): Promise<World> {
  const t = createAuthzTopology();
  env.defer(() => t.remove());
  const api = await new KubeApiServer().start();
  env.defer(() => api.close());
  const dir = mkdtempSync(join(tmpdir(), 'km-authz-'));
  env.defer(() => rmSync(dir, { recursive: true, force: true }));
  process.env.KUBECONFIG = api.writeKubeconfig(dir);
  api.namespace('shop', { [MODE]: 'kernmesh' });
  api.namespace('kernmesh-system');
  api.node('node-1', { 'topology.kubernetes.io/region': 'r', 'topology.kubernetes.io/zone': 'r-a' });

  const cp = await TestControlPlane.start();
  env.defer(() => cp.stop());
  cp.setResources(TYPE.cluster, [passthroughCluster]);
  cp.setResources(TYPE.listener, []);
  cp.setResources(
    TYPE.address,
    workloads(t).map((w) => w.resource),
  );
  cp.setResources(TYPE.authorization, [DENY_ALL_OTHER.resource]);

  const node = new SimNode(env, 'node-1', 'systemd', api);
  const uids = { reviews: randomUUID(), productpage: randomUUID(), other: randomUUID() };
  // the pods' processes run before the API announces them, as the kubelet starts the sandbox first
  const reviewsCgroup = podCgroup(node, uids.reviews);
  const servers = new PodServers(
    t.pod,
    [
      { address: t.addr.pod, port: PORTS.main },
      { address: t.addr.pod, port: PORTS.other },
      { address: t.addr.pod, port: PORTS.admin },
      { address: t.addr.pod6, port: PORTS.main },
    ],
    reviewsCgroup,
  );
  env.defer(() => servers.stop());
  const other = new PodServers(
    t.other,
    [{ address: t.addr.other, port: PORTS.main }],
    podCgroup(node, uids.other),
  );
  env.defer(() => other.stop());
  await Promise.all([servers.start(), other.start()]);
  const local = new NetnsClient(podCgroup(node, uids.productpage), t.local);
  env.defer(() => local.exit());
  api.pod({
    namespace: 'shop',
    name: 'reviews',
    nodeName: 'node-1',
    uid: uids.reviews,
    qosClass: 'BestEffort',
  });
  api.pod({
    namespace: 'shop',
    name: 'productpage',
    nodeName: 'node-1',
    uid: uids.productpage,
    qosClass: 'BestEffort',
  });
  // its workload lists a DENY of everything; the pod opted out of kernmesh, so nothing judges it
  api.pod({
    namespace: 'shop',
    name: 'other',
    nodeName: 'node-1',
    uid: uids.other,
    qosClass: 'BestEffort',
    labels: { [MODE]: 'none' },
  });

  if (opts.hold) cp.hold(TYPE.authorization);
  await node.startAgent(cp.address, ['--authorization', '--access-log', 'stdout']);
  if (!opts.hold) await ready(node);
  const host = new NetnsClient(env.cgroup, t.host);
  env.defer(() => host.exit());
  const nodeClient = new NetnsClient(env.cgroup, t.node);
  env.defer(() => nodeClient.exit());
  return { t, api, cp, node, servers, other, clients: { host, local, node: nodeClient } };
}

async function ready(node: SimNode): Promise<void> {
  let last = '';
  try {
    await eventually(
      '/ready',
      async () => {
        const r = await adminGet(node.admin!, '/ready');
        last = r.text;
        return r.status === 200;
      },
      { attempts: 600, intervalMs: 50 },
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}: ${last}`, { cause: e });
  }
}

interface DebugAuthz {
  authorization?: {
    pods: { cgroup: string; state: string }[];
    last_apply: null | {
      applied_at?: number;
      appliedAt: number;
      versions: { policies: Record<string, string>; workloads: Record<string, string> };
    };
  };
}

async function debugAuthz(w: World): Promise<NonNullable<DebugAuthz['authorization']>> {
  const r = await getJson<DebugAuthz>(w.node.admin!, '/debug/xds');
  return r.body.authorization!;
}

/** Pushes a row's policies and workloads; resolves once the agent has written exactly them. */
async function push(
  w: World,
  row: Pick<Row, 'policies' | 'listed'>,
): Promise<{ pushedAt: number; appliedAt: number }> {
  const policies = [...row.policies, DENY_ALL_OTHER];
  const from = w.cp.responses.length;
  w.cp.setResources(
    TYPE.authorization,
    policies.map((p) => p.resource),
  );
  w.cp.setResources(
    TYPE.address,
    workloads(w.t, row.listed).map((x) => x.resource),
  );
  const want = Object.fromEntries(policies.map((p) => [p.name, w.cp.versionOf(TYPE.authorization, p.name)!]));
  const reviews = w.cp.versionOf(TYPE.address, REVIEWS)!;
  let appliedAt = 0;
  await eventually('the agent applied the pushed policies and workloads', async () => {
    const a = (await debugAuthz(w)).last_apply;
    if (!a) return false;
    appliedAt = a.appliedAt;
    return (
      JSON.stringify(sortKeys(a.versions.policies)) === JSON.stringify(sortKeys(want)) &&
      a.versions.workloads[REVIEWS] === reviews
    );
  });
  const sent = w.cp.responses
    .slice(from)
    .filter((r) => r.typeUrl === TYPE.authorization || r.typeUrl === TYPE.address);
  return { pushedAt: Math.max(...sent.map((r) => r.at)), appliedAt };
}

function sortKeys(o: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)));
}

type Series = Map<string, number>;

/** kernmesh_authorization_* from the agent's /stats/prometheus, keyed `name{policy,namespace,reason}`. */
async function counters(w: World): Promise<Series> {
  const text = (await adminGet(w.node.admin!, '/stats/prometheus')).text;
  const out: Series = new Map();
  for (const line of text.split('\n')) {
    const m = /^(kernmesh_authorization_\w+)\{([^}]*)\} (\d+)/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    out.set(`${m[1]}{${labels.policy ?? ''},${labels.namespace ?? ''},${labels.reason ?? ''}}`, Number(m[3]));
  }
  return out;
}

function value(s: Series, metric: string, o: Outcome): number {
  return s.get(`${metric}{${o.policy},${o.namespace},${o.reason}}`) ?? 0;
}

function sum(s: Series, metric: string): number {
  return [...s].filter(([k]) => k.startsWith(`${metric}{`)).reduce((n, [, v]) => n + v, 0);
}

function route(
  w: World,
  from: Source,
): { client: NetnsClient; localAddress?: string; host: string; src: string } {
  const [ratings, teller, legacy, anonymous] = w.t.addr.hosts as [string, string, string, string];
  const hosts: Partial<Record<Source, string>> = { ratings, teller, legacy, anonymous };
  if (from === 'auditor6')
    return { client: w.clients.host, localAddress: w.t.addr.host6, host: w.t.addr.pod6, src: w.t.addr.host6 };
  if (from === 'local') return { client: w.clients.local, host: w.t.addr.pod, src: w.t.addr.local };
  if (from === 'node')
    return { client: w.clients.node, localAddress: w.t.addr.node, host: w.t.addr.pod, src: w.t.addr.node };
  return { client: w.clients.host, localAddress: hosts[from]!, host: w.t.addr.pod, src: hosts[from]! };
}

const DENIED = 'kernmesh_authorization_denied_total';
const DRY = 'kernmesh_authorization_dry_run_denied_total';

async function probe(w: World, row: string, p: Probe): Promise<void> {
  const port = p.port ?? PORTS.main;
  const r = route(w, p.from);
  const what = `${row}: ${p.from} → :${port}`;
  const before = await counters(w);
  const accepted = w.servers.accepted(r.src);
  const res = await r.client.connect({
    host: r.host,
    port,
    ...(r.localAddress ? { localAddress: r.localAddress } : {}),
  });
  if (p.expect === 'allow') {
    assert.ok(res.ok, `${what}: expected allowed, got ${res.err}`);
    await eventually(`${what}: the server reported the accept()`, () =>
      w.servers.events.some((e) => e.event === 'accept' && e.peer === res.local),
    );
  } else {
    assert.equal(
      res.err,
      'ECONNREFUSED',
      `${what}: expected ECONNREFUSED, got ${res.ok ? 'connected' : res.err}`,
    );
    assert.equal(w.servers.accepted(r.src), accepted, `${what}: the server saw no accept()`);
  }
  const after = await counters(w);
  if (p.expect === 'allow')
    assert.equal(sum(after, DENIED), sum(before, DENIED), `${what}: no denial counted`);
  else {
    assert.equal(
      value(after, DENIED, p.expect) - value(before, DENIED, p.expect),
      1,
      `${what}: ${DENIED} ${JSON.stringify(p.expect)}`,
    );
    assert.equal(sum(after, DENIED) - sum(before, DENIED), 1, `${what}: one denial in all`);
  }
  if (p.dryRun)
    assert.equal(
      value(after, DRY, p.dryRun) - value(before, DRY, p.dryRun),
      1,
      `${what}: ${DRY} ${JSON.stringify(p.dryRun)}`,
    );
  else assert.equal(sum(after, DRY), sum(before, DRY), `${what}: no dry-run report`);
}

kernelTest(
  'authorization end to end: the acceptance table through the agent, the Kubernetes API and the workload API',
  async (t, env) => {
    const w = await world(env);
    const debug = await debugAuthz(w);
    assert.deepEqual(
      debug.pods.map((p) => p.state),
      ['attached', 'attached'],
      'the server pod and the local pod have the check in their namespaces; the opted-out pod has none',
    );

    // istiod's way of serving the workload API: wildcard Delta subscriptions for both types
    for (const type of [TYPE.address, TYPE.authorization]) {
      const initial = w.cp.requests.find((r) => r.typeUrl === type && r.kind === 'initial');
      assert.equal(initial?.mode, 'delta', `${type} over Delta`);
      assert.deepEqual(initial?.json.resource_names_subscribe ?? [], [], `${type} wildcard`);
    }

    for (const row of [...ROWS, PENDING_ROW]) {
      await push(w, row);
      for (const p of row.probes) await probe(w, row.name, p);
      t.diagnostic(`ok: ${row.name} (${row.probes.length} probes)`);
    }

    // the unenrolled pod: its workload lists a DENY of everything, yet nothing judges its connections
    const res = await w.clients.host.connect({
      host: w.t.addr.other,
      port: PORTS.main,
      localAddress: w.t.addr.hosts[0]!,
    });
    assert.ok(res.ok, `the unenrolled pod is untouched: ${res.err}`);

    // the access log names the policy of each denial
    const strict = w.node.agent!.lines.filter(
      (l) =>
        l.msg === 'connection denied' &&
        l.authorization_policy === 'istio-system/istio_converted_static_strict',
    );
    assert.deepEqual(
      strict
        .map((l) => [(l.source as string).replace(/:\d+$/, ''), l.destination, l.destination_workload])
        .sort(),
      [
        [w.t.addr.node, `${w.t.addr.pod}:${PORTS.main}`, 'shop/reviews'],
        [w.t.addr.hosts[3], `${w.t.addr.pod}:${PORTS.main}`, 'shop/reviews'],
      ],
    );
  },
);

kernelTest(
  'authorization end to end: a policy update refuses new connections and closes the open ones it denies, within 1 s of the push',
  async (t, env) => {
    const w = await world(env);
    await push(w, { policies: [] });
    const [ratings, teller] = w.t.addr.hosts as [string, string];
    for (const [tag, src] of [
      ['ratings', ratings],
      ['teller', teller],
    ] as const) {
      const r = await w.clients.host.connect({
        host: w.t.addr.pod,
        port: PORTS.main,
        localAddress: src,
        hold: true,
        tag,
      });
      assert.ok(r.ok, `${tag}: ${r.err}`);
    }
    const held = await w.clients.local.connect({
      host: w.t.addr.pod,
      port: PORTS.main,
      hold: true,
      tag: 'local',
    });
    assert.ok(held.ok);

    const denyRatings = policy({
      name: 'deny-ratings',
      namespace: 'shop',
      scope: 'NAMESPACE',
      action: 'DENY',
      groups: [[[{ principals: [exact('cluster.local/ns/shop/sa/ratings')] }]]],
    });
    const mark = w.node.agent!.lines.length;
    const { pushedAt, appliedAt } = await push(w, { policies: [denyRatings] });
    const d = appliedAt - pushedAt;
    assert.ok(d >= 0 && d < BOUND_MS, `applied ${d} ms after the push (bound ${BOUND_MS} ms)`);
    t.diagnostic(`push → maps written: ${d} ms`);
    // the open connection the new policy denies is closed; the others stay
    await eventually('the server saw the ratings connection close', () =>
      w.servers.events.some((e) => e.event === 'closed' && e.peer.startsWith(`${ratings}|`)),
    );
    await w.clients.host.send('ratings');
    await eventually(
      'the ratings client saw the reset',
      async () => (await w.clients.host.held('ratings')).closed === true,
    );
    assert.equal((await w.clients.host.held('teller')).closed, false, 'teller stays connected');
    assert.equal((await w.clients.local.held('local')).closed, false, 'the local pod stays connected');
    const applied = w.node
      .agent!.lines.slice(mark)
      .find((l) => l.msg === 'authorization applied' && l.closed === 1);
    assert.ok(applied, 'the agent logs the apply that closed one connection');
    const closedAt = Date.parse(applied.closed_at as string);
    assert.ok(closedAt - pushedAt < BOUND_MS, `closed ${closedAt - pushedAt} ms after the push`);
    const after = await counters(w);
    assert.equal(
      value(after, 'kernmesh_authorization_closed_total', {
        policy: 'deny-ratings',
        namespace: 'shop',
        reason: 'deny_policy',
      }),
      1,
    );
    const closedLog = w.node.agent!.lines.find((l) => l.msg === 'connection closed by authorization policy');
    assert.equal(closedLog?.authorization_policy, 'shop/deny-ratings');
    // and new connections
    await probe(w, 'after the update', {
      from: 'ratings',
      expect: { reason: 'deny_policy', policy: 'deny-ratings', namespace: 'shop' },
    });
    await probe(w, 'after the update', { from: 'teller', expect: 'allow' });
  },
);

kernelTest(
  'authorization end to end: an invalid Authorization is NACKed with its path while the others apply, and it denies, never allows',
  async (t, env) => {
    const w = await world(env);
    const valid = policy({
      name: 'deny-teller',
      namespace: 'shop',
      scope: 'NAMESPACE',
      action: 'DENY',
      groups: [[[{ namespaces: [exact('bank')] }]]],
    });
    // a StringMatch with no kind: ztunnel would leave it out of the list and widen the match
    const invalid = policy({
      name: 'allow-some',
      namespace: 'shop',
      scope: 'NAMESPACE',
      groups: [[[{ principals: [{}] }]]],
    });
    const from = w.cp.requests.length;
    w.cp.setResources(TYPE.authorization, [valid.resource, invalid.resource, DENY_ALL_OTHER.resource]);
    await eventually('the agent NACKed the push', () =>
      w.cp.requests.slice(from).some((r) => r.typeUrl === TYPE.authorization && r.kind === 'nack'),
    );
    const nack = w.cp.requests
      .slice(from)
      .find((r) => r.typeUrl === TYPE.authorization && r.kind === 'nack')!;
    const message = (nack.json.error_detail as JsonObject).message as string;
    assert.match(message, /shop\/allow-some/);
    assert.match(message, /groups\[0\]\.rules\[0\]\.matches\[0\]\.principals\[0\]: no match kind set/);
    assert.doesNotMatch(message, /deny-teller/);
    // the valid one is in force; the refused ALLOW allows nothing (never more open than it was sent)
    await eventually('the agent applied the valid policy', async () => {
      const a = (await debugAuthz(w)).last_apply;
      return (
        a?.versions.policies['shop/deny-teller'] === w.cp.versionOf(TYPE.authorization, 'shop/deny-teller')
      );
    });
    await probe(w, 'valid policy applied', {
      from: 'teller',
      expect: { reason: 'deny_policy', policy: 'deny-teller', namespace: 'shop' },
    });
    await probe(w, 'refused ALLOW allows nothing', {
      from: 'ratings',
      expect: { reason: 'no_allow_match', policy: '', namespace: 'shop' },
    });

    // the operator's views: /debug/xds per resource, /config_dump's policies and per workload which apply
    const xds = await getJson<{
      xds: { types: { type_url: string; resources: { name: string; status: string; error?: string }[] }[] };
    }>(w.node.admin!, '/debug/xds');
    const authz = xds.body.xds.types.find((x) => x.type_url === TYPE.authorization)!;
    assert.deepEqual(authz.resources.map((r) => [r.name, r.status]).sort(), [
      ['shop/allow-some', 'NACKED'],
      ['shop/deny-all-other', 'ACKED'],
      ['shop/deny-teller', 'ACKED'],
    ]);
    const dump = await getJson<{ configs: JsonObject[] }>(w.node.admin!, '/config_dump');
    const section = dump.body.configs.find(
      (c) => c['@type'] === 'type.googleapis.com/kernmesh.admin.AuthorizationConfigDump',
    ) as
      | {
          policies: JsonObject[];
          workloads: { name: string; policies: { policy: string; state: string }[] }[];
        }
      | undefined;
    assert.ok(section, 'config_dump has the authorization section');
    assert.deepEqual(section.policies.map((p) => [p.name, p.status]).sort(), [
      ['shop/allow-some', 'NACKED'],
      ['shop/deny-all-other', 'ACKED'],
      ['shop/deny-teller', 'ACKED'],
    ]);
    const reviews = section.workloads.find((x) => x.name === 'reviews')!;
    assert.deepEqual(
      reviews.policies.map((p) => [p.policy, p.state]),
      [
        ['shop/allow-some', 'refused'],
        ['shop/deny-teller', 'enforced'],
      ],
    );
  },
);

kernelTest(
  'authorization end to end: before the workload API answers, enrolled pods deny; a pod whose namespace is not its own keeps the agent not ready',
  async (t, env) => {
    const w = await world(env, { hold: true });
    await eventually('the server pod has the check', async () => {
      const r = await getJson<DebugAuthz>(w.node.admin!, '/debug/xds');
      return r.body.authorization?.pods.filter((p) => p.state === 'attached').length === 2;
    });
    const notReady = await adminGet(w.node.admin!, '/ready');
    assert.equal(notReady.status, 503);
    // the initial fetch waits for every wildcard type, WADS included (then its timeout names WADS)
    assert.match(notReady.text, /waiting for the first config|authorization policies \(WADS\)/);
    // nothing known yet: the pod's address has no workload, so nothing can allow
    const [ratings] = w.t.addr.hosts as [string];
    const before = await w.clients.host.connect({
      host: w.t.addr.pod,
      port: PORTS.main,
      localAddress: ratings,
    });
    assert.equal(before.err, 'ECONNREFUSED', 'denied until the workload API has answered');
    w.cp.release(TYPE.authorization);
    await ready(w.node);
    await probe(w, 'after the first answer', { from: 'ratings', expect: 'allow' });

    // a pod whose first process runs in the agent's own namespace: its inbound cannot be judged
    const shared = w.node.addPod({ namespace: 'shop', name: 'shared' });
    await eventually('the agent is not ready, naming the pod', async () => {
      const r = await adminGet(w.node.admin!, '/ready');
      return (
        r.status === 503 &&
        r.text.includes(`authorization not enforced for the pod of cgroup ${shared.cgroup}`)
      );
    });
  },
);

kernelTest(
  'authorization end to end: a stopped agent leaves the pods enforcing their last policies; a restarted one updates the links in place',
  async (t, env) => {
    const w = await world(env);
    const denyRatings = policy({
      name: 'deny-ratings',
      namespace: 'shop',
      scope: 'NAMESPACE',
      action: 'DENY',
      groups: [[[{ principals: [exact('cluster.local/ns/shop/sa/ratings')] }]]],
    });
    await push(w, { policies: [denyRatings] });
    await probe(w, 'running', {
      from: 'ratings',
      expect: { reason: 'deny_policy', policy: 'deny-ratings', namespace: 'shop' },
    });
    const [ratings, teller] = w.t.addr.hosts as [string, string];
    const connect = (src: string) =>
      w.clients.host.connect({ host: w.t.addr.pod, port: PORTS.main, localAddress: src });

    await stopProcess(w.node.agent!, 'SIGKILL');
    assert.equal(
      (await connect(ratings)).err,
      'ECONNREFUSED',
      'no agent: the pinned program and maps still deny',
    );
    assert.ok((await connect(teller)).ok, 'and still allow');

    await w.node.startAgent(w.cp.address, ['--authorization', '--access-log', 'stdout']);
    await ready(w.node);
    const attached = w.node.agent!.lines.filter((l) => l.msg === 'authorization attached to the pod');
    assert.ok(
      attached.length >= 2 && attached.every((l) => l.via === 'existing bpf_link'),
      JSON.stringify(attached),
    );
    await eventually('the restarted agent applied the same policies', async () => {
      const a = (await debugAuthz(w)).last_apply;
      return (
        a?.versions.policies['shop/deny-ratings'] === w.cp.versionOf(TYPE.authorization, 'shop/deny-ratings')
      );
    });
    await probe(w, 'restarted', {
      from: 'ratings',
      expect: { reason: 'deny_policy', policy: 'deny-ratings', namespace: 'shop' },
    });
    await probe(w, 'restarted', { from: 'teller', expect: 'allow' });

    // unenrolled (the pod opts out): its namespace's check goes with it
    w.api.relabelPod('shop', 'reviews', { [MODE]: 'none' });
    await eventually('the check left the unenrolled pod', async () => (await connect(ratings)).ok);
    assert.deepEqual(
      (await debugAuthz(w)).pods.map((p) => p.state),
      ['attached'],
      'only the local client pod keeps it',
    );
  },
);
