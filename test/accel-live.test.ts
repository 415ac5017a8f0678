// `kernmesh accel` against a running agent: turning acceleration off and on and loading rules change
// what new connections do at once, open connections keep working byte for byte, every rule counts
// what it decided, and a bad rules file is refused with its line and column while the old rules stay.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { AccelStatus } from '../src/accel/control.js';
import { adminGet, runAgentServing, runKernmesh } from './support/cli.js';
import { EchoSession, echoServer } from './support/echo.js';
import { kernelTest } from './support/kernel.js';
import { eventually } from './support/wait.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

kernelTest(
  'accel on/off and rules apply to new connections at once, never break open ones; per-rule counters; a bad file changes nothing',
  async (_t, env) => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-accel-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'resources.json');
    writeFileSync(file, JSON.stringify({ resources: [] }));
    const socket = join(dir, 'control.sock');
    const { admin } = await runAgentServing(env, [
      '--xds-file',
      file,
      '--accelerate',
      '--control-socket',
      socket,
    ]);
    await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);

    const accel = async (
      ...args: string[]
    ): Promise<{ code: number | null; stdout: string; stderr: string }> =>
      runKernmesh(['accel', ...args, '--control-socket', socket]);
    const status = async (): Promise<AccelStatus> => {
      const r = await accel('status', '--json');
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as AccelStatus;
    };
    const inserted = async (): Promise<number> => Number((await status()).counters.socketsInserted);
    /** Opens a connection, exchanges bytes, and says whether its two sockets went into the sockhash. */
    const open = async (
      port: number,
      host = '127.0.0.71',
    ): Promise<{ s: EchoSession; accelerated: boolean }> => {
      const before = await inserted();
      const s = await EchoSession.open(env, env.cgroup, { host, port });
      await intact(s);
      const d = (await inserted()) - before;
      assert.ok(d === 0 || d === 2, `${d} sockets inserted`);
      return { s, accelerated: d === 2 };
    };
    const intact = async (s: EchoSession): Promise<void> => {
      for (const n of [1, 3000, 70000]) {
        const data = randomBytes(n);
        assert.deepEqual(await s.send(data), data, 'bytes intact');
      }
    };

    const port = await echoServer(env, env.cgroup, '127.0.0.71');
    const other = await echoServer(env, env.cgroup, '127.0.0.72');

    const first = await accel('status');
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^acceleration: on\nrules: none \(every local connection\)/);
    assert.match(first.stdout, /no rules: every local connection is accelerated/);

    const a = await open(port);
    assert.equal(a.accelerated, true, 'on: accelerated');

    const off = await accel('off');
    assert.equal(off.code, 0, off.stderr);
    assert.match(off.stdout, /^acceleration: off/);
    const b = await open(port);
    assert.equal(b.accelerated, false, 'off: the next connection takes the stack');
    const fallbackBefore = Number((await status()).counters.messagesFallback);
    await intact(a.s);
    assert.ok(
      Number((await status()).counters.messagesFallback) > fallbackBefore,
      'A now sends through the stack',
    );

    assert.equal((await accel('on')).code, 0);
    const c = await open(port);
    assert.equal(c.accelerated, true, 'on again: accelerated');
    await intact(a.s);
    await intact(b.s);

    const good = join(dir, 'good.rules');
    writeFileSync(
      good,
      `# the echo port only, never the other server\nchain --port ${port} --j ACCEPT\nchain --ip 127.0.0.72/32 -j RETURN\n`,
    );
    const loaded = await accel('rules', good);
    assert.equal(loaded.code, 0, loaded.stderr);
    assert.match(loaded.stdout, new RegExp(`rules: ${good.replace(/\./g, '\\.')} \\(applied `));
    assert.match(loaded.stdout, /LINE\s+RULE\s+MATCHED\s+ACCELERATED\s+REFUSED/);
    assert.match(loaded.stdout, new RegExp(`^2\\s+chain --port ${port} -j ACCEPT\\s+0\\s+0\\s+0$`, 'm'));
    assert.match(loaded.stdout, /^3\s+chain --ip 127\.0\.0\.72\/32 -j RETURN\s+0\s+0\s+0$/m);

    const d = await open(port);
    assert.equal(d.accelerated, true, 'ACCEPT --port');
    const e = await open(other, '127.0.0.72');
    assert.equal(e.accelerated, false, 'RETURN --ip');
    const counted = (await status()).rules.map((r) => [r.line, r.matched, r.accelerated, r.refused]);
    assert.deepEqual(counted, [
      [2, '1', '1', '0'],
      [3, '1', '0', '1'],
    ]);

    const bad = join(dir, 'bad.rules');
    writeFileSync(bad, `chain --port ${port} -j ACCEPT\nchain --port nope -j RETURN\n`);
    const refused = await accel('rules', bad);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /rules not loaded, the rules in force stay/);
    assert.ok(refused.stderr.includes(`${bad}:2:14: invalid port "nope"`), refused.stderr);
    const after = await status();
    assert.equal(after.source, good, 'the good rules stay in force');
    assert.deepEqual(
      after.rules.map((r) => r.line),
      [2, 3],
    );
    const listed = await accel('rules');
    assert.match(listed.stdout, new RegExp(`chain --port ${port} -j ACCEPT`));

    for (const s of [a.s, b.s, c.s, d.s, e.s]) await intact(s);
    for (const s of [a.s, b.s, c.s, d.s, e.s]) await s.close();
  },
);

kernelTest('accel against an agent without --accelerate says how to turn it on', async (_t, env) => {
  const dir = mkdtempSync(join(tmpdir(), 'kernmesh-accel-'));
  env.defer(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'resources.json');
  writeFileSync(file, JSON.stringify({ resources: [] }));
  const socket = join(dir, 'control.sock');
  await runAgentServing(env, ['--xds-file', file, '--control-socket', socket]);
  const r = await runKernmesh(['accel', 'status', '--control-socket', socket]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /acceleration is not loaded: start the agent with --accelerate/);
  const usage = await runKernmesh(['accel', 'sideways', '--control-socket', socket]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /expected status, on, off or rules/);
});
