// Control plane lost under a steady connect load (issue 14): a client in the served cgroup connects
// without pause while the control plane stops, comes back and breaks its stream in the middle of a
// 2 MB response, then serves a different config. No connect fails; until the new config is applied
// every connect reaches the old one's backends, and after it only the new one's; /ready, /debug/xds
// and kernmesh_xds_connected say what happened at each step. The agent reaches the control plane
// through a TCP proxy in the test, which is how the stream is cut mid-response.
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { runAgentServing } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  outbound,
  passthroughCluster,
  tcpListener,
} from './support/control-plane-istiod.js';
import { kernelTest } from './support/kernel.js';
import { startBackend, type ConnectResult } from './support/net.js';
import { eventually } from './support/wait.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';

const VIP = '127.100.96.1';
const PORT = 8096;
const CLUSTER = outbound('lossy.test.svc.cluster.local', PORT);

/** A TCP proxy to the current control plane, which can cut the next stream after some bytes. */
class Proxy {
  upstream: string | undefined;
  /** Cut the next connection after this many bytes from the control plane. */
  cutAfter: number | undefined;
  cutAt: bigint | undefined;
  private readonly sockets = new Set<Socket>();
  private constructor(readonly server: Server) {}

  static async start(): Promise<Proxy> {
    const server = createServer();
    const p = new Proxy(server);
    server.on('connection', (down) => p.accept(down));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return p;
  }

  get address(): string {
    const a = this.server.address() as { port: number };
    return `127.0.0.1:${a.port}`;
  }

  private accept(down: Socket): void {
    this.sockets.add(down);
    down.on('close', () => this.sockets.delete(down));
    down.on('error', () => undefined);
    if (!this.upstream) return void down.destroy();
    const [host, port] = this.upstream.split(':');
    const up = connect(Number(port), host);
    this.sockets.add(up);
    up.on('close', () => (this.sockets.delete(up), down.destroy()));
    up.on('error', () => down.destroy());
    down.on('close', () => up.destroy());
    down.on('data', (d: Buffer) => up.write(d));
    let passed = 0;
    const limit = this.cutAfter;
    this.cutAfter = undefined;
    up.on('data', (d: Buffer) => {
      if (limit !== undefined && passed + d.length > limit) {
        down.write(d.subarray(0, limit - passed));
        this.cutAt = process.hrtime.bigint();
        down.destroy();
        up.destroy();
        return;
      }
      passed += d.length;
      down.write(d);
    });
  }

  /** Drops every connection through it (the control plane went away). */
  dropAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  close(): Promise<void> {
    this.dropAll();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Config A or B: the VIP's cluster with its endpoints; `padding` adds clusters to make CDS large. */
function serve(cp: TestControlPlane, endpoints: { address: string; port: number }[], padding = 0): void {
  const pad: JsonObject[] = Array.from({ length: padding }, (_, i) => ({
    '@type': TYPE.cluster,
    name: `padding-${i}`,
    type: 'STATIC',
    metadata: { filter_metadata: { padding: { text: 'p'.repeat(600) } } },
  }));
  cp.setResources(TYPE.cluster, [passthroughCluster, edsCluster(CLUSTER), ...pad]);
  cp.setResources(TYPE.endpoint, [assignment(CLUSTER, endpoints)]);
  cp.setResources(TYPE.listener, [tcpListener(VIP, PORT, CLUSTER)]);
}

function metric(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

kernelTest(
  'control plane lost under connect load: stops, breaks its stream mid-response, returns with another config; 0 connects fail',
  async (t, env) => {
    const [a1, a2, b1] = await Promise.all(
      ['127.96.0.1', '127.96.0.2', '127.96.0.3'].map((a) => startBackend(a)),
    );
    for (const b of [a1, a2, b1]) env.defer(() => b!.close());
    const A = new Set([a1!.id, a2!.id]);
    const B = new Set([b1!.id]);
    const proxy = await Proxy.start();
    env.defer(() => proxy.close());
    const cp1 = await TestControlPlane.start();
    env.defer(() => cp1.stop());
    serve(cp1, [a1!, a2!]);
    proxy.upstream = cp1.address;
    const { admin, client } = await runAgentServing(env, [
      '--xds-address',
      proxy.address,
      '--pod-name',
      'kernmesh-loss',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
    ]);
    await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);

    const results: ConnectResult[] = [];
    let running = true;
    const started = process.hrtime.bigint();
    const load = (async () => {
      while (running)
        results.push(
          ...(await client.batch({
            host: VIP,
            port: PORT,
            readId: true,
            count: 200,
            concurrency: 8,
            detail: true,
          })),
        );
    })();
    env.defer(async () => {
      running = false;
      await load.catch(() => undefined);
    });
    const step = async (
      name: string,
    ): Promise<{ ready: number; readyText: string; state: string; connected?: number }> => {
      const ready = await fetch(`http://${admin}/ready`);
      const readyText = await ready.text();
      const debug = (
        await getJson<{ xds: { connection?: { state?: string; lastError?: string } } }>(admin, '/debug/xds')
      ).body;
      const metrics = await (await fetch(`http://${admin}/stats/prometheus`)).text();
      const out = {
        ready: ready.status,
        readyText,
        state: `${debug.xds.connection?.state ?? '?'}${debug.xds.connection?.lastError ? ` (${debug.xds.connection.lastError.slice(0, 90)})` : ''}`,
        connected: metric(metrics, 'kernmesh_xds_connected'),
      };
      t.diagnostic(
        `${name}: /ready ${out.ready} ${JSON.stringify(readyText.trim())}; /debug/xds ${out.state}; kernmesh_xds_connected ${out.connected}; ${results.length} connects so far`,
      );
      return out;
    };
    const moreConnects = async (n: number): Promise<void> => {
      const from = results.length;
      await eventually(`${n} more connects`, () => results.length >= from + n, {
        attempts: 600,
        intervalMs: 50,
      });
    };
    await moreConnects(400);
    const s0 = await step('connected');
    assert.equal(s0.connected, 1);

    // 1. The control plane stops.
    proxy.upstream = undefined;
    await cp1.stop();
    proxy.dropAll();
    await eventually(
      'the agent sees the loss',
      async () =>
        (await getJson<{ source: { connected: boolean } }>(admin, '/debug/xds')).body.source.connected ===
        false,
    );
    await moreConnects(400);
    const s1 = await step('control plane stopped');
    assert.equal(s1.ready, 200, 'still ready: the last accepted config is in force');
    assert.match(s1.readyText, /not connected to istiod at .*: the last accepted config stays in force/);
    assert.match(s1.state, /^(BACKOFF|CONNECTING)/);
    assert.equal(s1.connected, 0);

    // 2. It returns with another config, and the first stream breaks in the middle of a 2 MB CDS.
    const cp2 = await TestControlPlane.start();
    env.defer(() => cp2.stop());
    serve(cp2, [b1!], 3000);
    proxy.cutAfter = 300_000;
    proxy.upstream = cp2.address;
    await eventually('the stream was cut mid-response', () => proxy.cutAt !== undefined, {
      attempts: 1200,
      intervalMs: 50,
    });
    const cutAt = proxy.cutAt!;
    const cds = cp2.responses.find((r) => r.typeUrl === TYPE.cluster);
    assert.ok(
      cds && cds.bytes > 300_000,
      `the cut fell inside the first CDS response (${cds?.bytes ?? 0} bytes)`,
    );

    // 3. The next stream delivers it whole: the new config is applied.
    await eventually(
      'connects reach the new config',
      () => results.some((r) => r.backend !== undefined && B.has(r.backend)),
      {
        attempts: 1200,
        intervalMs: 50,
      },
    );
    await moreConnects(400);
    const s3 = await step('returned with another config');
    assert.equal(s3.ready, 200);
    assert.doesNotMatch(s3.readyText, /not connected/);
    assert.equal(s3.connected, 1);
    assert.ok(
      cp2.requests.some((r) => r.typeUrl === TYPE.cluster && r.kind === 'ack'),
      'the new CDS was ACKed',
    );
    assert.ok(cp2.streamInfos().length >= 2, 'the agent came back on a new stream after the cut');

    running = false;
    await load;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const failed = results.filter((r) => !r.ok);
    assert.deepEqual(failed.slice(0, 3), [], `${failed.length} of ${results.length} connects failed`);
    const stray = results.filter((r) => !A.has(r.backend ?? '') && !B.has(r.backend ?? ''));
    assert.deepEqual(stray.slice(0, 3), [], 'every connect reached a backend of config A or B');
    // Config A until the switch, B after it, once: nothing of B before the cut stream, nothing of A
    // after the first connect that reached B had completed.
    const byStart = [...results].sort((x, y) => x.t0 - y.t0);
    const firstB = byStart.find((r) => B.has(r.backend!))!;
    assert.ok(
      BigInt(Math.round(firstB.t1)) > cutAt,
      'no connect reached the new config before the broken stream',
    );
    const aAfter = byStart.filter((r) => A.has(r.backend!) && r.t0 > firstB.t1);
    assert.deepEqual(
      aAfter.slice(0, 3),
      [],
      'no connect reached the old config once the new one was in force',
    );
    const countA = results.filter((r) => A.has(r.backend!)).length;
    t.diagnostic(
      `${results.length} connects in ${seconds.toFixed(1)} s (${(results.length / seconds).toFixed(0)}/s): ${failed.length} failed, ${countA} to config A, ${results.length - countA} to config B, 1 stream cut mid-response`,
    );
  },
);
