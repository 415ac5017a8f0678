// Benchmark: what LEAST_REQUEST's weighted mode costs connect4, by group size. The weighted draw reads
// every endpoint of the group (one slot and one count each); two random choices read two.
//   node --import tsx bench/least-request.ts [connects=5000]
// Needs root, bpffs and cgroup v2 (like the kernel tests); creates and removes its own cgroup and
// pin directory. Nothing listens on the endpoints: each connect is refused right after connect4
// ran, so the table shows connect4's own run time (kernel BPF stats), not a TCP handshake.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { enableStats } from '../native/index.js';
import { Dataplane } from '../src/dataplane/dataplane.js';
import type { Endpoint, LbPolicy, Service } from '../src/dataplane/model.js';
import { BPFFS, cgroup2Mount, removeCgroup } from '../test/support/kernel.js';
import { Client } from '../test/support/net.js';
import { machine } from './common.js';

const connects = Number(process.argv[2] ?? 5000);

interface Row {
  label: string;
  policy: LbPolicy;
  endpoints: number;
  weighted: boolean;
  bias?: number;
}

const ROWS: Row[] = [
  { label: 'random', policy: 'random', endpoints: 16, weighted: false },
  {
    label: 'least_request, equal weights (two choices)',
    policy: 'least_request',
    endpoints: 16,
    weighted: false,
  },
  ...[2, 16, 128, 1024].map((n) => ({
    label: 'least_request, weights 1:2 (weighted draw)',
    policy: 'least_request' as const,
    endpoints: n,
    weighted: true,
  })),
  {
    label: 'least_request, weights 1:2, bias 0',
    policy: 'least_request',
    endpoints: 1024,
    weighted: true,
    bias: 0,
  },
];

function service(r: Row): Service {
  const endpoints: Endpoint[] = Array.from({ length: r.endpoints }, (_, i) => ({
    address: `127.66.${i >> 8}.${i & 255}`,
    port: 9,
    weight: r.weighted ? 1 + (i % 2) : 1,
    priority: 0,
    health: 'healthy',
  }));
  return {
    name: 'bench-lr',
    kind: 'endpoints',
    lbPolicy: r.policy,
    endpoints,
    ...(r.bias !== undefined ? { activeRequestBias: r.bias } : {}),
  };
}

async function main(): Promise<void> {
  const mount = cgroup2Mount();
  if (!mount) throw new Error('no cgroup v2 mount');
  const tag = `kernmesh-bench-lr-${process.pid}`;
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
      const applied = await dp.apply({
        services: [service(r)],
        frontends: [{ address: '127.100.66.1', port: 80, protocol: 'tcp', service: 'bench-lr' }],
      });
      if (applied.refused.length) throw new Error(JSON.stringify(applied.refused));
      await client.batch({ host: '127.100.66.1', port: 80, count: 200 });
      const before = connect4.stats();
      const res = await client.batch({ host: '127.100.66.1', port: 80, count: connects });
      const after = connect4.stats();
      const refused = res.filter((x) => x.err === 'ECONNREFUSED').length;
      if (refused !== connects)
        throw new Error(`${connects - refused} connects were not refused by the empty backends`);
      const ns = Number(after.runTimeNs - before.runTimeNs) / Number(after.runCount - before.runCount);
      out.push([r.label, String(r.endpoints), `${ns.toFixed(0)} ns`]);
    }
  } finally {
    stats.close();
    await client.exit();
    await dp.close();
    removeCgroup(cgroup);
    rmSync(pinDir, { recursive: true, force: true });
  }
  console.log(`machine: ${machine()}`);
  console.log(`connect4 run time per connect, mean of ${connects} connects`);
  const w = Math.max(...out.map((r) => r[0].length));
  console.log(`${'policy'.padEnd(w)}  endpoints  connect4`);
  for (const [k, n, v] of out) console.log(`${k.padEnd(w)}  ${n.padStart(9)}  ${v}`);
}

await main();
