// The routing dataplane as routing tests use it: loaded into the test's pin directory, attached to the
// test's cgroup, and closed (pinned maps and links go with the pin directory) when the test ends.
import { Dataplane } from '../../src/dataplane/dataplane.js';
import type { KernelEnv } from './kernel.js';
import { Client, startBackend, type Backend } from './net.js';

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
