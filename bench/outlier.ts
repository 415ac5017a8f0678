// Benchmark: what outlier detection and Envoy's priority loads cost connect4 (issue 17). A service of
// 16 endpoints (random policy) with outlier detection off, on with nothing ejected (one array lookup
// more), and on with 1, 4 or 8 hosts ejected (the priority loads recomputed, and a detector lookup per
// host tried); then two priorities, the first partly healthy (a draw against the loads).
//   node --import tsx bench/outlier.ts [connects=5000]
// Needs root, bpffs and cgroup v2; creates and removes its own cgroup and pin directory. Nothing
// listens on the endpoints: every connect is refused right after connect4 ran (the refusals also
// eject the hosts, up to max_ejection_percent), so the table shows connect4's own run time.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { enableStats } from '../native/index.js';
import { Dataplane } from '../src/dataplane/dataplane.js';
import { OUTLIER_DEFAULTS, type Endpoint, type Service } from '../src/dataplane/model.js';
import { BPFFS, cgroup2Mount, removeCgroup } from '../test/support/kernel.js';
import { Client } from '../test/support/net.js';
import { machine } from './common.js';

const connects = Number(process.argv[2] ?? 5000);
const VIP = '127.100.67.1';

interface Row {
  label: string;
  /** Percent of the 16 hosts outlier detection may eject; undefined: detection off. */
  maxEjectionPercent?: number;
  /** Healthy hosts of priority 0 (the rest unhealthy), with a priority 1 of 16 healthy hosts. */
  spill?: number;
}

const ROWS: Row[] = [
  { label: 'outlier detection off' },
  { label: 'outlier detection on, none ejected', maxEjectionPercent: 0 },
  { label: 'outlier detection on, 1 of 16 ejected', maxEjectionPercent: 7 },
  { label: 'outlier detection on, 4 of 16 ejected', maxEjectionPercent: 25 },
  { label: 'outlier detection on, 8 of 16 ejected', maxEjectionPercent: 50 },
  { label: 'two priorities, P0 8 of 16 healthy (loads 70/30)', spill: 8 },
];

function service(r: Row): Service {
  const endpoints: Endpoint[] = Array.from({ length: 16 }, (_, i) => ({
    address: `127.67.0.${i + 1}`,
    port: 9,
    weight: 1,
    priority: 0,
    health: r.spill !== undefined && i >= r.spill ? 'unhealthy' : 'healthy',
  }));
  if (r.spill !== undefined)
    for (let i = 0; i < 16; i++)
      endpoints.push({ address: `127.67.1.${i + 1}`, port: 9, weight: 1, priority: 1, health: 'healthy' });
  return {
    name: 'bench-od',
    kind: 'endpoints',
    lbPolicy: 'random',
    endpoints,
    ...(r.maxEjectionPercent !== undefined
      ? {
          outlierDetection: {
            ...OUTLIER_DEFAULTS,
            consecutive5xx: 1,
            baseEjectionTimeMs: 600_000,
            maxEjectionPercent: r.maxEjectionPercent,
          },
        }
      : {}),
  };
}

async function main(): Promise<void> {
  const mount = cgroup2Mount();
  if (!mount) throw new Error('no cgroup v2 mount');
  const tag = `kernmesh-bench-od-${process.pid}`;
  const cgroup = join(mount, tag);
  const pinDir = join(BPFFS, tag);
  mkdirSync(cgroup);
  mkdirSync(pinDir);
  const dp = Dataplane.open({ pinDir });
  const client = new Client(cgroup);
  const stats = enableStats();
  const out: [string, string, string][] = [];
  try {
    dp.attach(cgroup);
    const connect4 = dp.programs().find((p) => p.name === 'km_connect4')!;
    for (const r of ROWS) {
      // a fresh service each row: no ejection carried over
      await dp.apply({ services: [], frontends: [] });
      const applied = await dp.apply({
        services: [service(r)],
        frontends: [{ address: VIP, port: 80, protocol: 'tcp', service: 'bench-od' }],
      });
      if (applied.refused.length) throw new Error(JSON.stringify(applied.refused));
      // the warm-up's refusals eject hosts up to the cap
      await client.batch({ host: VIP, port: 80, count: 400 });
      const ejected = dp.outlier()[0]?.active ?? 0;
      const before = connect4.stats();
      await client.batch({ host: VIP, port: 80, count: connects });
      const after = connect4.stats();
      const ns = Number(after.runTimeNs - before.runTimeNs) / Number(after.runCount - before.runCount);
      out.push([r.label, String(ejected), `${ns.toFixed(0)} ns`]);
    }
  } finally {
    stats.close();
    await client.exit();
    await dp.close();
    removeCgroup(cgroup);
    rmSync(pinDir, { recursive: true, force: true });
  }
  console.log(`machine: ${machine()}`);
  console.log(`connect4 run time per connect, mean of ${connects} connects, random policy`);
  const w = Math.max(...out.map((r) => r[0].length));
  console.log(`${'service'.padEnd(w)}  ejected  connect4`);
  for (const [k, n, v] of out) console.log(`${k.padEnd(w)}  ${n.padStart(7)}  ${v}`);
}

await main();
