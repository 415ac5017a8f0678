// Kernel-test scaffolding: each test gets its own child cgroup and its own bpffs pin directory,
// both removed afterwards even when the test fails. Nothing here touches a cgroup it did not create.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

export const BPFFS = '/sys/fs/bpf';

/** The cgroup v2 mount point, read from /proc/mounts (its place differs between machines). */
export function cgroup2Mount(): string | undefined {
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, mnt, fstype] = line.split(' ');
    if (fstype === 'cgroup2' && mnt) return mnt;
  }
  return undefined;
}

export function bpffsMounted(root = BPFFS): boolean {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => {
      const [, mnt, fstype] = l.split(' ');
      return fstype === 'bpf' && mnt === root;
    });
}

/** Why kernel tests cannot run here, or undefined when they can. */
export function kernelUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'kernel has no BTF';
  if (!cgroup2Mount()) return 'no cgroup v2 mount in /proc/mounts';
  if (!bpffsMounted()) return `no bpffs mounted at ${BPFFS} (run scripts/setup.sh)`;
  return undefined;
}

export const kernelTestsRequired = process.env.KERNMESH_KERNEL_TESTS === 'required';

export interface KernelEnv {
  /** Absolute path of a fresh child cgroup created for this test. */
  cgroup: string;
  /** Absolute path of a fresh pin directory under bpffs created for this test. */
  pinDir: string;
  /** Runs fn at cleanup time, before the cgroup and pin directory go (LIFO). */
  defer(fn: () => void | Promise<void>): void;
  /** Creates another child cgroup, removed with the rest. */
  newCgroup(label: string): string;
}

function uniqueName(label: string): string {
  return `kernmesh-test-${label.replace(/[^a-zA-Z0-9_-]/g, '-').slice(0, 40)}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/** Moves every process still in the cgroup to its parent (killing it), then removes the cgroup. */
export function removeCgroup(path: string): void {
  const parentProcs = join(path, '..', 'cgroup.procs');
  for (let attempt = 0; attempt < 100 && existsSync(path); attempt++) {
    let procs: string[] = [];
    try {
      procs = readFileSync(join(path, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
    } catch {
      return;
    }
    for (const pid of procs) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* already gone */
      }
      try {
        writeFileSync(parentProcs, pid);
      } catch {
        /* exited meanwhile */
      }
    }
    try {
      // cgroupfs directories are removed with rmdir only, and only once no process is left.
      rmdirSync(path);
    } catch {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}

// What each running kernel test created, for the exit hook below.
const live = new Set<{ cgroups: string[]; pinDir: string }>();

// A test that hangs past --test-timeout never reaches its finally block: the runner SIGTERMs the
// file's process. Remove what such tests created on the way out (all of it synchronous), so a hung
// test leaves no cgroup, pin or attached program behind.
function removeLeftovers(): void {
  for (const r of live) {
    for (const c of [...r.cgroups].reverse()) removeCgroup(c);
    rmSync(r.pinDir, { recursive: true, force: true });
  }
  live.clear();
}
process.on('exit', removeLeftovers);
for (const signal of ['SIGTERM', 'SIGINT'] as const)
  process.once(signal, () => {
    removeLeftovers();
    process.exit(128 + (signal === 'SIGTERM' ? 15 : 2));
  });

/**
 * Declares a kernel test. It skips only when the machine cannot run kernel tests and
 * KERNMESH_KERNEL_TESTS is not "required"; when required, an unusable machine fails the test.
 */
export function kernelTest(name: string, fn: (t: TestContext, env: KernelEnv) => Promise<void> | void): void {
  const why = kernelUnavailable();
  if (why && !kernelTestsRequired) {
    // node:test's returned promise only reports completion, which the runner tracks itself.
    void test(name, { skip: `kernel tests unavailable: ${why}` }, () => {});
    return;
  }
  void test(name, async (t) => {
    if (why) throw new Error(`KERNMESH_KERNEL_TESTS=required but kernel tests cannot run: ${why}`);
    const mount = cgroup2Mount()!;
    const cgroups: string[] = [];
    const deferred: (() => void | Promise<void>)[] = [];
    const newCgroup = (label: string): string => {
      const p = join(mount, uniqueName(label));
      mkdirSync(p);
      cgroups.push(p);
      return p;
    };
    const pinDir = join(BPFFS, uniqueName(name));
    mkdirSync(pinDir);
    const created = { cgroups, pinDir };
    live.add(created);
    const env: KernelEnv = {
      cgroup: newCgroup(name),
      pinDir,
      defer: (f) => deferred.push(f),
      newCgroup,
    };
    try {
      await fn(t, env);
    } finally {
      for (const f of deferred.reverse()) {
        try {
          await f();
        } catch (e) {
          t.diagnostic(`cleanup step failed: ${String(e)}`);
        }
      }
      for (const c of cgroups.reverse()) removeCgroup(c);
      rmSync(pinDir, { recursive: true, force: true });
      live.delete(created);
    }
  });
}

/**
 * Spawns a command whose process joins `cgroup` before it execs, so every socket it opens is
 * subject to the programs attached there. The shell writes its own pid, then execs the command.
 */
export function spawnInCgroup(
  cgroup: string,
  cmd: string,
  args: string[],
  opts: SpawnOptions = {},
): ChildProcess {
  const script = `echo $$ > '${join(cgroup, 'cgroup.procs')}' && exec "$@"`;
  return spawn('/bin/sh', ['-c', script, 'sh', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

/** Runs a command in the cgroup to completion and returns its stdout, stderr and exit code. */
export async function runInCgroup(
  cgroup: string,
  cmd: string,
  args: string[],
  opts: SpawnOptions & { input?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawnInCgroup(cgroup, cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin?.end(opts.input ?? '');
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c));
  });
  return { code, stdout, stderr };
}
