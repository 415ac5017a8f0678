// Benchmark: cost of connect-time routing and of programming the maps.
//   node --import tsx bench/route-connect.ts [connects=20000] [services=2000]
// Needs root, bpffs and cgroup v2 (like the kernel tests); creates and removes its own cgroup and
// pin directory. Prints a table with the machine it ran on. Numbers vary with load: run it alone.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { Dataplane } from '../src/dataplane/dataplane.js';
import type { DesiredState, Service } from '../src/dataplane/model.js';
import { BPFFS, cgroup2Mount, removeCgroup } from '../test/support/kernel.js';
import { Client, startBackend } from '../test/support/net.js';
import { machine } from './common.js';

const connects = Number(process.argv[2] ?? 20000);
const serviceCount = Number(process.argv[3] ?? 2000);

function services(n: number, backendPort: number, gen: number): DesiredState {
  const list: Service[] = [];
  for (let i = 0; i < n; i++)
    list.push({
      name: `outbound|80||svc-${i}.bench.svc.cluster.local`,
      kind: 'endpoints',
      lbPolicy: 'random',
      endpoints: [0, 1, 2].map((k) => ({
        address: `127.0.${1 + ((i * 3 + k + gen) % 250)}.${1 + (i % 250)}`,
        port: backendPort,
        weight: 1 + k,
        priority: 0,
        health: 'healthy' as const,
      })),
    });
  // the last service leads to the real backend the connect loop uses
  list[n - 1]!.endpoints = [
    { address: '127.0.0.2', port: backendPort, weight: 1, priority: 0, health: 'healthy' },
  ];
  return {
    services: list,
    frontends: list.map((s, i) => ({
      address: `127.100.${i >> 8}.${i & 255}`,
      port: 80,
      protocol: 'tcp' as const,
      service: s.name,
    })),
  };
}

async function main(): Promise<void> {
  const mount = cgroup2Mount();
  if (!mount) throw new Error('no cgroup v2 mount');
  const tag = `kernmesh-bench-route-${process.pid}`;
  const cgroup = join(mount, tag);
  const pinDir = join(BPFFS, tag);
  mkdirSync(cgroup);
  mkdirSync(pinDir);
  const backend = await startBackend('127.0.0.2');
  const dp = Dataplane.open({ pinDir });
  const client = new Client(cgroup);
  const rows: [string, string][] = [];
  try {
    dp.attach(cgroup);
    let t = process.hrtime.bigint();
    const first = await dp.apply(services(serviceCount, backend.port, 0));
    rows.push([
      `apply ${serviceCount} new services`,
      `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(1)} ms, ${first.ops.length} map ops`,
    ]);
    t = process.hrtime.bigint();
    const same = await dp.apply(services(serviceCount, backend.port, 0));
    rows.push([
      `re-apply unchanged`,
      `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(1)} ms, ${same.ops.length} map ops`,
    ]);
    t = process.hrtime.bigint();
    const moved = await dp.apply(services(serviceCount, backend.port, 1));
    rows.push([
      `apply with every endpoint moved`,
      `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(1)} ms, ${moved.ops.length} map ops`,
    ]);

    const vip = `127.100.${(serviceCount - 1) >> 8}.${(serviceCount - 1) & 255}`;
    for (const [label, host, port] of [
      ['connects to the backend directly', backend.address, backend.port],
      [`connects via a VIP (${serviceCount} services)`, vip, 80],
    ] as const) {
      await client.batch({ host, port, count: 500, readId: true });
      t = process.hrtime.bigint();
      const r = await client.batch({ host, port, count: connects, readId: true });
      const s = Number(process.hrtime.bigint() - t) / 1e9;
      const failed = r.filter((x) => !x.ok).length;
      rows.push([label, `${Math.round(connects / s)} connects/s (${failed} failed)`]);
    }
    const prog = dp
      .counters()
      .find((c) => c.service.endsWith(`svc-${serviceCount - 1}.bench.svc.cluster.local`));
    rows.push(['routed counter of the VIP', String(prog?.counters.routed ?? 0n)]);
  } finally {
    await client.exit();
    await dp.close();
    await backend.close();
    removeCgroup(cgroup);
    rmSync(pinDir, { recursive: true, force: true });
  }
  console.log(`machine: ${machine()}`);
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
}

await main();
