// L4 authorization at the kernel level (issue 13): the compiler's output written by the writer into
// bpf/authz.bpf.o, its sk_lookup program attached to a server pod's network namespace, and real
// connects from another host (several source addresses, IPv4 and IPv6), a local pod and the node
// itself. Each row of the shared table asserts every probe's outcome, the server's accept() count
// and the kernel's counter. No agent here: test/authz-e2e.test.ts runs the same table through it.
import assert from 'node:assert/strict';

import { AuthzKernel, type AuthzCount, type AuthzDecision } from '../src/authz/authz.js';
import { AuthzIds, compile } from '../src/authz/compile.js';
import {
  readAuthorization,
  readWorkload,
  type AuthzPolicy,
  type RefusedPolicy,
} from '../src/authz/policy.js';
import type { JsonObject } from '../src/xds/types.js';
import { createAuthzTopology, NetnsClient, PodServers, type AuthzTopology } from './support/authz-net.js';
import { cidr, exact, policy } from './support/authz-resources.js';
import {
  DENY_ALL_OTHER,
  NODE,
  PENDING_ROW,
  PORTS,
  ROWS,
  workloads,
  type Outcome,
  type Probe,
  type Row,
  type Source,
} from './support/authz-table.js';
import { kernelTest, type KernelEnv } from './support/kernel.js';
import { eventually } from './support/wait.js';

interface World {
  t: AuthzTopology;
  kernel: AuthzKernel;
  servers: PodServers;
  other: PodServers;
  clients: { host: NetnsClient; local: NetnsClient; node: NetnsClient };
  decisions: AuthzDecision[];
}

async function world(env: KernelEnv, maxEntries?: Record<string, number>): Promise<World> {
  const t = createAuthzTopology();
  env.defer(() => t.remove());
  const servers = new PodServers(t.pod, [
    { address: t.addr.pod, port: PORTS.main },
    { address: t.addr.pod, port: PORTS.other },
    { address: t.addr.pod, port: PORTS.admin },
    { address: t.addr.pod6, port: PORTS.main },
    { address: '127.0.0.1', port: PORTS.main },
  ]);
  env.defer(() => servers.stop());
  const other = new PodServers(t.other, [{ address: t.addr.other, port: PORTS.main }]);
  env.defer(() => other.stop());
  await Promise.all([servers.start(), other.start()]);
  const decisions: AuthzDecision[] = [];
  const kernel = AuthzKernel.open({
    pinDir: env.pinDir,
    onDecision: (d) => decisions.push(d),
    ...(maxEntries ? { maxEntries } : {}),
  });
  env.defer(() => kernel.close());
  kernel.start();
  // enrolled: the server pod's namespace; the other pod's is left alone
  kernel.attachNetns(t.podNetns);
  const clients = {
    host: new NetnsClient(env.cgroup, t.host),
    local: new NetnsClient(env.cgroup, t.local),
    node: new NetnsClient(env.cgroup, t.node),
  };
  for (const c of Object.values(clients)) env.defer(() => c.exit());
  return { t, kernel, servers, other, clients, decisions };
}

function read(resources: { name: string; resource: JsonObject }[]): {
  policies: AuthzPolicy[];
  refused: RefusedPolicy[];
} {
  const policies: AuthzPolicy[] = [];
  const refused: RefusedPolicy[] = [];
  for (const r of resources) {
    const p = readAuthorization(r.resource, r.name);
    if (p.errors) refused.push(p.refused);
    else policies.push(p.policy);
  }
  return { policies, refused };
}

function program(
  w: World,
  ids: AuthzIds,
  row: Pick<Row, 'policies' | 'listed'>,
  extra: { refused?: RefusedPolicy[] } = {},
) {
  const { policies, refused } = read([...row.policies, DENY_ALL_OTHER]);
  const ws = workloads(w.t, row.listed).map((x) => readWorkload(x.resource)!);
  const model = compile(
    { policies, refused: [...refused, ...(extra.refused ?? [])], workloads: ws, node: NODE },
    ids,
  );
  return w.kernel.apply(model);
}

/** Where a probe's connect is made from and to. */
function route(
  w: World,
  from: Source,
  port: number,
): { client: NetnsClient; localAddress?: string; host: string } {
  const [ratings, teller, legacy, anonymous] = w.t.addr.hosts as [string, string, string, string];
  const hosts: Partial<Record<Source, string>> = { ratings, teller, legacy, anonymous };
  if (from === 'auditor6')
    return { client: w.clients.host, localAddress: w.t.addr.host6, host: w.t.addr.pod6 };
  if (from === 'local') return { client: w.clients.local, host: w.t.addr.pod };
  if (from === 'node') return { client: w.clients.node, localAddress: w.t.addr.node, host: w.t.addr.pod };
  void port;
  return { client: w.clients.host, localAddress: hosts[from]!, host: w.t.addr.pod };
}

function sourceAddress(w: World, from: Source): string {
  const r = route(w, from, 0);
  return r.localAddress ?? w.t.addr.local;
}

function total(counts: AuthzCount[], o: Outcome, closed = false): bigint {
  return counts
    .filter(
      (c) =>
        c.reason === o.reason && c.policy === o.policy && c.namespace === o.namespace && c.closed === closed,
    )
    .reduce((n, c) => n + c.value, 0n);
}

function denials(counts: AuthzCount[]): bigint {
  return counts.filter((c) => !c.closed && !c.reason.startsWith('dry_run')).reduce((n, c) => n + c.value, 0n);
}

async function probe(w: World, row: string, p: Probe): Promise<void> {
  const port = p.port ?? PORTS.main;
  const r = route(w, p.from, port);
  const what = `${row}: ${p.from} → :${port}`;
  const before = w.kernel.counts();
  const accepted = w.servers.accepted(sourceAddress(w, p.from));
  const res = await r.client.connect({
    host: r.host,
    port,
    ...(r.localAddress ? { localAddress: r.localAddress } : {}),
  });
  const after = w.kernel.counts();
  if (p.expect === 'allow') {
    assert.ok(res.ok, `${what}: expected allowed, got ${res.err}`);
    assert.equal(res.server, `${r.host}|${port}`, `${what}: answered by the pod`);
    assert.equal(denials(after), denials(before), `${what}: no denial counted`);
    // the server's report of this accept() arrives on its own pipe: wait for it, so the next
    // probe's count starts from a settled number
    await eventually(`${what}: the server reported the accept()`, () =>
      w.servers.events.some((e) => e.event === 'accept' && e.peer === res.local),
    );
  } else {
    // refused by the kernel's reset at once, never timed out, never accepted
    assert.equal(
      res.err,
      'ECONNREFUSED',
      `${what}: expected ECONNREFUSED, got ${res.ok ? 'connected' : res.err}`,
    );
    assert.equal(
      total(after, p.expect) - total(before, p.expect),
      1n,
      `${what}: counted as ${JSON.stringify(p.expect)}`,
    );
    assert.equal(denials(after) - denials(before), 1n, `${what}: one denial in all`);
    assert.equal(
      w.servers.accepted(sourceAddress(w, p.from)),
      accepted,
      `${what}: the server saw no accept()`,
    );
  }
  if (p.dryRun)
    assert.equal(
      total(after, p.dryRun) - total(before, p.dryRun),
      1n,
      `${what}: dry-run report ${JSON.stringify(p.dryRun)}`,
    );
}

kernelTest(
  'authorization in the kernel: the acceptance table, every row from every kind of source',
  async (t, env) => {
    const w = await world(env);
    const ids = new AuthzIds();
    for (const row of [...ROWS, PENDING_ROW]) {
      program(w, ids, row);
      for (const p of row.probes) await probe(w, row.name, p);
      t.diagnostic(`ok: ${row.name} (${row.probes.length} probes)`);
    }

    // the unenrolled pod: its workload lists a DENY of everything, yet nothing runs in its namespace
    const res = await w.clients.host.connect({
      host: w.t.addr.other,
      port: PORTS.main,
      localAddress: w.t.addr.hosts[0]!,
    });
    assert.ok(res.ok, `unenrolled pod untouched: ${res.err}`);
    await eventually('the unenrolled pod accepted it', () => w.other.accepted() === 1);

    // every denial reached the access log path with the policy's name
    w.kernel.drain();
    const strict = w.decisions.filter((d) => d.policy === 'istio-system/istio_converted_static_strict');
    assert.equal(strict.length, 2, 'the STRICT row denied two sources, each reported once');
    assert.deepEqual(strict.map((d) => [d.reason, d.destinationWorkload, d.sourceIdentity]).sort(), [
      ['deny_policy', 'shop/reviews', ''],
      ['deny_policy', 'shop/reviews', ''],
    ]);
    const dry = w.decisions.find((d) => d.reason === 'dry_run_deny');
    assert.equal(dry?.policy, 'shop/would-deny-ratings');
    assert.equal(dry?.sourceIdentity, 'cluster.local/ns/shop/sa/ratings');
    assert.ok(dry?.dryRun);
  },
);

kernelTest(
  'authorization in the kernel: a refused or unexpressible policy denies what it applies to, never allows',
  async (t, env) => {
    const w = await world(env);
    const ids = new AuthzIds();
    // a StringMatch with no kind: ztunnel would leave it out of a not_ list and so widen the match
    const bad = readAuthorization(
      policy({
        name: 'bad',
        namespace: 'shop',
        scope: 'NAMESPACE',
        action: 'ALLOW',
        groups: [[[{ not_principals: [{}] }]]],
      }).resource,
      'shop/bad',
    );
    assert.ok(bad.errors);
    assert.deepEqual(bad.errors, [
      'shop/bad.groups[0].rules[0].matches[0].not_principals[0]: no match kind set (exact, prefix, suffix or presence)',
    ]);
    program(w, ids, { policies: [] }, { refused: [bad.refused] });
    // a refused ALLOW allows nothing: every source is refused as "no ALLOW matched"
    await probe(w, 'refused ALLOW', {
      from: 'ratings',
      expect: { reason: 'no_allow_match', policy: '', namespace: 'shop' },
    });

    const badDeny = readAuthorization(
      {
        name: 'bad-deny',
        namespace: 'shop',
        scope: 'NAMESPACE',
        action: 'DENY',
        groups: [{ rules: [{ matches: [{ destination_ports: [70000] }] }] }],
      },
      'shop/bad-deny',
    );
    assert.ok(badDeny.errors);
    assert.match(badDeny.errors[0]!, /destination_ports\[0\]: 70000 is not a port/);
    program(w, ids, { policies: [] }, { refused: [badDeny.refused] });
    await probe(w, 'refused DENY', {
      from: 'teller',
      expect: { reason: 'policy_refused', policy: 'bad-deny', namespace: 'shop' },
    });

    // an unknown scope may apply anywhere: every destination denies
    const future = readAuthorization(
      { name: 'future', namespace: 'elsewhere', scope: 7, action: 'DENY' },
      'elsewhere/future',
    );
    assert.ok(future.errors);
    program(w, ids, { policies: [] }, { refused: [future.refused] });
    await probe(w, 'unknown scope', {
      from: 'local',
      expect: { reason: 'policy_refused', policy: 'future', namespace: 'elsewhere' },
    });

    // 33 alternatives in each of two clauses: 1089 terms, past the per-policy budget
    const many = (n: number, f: (i: number) => JsonObject): JsonObject[] =>
      Array.from({ length: n }, (_, i) => f(i));
    const huge = (action: 'ALLOW' | 'DENY') =>
      policy({
        name: `huge-${action.toLowerCase()}`,
        namespace: 'shop',
        scope: 'WORKLOAD_SELECTOR',
        action,
        groups: [
          [
            many(33, (i) => ({ destination_ports: [1000 + i] })),
            many(33, (i) => ({ source_ips: [cidr(`198.18.4.${i}/32`)] })),
          ],
        ],
      });
    program(w, ids, { policies: [huge('DENY')], listed: ['shop/huge-deny'] });
    await probe(w, 'unexpressible DENY', {
      from: 'node',
      expect: { reason: 'unexpressible', policy: 'huge-deny', namespace: 'shop' },
    });
    program(w, ids, { policies: [huge('ALLOW')], listed: ['shop/huge-allow'] });
    await probe(w, 'unexpressible ALLOW', {
      from: 'ratings',
      expect: { reason: 'no_allow_match', policy: '', namespace: 'shop' },
    });

    // a workload removed from the workload API: its address has no workload, so nothing to allow by
    const model = compile({ policies: [], refused: [], workloads: [], node: NODE }, ids);
    w.kernel.apply(model);
    await probe(w, 'unknown destination', {
      from: 'ratings',
      expect: { reason: 'unknown_destination', policy: '', namespace: '' },
    });

    // the pod talking to itself over loopback is never judged
    const self = new NetnsClient(env.cgroup, w.t.pod);
    env.defer(() => self.exit());
    for (const host of ['127.0.0.1', w.t.addr.pod]) {
      const r = await self.connect({ host, port: PORTS.main });
      assert.ok(r.ok, `the pod to itself at ${host}: ${r.err}`);
    }
    // IPv6 drops no packet from outside that claims the pod's own address: judged like any other
    const v6 = await self.connect({ host: w.t.addr.pod6, port: PORTS.main });
    assert.equal(
      v6.err,
      'ECONNREFUSED',
      'the pod to its own IPv6 address is judged (here: unknown destination)',
    );
    void exact;
  },
);

kernelTest(
  'authorization in the kernel: a new policy refuses new connections and closes the open ones it denies',
  async (t, env) => {
    const w = await world(env);
    const ids = new AuthzIds();
    program(w, ids, { policies: [] });
    const [ratings, teller] = w.t.addr.hosts as [string, string];
    const open = async (tag: string, localAddress: string) => {
      const r = await w.clients.host.connect({
        host: w.t.addr.pod,
        port: PORTS.main,
        localAddress,
        hold: true,
        tag,
      });
      assert.ok(r.ok, `${tag}: ${r.err}`);
    };
    await open('ratings', ratings);
    await open('teller', teller);
    await open('local', w.t.addr.local).catch(() => undefined);

    const denyRatings = policy({
      name: 'deny-ratings',
      namespace: 'shop',
      scope: 'NAMESPACE',
      action: 'DENY',
      groups: [[[{ principals: [exact('cluster.local/ns/shop/sa/ratings')] }]]],
    });
    const applied = program(w, ids, { policies: [denyRatings] });
    assert.equal(applied.closed, 1, 'one open connection closed');
    assert.deepEqual(applied.closeErrors, []);
    await eventually('the server saw the ratings connection close', () =>
      w.servers.events.some((e) => e.event === 'closed' && e.peer.startsWith(`${ratings}|`)),
    );
    // the client learns on its next write or read: a reset
    await w.clients.host.send('ratings');
    await eventually(
      'the client saw the reset',
      async () => (await w.clients.host.held('ratings')).closed === true,
    );
    assert.equal((await w.clients.host.held('teller')).closed, false, 'teller, still allowed, stays open');
    assert.ok(!w.servers.events.some((e) => e.event === 'closed' && e.peer.startsWith(`${teller}|`)));
    const counts = w.kernel.counts();
    assert.equal(
      total(counts, { reason: 'deny_policy', policy: 'deny-ratings', namespace: 'shop' }, true),
      1n,
    );
    await probe(w, 'after the update', {
      from: 'ratings',
      expect: { reason: 'deny_policy', policy: 'deny-ratings', namespace: 'shop' },
    });
    await probe(w, 'after the update', { from: 'teller', expect: 'allow' });

    // a second apply with nothing new closes nothing more
    const again = program(w, ids, { policies: [denyRatings] });
    assert.equal(again.changed, false);
    assert.equal(again.closed, 0);
  },
);

kernelTest(
  'authorization in the kernel: a term list that does not fit in km_authz_terms denies everything until it does',
  async (t, env) => {
    const w = await world(env, { km_authz_terms: 8 });
    const ids = new AuthzIds();
    // ten walked terms (two conditions each) for a table of eight slots, one of them the fallback's
    const wide = policy({
      name: 'wide',
      namespace: 'shop',
      scope: 'NAMESPACE',
      groups: [
        [
          Array.from({ length: 10 }, (_, i) => ({
            destination_ports: [PORTS.main],
            source_ips: [cidr(`198.18.4.${i}/32`)],
          })),
        ],
      ],
    });
    const applied = program(w, ids, { policies: [wide] });
    assert.ok(
      applied.overflowed.includes(w.t.addr.pod),
      `${w.t.addr.pod} did not fit: ${JSON.stringify(applied.overflowed)}`,
    );
    // ratings (198.18.4.2) is one of the allowed sources, yet nothing passes while the list is not there
    await probe(w, 'terms full', {
      from: 'ratings',
      expect: { reason: 'over_budget', policy: '', namespace: '' },
    });
    // a list that fits again is written in place of the fallback
    const narrow = policy({
      name: 'wide',
      namespace: 'shop',
      scope: 'NAMESPACE',
      groups: [[[{ destination_ports: [PORTS.main], source_ips: [cidr('198.18.4.2/32')] }]]],
    });
    const again = program(w, ids, { policies: [narrow] });
    assert.deepEqual(again.overflowed, []);
    await probe(w, 'fits again', { from: 'ratings', expect: 'allow' });
  },
);
