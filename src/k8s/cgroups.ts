// Where a pod's processes are: the kubelet's cgroup v2 directory for the pod, found under the
// kubelet's cgroup root for either cgroup driver, never assumed from one layout.
import { readdirSync, readFileSync, statSync, type Dirent } from 'node:fs';
import { join } from 'node:path';

/**
 * The pod directory per driver and QoS class. Guaranteed pods sit directly under kubepods; systemd
 * unit names use '-' for nesting, so the uid's dashes become underscores there.
 */
export function podCgroupCandidates(root: string, uid: string, qosClass?: string): string[] {
  if (!/^[0-9A-Za-z-]+$/.test(uid)) throw new Error(`pod uid "${uid}" is not a Kubernetes uid`);
  const unit = uid.replace(/-/g, '_');
  const systemd = {
    Guaranteed: join(root, 'kubepods.slice', `kubepods-pod${unit}.slice`),
    Burstable: join(
      root,
      'kubepods.slice',
      'kubepods-burstable.slice',
      `kubepods-burstable-pod${unit}.slice`,
    ),
    BestEffort: join(
      root,
      'kubepods.slice',
      'kubepods-besteffort.slice',
      `kubepods-besteffort-pod${unit}.slice`,
    ),
  };
  const cgroupfs = {
    Guaranteed: join(root, 'kubepods', `pod${uid}`),
    Burstable: join(root, 'kubepods', 'burstable', `pod${uid}`),
    BestEffort: join(root, 'kubepods', 'besteffort', `pod${uid}`),
  };
  const classes = ['Guaranteed', 'Burstable', 'BestEffort'] as const;
  // the pod's own class first; the others too, since status.qosClass can be missing early on
  const order = [...classes].sort((a, b) => Number(b === qosClass) - Number(a === qosClass));
  return order.flatMap((c) => [systemd[c], cgroupfs[c]]);
}

export function isCgroupDir(path: string): boolean {
  try {
    return statSync(path).isDirectory() && statSync(join(path, 'cgroup.procs')).isFile();
  } catch {
    return false;
  }
}

/** The pod's cgroup directory, or undefined while the kubelet has not created it. */
export function findPodCgroup(root: string, uid: string, qosClass?: string): string | undefined {
  return podCgroupCandidates(root, uid, qosClass).find(isCgroupDir);
}

/** The cgroup v2 mounts in /proc/mounts (the agent sees the host's through a hostPath). */
export function cgroup2Mounts(mounts = readFileSync('/proc/mounts', 'utf8')): string[] {
  return mounts
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'cgroup2' && f[1])
    .map((f) => f[1]!.replace(/\\040/g, ' '));
}

/** The directory holding kubepods.slice (systemd driver) or kubepods (cgroupfs driver). */
export function discoverKubeletRoot(mounts?: string): string {
  const found = cgroup2Mounts(mounts).filter(
    (m) => isCgroupDir(join(m, 'kubepods.slice')) || isCgroupDir(join(m, 'kubepods')),
  );
  if (found.length === 0)
    throw new Error(
      'no kubelet cgroup root: no cgroup v2 mount in /proc/mounts holds kubepods.slice or kubepods (give --kubelet-cgroup-root)',
    );
  return found[0]!;
}

/** The cgroup's id as the kernel reports it (bpf_get_current_cgroup_id): the directory's inode. */
export function cgroupId(path: string): number {
  return statSync(path).ino;
}

/** The inodes of a cgroup and of the cgroups below it (a pod's and its containers'), a few levels deep. */
export function cgroupTree(path: string, depth = 3): number[] {
  const out: number[] = [];
  try {
    out.push(statSync(path).ino);
  } catch {
    return out;
  }
  if (depth === 0) return out;
  let entries: Dirent[] = [];
  try {
    entries = readdirSync(path, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) if (e.isDirectory()) out.push(...cgroupTree(join(path, e.name), depth - 1));
  return out;
}
