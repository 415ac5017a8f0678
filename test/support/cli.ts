// The kernmesh CLI run as operators run it: its own process (through tsx, no build step), so tests
// see exit codes, stdout/stderr and the JSON log lines exactly as a shell would.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import type { JsonObject } from '../../src/xds/types.js';
import type { KernelEnv } from './kernel.js';
import { Client } from './net.js';
import { eventually } from './wait.js';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

function spawnKernmesh(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    // kept xDS state only where a test asks for it (--xds-state-dir in its own directory): a restart
    // test otherwise sees a full push, and nothing is left under /run
    env: { KERNMESH_XDS_STATE_DIR: 'none', ...process.env },
  });
}

/** Runs one command to its end. */
export async function runKernmesh(
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawnKernmesh(args);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stdout, stderr };
}

export type KernmeshProcess = ChildProcess & {
  /** stdout, one parsed JSON log line each (`{ text }` for a line that is not JSON). */
  lines: JsonObject[];
  stderrText: () => string;
};

/** Starts a long-running command (`run`), collecting its log lines as they come. */
export function startKernmesh(args: string[]): KernmeshProcess {
  const child = spawnKernmesh(args) as KernmeshProcess;
  child.lines = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stderrText = () => stderr;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      child.lines.push(JSON.parse(line) as JsonObject);
    } catch {
      child.lines.push({ text: line });
    }
  });
  return child;
}

/** Waits for the startup line and returns the admin address it names (the agent listens on port 0). */
export async function adminAddress(child: KernmeshProcess): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const started = child.lines.find(
      (l) => typeof l.msg === 'string' && l.msg.startsWith('kernmesh started'),
    );
    if (started) return (started.admin as string).replace('http://', '');
    if (child.exitCode !== null) throw new Error(`agent exited ${child.exitCode}: ${child.stderrText()}`);
    await sleep(50);
  }
  throw new Error(`agent did not start: ${child.stderrText()} ${JSON.stringify(child.lines.slice(-5))}`);
}

export async function adminGet(admin: string, path: string): Promise<{ status: number; text: string }> {
  // A hung admin fails the call after 30 s, naming it, instead of the whole file after 5 minutes.
  const r = await fetch(`http://${admin}${path}`, { signal: AbortSignal.timeout(30_000) }).catch(
    (e: Error) => {
      throw new Error(`GET http://${admin}${path}: ${e.message}`);
    },
  );
  return { status: r.status, text: await r.text() };
}

/** Signals the process and returns its exit code (at once if it has already exited, by a signal too). */
export async function stopProcess(
  child: ChildProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const done = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill(signal);
  // An agent that does not stop within 60 s fails its test with what it last logged, and is killed,
  // instead of holding the file until the runner cancels it without a word.
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      const last = 'lines' in child ? JSON.stringify((child as KernmeshProcess).lines.slice(-8)) : '';
      child.kill('SIGKILL');
      reject(new Error(`pid ${child.pid} did not exit within 60 s of ${signal}; last log lines: ${last}`));
    }, 60_000);
  });
  try {
    return await Promise.race([done, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `kernmesh run` serving the test's cgroup (pins under <pinDir>/<pinSubdir>, admin on a free port) with the
 * given source and identity flags, and a client process inside the cgroup; both stop with the test.
 */
export async function runAgentServing(
  env: KernelEnv,
  args: string[],
  pinSubdir = 'agent',
): Promise<{ agent: KernmeshProcess; admin: string; client: Client }> {
  const agent = startKernmesh([
    'run',
    ...args,
    '--cgroup',
    env.cgroup,
    '--bpffs',
    join(env.pinDir, pinSubdir),
    '--admin',
    '127.0.0.1:0',
  ]);
  env.defer(async () => void (await stopProcess(agent, 'SIGKILL')));
  const admin = await adminAddress(agent);
  const client = new Client(env.cgroup);
  env.defer(() => client.exit());
  return { agent, admin, client };
}

/** The map operations of the agent's first apply, from the dataplane's debug line. */
export async function firstApplyOps(agent: KernmeshProcess): Promise<number> {
  let line: JsonObject | undefined;
  await eventually('the agent programs its first config', () => {
    line = agent.lines.find((l) => l.msg === 'routing applied');
    return line !== undefined;
  });
  assert.equal(typeof line?.ops, 'number', JSON.stringify(line));
  return line!.ops as number;
}
