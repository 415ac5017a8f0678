// A pod's network namespace, found through its cgroup: any process of the pod (the sandbox's pause
// process first of all) holds it, as /proc/<pid>/ns/net. On a node the agent must see the host's
// process ids for this (hostPID, or the host's /proc), and open other users' namespace files
// (CAP_SYS_PTRACE); docs/kubernetes.md says so.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export type PodNetns =
  | { state: 'found'; path: string; inode: number }
  /** No process in the pod yet (its sandbox is starting): look again later. */
  | { state: 'waiting' }
  /** The namespace is the agent's own or the host's: attaching there would judge the node's traffic. */
  | { state: 'shared'; path: string; why: string };

function firstPid(cgroup: string, depth = 0): number | undefined {
  let procs: string[] = [];
  try {
    procs = readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return undefined; // the cgroup went away meanwhile
  }
  // 0: a process outside our pid namespace (without hostPID): it cannot be opened through /proc
  for (const p of procs) if (Number(p) > 0) return Number(p);
  if (depth > 4) return undefined;
  let children: string[] = [];
  try {
    children = readdirSync(cgroup, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort();
  } catch {
    return undefined;
  }
  for (const c of children) {
    const pid = firstPid(join(cgroup, c), depth + 1);
    if (pid !== undefined) return pid;
  }
  return undefined;
}

function inodeOf(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** The network namespace of the pod whose cgroup this is. */
export function findPodNetns(cgroup: string, procRoot = '/proc'): PodNetns {
  const pid = firstPid(cgroup);
  if (pid === undefined) return { state: 'waiting' };
  const path = join(procRoot, String(pid), 'ns', 'net');
  const inode = inodeOf(path);
  if (inode === undefined) return { state: 'waiting' }; // the process exited meanwhile
  if (inode === inodeOf('/proc/self/ns/net'))
    return { state: 'shared', path, why: "it is the agent's own network namespace" };
  if (inode === inodeOf(join(procRoot, '1', 'ns', 'net')))
    return { state: 'shared', path, why: "it is the host's network namespace" };
  return { state: 'found', path, inode };
}
