// Benchmark: what L4 authorization adds per connection, with 0, 10 and 1,000 policies on the node.
//   node --import tsx bench/authz.ts [connects=5000] [rounds=3]
// The server pod is a network namespace with bpf/authz.bpf.o's sk_lookup program attached; a client
// in another namespace ("another host") makes short connections (connect, 1 byte each way, close)
// with bench/sidecar-peer.c. The added cost is the program's own kernel time per run (BPF run-time
// statistics: run_time_ns / run_cnt), which is all authorization adds: it runs once per connection,
// on the SYN, and never on an established connection's packets (the last line counts its runs over
// 20,000 round trips on one connection). Needs root, bpffs, gcc; creates and removes its namespaces
// and pin directory. Numbers vary with load: run it alone.
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { enableStats } from '../native/index.js';
import { AuthzKernel } from '../src/authz/authz.js';
import { AuthzIds, compile } from '../src/authz/compile.js';
import { readAuthorization, readWorkload, type AuthzPolicy } from '../src/authz/policy.js';
import { createAuthzTopology } from '../test/support/authz-net.js';
import { cidr, exact, policy, workload } from '../test/support/authz-resources.js';
import { BPFFS } from '../test/support/kernel.js';
import type { JsonObject } from '../src/xds/types.js';
import { machine, median } from './common.js';

const connects = Number(process.argv[2] ?? 5000);
const rounds = Number(process.argv[3] ?? 3);
const PORT = 18080;
const NODE = 'node-1';
/** Other workloads of the node, each selected by its share of the node's policies. */
const OTHER_PODS = 99;

interface Scenario {
  name: string;
  policies: AuthzPolicy[];
  /** WORKLOAD_SELECTOR policies the destination lists. */
  listed: string[];
  /** Per other workload of the node, the policies it lists. */
  otherListed: (i: number) => string[];
}

/**
 * A policy that does not match the client (its principal is another one): the walk goes past it.
 * Half DENY, half ALLOW; the destination's last ALLOW is the one that allows the client.
 */
function filler(i: number, scope: 'WORKLOAD_SELECTOR' | 'NAMESPACE', walked = false): AuthzPolicy {
  const action = i % 2 ? 'DENY' : 'ALLOW';
  // one condition per match folds into the index; with a second (a source block) it is walked
  const extra: JsonObject = walked ? { not_source_ips: [cidr(`10.250.${i >> 8}.${i & 255}`)] } : {};
  const r = readAuthorization(
    policy({
      name: `p${i}`,
      namespace: 'shop',
      scope,
      action,
      groups: [
        [[{ principals: [exact(`cluster.local/ns/team-${i}/sa/client`)], ...extra }]],
        [[{ destination_ports: [9000 + (i % 500)], ...extra }]],
      ],
    }).resource,
    `shop/p${i}`,
  );
  if (r.errors) throw new Error(r.errors.join('; '));
  return r.policy;
}

function allowClient(scope: 'WORKLOAD_SELECTOR' | 'NAMESPACE'): AuthzPolicy {
  const r = readAuthorization(
    policy({
      name: 'allow-client',
      namespace: 'shop',
      scope,
      groups: [[[{ namespaces: [exact('clients')] }]]],
    }).resource,
    'shop/allow-client',
  );
  if (r.errors) throw new Error(r.errors.join('; '));
  return r.policy;
}

function scenarios(): Scenario[] {
  const none = (): string[] => [];
  const spread = (n: number): Scenario => {
    // n policies over the destination and 99 other pods: the destination lists n / 100 of them
    const perPod = n / (OTHER_PODS + 1);
    const ps = Array.from({ length: n - 1 }, (_, i) => filler(i, 'WORKLOAD_SELECTOR'));
    ps.push(allowClient('WORKLOAD_SELECTOR'));
    return {
      name: `${n} on the node, ${perPod} on the destination`,
      policies: ps,
      listed: [...ps.slice(0, perPod - 1).map((p) => p.key), 'shop/allow-client'],
      otherListed: (i) => ps.slice(perPod - 1 + i * perPod, perPod - 1 + (i + 1) * perPod).map((p) => p.key),
    };
  };
  const all = (n: number, walked = false): Scenario => {
    const ps = Array.from({ length: n - 1 }, (_, i) => filler(i, 'NAMESPACE', walked));
    ps.push(allowClient('NAMESPACE'));
    const name = `${n} on the node, all on the destination${walked ? ', two conditions per match' : ''}`;
    return { name, policies: ps, listed: [], otherListed: none };
  };
  return [
    { name: '0', policies: [], listed: [], otherListed: none },
    all(10),
    spread(1000),
    all(1000),
    all(1000, true),
  ];
}

async function main(): Promise<void> {
  const t = createAuthzTopology();
  const pinDir = join(BPFFS, `kernmesh-bench-authz-${process.pid}`);
  const work = mkdtempSync(join(tmpdir(), 'km-bench-authz-'));
  mkdirSync(pinDir);
  const stats = enableStats();
  let kernel: AuthzKernel | undefined;
  let server: ReturnType<typeof spawn> | undefined;
  const cleanup = (): void => {
    server?.kill('SIGKILL');
    kernel?.close();
    stats.close();
    t.remove();
    rmSync(pinDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  };
  try {
    const peer = join(work, 'sidecar-peer');
    execFileSync('gcc', [
      '-O2',
      '-Wall',
      '-o',
      peer,
      fileURLToPath(new URL('./sidecar-peer.c', import.meta.url)),
    ]);
    server = spawn('ip', ['netns', 'exec', t.pod, peer, 'server', t.addr.pod, String(PORT)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [first] = (await once(server.stdout!, 'data')) as [Buffer];
    if (!first.toString().startsWith('ready')) throw new Error(`server: ${first.toString()}`);
    // tens of thousands of short connections from one address: reuse TIME_WAIT ports (the host's
    // namespace is the benchmark's own)
    for (const kv of ['net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=10000 65000'])
      execFileSync('ip', ['netns', 'exec', t.host, 'sysctl', '-qw', kv]);
    kernel = AuthzKernel.open({ pinDir });
    kernel.attachNetns(t.podNetns);
    const program = kernel.object.program('km_authz_lookup');
    const peerRun = (args: string[]): string =>
      execFileSync('ip', ['netns', 'exec', t.host, peer, ...args], { encoding: 'utf8' }).trim();

    const rows: string[][] = [];
    for (const s of scenarios()) {
      const ids = new AuthzIds();
      const wl = [
        workload({ name: 'server', namespace: 'shop', ips: [t.addr.pod], node: NODE, policies: s.listed }),
        workload({ name: 'client', namespace: 'clients', ips: [t.addr.hosts[0]!], node: 'node-2' }),
        ...Array.from({ length: OTHER_PODS }, (_, i) =>
          workload({
            name: `pod-${i}`,
            namespace: 'shop',
            ips: [`10.200.${i >> 8}.${i & 255}`],
            node: NODE,
            policies: s.otherListed(i),
          }),
        ),
        ...Array.from({ length: 200 }, (_, i) =>
          workload({
            name: `src-${i}`,
            namespace: `team-${i}`,
            ips: [`10.201.${i >> 8}.${i & 255}`],
            node: 'node-3',
          }),
        ),
      ].map((x) => readWorkload(x.resource)!);
      let compileMs = 0;
      let writeMs = 0;
      const nsPerRun: number[] = [];
      const rate: number[] = [];
      let runsPerConnection = 0;
      let terms = 0;
      let denied = 0n;
      for (let r = 0; r < rounds; r++) {
        const t0 = process.hrtime.bigint();
        const model = compile({ policies: s.policies, refused: [], workloads: wl, node: NODE }, ids);
        const t1 = process.hrtime.bigint();
        const applied = kernel.apply(model);
        const t2 = process.hrtime.bigint();
        // the first round changes the maps (and re-judges open connections); later ones write nothing
        if (r === 0) {
          compileMs = Number(t1 - t0) / 1e6;
          writeMs = Number(t2 - t1) / 1e6;
        } else if (applied.changed)
          throw new Error(`${s.name}: the same model rewrote ${applied.ops} entries`);
        terms = model.dests.get(t.addr.pod)!.terms.length;
        const before = program.stats();
        const out = peerRun(['connect', t.addr.pod, String(PORT), String(connects)]);
        const after = program.stats();
        const runs = Number(after.runCount - before.runCount);
        const [perS, , , failures] = out.split(/\s+/).map(Number);
        if (failures) throw new Error(`${s.name}: ${failures} connects failed (${out})`);
        nsPerRun.push(Number(after.runTimeNs - before.runTimeNs) / runs);
        rate.push(perS ?? 0);
        runsPerConnection = runs / connects;
      }
      for (const c of kernel.counts()) if (!c.closed && !c.reason.startsWith('dry_run')) denied += c.value;
      if (denied > 0n)
        throw new Error(`${s.name}: ${denied} connections denied; the benchmark allows every one`);
      rows.push([
        s.name,
        String(s.policies.filter((p) => p.scope !== 'WORKLOAD_SELECTOR' || s.listed.includes(p.key)).length),
        String(terms),
        median(nsPerRun).toFixed(0),
        runsPerConnection.toFixed(2),
        median(rate).toFixed(0),
        compileMs.toFixed(1),
        writeMs.toFixed(1),
      ]);
    }
    // established connections never run it: one connection, 20,000 round trips
    const before = program.stats();
    peerRun(['pingpong', t.addr.pod, String(PORT), '64', '20000']);
    const after = program.stats();

    console.log(`L4 authorization — ${machine()}`);
    console.log(
      `${connects} connects per round, ${rounds} rounds (medians); every policy misses the client but the destination's ALLOW of its namespace, so every walked term is evaluated; compile and write times are the first round's (later rounds write nothing)\n`,
    );
    console.log(
      '| policies on the node | applying to the destination | terms walked | added ns per connection (km_authz_lookup) | program runs per connection | connections/s | compile ms | write + re-judge ms |',
    );
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of rows) console.log(`| ${r.join(' | ')} |`);
    console.log(
      `\none connection, 20000 round trips of 64 bytes: km_authz_lookup ran ${Number(after.runCount - before.runCount)} time(s)`,
    );
  } finally {
    cleanup();
  }
}

await main();
