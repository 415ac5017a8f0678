// Connection spans: the agent turns each routed connection into an OpenTelemetry span and sends it over
// OTLP/HTTP (protobuf) to a receiver the test runs, which decodes the requests with code generated from
// the OpenTelemetry protocol definitions. The spans of real connections carry the service, endpoint,
// bytes, RTT and close reason, with times that agree with the kernel's own events.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { Registry } from 'prom-client';

import type { ConnEvent } from '../src/telemetry/codec.js';
import { istioLabels } from '../src/telemetry/metrics.js';
import { ConnectionTracer } from '../src/telemetry/traces.js';
import { adminGet, runAgentServing } from './support/cli.js';
import { assignment, edsCluster, outbound, tcpListener } from './support/control-plane-istiod.js';
import { kernelTest } from './support/kernel.js';
import { startBackend } from './support/net.js';
import { OtlpReceiver } from './support/otlp.js';
import { eventually } from './support/wait.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

const HOST = 'traced.shop.svc.cluster.local';
const VIP = '127.100.82.1';
const PORT = 8082;
const CLUSTER = outbound(HOST, PORT);

kernelTest(
  'routed connections arrive as OTLP spans with service, endpoint, bytes, RTT and close reason; times agree with the kernel events',
  async (_t, env) => {
    const receiver = await OtlpReceiver.start();
    env.defer(() => receiver.close());
    const backend = await startBackend('127.0.0.82', { collect: true });
    env.defer(() => backend.close());
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-traces-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'resources.json');
    writeFileSync(
      file,
      JSON.stringify({
        resources: [
          edsCluster(CLUSTER),
          assignment(CLUSTER, [{ address: backend.address, port: backend.port }]),
          tcpListener(VIP, PORT, CLUSTER, {}),
        ],
      }),
    );
    const accessLog = join(dir, 'access.log');
    const { admin, client } = await runAgentServing(env, [
      '--xds-file',
      file,
      '--trace-endpoint',
      receiver.url,
      '--trace-sampling',
      '1',
      '--access-log',
      accessLog,
      '--pod-name',
      'agent-0',
      '--node-name',
      'node-a',
    ]);
    await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);

    const sizes = [1000, 1, 65536];
    const conns = [];
    for (const n of sizes) {
      const r = await client.connect({ host: VIP, port: PORT, sendSize: n, readId: true });
      assert.ok(r.ok, r.err);
      conns.push({ n, localPort: Number(r.local!.split('|')[1]) });
    }
    await eventually('a span per connection', () => receiver.spans.length >= sizes.length, {
      attempts: 300,
      intervalMs: 50,
    });
    assert.equal(receiver.spans.length, sizes.length);
    assert.ok(
      receiver.contentTypes.every((c) => c === 'application/x-protobuf'),
      receiver.contentTypes.join(),
    );

    const log = readFileSync(accessLog, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.direction === 'outbound');
    const greeting = backend.id.length + 1;
    for (const { n, localPort } of conns) {
      const span = receiver.spans.find((s) => s.attributes['network.local.port'] === localPort);
      assert.ok(span, `span of the connection from port ${localPort}`);
      assert.equal(span.name, `connect ${HOST}:${PORT}`);
      assert.equal(span.kind, 'SPAN_KIND_CLIENT');
      assert.equal(span.resource['service.name'], 'kernmesh');
      assert.equal(span.resource['k8s.node.name'], 'node-a');
      const a = span.attributes;
      assert.equal(a['kernmesh.service'], HOST);
      assert.equal(a['server.address'], HOST);
      assert.equal(a['server.port'], PORT);
      assert.equal(a['kernmesh.original_destination'], `${VIP}:${PORT}`);
      assert.equal(a['network.peer.address'], backend.address, 'the chosen endpoint');
      assert.equal(a['network.peer.port'], backend.port);
      assert.equal(a['kernmesh.endpoint'], `${backend.address}:${backend.port}`);
      assert.equal(a['kernmesh.cluster'], CLUSTER);
      assert.equal(a['kernmesh.waypoint'], undefined, 'no waypoint');
      assert.equal(a['kernmesh.bytes_sent'], n);
      assert.equal(a['kernmesh.bytes_received'], greeting);
      assert.equal(a['kernmesh.close_reason'], 'closed');
      assert.equal(typeof a['kernmesh.rtt_us'], 'number');
      assert.ok((a['kernmesh.rtt_us'] as number) > 0, 'RTT from the socket');
      assert.deepEqual(
        span.events.map((e) => e.name),
        ['connect', 'established', 'close'],
      );
      const [connect, established, close] = span.events.map((e) => e.timeNs) as [bigint, bigint, bigint];
      assert.equal(span.startNs, connect, 'the span starts at connect()');
      assert.equal(span.endNs, close, 'and ends at the close');
      assert.ok(connect <= established && established <= close, 'events in order');
      // The kernel's own numbers for this connection, from the access log.
      const line = log.find((l) => l.source === `127.0.0.1:${localPort}`);
      assert.ok(line, `access-log line of port ${localPort}`);
      assert.equal(established - connect, BigInt(line.connect_us as number) * 1000n, 'handshake time');
      const lifetimeMs = Number(close - established) / 1e6;
      assert.ok(
        Math.abs(lifetimeMs - (line.duration_ms as number)) < 1e-3,
        `established→close ${lifetimeMs} ms = the kernel's duration ${String(line.duration_ms)} ms`,
      );
    }
    const metrics = (await adminGet(admin, '/stats/prometheus')).text;
    assert.match(metrics, /^kernmesh_trace_spans_exported_total 3$/m);
    assert.match(metrics, /^kernmesh_trace_spans_dropped_total\{reason="queue_full"\} 0$/m);
  },
);

const event = (type: 'open' | 'close', cookie: bigint, over: Partial<ConnEvent> = {}): ConnEvent => ({
  type,
  timestampNs: type === 'open' ? 1_000_000n : 5_000_000n,
  cookie,
  cgroupId: 1n,
  pid: 1,
  direction: 'outbound',
  localAddress: '127.0.0.1',
  localPort: 40000 + Number(cookie),
  remoteAddress: '127.0.0.21',
  remotePort: 9080,
  originalAddress: '127.100.0.1',
  originalPort: 80,
  serviceId: 1,
  backendId: 1,
  bytesSent: 10n,
  bytesReceived: 20n,
  durationNs: 4_000_000n,
  srttUs: 50,
  retransmits: 0,
  connectUs: 30,
  endReason: 'closed',
  accelerated: false,
  ...over,
});

function connection(tracer: ConnectionTracer, cookie: bigint, over: Partial<ConnEvent> = {}): void {
  const facts = { labels: istioLabels(event('open', cookie, over), undefined) };
  tracer.record(event('open', cookie, over), facts);
  tracer.record(event('close', cookie, over), facts);
}

async function counter(registry: Registry, line: RegExp): Promise<number> {
  const m = line.exec(await registry.metrics());
  return m ? Number(m[1]) : NaN;
}

void test('tracing samples at the open, never traces unrouted or inbound connections, and counts every span lost', async () => {
  const receiver = await OtlpReceiver.start();
  try {
    const registry = new Registry();
    const draws = [0.2, 0.7, 0.4];
    const tracer = new ConnectionTracer(
      { endpoint: receiver.url, sampling: 0.5, queueSize: 2, maxOpen: 1, random: () => draws.shift() ?? 0 },
      registry,
    );
    // sampling: 0.2 and 0.4 are under 0.5, 0.7 is not
    connection(tracer, 1n);
    connection(tracer, 2n);
    connection(tracer, 3n);
    // never traced: not rewritten by routing, or accepted (inbound)
    connection(tracer, 4n, { originalAddress: undefined, originalPort: undefined });
    connection(tracer, 5n, { direction: 'inbound' });
    await tracer.flush();
    await eventually(
      'two spans exported',
      async () => (await counter(registry, /^kernmesh_trace_spans_exported_total (\d+)$/m)) === 2,
    );
    assert.deepEqual(receiver.spans.map((s) => s.attributes['network.local.port']).sort(), [40001, 40003]);
    assert.equal(await counter(registry, /^kernmesh_trace_spans_exported_total (\d+)$/m), 2);

    // too many sampled connections open: the open is not held
    tracer.record(event('open', 10n), { labels: istioLabels(event('open', 10n), undefined) });
    tracer.record(event('open', 11n), { labels: istioLabels(event('open', 11n), undefined) });
    assert.equal(
      await counter(registry, /^kernmesh_trace_spans_dropped_total\{reason="too_many_open"\} (\d+)$/m),
      1,
    );
    tracer.record(event('close', 10n), { labels: istioLabels(event('close', 10n), undefined) });

    // an endpoint that refuses: the batch is lost and counted
    receiver.mode = 'refuse';
    connection(tracer, 20n);
    await tracer.flush();
    await eventually(
      'the refused span counted',
      async () =>
        (await counter(registry, /^kernmesh_trace_spans_dropped_total\{reason="export_failed"\} (\d+)$/m)) >=
        1,
    );
    // every span handed over so far has settled: exported or failed
    await eventually(
      'nothing in flight',
      async () =>
        (await counter(registry, /^kernmesh_trace_spans_exported_total (\d+)$/m)) +
          (await counter(
            registry,
            /^kernmesh_trace_spans_dropped_total\{reason="export_failed"\} (\d+)$/m,
          )) ===
        4,
    );

    // an endpoint that never answers: the queue bound holds and the rest is dropped
    receiver.mode = 'hold';
    for (let c = 30n; c < 36n; c++) connection(tracer, c);
    assert.equal(
      await counter(registry, /^kernmesh_trace_spans_dropped_total\{reason="queue_full"\} (\d+)$/m),
      4,
    );
    void tracer.shutdown();
  } finally {
    await receiver.close();
  }
});
