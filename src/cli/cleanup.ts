// `kernmesh cleanup --bpffs DIR`: what SIGTERM deliberately leaves behind, removed on request.
// Every pinned link under DIR is detached (its program stops running), then every pin is removed.
import { readdirSync, readFileSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BpfLink, detachCgroupAll } from '../../native/index.js';
import { DEFAULTS } from '../config/config.js';

const HELP = `usage: kernmesh cleanup [--bpffs DIR] [--cgroup PATH ...] [--dry-run]

Detaches the programs kernmesh pinned links for under DIR (default ${DEFAULTS.bpffs}) and
unpins its maps and links, then removes DIR. --cgroup also detaches kernmesh's programs (those
named km_*) from that cgroup, for attachments made without a pinned link (kernels before 5.7);
other programs on that cgroup are left alone.
`;

/** Attach types kernmesh uses; --cgroup detaches these only. */
export const ATTACH_TYPES = [
  'cgroup/connect4',
  'cgroup/connect6',
  'cgroup/getpeername4',
  'cgroup/getpeername6',
  'sockops',
  'cgroup_skb/ingress',
  'cgroup_skb/egress',
  'cgroup/sock_create',
];

/** Every kernmesh program's name starts with this (bpf/*.bpf.c); cleanup detaches no other. */
export const PROGRAM_PREFIX = 'km_';

function onBpffs(path: string): boolean {
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'bpf')
    .map((f) => f[1]!);
  return mounts.some((m) => path === m || path.startsWith(m.endsWith('/') ? m : m + '/'));
}

export interface CleanupResult {
  detached: string[];
  unpinned: string[];
  errors: string[];
}

/** Detaches pinned links and removes every pin under dir, depth first; dir itself goes last. */
export function cleanupPinDir(dir: string, dryRun = false): CleanupResult {
  const result: CleanupResult = { detached: [], unpinned: [], errors: [] };
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) {
        walk(p);
        if (!dryRun) rmdirSync(p);
        continue;
      }
      // A pin is a link, a map or a program; only a link can be detached, the others just unpinned.
      try {
        const link = BpfLink.openPinned(p);
        try {
          if (!dryRun) link.detach();
          result.detached.push(p);
        } catch {
          /* not a link */
        } finally {
          link.close();
        }
      } catch (e) {
        result.errors.push(`${p}: ${(e as Error).message}`);
      }
      if (!dryRun) unlinkSync(p);
      result.unpinned.push(p);
    }
  };
  walk(dir);
  if (!dryRun) rmdirSync(dir);
  return result;
}

export async function runCleanup(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  await Promise.resolve();
  let bpffs = process.env.KERNMESH_BPFFS ?? DEFAULTS.bpffs;
  const cgroups: string[] = [];
  let dryRun = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=')
      ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)]
      : [a, undefined];
    const value = () => inline ?? argv[++i] ?? '';
    if (flag === '--help' || flag === '-h') {
      out.write(HELP);
      return 0;
    } else if (flag === '--bpffs') bpffs = value();
    else if (flag === '--cgroup') cgroups.push(value());
    else if (flag === '--dry-run') dryRun = true;
    else {
      process.stderr.write(`kernmesh cleanup: unknown flag ${flag}\n${HELP}`);
      return 2;
    }
  }
  const dir = resolve(bpffs);
  if (!onBpffs(dir)) {
    process.stderr.write(
      `kernmesh cleanup: --bpffs ${dir} is not on a bpffs mount; refusing to delete anything there\n`,
    );
    return 2;
  }
  let exists = true;
  try {
    statSync(dir);
  } catch {
    exists = false;
  }
  if (exists) {
    const r = cleanupPinDir(dir, dryRun);
    const verb = dryRun ? 'would' : '';
    out.write(
      `${verb ? 'would detach' : 'detached'} ${r.detached.length} link(s), ${verb ? 'would unpin' : 'unpinned'} ${r.unpinned.length} object(s) under ${dir}\n`,
    );
    for (const p of r.detached) out.write(`  link ${p}\n`);
    for (const e of r.errors) process.stderr.write(`  ${e}\n`);
  } else {
    out.write(`${dir} does not exist: nothing pinned\n`);
  }
  for (const cg of cgroups) {
    let n = 0;
    for (const t of ATTACH_TYPES) if (!dryRun) n += detachCgroupAll(cg, t, PROGRAM_PREFIX);
    out.write(`detached ${n} program(s) from ${cg}\n`);
  }
  return 0;
}
