// The routing dataplane as routing tests use it: loaded into the test's pin directory, attached to the
// test's cgroup, and closed (pinned maps and links go with the pin directory) when the test ends.
import assert from 'node:assert/strict';

import { Dataplane } from '../../src/dataplane/dataplane.js';
import type { KernelEnv } from './kernel.js';
import { Client, startBackend, tally, type Backend } from './net.js';

export function openRouting(env: KernelEnv): Dataplane {
  const dp = Dataplane.open({ pinDir: env.pinDir });
  env.defer(() => dp.close());
  dp.attach(env.cgroup);
  return dp;
}

/** A backend on each address, routing attached, and a client process inside the test cgroup. */
export async function startRouting(
  env: KernelEnv,
  addresses: string[],
): Promise<{ dp: Dataplane; backends: Backend[]; client: Client }> {
  const backends: Backend[] = [];
  for (const a of addresses) {
    const b = await startBackend(a);
    env.defer(() => b.close());
    backends.push(b);
  }
  const dp = openRouting(env);
  const client = new Client(env.cgroup);
  env.defer(() => client.exit());
  return { dp, backends, client };
}

/**
 * `count` connects, one at a time, each made only once the kernel's own active counts
 * (km_backend_conn, read from the map) are back at `baseline`, so every connect is drawn under the
 * same conditions and the connects are independent: the counts are multinomial. `baseline` maps
 * backend keys ("address|port") to their count; the result counts the backends' greetings.
 */
export async function connectsAtBaseline(
  dp: Dataplane,
  client: Client,
  vip: string,
  count: number,
  baseline: Map<string, number>,
  port = 80,
): Promise<Map<string, number>> {
  const atBaseline = (): boolean => {
    const active = dp.activeConnections().backends;
    return [...baseline].every(([k, n]) => (active[k] ?? 0) === n);
  };
  const landed: (string | undefined)[] = [];
  for (let i = 0; i < count; i++) {
    // the previous connect's close reaches sockops once its backend has answered the FIN
    for (let spins = 0; !atBaseline(); spins++) {
      if (spins > 11_000)
        assert.fail(`active connections never returned to ${JSON.stringify([...baseline])}`);
      await new Promise((r) => (spins < 1000 ? setImmediate(r) : setTimeout(r, 1)));
    }
    const r = await client.connect({ host: vip, port, readId: true });
    assert.ok(r.ok, JSON.stringify(r));
    landed.push(r.backend);
  }
  return tally(landed);
}
