// `kernmesh capture` end to end: a running agent accelerates connections between processes of the test's
// cgroup, the capture command asks it (through the control socket) for the bytes the sockmap redirects,
// and Debian's tshark reads the pcap back: the stream it reassembles is exactly what was sent, both ways.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { adminGet, runAgentServing, runKernmesh, startKernmesh, stopProcess } from './support/cli.js';
import { assignment, edsCluster, outbound, tcpListener } from './support/control-plane-istiod.js';
import { EchoSession, echoServer } from './support/echo.js';
import { kernelTest, type KernelEnv } from './support/kernel.js';
import { followTcp, packetFields } from './support/tshark.js';
import { eventually } from './support/wait.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

const HOST = 'echo.capture.svc.cluster.local';
const CLUSTER = outbound(HOST, 7000);
const VIP = '127.100.60.1';
const BACKEND = '127.0.0.61';
const OTHER = '127.0.0.62';

function tempDir(env: KernelEnv, label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `kernmesh-${label}-`));
  env.defer(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * The agent with acceleration on and its control socket in a directory of the test's own. Servers start
 * after it (acceleration learns listeners as they listen); route() then points the service at one.
 */
async function startAgent(
  env: KernelEnv,
): Promise<{ admin: string; socket: string; route: (backendPort: number) => Promise<void> }> {
  const dir = tempDir(env, 'capture');
  const file = join(dir, 'resources.json');
  writeFileSync(file, JSON.stringify({ resources: [] }));
  const socket = join(dir, 'run', 'control.sock');
  const { admin } = await runAgentServing(env, [
    '--xds-file',
    file,
    '--accelerate',
    '--control-socket',
    socket,
  ]);
  await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);
  const route = async (backendPort: number): Promise<void> => {
    writeFileSync(
      file,
      JSON.stringify({
        resources: [
          edsCluster(CLUSTER),
          assignment(CLUSTER, [{ address: BACKEND, port: backendPort }]),
          tcpListener(VIP, 7000, CLUSTER, {}),
        ],
      }),
    );
    await eventually('the service is programmed', async () =>
      (await adminGet(admin, '/debug/maps')).text.includes(`"${VIP}"`),
    );
  };
  return { admin, socket, route };
}

/** Starts `kernmesh capture ... -w file` and waits until the agent has turned capture on. */
async function startCapture(env: KernelEnv, args: string[]): Promise<ReturnType<typeof startKernmesh>> {
  const p = startKernmesh(['capture', ...args]);
  env.defer(async () => void (await stopProcess(p, 'SIGKILL')));
  await eventually('the capture started', () => {
    if (p.exitCode !== null) throw new Error(`capture exited ${p.exitCode}: ${p.stderrText()}`);
    return p.stderrText().includes('Ctrl-C stops');
  });
  return p;
}

/** Sends each chunk, checks its echo, and returns everything sent. */
async function exchange(s: EchoSession, chunks: Buffer[]): Promise<Buffer> {
  for (const c of chunks) assert.deepEqual(await s.send(c), c, 'echo intact');
  return Buffer.concat(chunks);
}

const chunks = (sizes: number[]): Buffer[] => sizes.map((n) => randomBytes(n));

kernelTest(
  'capture --service: tshark reassembles exactly the bytes each way of the accelerated connection, with the real endpoint; others are not captured',
  async (_t, env) => {
    const { socket, route } = await startAgent(env);
    const port = await echoServer(env, env.cgroup, BACKEND);
    const otherPort = await echoServer(env, env.cgroup, OTHER);
    await route(port);
    assert.equal(statSync(socket).mode & 0o777, 0o600, 'the control socket is root-only');
    assert.equal(statSync(join(socket, '..')).mode & 0o777, 0o700, 'its directory too');

    const pcap = join(tempDir(env, 'pcap'), 'out.pcap');
    const capture = await startCapture(env, ['--service', HOST, '-w', pcap, '--control-socket', socket]);
    const routed = await EchoSession.open(env, env.cgroup, { host: VIP, port: 7000 });
    const other = await EchoSession.open(env, env.cgroup, { host: OTHER, port: otherPort });
    const sent = await exchange(routed, chunks([1, 1400, 33, 9000, 5]));
    await exchange(other, chunks([100, 2000]));
    await routed.close();
    await other.close();
    assert.equal(await stopProcess(capture, 'SIGINT'), 0, capture.stderrText());

    const summary = /(\d+) messages captured \((\d+) bytes\), (\d+) written; lost (\d+)/.exec(
      capture.stderrText(),
    );
    assert.ok(summary, capture.stderrText());
    assert.equal(summary[4], '0', 'nothing lost');
    assert.equal(Number(summary[2]), 2 * sent.length, 'captured bytes: the request and its echo');

    const stream = followTcp(pcap);
    assert.deepEqual(stream.nodes, [`127.0.0.1:${routed.localPort}`, `${BACKEND}:${port}`]);
    assert.ok(stream.sent[0].equals(sent), 'client to server: the bytes sent');
    assert.ok(stream.sent[1].equals(sent), 'server to client: the echo');
    const ports = packetFields(pcap, ['ip.src', 'ip.dst', 'tcp.srcport', 'tcp.dstport']);
    assert.ok(ports.length >= 2);
    for (const p of ports)
      assert.ok(p.includes(BACKEND) && !p.includes(OTHER), `only the service's connection: ${p.join(' ')}`);
  },
);

kernelTest(
  'capture --ip over IPv6 (::1) follows both directions; an IPv4 connection at the same time is not captured; --count stops it',
  async (_t, env) => {
    const { socket } = await startAgent(env);
    const port6 = await echoServer(env, env.cgroup, '::1');
    const port4 = await echoServer(env, env.cgroup, '127.0.0.1');

    const pcap = join(tempDir(env, 'pcap'), 'v6.pcap');
    const capture = await startCapture(env, ['--ip', '::1/128', '-w', pcap, '--control-socket', socket]);
    const v6 = await EchoSession.open(env, env.cgroup, { host: '::1', port: port6 });
    const v4 = await EchoSession.open(env, env.cgroup, { host: '127.0.0.1', port: port4 });
    const sent = await exchange(v6, chunks([7, 3000, 64, 1]));
    await exchange(v4, chunks([10, 10]));
    await v6.close();
    await v4.close();
    assert.equal(await stopProcess(capture, 'SIGINT'), 0, capture.stderrText());
    const stream = followTcp(pcap);
    assert.deepEqual(stream.nodes, [`[::1]:${v6.localPort}`, `[::1]:${port6}`]);
    assert.ok(stream.sent[0].equals(sent));
    assert.ok(stream.sent[1].equals(sent));
    for (const p of packetFields(pcap, ['ipv6.src', 'ip.src'])) assert.deepEqual(p, ['::1', ''], 'IPv6 only');

    // --count: the agent ends the capture after that many messages; the summary says so.
    const counted = join(tempDir(env, 'pcap'), 'count.pcap');
    const once = startKernmesh([
      'capture',
      '--port',
      String(port6),
      '--count',
      '2',
      '-w',
      counted,
      '--control-socket',
      socket,
    ]);
    env.defer(async () => void (await stopProcess(once, 'SIGKILL')));
    await eventually('the capture started', () => once.stderrText().includes('Ctrl-C stops'));
    const again = await EchoSession.open(env, env.cgroup, { host: '::1', port: port6 });
    await exchange(again, chunks([10, 20, 30]));
    await eventually('capture --count 2 exits by itself', () => once.exitCode !== null);
    assert.equal(once.exitCode, 0, once.stderrText());
    assert.match(once.stderrText(), /, 2 written;/);
    assert.equal(packetFields(counted, ['frame.number']).length, 2);
    await again.close();
  },
);

kernelTest('capture refuses what it cannot do, with the reason', async (_t, env) => {
  const { socket } = await startAgent(env);
  const unknown = await runKernmesh(['capture', '--service', 'nope.default', '--control-socket', socket]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /--service nope\.default: no programmed service has that name or host/);
  const bad = await runKernmesh(['capture', '--snaplen', '70000', '--control-socket', socket]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--snaplen "70000": expected 1-65535/);
  const none = await runKernmesh(['capture', '--control-socket', join(socket, '..', 'absent.sock')]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no agent answers on the control socket/);
  // one capture at a time
  const first = await startCapture(env, ['--port', '1', '--control-socket', socket]);
  const second = await runKernmesh(['capture', '--port', '2', '--control-socket', socket]);
  assert.equal(second.code, 1);
  assert.equal(second.stderr, 'kernmesh capture: a capture is already running; one at a time\n');
  assert.equal(await stopProcess(first, 'SIGINT'), 0);
});
