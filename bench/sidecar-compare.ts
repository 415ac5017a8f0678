// The mission benchmark: a client reaching a service of 3 loopback backends (a) directly, (b) through
// a VIP that kernmesh's BPF programs rewrite at connect(), (c) through a user-space L4 proxy as a
// sidecar would put in the path (haproxy in TCP mode), one hop (client sidecar) and two hops
// (client sidecar + server sidecar). Measures short connections, request/response on a persistent
// connection, bulk throughput, and the data path's own CPU and memory. Prints a table of medians
// over rounds, ratios, and the machine it ran on. Numbers vary with load: run it alone.
//   node --import tsx bench/sidecar-compare.ts [rounds=7] [connects=5000] [pings=20000] [bulkMiB=1024]
// Needs root, bpffs, cgroup v2, gcc, bpf/route.bpf.o and the native addon; installs the Debian
// package haproxy if missing (rows (c) are skipped, with a note, when that fails). Creates and
// removes its own cgroups, pin directory, temp dir and processes, also on failure or Ctrl-C.
// KERNMESH_BENCH_CPUS=0 (a taskset list) pins every process of the run there: no cross-CPU wake-ups,
// so the proxies' cost shows as CPU time rather than as the machine's wake-up latency.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { enableStats } from '../native/index.js';
import { Dataplane } from '../src/dataplane/dataplane.js';
import { bpfObjectPath } from '../native/objects.js';
import type { DesiredState } from '../src/dataplane/model.js';
import {
  BPFFS,
  cgroup2Mount,
  kernelUnavailable,
  removeCgroup,
  spawnInCgroup,
} from '../test/support/kernel.js';
import { machine, median } from './common.js';

const ROUNDS = Number(process.argv[2] ?? 7);
const CONNECTS = Number(process.argv[3] ?? 5000);
const PINGS = Number(process.argv[4] ?? 20000);
const BULK_BYTES = Number(process.argv[5] ?? 1024) * 2 ** 20;
const PIN_CPUS = process.env.KERNMESH_BENCH_CPUS;
const PING_SIZE = 64;
const BULK_CHUNK = 64 << 10;

// Addresses of this benchmark only, all loopback; the VIP is in the service range 127.100.0.0/16.
const BACKENDS = ['127.77.1.1', '127.77.1.2', '127.77.1.3'];
const BACKEND_PORT = 18181;
const SERVER_SIDECARS = ['127.77.2.1', '127.77.2.2', '127.77.2.3'];
const SERVER_SIDECAR_PORT = 15006;
const CLIENT_SIDECAR = '127.77.3.1';
const ONE_HOP_PORT = 15001;
const TWO_HOP_PORT = 15002;
const VIP = '127.100.77.1';
const VIP_PORT = 8080;
const SERVICE = 'outbound|8080||bench.sidecar-compare.svc.cluster.local';

type PathKey = 'direct' | 'kernmesh' | 'oneHop' | 'twoHops';
type Phase = 'connect' | 'pingpong' | 'bulk';

interface Path {
  key: PathKey;
  title: string;
  cgroup: string;
  host: string;
  port: number;
  /** Where short connections go when not to `host`: the direct client takes the backends in turn. */
  connectHosts?: string;
  /** haproxy processes on this path, whose CPU and RSS count as the data path's. */
  proxies: ChildProcess[];
}

interface Samples {
  connRate: number[];
  connP50: number[];
  connP99: number[];
  pingP50: number[];
  pingP99: number[];
  gbps: number[];
  failedConnects: number;
  /** Data-path CPU in ns per phase, summed over rounds (proxy processes, or kernmesh's programs). */
  cpuNs: Record<Phase, number>;
  /** What cpuNs was spent on: connections, requests, bytes. */
  work: Record<Phase, number>;
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** utime + stime of a process in ns, from /proc/<pid>/stat (fields 14 and 15, in clock ticks). */
function processCpuNs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the command name may hold spaces and parentheses: fields are counted after its last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) / CLK_TCK) * 1e9;
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}

/** Cumulative run time of programs by id, from the kernel's BPF stats (enabled while we hold them). */
function programRunNs(ids: number[]): number {
  const progs = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' })) as {
    id: number;
    run_time_ns?: number;
  }[];
  return progs.filter((p) => ids.includes(p.id)).reduce((sum, p) => sum + (p.run_time_ns ?? 0), 0);
}

function linkProgramId(pinned: string): number {
  const link = JSON.parse(
    execFileSync('bpftool', ['-j', 'link', 'show', 'pinned', pinned], { encoding: 'utf8' }),
  ) as { prog_id: number };
  return link.prog_id;
}

/** Bytes the kernel charges for a map, from the fdinfo of our own fd. */
function mapMemlock(fd: number): number {
  return Number(/memlock:\s*(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? 0);
}

/** spawnInCgroup, under taskset when KERNMESH_BENCH_CPUS is set (taskset execs: the pid stays). */
function spawnIn(cgroup: string, cmd: string, args: string[]): ChildProcess {
  return PIN_CPUS
    ? spawnInCgroup(cgroup, 'taskset', ['-c', PIN_CPUS, cmd, ...args])
    : spawnInCgroup(cgroup, cmd, args);
}

async function output(child: ChildProcess, what: string): Promise<string> {
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  if (code !== 0) throw new Error(`${what} exited ${code}: ${err.trim()}`);
  return out.trim();
}

async function waitListening(
  host: string,
  port: number,
  proc: ChildProcess,
  log: () => string,
): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (proc.exitCode !== null) throw new Error(`haproxy exited ${proc.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`haproxy does not listen on ${host}:${port}: ${log()}`);
}

/** haproxy on PATH, installing the Debian package once if it is missing; undefined with a reason if not. */
function haproxyPreflight(): { version: string } | { missing: string } {
  const version = (): string =>
    execFileSync('haproxy', ['-v'], { encoding: 'utf8' })
      .split('\n')[0]!
      .replace(/ - https.*/, '');
  try {
    return { version: version() };
  } catch {
    console.error('haproxy not found: installing the Debian package (apt-get install -y haproxy) ...');
  }
  try {
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'haproxy'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    return { version: version() };
  } catch (e) {
    return {
      missing: `haproxy not available after apt-get install haproxy (${(e as Error).message.split('\n')[0]})`,
    };
  }
}

const HAPROXY_DEFAULTS = `global
  # one worker thread per sidecar, the client and server loops being single connections
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
`;

function clientSidecarConfig(): string {
  const servers = (addrs: string[], port: number): string =>
    addrs.map((a, i) => `  server s${i} ${a}:${port}\n`).join('');
  return (
    HAPROXY_DEFAULTS +
    `listen to_backends\n  bind ${CLIENT_SIDECAR}:${ONE_HOP_PORT}\n  balance roundrobin\n` +
    servers(BACKENDS, BACKEND_PORT) +
    `listen to_server_sidecars\n  bind ${CLIENT_SIDECAR}:${TWO_HOP_PORT}\n  balance roundrobin\n` +
    servers(SERVER_SIDECARS, SERVER_SIDECAR_PORT)
  );
}

function serverSidecarConfig(i: number): string {
  return (
    HAPROXY_DEFAULTS +
    `listen inbound\n  bind ${SERVER_SIDECARS[i]}:${SERVER_SIDECAR_PORT}\n` +
    `  server app ${BACKENDS[i]}:${BACKEND_PORT}\n`
  );
}

function desired(): DesiredState {
  return {
    services: [
      {
        name: SERVICE,
        kind: 'endpoints',
        // the proxies balance round-robin too
        lbPolicy: 'round_robin',
        endpoints: BACKENDS.map((address) => ({
          address,
          port: BACKEND_PORT,
          weight: 1,
          priority: 0,
          health: 'healthy' as const,
        })),
      },
    ],
    frontends: [{ address: VIP, port: VIP_PORT, protocol: 'tcp', service: SERVICE }],
  };
}

const fmt = (x: number, digits: number): string =>
  Number.isFinite(x)
    ? x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '—';

// a CPU ratio over near-zero kernel time is noise in the digits: past 100 only the order matters
function twoHopsOverKernmesh(twoHops: number, kernmesh: number): string {
  if (!(kernmesh > 0)) return '—';
  const r = twoHops / kernmesh;
  return r > 100 ? '> 100' : fmt(r, 2);
}

async function main(): Promise<void> {
  const why = kernelUnavailable();
  const mount = cgroup2Mount();
  if (why || !mount) throw new Error(`cannot run the kernel side here: ${why ?? 'no cgroup v2'}`);
  const routeObject = bpfObjectPath('route.bpf.o');
  const haproxy = haproxyPreflight();

  const tag = `kernmesh-bench-sidecar-${process.pid}`;
  const work = mkdtempSync(join(tmpdir(), 'kernmesh-bench-sidecar-'));
  const meshCgroup = join(mount, `${tag}-mesh`);
  const plainCgroup = join(mount, `${tag}-plain`);
  const pinDir = join(BPFFS, tag);
  const children: ChildProcess[] = [];
  let dp: Dataplane | undefined;
  let stats: { close(): void } | undefined;
  let cleaned = false;
  const cleanup = (): void => {
    if (cleaned) return;
    cleaned = true;
    for (const c of children) c.kill('SIGKILL');
    stats?.close();
    try {
      dp?.detach(meshCgroup);
    } catch (e) {
      console.error(`detach from ${meshCgroup}: ${(e as Error).message}`);
    }
    // removeCgroup kills whatever is left inside (backends, proxies, clients)
    removeCgroup(meshCgroup);
    removeCgroup(plainCgroup);
    rmSync(pinDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanup();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    mkdirSync(meshCgroup);
    mkdirSync(plainCgroup);
    mkdirSync(pinDir);
    const peer = join(work, 'sidecar-peer');
    const source = fileURLToPath(new URL('./sidecar-peer.c', import.meta.url));
    execFileSync('gcc', ['-O2', '-Wall', '-o', peer, source], { stdio: 'inherit' });

    // backends and proxies live in the plain cgroup: no kernmesh program sees their sockets
    for (const address of BACKENDS) {
      const server = spawnIn(plainCgroup, peer, ['server', address, String(BACKEND_PORT)]);
      children.push(server);
      const [first] = (await once(server.stdout!, 'data')) as [Buffer];
      if (!first.toString().startsWith('ready')) throw new Error(`backend ${address}: ${first.toString()}`);
    }

    dp = Dataplane.open({ pinDir, objectPath: routeObject });
    const attachments = dp.attach(meshCgroup);
    const applied = await dp.apply(desired());
    if (applied.refused.length) throw new Error(`kernmesh refused: ${JSON.stringify(applied.refused)}`);
    stats = enableStats();
    const programIds = attachments.flatMap((a) => (a.pinned ? [linkProgramId(a.pinned)] : []));

    const paths: Path[] = [
      {
        key: 'direct',
        title: 'direct',
        cgroup: plainCgroup,
        host: BACKENDS[0]!,
        // like the VIP and the proxies, spread short connections over the 3 backends
        connectHosts: BACKENDS.join(','),
        port: BACKEND_PORT,
        proxies: [],
      },
      { key: 'kernmesh', title: 'kernmesh', cgroup: meshCgroup, host: VIP, port: VIP_PORT, proxies: [] },
    ];
    const notes: string[] = [];
    if ('version' in haproxy) {
      const start = (name: string, config: string): ChildProcess => {
        const file = join(work, `${name}.cfg`);
        writeFileSync(file, config);
        const proc = spawnIn(plainCgroup, 'haproxy', ['-db', '-f', file]);
        let log = '';
        // haproxy's notices go to stderr; keep the tail for errors and keep the pipe drained
        proc.stderr!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-2000)));
        proc.stdout!.resume();
        Object.assign(proc, { log: () => log });
        children.push(proc);
        return proc;
      };
      const logOf = (p: ChildProcess) => (): string => (p as ChildProcess & { log(): string }).log();
      const clientSide = start('client-sidecar', clientSidecarConfig());
      const serverSide = SERVER_SIDECARS.map((_, i) => start(`server-sidecar-${i}`, serverSidecarConfig(i)));
      await waitListening(CLIENT_SIDECAR, ONE_HOP_PORT, clientSide, logOf(clientSide));
      await waitListening(CLIENT_SIDECAR, TWO_HOP_PORT, clientSide, logOf(clientSide));
      for (const [i, p] of serverSide.entries())
        await waitListening(SERVER_SIDECARS[i]!, SERVER_SIDECAR_PORT, p, logOf(p));
      paths.push(
        {
          key: 'oneHop',
          title: 'haproxy, 1 hop',
          cgroup: plainCgroup,
          host: CLIENT_SIDECAR,
          port: ONE_HOP_PORT,
          proxies: [clientSide],
        },
        {
          key: 'twoHops',
          title: 'haproxy, 2 hops',
          cgroup: plainCgroup,
          host: CLIENT_SIDECAR,
          port: TWO_HOP_PORT,
          proxies: [clientSide, ...serverSide],
        },
      );
    } else {
      notes.push(`rows (c) skipped: ${haproxy.missing}`);
    }

    const run = async (path: Path, args: string[]): Promise<string> => {
      const host = args[0] === 'connect' ? (path.connectHosts ?? path.host) : path.host;
      return output(
        spawnIn(path.cgroup, peer, [args[0]!, host, String(path.port), ...args.slice(1)]),
        args[0]!,
      );
    };
    const dataPathNs = (path: Path): number =>
      path.key === 'kernmesh'
        ? programRunNs(programIds)
        : path.proxies.reduce((sum, p) => sum + processCpuNs(p.pid!), 0);

    const routedBefore = dp.counters().find((c) => c.service === SERVICE)?.counters.routed ?? 0n;
    let vipConnects = 0;
    // warm-up: caches, the proxies' first connections, the TIME_WAIT steady state
    for (const path of paths) {
      await run(path, ['connect', '500']);
      await run(path, ['pingpong', String(PING_SIZE), '1000']);
      if (path.key === 'kernmesh') vipConnects += 501;
    }

    const samples = new Map<PathKey, Samples>(
      paths.map((p) => [
        p.key,
        {
          connRate: [],
          connP50: [],
          connP99: [],
          pingP50: [],
          pingP99: [],
          gbps: [],
          failedConnects: 0,
          cpuNs: { connect: 0, pingpong: 0, bulk: 0 },
          work: { connect: 0, pingpong: 0, bulk: 0 },
        },
      ]),
    );
    const loadBefore = loadavg()[0]!;
    const t0 = Date.now();
    for (let round = 0; round < ROUNDS; round++) {
      // a different path goes first each round, so a burst of load does not always hit the same one
      const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
      for (const path of order) {
        const s = samples.get(path.key)!;
        const measure = async (phase: Phase, args: string[], work: number): Promise<string> => {
          const before = dataPathNs(path);
          const out = await run(path, args);
          s.cpuNs[phase] += dataPathNs(path) - before;
          s.work[phase] += work;
          return out;
        };
        const [rate, c50, c99, failed] = (await measure('connect', ['connect', String(CONNECTS)], CONNECTS))
          .split(' ')
          .map(Number);
        s.connRate.push(rate!);
        s.connP50.push(c50!);
        s.connP99.push(c99!);
        s.failedConnects += failed!;
        const [p50, p99] = (await measure('pingpong', ['pingpong', String(PING_SIZE), String(PINGS)], PINGS))
          .split(' ')
          .map(Number);
        s.pingP50.push(p50!);
        s.pingP99.push(p99!);
        s.gbps.push(
          Number(await measure('bulk', ['bulk', String(BULK_BYTES), String(BULK_CHUNK)], BULK_BYTES)),
        );
        if (path.key === 'kernmesh') vipConnects += CONNECTS + 2;
      }
    }
    const seconds = (Date.now() - t0) / 1000;
    const loadAfter = loadavg()[0]!;
    const routed = (dp.counters().find((c) => c.service === SERVICE)?.counters.routed ?? 0n) - routedBefore;
    // the kernmesh row must really have gone through the programs, one routed connect per connection
    if (routed < BigInt(vipConnects - samples.get('kernmesh')!.failedConnects))
      throw new Error(
        `kernmesh routed ${routed} connects, expected ${vipConnects}: the VIP was not rewritten`,
      );

    const rss = (p: Path): number => p.proxies.reduce((sum, x) => sum + rssKiB(x.pid!), 0) / 1024;
    const mapsMiB =
      dp
        .readActual()
        .maps.map((m) => mapMemlock(dp!.map(m.name).fd))
        .reduce((a, b) => a + b, 0) /
      2 ** 20;

    // ---- the table ----
    const has = (k: PathKey): boolean => samples.has(k);
    const cols = paths.map((p) => p.key);
    type Row = { metric: string; value: (s: Samples, p: Path) => number; digits: number; cost?: boolean };
    const perTenK = (phase: Phase) => (s: Samples) => (s.cpuNs[phase] / 1e6 / s.work[phase]) * 10_000;
    const rows: Row[] = [
      {
        metric: 'new connections/s (sequential, connect + 1 B echo + close)',
        value: (s) => median(s.connRate),
        digits: 0,
      },
      { metric: 'connect + first byte p50 (µs)', value: (s) => median(s.connP50), digits: 1 },
      { metric: 'connect + first byte p99 (µs)', value: (s) => median(s.connP99), digits: 1 },
      {
        metric: `request/response p50 (µs, ${PING_SIZE} B, persistent)`,
        value: (s) => median(s.pingP50),
        digits: 1,
      },
      {
        metric: `request/response p99 (µs, ${PING_SIZE} B, persistent)`,
        value: (s) => median(s.pingP99),
        digits: 1,
      },
      {
        metric: `bulk throughput (Gbit/s, one connection, ${BULK_CHUNK >> 10} KiB writes)`,
        value: (s) => median(s.gbps),
        digits: 2,
      },
      { metric: 'data-path CPU per 10k connections (ms)', value: perTenK('connect'), digits: 1, cost: true },
      { metric: 'data-path CPU per 10k requests (ms)', value: perTenK('pingpong'), digits: 2, cost: true },
      {
        metric: 'data-path CPU per GiB bulk (ms)',
        value: (s) => (s.cpuNs.bulk / 1e6 / s.work.bulk) * 2 ** 30,
        digits: 1,
        cost: true,
      },
      {
        metric: 'proxy RSS after the run (MiB)',
        value: (_s, p) => (p.key === 'kernmesh' ? 0 : rss(p)),
        digits: 1,
        cost: true,
      },
    ];
    const header = ['metric', ...paths.map((p) => p.title), ...(has('twoHops') ? ['2 hops ÷ kernmesh'] : [])];
    const table: string[][] = rows.map((r) => {
      const v = (k: PathKey): number =>
        r.value(
          samples.get(k)!,
          paths.find((p) => p.key === k)!,
        );
      const base = v('direct');
      const cells = cols.map((k) => {
        if (r.cost) return k === 'direct' ? '—' : fmt(v(k), r.digits);
        return k === 'direct' ? fmt(v(k), r.digits) : `${fmt(v(k), r.digits)} (×${fmt(v(k) / base, 2)})`;
      });
      const ratio = has('twoHops') ? [twoHopsOverKernmesh(v('twoHops'), v('kernmesh'))] : [];
      return [r.metric, ...cells, ...ratio];
    });
    const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
    const line = (cells: string[]): string =>
      `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;

    console.log(`kernmesh vs a user-space sidecar proxy — ${machine()}`);
    if ('version' in haproxy) console.log(`proxy: ${haproxy.version}, TCP mode, 1 thread per sidecar`);
    console.log(
      PIN_CPUS
        ? `every process pinned to CPU ${PIN_CPUS}`
        : 'processes not pinned (the scheduler places them)',
    );
    console.log(
      `${ROUNDS} rounds in ${seconds.toFixed(0)} s, paths rotated each round; ${CONNECTS} connections, ` +
        `${PINGS} requests, ${BULK_BYTES >> 20} MiB bulk per path per round; load average ` +
        `${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after`,
    );
    console.log(
      'medians over rounds; (×r) = ratio to direct; data-path CPU = proxy processes (utime+stime),',
    );
    console.log(
      "or for kernmesh the kernel's run time of its BPF programs; failed connects: " +
        cols.map((k) => `${k} ${samples.get(k)!.failedConnects}`).join(', '),
    );
    console.log('');
    console.log(line(header));
    console.log(
      `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`,
    );
    for (const r of table) console.log(line(r));
    console.log('');
    console.log(
      `kernmesh: ${routed} connects routed by the BPF programs (expected ${vipConnects}); ` +
        `its maps take ${mapsMiB.toFixed(1)} MiB of kernel memory per node (sized for the default capacity), ` +
        `no per-pod process`,
    );
    // the spread over rounds says how far a median can be trusted on this machine at this load
    const range = (xs: number[], digits: number): string =>
      `${fmt(Math.min(...xs), digits)}–${fmt(Math.max(...xs), digits)}`;
    console.log('per-round range (min–max): connections/s | request/response p50 µs | bulk Gbit/s');
    for (const p of paths) {
      const s = samples.get(p.key)!;
      console.log(
        `  ${p.title.padEnd(16)} ${range(s.connRate, 0)} | ${range(s.pingP50, 1)} | ${range(s.gbps, 2)}`,
      );
    }
    for (const n of notes) console.log(n);
  } finally {
    await dp?.close().catch(() => {});
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
