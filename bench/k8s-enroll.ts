// Benchmark: what enrolling a pod costs, for up to 110 pods on a node (Kubernetes' default maximum).
//   node --import tsx bench/k8s-enroll.ts [rounds=3] [connects=3000]
// (a) what the agent does: attach every program to each pod's cgroup through pinned bpf_links
//     (AgentKernel.enrollCgroup, as the enroller calls it);
// (b) the alternative: one program at the pods' parent and a map of enrolled pods keyed by cgroup id
//     (test/bpf/enroll_check.bpf.o): enrolling is one map update, but every connect of every pod on
//     the node pays the lookup.
// Kernel memory is the change of Slab + Percpu + VmallocUsed in /proc/meminfo across the enrollment:
// machine-wide, so other work on the machine adds noise; medians over rounds. Needs root, bpffs and
// cgroup v2; creates and removes its own cgroups and pin directories.
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';

import { BpfObject, enableStats } from '../native/index.js';
import { AgentKernel } from '../src/agent/kernel.js';
import { loadConfig } from '../src/config/config.js';
import { cgroupId } from '../src/k8s/cgroups.js';
import { BPFFS, cgroup2Mount, removeCgroup } from '../test/support/kernel.js';
import { Client, startBackend } from '../test/support/net.js';
import { machine, median } from './common.js';

const rounds = Number(process.argv[2] ?? 3);
const connects = Number(process.argv[3] ?? 3000);
const SIZES = [1, 10, 50, 110];
const RESOLUTION_KIB = 64;
const log = pino({ level: 'silent' });

const root = join(cgroup2Mount()!, `kernmesh-bench-k8s-${process.pid}`);
const kubepods = join(root, 'kubepods.slice');
const pinRoot = join(BPFFS, `kernmesh-bench-k8s-${process.pid}`);

function kernelKiB(): number {
  const m = readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(m)?.[1] ?? 0);
  return kb('Slab') + kb('Percpu') + kb('VmallocUsed');
}

const QOS = ['Guaranteed', 'Burstable', 'BestEffort'] as const;

/** n pods in the systemd driver's layout, a third of each QoS class, each with one container cgroup. */
function makePods(n: number, round: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const uid = `0000${round}-0000-4000-8000-${String(i).padStart(12, '0')}`.replace(/-/g, '_');
    const q = QOS[i % 3]!;
    const pod =
      q === 'Guaranteed'
        ? join(kubepods, `kubepods-pod${uid}.slice`)
        : join(kubepods, `kubepods-${q.toLowerCase()}.slice`, `kubepods-${q.toLowerCase()}-pod${uid}.slice`);
    mkdirSync(join(pod, 'cri-containerd-app.scope'), { recursive: true });
    out.push(pod);
  }
  return out;
}

function removePods(pods: string[]): void {
  for (const p of pods) {
    removeCgroup(join(p, 'cri-containerd-app.scope'));
    removeCgroup(p);
  }
}

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

function openKernel(pinDir: string): AgentKernel {
  mkdirSync(pinDir, { recursive: true });
  const config = loadConfig(
    ['--xds-file', '/dev/null', '--bpffs', pinDir, '--kubernetes', '--node-name', 'bench'],
    {},
    {
      checkFiles: false,
    },
  );
  return AgentKernel.open(config, log, { stats: false });
}

interface Row {
  pods: number;
  links: number;
  enrollMs: number[];
  memKiB: number[];
  unenrollMs: number[];
  forgetMs: number[];
  mapUpdateUs: number[];
  mapMemKiB: number[];
}

async function main(): Promise<void> {
  mkdirSync(kubepods, { recursive: true });
  for (const q of ['burstable', 'besteffort']) mkdirSync(join(kubepods, `kubepods-${q}.slice`));
  mkdirSync(pinRoot);
  const rows: Row[] = SIZES.map((pods) => ({
    pods,
    links: 0,
    enrollMs: [],
    memKiB: [],
    unenrollMs: [],
    forgetMs: [],
    mapUpdateUs: [],
    mapMemKiB: [],
  }));
  const started = Date.now();
  try {
    for (let r = 0; r < rounds; r++)
      for (const row of rows) {
        // (a) per-pod attachment
        const pinDir = join(pinRoot, `a-${r}-${row.pods}`);
        const kernel = openKernel(pinDir);
        const pods = makePods(row.pods, r);
        const m0 = kernelKiB();
        const perPod: number[] = [];
        for (const p of pods) {
          const t0 = process.hrtime.bigint();
          kernel.enrollCgroup(p);
          perPod.push(ms(t0));
        }
        const m1 = kernelKiB();
        row.links = readdirSync(pinDir).filter((f) => f.startsWith('link_')).length / row.pods;
        row.enrollMs.push(median(perPod));
        row.memKiB.push((m1 - m0) / row.pods);
        const un: number[] = [];
        const fo: number[] = [];
        for (const p of pods) {
          let t0 = process.hrtime.bigint();
          kernel.unenrollCgroup(cgroupId(p));
          un.push(ms(t0));
          t0 = process.hrtime.bigint();
          kernel.forgetCgroup(cgroupId(p));
          fo.push(ms(t0));
        }
        row.unenrollMs.push(median(un));
        row.forgetMs.push(median(fo));
        await kernel.close();
        rmSync(pinDir, { recursive: true, force: true });

        // (b) one map entry per pod
        const bDir = join(pinRoot, `b-${r}-${row.pods}`);
        mkdirSync(bDir);
        const check = BpfObject.open(new URL('../test/bpf/enroll_check.bpf.o', import.meta.url).pathname, {
          pinDir: bDir,
        });
        const map = check.map('km_bench_enrolled');
        const key = (p: string): Buffer => {
          const b = Buffer.alloc(8);
          b.writeBigUInt64LE(BigInt(cgroupId(p)));
          return b;
        };
        const n0 = kernelKiB();
        const upd: number[] = [];
        for (const p of pods) {
          const t0 = process.hrtime.bigint();
          map.update(key(p), Buffer.from([1]));
          upd.push(ms(t0) * 1000);
        }
        row.mapMemKiB.push((kernelKiB() - n0) / row.pods);
        row.mapUpdateUs.push(median(upd));
        check.close();
        rmSync(bDir, { recursive: true, force: true });
        removePods(pods);
      }

    // per connect: (b)'s check at the parent, against the routing program (a) already runs
    const pinDir = join(pinRoot, 'connect');
    const kernel = openKernel(pinDir);
    const [pod] = makePods(1, 9);
    kernel.enrollCgroup(pod!);
    const check = BpfObject.open(new URL('../test/bpf/enroll_check.bpf.o', import.meta.url).pathname, {
      pinDir: join(pinRoot, 'connect-b'),
    });
    const level = Buffer.alloc(8);
    // depth of a Guaranteed pod: the bench root's depth + 2 (kubepods.slice, the pod)
    level.writeBigUInt64LE(BigInt(root.split('/').length - cgroup2Mount()!.split('/').length + 2));
    check.map('km_bench_check').update(Buffer.from([0, 0, 0, 0]), level);
    const enrolledKey = Buffer.alloc(8);
    enrolledKey.writeBigUInt64LE(BigInt(cgroupId(pod!)));
    check.map('km_bench_enrolled').update(enrolledKey, Buffer.from([1]));
    const link = check.program('km_bench_check4').attachCgroup(kubepods);
    const stats = enableStats();
    const backend = await startBackend('127.0.0.2');
    const client = new Client(join(pod!, 'cri-containerd-app.scope'));
    const connect4 = kernel.dataplane.programs().find((p) => p.name === 'km_connect4')!;
    const probe = check.program('km_bench_check4');
    const before = { check: probe.stats(), route: connect4.stats() };
    const res = await client.batch({
      host: backend.address,
      port: backend.port,
      count: connects,
      concurrency: 4,
    });
    const after = { check: probe.stats(), route: connect4.stats() };
    const hits = check
      .map('km_bench_check')
      .lookup(Buffer.from([1, 0, 0, 0]))!
      .readBigUInt64LE(0);
    await client.exit();
    await backend.close();
    stats.close();
    link.detach();
    link.close();
    check.close();
    await kernel.close();
    removePods([pod!]);
    const perRun = (a: { runTimeNs: bigint; runCount: bigint }, b: typeof a): number =>
      Number(b.runTimeNs - a.runTimeNs) / Math.max(1, Number(b.runCount - a.runCount));

    const f = (xs: number[], d = 2): string => median(xs).toFixed(d);
    // /proc/meminfo moves by whole slab pages, and partly used pages absorb small allocations
    const mem = (perPodKiB: number[], pods: number): string =>
      median(perPodKiB) * pods < RESOLUTION_KIB ? `n/r` : `${f(perPodKiB, 1)} KiB`;
    console.log(`pod enrollment — ${machine()}`);
    console.log(
      `${rounds} rounds in ${((Date.now() - started) / 1000).toFixed(0)} s; medians over rounds (per pod: the median pod of a round); load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
    );
    console.log('');
    console.log(
      '| enrolled pods | (a) links per pod | (a) enroll per pod | (a) kernel memory per pod | (a) unenroll per pod | (a) pod gone per pod | (b) map update per pod | (b) kernel memory per pod |',
    );
    console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const row of rows)
      console.log(
        `| ${row.pods} | ${row.links} | ${f(row.enrollMs)} ms | ${mem(row.memKiB, row.pods)} | ${f(row.unenrollMs)} ms | ${f(row.forgetMs)} ms | ${f(row.mapUpdateUs, 1)} µs | ${mem(row.mapMemKiB, row.pods)} |`,
      );
    console.log(
      `n/r: the change in all was under ${RESOLUTION_KIB} KiB, below what /proc/meminfo resolves on a shared machine`,
    );
    console.log('');
    console.log(
      `per connect (${connects} connects from an enrolled pod, ${res.filter((x) => !x.ok).length} failed, ${hits} found enrolled by (b)): ` +
        `(b)'s check at the parent ${perRun(before.check, after.check).toFixed(0)} ns, paid by every pod of the node; ` +
        `(a)'s km_connect4 (not a VIP: one frontend miss) ${perRun(before.route, after.route).toFixed(0)} ns, paid only by enrolled pods`,
    );
  } finally {
    removeTree(root);
    rmSync(pinRoot, { recursive: true, force: true });
  }
}

function removeTree(dir: string): void {
  try {
    for (const e of readdirSync(dir, { withFileTypes: true }))
      if (e.isDirectory()) removeTree(join(dir, e.name));
  } catch {
    return;
  }
  removeCgroup(dir);
}

await main();
