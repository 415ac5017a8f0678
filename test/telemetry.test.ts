// Telemetry in the real kernel: connections from a test cgroup to a VIP that routing rewrites, with
// known byte counts each way; the ring-buffer events and the Prometheus output must say exactly that.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { Writable } from 'node:stream';

import { pino, type Logger } from 'pino';

import { Accelerator } from '../src/accel/accel.js';
import type { ConnEvent } from '../src/telemetry/codec.js';
import { Telemetry } from '../src/telemetry/telemetry.js';
import { WorkloadIndex } from '../src/telemetry/workloads.js';
import { kernelTest, runInCgroup, type KernelEnv } from './support/kernel.js';
import { assertPromtoolAccepts } from './support/prometheus.js';
import { eventually } from './support/wait.js';
import { openRouting } from './support/routing.js';

// The objects under test; make's own output would break the TAP stream on stdout.
execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

const SERVICE = 'outbound|9080||reviews.default.svc.cluster.local';
const VIP = '127.100.5.1';
const BACKEND = '127.0.0.21';

/** The server answers each request, once the client has finished sending, with 3n+7 bytes. */
const responseSize = (n: number): number => 3 * n + 7;

async function startServer(env: KernelEnv, host: string): Promise<{ port: number; server: Server }> {
  const server = createServer((s: Socket) => {
    let n = 0;
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('end', () => s.end(Buffer.alloc(responseSize(n), 0x5a)));
    s.on('error', () => {});
  });
  server.listen(0, host);
  await once(server, 'listening');
  env.defer(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as { port: number }).port, server };
}

/** Client run inside the cgroup: one connection per size, one after another; prints what it saw. */
const CLIENT = String.raw`
const net = require('node:net');
const [host, port, sizes] = JSON.parse(process.argv[1]);
(async () => {
  const out = [];
  for (const n of sizes) {
    out.push(await new Promise((resolve, reject) => {
      let got = 0, localPort;
      const s = net.connect({ host, port }, () => { localPort = s.localPort; s.end(Buffer.alloc(n, 0x61)); });
      s.on('data', (d) => (got += d.length));
      s.on('error', reject);
      s.on('close', () => resolve({ localPort, got }));
    }));
  }
  console.log(JSON.stringify({ pid: process.pid, conns: out }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
`;

interface ClientRun {
  pid: number;
  conns: { localPort: number; got: number }[];
}

async function runClient(cgroup: string, host: string, port: number, sizes: number[]): Promise<ClientRun> {
  const r = await runInCgroup(cgroup, process.execPath, ['-e', CLIENT, JSON.stringify([host, port, sizes])]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as ClientRun;
}

/** Waits (bounded, not timed) until the kernel has reported what we expect: closes are asynchronous. */
function until(tele: Telemetry, cond: () => boolean, what: string): Promise<void> {
  const drained = (): boolean => {
    tele.drain();
    return cond();
  };
  return eventually(what, drained, { attempts: 500, intervalMs: 10 });
}

function setup(env: KernelEnv, accessLog?: Logger): { tele: Telemetry; events: ConnEvent[] } {
  const events: ConnEvent[] = [];
  // The pod behind the test's cgroup, as Kubernetes enrollment would report it.
  const cgroupId = BigInt(statSync(env.cgroup).ino);
  const tele = Telemetry.open({
    pinDir: env.pinDir,
    directory: new WorkloadIndex({
      byCgroup: (id) => (id === cgroupId ? { workload: 'productpage-v1', namespace: 'default' } : undefined),
    }),
    clusterId: 'Kubernetes',
    onEvent: (e) => events.push(e),
    ...(accessLog ? { accessLog } : {}),
  });
  const attachment = tele.attach(env.cgroup);
  env.defer(() => {
    attachment.detach();
    tele.close();
  });
  tele.setEnabled(true);
  return { tele, events };
}

/** The value of one sample line of the exposition, matched by name and a label subset. */
function sample(exposition: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of exposition.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
      return Number(line.split(' ').at(-1));
  }
  return undefined;
}

kernelTest(
  'events carry tuple, original destination, service and exact byte counts; Prometheus output passes promtool',
  async (_t, env) => {
    const { port } = await startServer(env, BACKEND);
    const dp = openRouting(env);
    await dp.apply({
      services: [
        {
          name: SERVICE,
          kind: 'endpoints',
          lbPolicy: 'random',
          endpoints: [{ address: BACKEND, port, weight: 1, priority: 0, health: 'healthy' }],
        },
      ],
      frontends: [{ address: VIP, port: 9080, protocol: 'tcp', service: SERVICE }],
    });
    const { tele, events } = setup(env);

    const sizes = [0, 1, 1000, 65536, (1 << 20) + 3, 12345];
    const run = await runClient(env.cgroup, VIP, 9080, sizes);
    assert.deepEqual(
      run.conns.map((c) => c.got),
      sizes.map(responseSize),
    );
    const closes = (): ConnEvent[] => events.filter((e) => e.type === 'close' && e.pid === run.pid);
    await until(tele, () => closes().length === sizes.length, `${sizes.length} close events`);

    const cgroupId = BigInt(statSync(env.cgroup).ino);
    const opens = events.filter((e) => e.type === 'open' && e.pid === run.pid);
    assert.equal(opens.length, sizes.length);
    sizes.forEach((n, i) => {
      const localPort = run.conns[i]!.localPort;
      const open = opens.find((e) => e.localPort === localPort);
      const close = closes().find((e) => e.localPort === localPort);
      assert.ok(open && close, `events of connection ${i} (port ${localPort})`);
      assert.equal(open.cookie, close.cookie, 'open and close pair by cookie');
      for (const e of [open, close]) {
        assert.equal(e.direction, 'outbound');
        assert.equal(e.localAddress, '127.0.0.1');
        assert.equal(e.remoteAddress, BACKEND);
        assert.equal(e.remotePort, port);
        assert.equal(e.originalAddress, VIP);
        assert.equal(e.originalPort, 9080);
        assert.ok(e.serviceId > 0);
        assert.ok(e.backendId > 0);
        assert.equal(e.cgroupId, cgroupId);
      }
      assert.equal(close.bytesSent, BigInt(n), `connection ${i}: bytes sent`);
      assert.equal(close.bytesReceived, BigInt(responseSize(n)), `connection ${i}: bytes received`);
      assert.equal(close.endReason, 'closed');
      assert.ok(close.durationNs > 0n);
      assert.equal(close.accelerated, false);
    });

    const text = await tele.registry.metrics();
    assertPromtoolAccepts(text);
    const labels = {
      reporter: 'source',
      destination_service: 'reviews.default.svc.cluster.local',
      destination_service_name: 'reviews',
      destination_service_namespace: 'default',
      source_workload: 'productpage-v1',
      source_workload_namespace: 'default',
      source_cluster: 'Kubernetes',
      destination_workload: 'unknown',
      destination_cluster: 'unknown',
    };
    assert.equal(sample(text, 'istio_tcp_connections_opened_total', labels), sizes.length);
    assert.equal(sample(text, 'istio_tcp_connections_closed_total', labels), sizes.length);
    const request = sizes.reduce((a, n) => a + n, 0);
    const response = sizes.reduce((a, n) => a + responseSize(n), 0);
    assert.equal(sample(text, 'istio_tcp_received_bytes_total', labels), request, 'request bytes');
    assert.equal(sample(text, 'istio_tcp_sent_bytes_total', labels), response, 'response bytes');
    assert.equal(sample(text, 'kernmesh_telemetry_events_lost_total', {}), 0);
    // cgroup_skb saw the service's packets both ways (headers included, so at least the payload).
    const svcId = String(closes()[0]!.serviceId);
    const sent = sample(text, 'kernmesh_service_sent_bytes_total', { service_id: svcId });
    const received = sample(text, 'kernmesh_service_received_bytes_total', { service_id: svcId });
    assert.ok(sent !== undefined && sent >= request, `service sent bytes ${sent}`);
    assert.ok(received !== undefined && received >= response, `service received bytes ${received}`);
  },
);

kernelTest('inbound connections are reported by the destination with the bytes each way', async (_t, env) => {
  const logLines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logLines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const { tele, events } = setup(env, pino({ base: null }, sink));
  // the server runs in the cgroup; the client (this process) does not
  const server = await runServerInCgroup(env);
  const sizes = [5, 70000];
  for (const n of sizes) {
    await new Promise<void>((resolve, reject) => {
      import('node:net')
        .then(({ connect }) => {
          const s = connect({ host: '127.0.0.31', port: server.port }, () => s.end(Buffer.alloc(n)));
          s.on('data', () => {});
          s.on('error', reject);
          s.on('close', () => resolve());
        })
        .catch(reject);
    });
  }
  const closes = (): ConnEvent[] => events.filter((e) => e.type === 'close' && e.direction === 'inbound');
  await until(tele, () => closes().length === sizes.length, 'inbound closes');
  sizes.forEach((n) => {
    const e = closes().find((c) => c.bytesReceived === BigInt(n));
    assert.ok(e, `inbound close with ${n} bytes received`);
    assert.equal(e.bytesSent, BigInt(responseSize(n)));
    assert.equal(e.localAddress, '127.0.0.31');
    assert.equal(e.localPort, server.port);
    assert.equal(e.pid, server.pid, 'accepted sockets carry the listening process');
    assert.equal(e.originalAddress, undefined);
  });
  // one access-log line per closed connection
  await until(tele, () => logLines.length === sizes.length, 'access log lines');
  assert.deepEqual(
    logLines.map((l) => [l.msg, l.direction, l.bytes_received, l.bytes_sent, l.end, l.destination]).sort(),
    sizes
      .map((n) => ['connection closed', 'inbound', n, responseSize(n), 'closed', `127.0.0.31:${server.port}`])
      .sort(),
  );
  const text = await tele.registry.metrics();
  assert.equal(
    sample(text, 'istio_tcp_received_bytes_total', {
      reporter: 'destination',
      destination_workload: 'productpage-v1',
      destination_workload_namespace: 'default',
      destination_cluster: 'Kubernetes',
      source_workload: 'unknown',
    }),
    sizes.reduce((a, n) => a + n, 0),
  );
});

const SERVER = String.raw`
const net = require('node:net');
const srv = net.createServer((s) => {
  let n = 0;
  s.on('data', (d) => (n += d.length));
  s.on('end', () => s.end(Buffer.alloc(3 * n + 7)));
  s.on('error', () => {});
});
srv.listen(0, '127.0.0.31', () => console.log(JSON.stringify({ port: srv.address().port, pid: process.pid })));
`;

async function runServerInCgroup(env: KernelEnv): Promise<{ port: number; pid: number }> {
  const { spawnInCgroup } = await import('./support/kernel.js');
  const child = spawnInCgroup(env.cgroup, process.execPath, ['-e', SERVER]);
  env.defer(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await once(child, 'close');
    }
  });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  return JSON.parse(line.toString()) as { port: number; pid: number };
}

kernelTest(
  'telemetry can be turned off and on at run time; open connections are unaffected',
  async (_t, env) => {
    const { tele, events } = setup(env);
    const { port } = await startServer(env, BACKEND);
    tele.setEnabled(false);
    const off = await runClient(env.cgroup, BACKEND, port, [100, 200]);
    assert.deepEqual(
      off.conns.map((c) => c.got),
      [307, 607],
    );
    tele.drain();
    assert.equal(events.filter((e) => e.pid === off.pid).length, 0, 'no events while off');
    tele.setEnabled(true);
    const on = await runClient(env.cgroup, BACKEND, port, [300]);
    await until(
      tele,
      () => events.some((e) => e.pid === on.pid && e.type === 'close'),
      'close after re-enabling',
    );
    const close = events.find((e) => e.pid === on.pid && e.type === 'close')!;
    assert.equal(close.bytesSent, 300n);
    assert.equal(close.originalAddress, undefined, 'not rewritten: no routing loaded');
  },
);

kernelTest('accelerated connections report the bytes that went through the sockmap', async (_t, env) => {
  const { tele, events } = setup(env);
  const accel = Accelerator.open({ pinDir: env.pinDir });
  const a = accel.attach(env.cgroup);
  env.defer(() => {
    a.detach();
    accel.close();
  });
  accel.setEnabled(true);
  const server = await runServerInCgroup(env);
  const before = accel.counters();
  const run = await runClient(env.cgroup, '127.0.0.31', server.port, [4000, 250000]);
  assert.deepEqual(
    run.conns.map((c) => c.got),
    [12007, 750007],
  );
  assert.ok(accel.counters().messagesRedirected > before.messagesRedirected, 'went through the sockmap');
  const closes = (): ConnEvent[] => events.filter((e) => e.type === 'close');
  await until(tele, () => closes().length === 4, 'both ends of both connections closed');
  for (const [i, n] of [4000, 250000].entries()) {
    const localPort = run.conns[i]!.localPort;
    const client = closes().find((e) => e.direction === 'outbound' && e.localPort === localPort);
    const serverEnd = closes().find((e) => e.direction === 'inbound' && e.remotePort === localPort);
    assert.ok(client && serverEnd);
    assert.equal(client.accelerated, true);
    assert.equal(client.bytesSent, BigInt(n));
    assert.equal(client.bytesReceived, BigInt(responseSize(n)));
    assert.equal(serverEnd.bytesReceived, BigInt(n));
    assert.equal(serverEnd.bytesSent, BigInt(responseSize(n)));
  }
});

kernelTest(
  'a full ring buffer loses events without blocking connections, and the lost counter says how many',
  async (_t, env) => {
    const events: ConnEvent[] = [];
    const tele = Telemetry.open({ pinDir: env.pinDir, onEvent: (e) => events.push(e) });
    const attachment = tele.attach(env.cgroup);
    env.defer(() => {
      attachment.detach();
      tele.close();
    });
    tele.setEnabled(true);
    const { port } = await startServer(env, BACKEND);
    // Nothing consumes the ring buffer meanwhile: 256 KiB holds about 1800 records, 2 per connection.
    // Connections go on in chunks until the kernel has counted a lost event: the overflow is reached
    // by continuing, not assumed from the record size or the machine's speed.
    const chunk = 600;
    let n = 0;
    const counters = tele.object.map('km_telemetry_counters');
    const total = (i: number): bigint => {
      const v = counters.lookup(Buffer.from([i, 0, 0, 0]));
      let sum = 0n;
      for (let off = 0; v && off < v.length; off += 8) sum += v.readBigUInt64LE(off);
      return sum;
    };
    while (n === 0 || tele.lostEvents() === 0n) {
      assert.ok(n < 30_000, `the ring buffer never overflowed in ${n} connections`);
      const run = await runClient(env.cgroup, BACKEND, port, Array<number>(chunk).fill(1));
      assert.ok(
        run.conns.every((c) => c.got === responseSize(1)),
        'every connection completed',
      );
      n += chunk;
      // closes finish asynchronously; wait until every connection has reported or been lost
      for (let i = 0; i < 500 && total(0) + total(1) < BigInt(2 * n); i++)
        await new Promise((r) => setTimeout(r, 10));
    }
    const lost = tele.lostEvents();
    const sent = total(1);
    assert.ok(lost > 0n, 'the ring buffer overflowed');
    assert.equal(sent + lost, BigInt(2 * n), 'every event either delivered or counted as lost');
    assert.equal(BigInt(tele.drain()), sent, 'what was not lost is all in the ring buffer');
    assert.equal(events.length, Number(sent));
    const text = await tele.registry.metrics();
    assert.equal(sample(text, 'kernmesh_telemetry_events_lost_total', {}), Number(lost));
  },
);

/** Client that sends `first` bytes, waits for one byte from the server, sends `second`, then ends. */
const TWO_PHASE = String.raw`
const net = require('node:net');
const [host, port, first, second] = JSON.parse(process.argv[1]);
let got = 0, phase = 0, localPort;
const s = net.connect({ host, port }, () => { localPort = s.localPort; s.write(Buffer.alloc(first, 1)); });
s.on('data', (d) => {
  got += d.length;
  if (phase++ === 0) s.end(Buffer.alloc(second, 2));
});
s.on('close', () => console.log(JSON.stringify({ localPort, got, pid: process.pid })));
`;

kernelTest(
  'telemetry switched off and on while a connection is open: the connection is intact and its counts exact',
  async (_t, env) => {
    const { tele, events } = setup(env);
    const first = 5000;
    const second = 300000;
    const server = createServer((s: Socket) => {
      let n = 0;
      let signalled = false;
      s.on('data', (d: Buffer) => {
        n += d.length;
        if (!signalled && n >= first) {
          signalled = true;
          tele.setEnabled(false); // mid-connection: off while the second phase flows
          s.write('g');
        }
        if (n === first + second) tele.setEnabled(true);
      });
      s.on('end', () => s.end(Buffer.alloc(responseSize(n))));
      s.on('error', () => {});
    });
    server.listen(0, BACKEND);
    await once(server, 'listening');
    env.defer(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    const r = await runInCgroup(env.cgroup, process.execPath, [
      '-e',
      TWO_PHASE,
      JSON.stringify([BACKEND, port, first, second]),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const run = JSON.parse(r.stdout) as { localPort: number; got: number; pid: number };
    assert.equal(run.got, 1 + responseSize(first + second), 'the connection completed intact');
    await until(tele, () => events.some((e) => e.type === 'close' && e.pid === run.pid), 'close event');
    const close = events.find((e) => e.type === 'close' && e.pid === run.pid)!;
    assert.equal(close.localPort, run.localPort);
    assert.equal(close.bytesSent, BigInt(first + second));
    assert.equal(close.bytesReceived, BigInt(1 + responseSize(first + second)));
    assert.equal(tele.enabled(), true);
  },
);
