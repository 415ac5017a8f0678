// Same-node acceleration benchmark: request/response latency (p50/p99) and bulk throughput between
// two local sockets, through the TCP/IP stack and through the sockmap, in one run, alternating the
// two modes round by round. Prints the medians, their ratio and the machine.
// Run as root: node --import tsx bench/accel.ts [rounds]
import { execFileSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Accelerator } from '../src/accel/accel.js';
import { BPFFS, cgroup2Mount, removeCgroup, spawnInCgroup } from '../test/support/kernel.js';
import { machine, median } from './common.js';

const ROUNDS = Number(process.argv[2] ?? 5);
const HOST = '127.0.0.1';
const PORT = '18080';
const PING_SIZE = 64;
const PING_COUNT = 20000;
const BULK_BYTES = 2 * 1024 ** 3;
const BULK_CHUNK = 64 << 10;

/** Runs a command inside the cgroup (the shell joins it, then execs). */
function inCgroup(cgroup: string, args: string[]): ChildProcess {
  return spawnInCgroup(cgroup, args[0]!, args.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
}

async function output(child: ChildProcess): Promise<string> {
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const [code] = (await once(child, 'close')) as [number];
  if (code !== 0) throw new Error(`${child.spawnargs.join(' ')} exited ${code}`);
  return out.trim();
}

async function main(): Promise<void> {
  const mount = cgroup2Mount();
  if (process.getuid?.() !== 0 || !mount) throw new Error('run as root on a machine with cgroup v2');
  const work = mkdtempSync(join(tmpdir(), 'kernmesh-bench-'));
  const peer = join(work, 'accel-peer');
  execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync('cc', ['-O2', '-Wall', '-o', peer, join('bench', 'accel-peer.c')], { stdio: 'inherit' });
  const cgroup = join(mount, `kernmesh-bench-${process.pid}`);
  const pinDir = join(BPFFS, `kernmesh-bench-${process.pid}`);
  mkdirSync(cgroup);
  mkdirSync(pinDir);
  let server: ChildProcess | undefined;
  let accel: Accelerator | undefined;
  let detach: (() => void) | undefined;
  try {
    accel = Accelerator.open({ pinDir });
    const attachment = accel.attach(cgroup);
    detach = () => attachment.detach();
    accel.setRules([]);
    server = inCgroup(cgroup, [peer, 'server', HOST, PORT]);
    await once(server.stdout!, 'data');

    const results: Record<'stack' | 'sockmap', { p50: number[]; p99: number[]; gbps: number[] }> = {
      stack: { p50: [], p99: [], gbps: [] },
      sockmap: { p50: [], p99: [], gbps: [] },
    };
    const redirectedBytes = { stack: 0n, sockmap: 0n };
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of ['stack', 'sockmap'] as const) {
        accel.setEnabled(mode === 'sockmap');
        const before = accel.counters().bytesRedirected;
        const [p50, p99] = (
          await output(
            inCgroup(cgroup, [peer, 'pingpong', HOST, PORT, String(PING_SIZE), String(PING_COUNT)]),
          )
        )
          .split(' ')
          .map(Number);
        const gbps = Number(
          await output(inCgroup(cgroup, [peer, 'bulk', HOST, PORT, String(BULK_BYTES), String(BULK_CHUNK)])),
        );
        redirectedBytes[mode] += accel.counters().bytesRedirected - before;
        results[mode].p50.push(p50!);
        results[mode].p99.push(p99!);
        results[mode].gbps.push(gbps);
      }
    }

    const rows: [string, number, number][] = [
      [`request/response p50 (µs, ${PING_SIZE} B)`, median(results.stack.p50), median(results.sockmap.p50)],
      [`request/response p99 (µs, ${PING_SIZE} B)`, median(results.stack.p99), median(results.sockmap.p99)],
      [
        `bulk throughput (Gbit/s, ${BULK_CHUNK >> 10} KiB writes)`,
        median(results.stack.gbps),
        median(results.sockmap.gbps),
      ],
    ];
    console.log(`kernmesh same-node acceleration — ${machine()}`);
    console.log(`${ROUNDS} rounds, modes alternated; medians over rounds; ratio = sockmap / stack`);
    console.log('');
    const w = Math.max(...rows.map((r) => r[0].length));
    console.log(
      `${'metric'.padEnd(w)}  ${'stack'.padStart(10)}  ${'sockmap'.padStart(10)}  ${'ratio'.padStart(7)}`,
    );
    for (const [name, stack, sockmap] of rows) {
      console.log(
        `${name.padEnd(w)}  ${stack.toFixed(2).padStart(10)}  ${sockmap.toFixed(2).padStart(10)}  ${(sockmap / stack).toFixed(2).padStart(7)}`,
      );
    }
    console.log('');
    console.log(
      `bytes through the sockmap: stack runs ${redirectedBytes.stack}, sockmap runs ${redirectedBytes.sockmap} ` +
        `(redirect failures ${accel.counters().redirectFailures})`,
    );
  } finally {
    server?.kill('SIGKILL');
    detach?.();
    accel?.close();
    removeCgroup(cgroup);
    rmSync(pinDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
