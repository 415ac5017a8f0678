// Real sockets for routing tests: backend servers in the test process (outside the test cgroup)
// that greet each connection with their own identity, and one long-lived client process inside
// the cgroup that makes many connects per request and answers in JSON lines.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

import { spawnInCgroup } from './kernel.js';

export interface Backend {
  address: string;
  port: number;
  /** "address|port", what the server sends first on every connection. */
  id: string;
  /** Remote "address|port" of every connection accepted, in order. */
  peers: string[];
  /** Open server-side sockets (for tests that hold connections). */
  open: Set<Socket>;
  /** Bytes received per connection, when `collect` was set. */
  received: Buffer[];
  close(): Promise<void>;
}

export interface BackendOptions {
  /** Keep every byte each connection sends (in `received`, one Buffer per connection, on end). */
  collect?: boolean;
  /** Send nothing on accept (a waypoint that only reads). */
  silent?: boolean;
  port?: number;
}

export async function startBackend(address: string, opts: BackendOptions = {}): Promise<Backend> {
  const peers: string[] = [];
  const open = new Set<Socket>();
  const received: Buffer[] = [];
  let id = '';
  const server: Server = createServer((sock) => {
    peers.push(`${sock.remoteAddress}|${sock.remotePort}`);
    open.add(sock);
    sock.on('error', () => {});
    sock.on('close', () => open.delete(sock));
    if (!opts.silent) sock.write(`${id}\n`);
    if (opts.collect) {
      const chunks: Buffer[] = [];
      sock.on('data', (d: Buffer) => chunks.push(d));
      sock.on('end', () => {
        received.push(Buffer.concat(chunks));
        sock.end();
      });
    } else {
      sock.resume();
      sock.on('end', () => sock.end());
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address, port: opts.port ?? 0, backlog: 4096 }, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  id = `${address}|${port}`;
  return {
    address,
    port,
    id,
    peers,
    open,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Client program run with `node -e`: JSON commands on stdin, one JSON result per line on stdout. */
const CLIENT_JS = String.raw`
const net = require('net');
const held = new Map();
const ends = new Map();
const now = () => Number(process.hrtime.bigint());
function payloadOf(c) {
  if (c.sendSize === undefined) return undefined;
  const b = Buffer.alloc(c.sendSize);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}
function one(c) {
  return new Promise((resolve) => {
    const t0 = now();
    const opts = { host: c.host, port: c.port };
    if (c.localAddress) opts.localAddress = c.localAddress;
    const s = net.connect(opts);
    let settled = false;
    let timer;
    const finish = (r) => { if (!settled) { settled = true; clearTimeout(timer); resolve(r); } };
    // Without a limit of its own, a connect that never completes (or never reads its id) fails after
    // 60 s, naming which, instead of holding its test until the file is cancelled without a word.
    let connected = false;
    timer = setTimeout(() => { s.destroy(); finish({ ok: false, err: c.timeoutMs ? 'TIMEOUT' : connected ? 'TIMEOUT (connected, no id in 60 s)' : 'TIMEOUT (no connect in 60 s)', t0, t1: now() }); }, c.timeoutMs || 60000);
    s.on('error', (e) => { s.destroy(); finish({ ok: false, err: e.code || String(e), t0, t1: now() }); });
    s.once('connect', () => {
      connected = true;
      const t1 = now();
      const r = { ok: true, peer: s.remoteAddress + '|' + s.remotePort, local: s.localAddress + '|' + s.localPort, t0, t1 };
      const payload = payloadOf(c);
      if (payload) s.end(payload);
      if (c.hold) {
        held.set(c.tag, s);
        s.on('error', (e) => { if (!ends.has(c.tag)) ends.set(c.tag, { err: e.code || String(e) }); });
        s.on('close', () => { const e = ends.get(c.tag) || {}; ends.set(c.tag, Object.assign(e, { closedNs: now() })); });
      }
      if (!c.readId) {
        if (!c.hold && !payload) s.destroy();
        return finish(r);
      }
      let buf = '';
      s.setEncoding('utf8');
      s.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        r.backend = buf.slice(0, nl);
        if (!c.hold && !payload) s.destroy();
        finish(r);
      });
      s.on('end', () => finish(Object.assign(r, { ok: false, err: 'EOF before id' })));
    });
  });
}
async function batch(c) {
  const out = new Array(c.count);
  let next = 0;
  const srcs = c.localAddresses || [];
  async function worker() {
    while (next < c.count) {
      const i = next++;
      const conn = Object.assign({}, c, { hold: false });
      if (srcs.length) conn.localAddress = srcs[i % srcs.length];
      const r = await one(conn);
      out[i] = c.detail ? r : { ok: r.ok, err: r.err, backend: r.backend };
      if (srcs.length) out[i].src = conn.localAddress;
    }
  }
  await Promise.all(Array.from({ length: c.concurrency || 1 }, worker));
  return { results: out };
}
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const c = JSON.parse(line);
  let r;
  try {
    if (c.op === 'connect') r = await one(c);
    else if (c.op === 'batch') r = await batch(c);
    else if (c.op === 'close') { const s = held.get(c.tag); held.delete(c.tag); if (s) s.destroy(); r = { ok: !!s }; }
    else if (c.op === 'ends') r = { ends: Object.fromEntries(ends) };
    else if (c.op === 'exit') { for (const s of held.values()) s.destroy(); process.exit(0); }
  } catch (e) { r = { ok: false, err: String(e && e.stack || e) }; }
  process.stdout.write(JSON.stringify(Object.assign({ seq: c.seq }, r)) + '\n');
});
`;

export interface ConnectResult {
  ok: boolean;
  err?: string;
  /** getpeername() of the client socket, "address|port". */
  peer?: string;
  local?: string;
  /** The identity the backend greeted with. */
  backend?: string;
  /** process.hrtime (CLOCK_MONOTONIC) before connect() and when it completed, in ns. */
  t0: number;
  t1: number;
  src?: string;
}

export interface ConnectRequest {
  host: string;
  port: number;
  localAddress?: string;
  /** Wait for the backend's greeting line. */
  readId?: boolean;
  /** Keep the socket open under this tag until close(tag). */
  hold?: boolean;
  tag?: string;
  /** Send this many bytes of a fixed pattern (see payload()), then half-close. */
  sendSize?: number;
  /** Give up (destroy the socket) after this long without an answer: err 'TIMEOUT'. */
  timeoutMs?: number;
}

/** The bytes a client sends for `sendSize` n. */
export function payload(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

/** One client process inside a cgroup (optionally inside a network namespace). */
export class Client {
  private readonly child: ChildProcess;
  private seq = 0;
  private readonly waiting = new Map<number, (r: unknown) => void>();
  private stderr = '';

  constructor(cgroup: string, netns?: string) {
    const [cmd, args] = netns
      ? ['ip', ['netns', 'exec', netns, process.execPath, '-e', CLIENT_JS]]
      : [process.execPath, ['-e', CLIENT_JS]];
    this.child = spawnInCgroup(cgroup, cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const r = JSON.parse(line) as { seq: number };
      this.waiting.get(r.seq)?.(r);
      this.waiting.delete(r.seq);
    });
    this.child.on('exit', (code) => {
      for (const [, w] of this.waiting) w({ ok: false, err: `client exited ${code}: ${this.stderr}` });
      this.waiting.clear();
    });
  }

  private request<T>(cmd: Record<string, unknown>): Promise<T> {
    const seq = ++this.seq;
    return new Promise<T>((resolve) => {
      this.waiting.set(seq, resolve as (r: unknown) => void);
      this.child.stdin!.write(JSON.stringify({ ...cmd, seq }) + '\n');
    });
  }

  connect(c: ConnectRequest): Promise<ConnectResult> {
    return this.request({ op: 'connect', ...c });
  }

  /** `count` connects, `concurrency` at a time, sources cycling through `localAddresses`. */
  async batch(
    c: ConnectRequest & { count: number; concurrency?: number; localAddresses?: string[]; detail?: boolean },
  ): Promise<ConnectResult[]> {
    const r = await this.request<{ results?: ConnectResult[]; err?: string }>({ op: 'batch', ...c });
    if (!r.results) throw new Error(`client batch failed: ${r.err ?? 'no results'} ${this.stderr}`);
    return r.results;
  }

  close(tag: string): Promise<{ ok: boolean }> {
    return this.request({ op: 'close', tag });
  }

  /**
   * Held connections that have closed: per tag, the error the socket saw
   * and when it closed (process.hrtime, CLOCK_MONOTONIC: the kernel's bpf_ktime_get_ns clock).
   */
  async ends(): Promise<Record<string, { err?: string; closedNs: number }>> {
    return (await this.request<{ ends: Record<string, { err?: string; closedNs: number }> }>({ op: 'ends' }))
      .ends;
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.write(JSON.stringify({ op: 'exit' }) + '\n');
    await done;
  }
}

/** Counts of each value. */
export function tally(values: (string | undefined)[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const v of values) m.set(v ?? '(none)', (m.get(v ?? '(none)') ?? 0) + 1);
  return m;
}

/** Server program for `ip netns exec`: listens on the given addresses, reports JSON lines. */
const SERVER_JS = String.raw`
const net = require('net');
const crypto = require('crypto');
const specs = JSON.parse(process.argv[1]);
const ready = [];
let pending = specs.length;
for (const spec of specs) {
  let id = '';
  const server = net.createServer((sock) => {
    const peer = sock.remoteAddress + '|' + sock.remotePort;
    if (!spec.silent) sock.write(id + '\n');
    const chunks = [];
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', () => {});
    sock.on('end', () => {
      const all = Buffer.concat(chunks);
      const line = { event: 'conn', server: id, peer, length: all.length, head: all.subarray(0, 64).toString('hex'),
        sha256: crypto.createHash('sha256').update(all).digest('hex') };
      process.stdout.write(JSON.stringify(line) + '\n');
      sock.end();
    });
  });
  server.listen({ host: spec.address, port: spec.port || 0 }, () => {
    id = spec.address + '|' + server.address().port;
    ready.push({ address: spec.address, port: server.address().port, id });
    if (--pending === 0) process.stdout.write(JSON.stringify({ event: 'ready', servers: ready }) + '\n');
  });
}
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

export interface NetnsServer {
  address: string;
  port: number;
  id: string;
}

export interface NetnsConnection {
  server: string;
  peer: string;
  length: number;
  /** First 64 bytes in hex. */
  head: string;
  sha256: string;
}

/** Servers running inside a network namespace (a child process), reporting every connection. */
export class NetnsBackends {
  readonly servers: NetnsServer[] = [];
  readonly connections: NetnsConnection[] = [];
  private readonly child: ChildProcess;
  private readonly ready: Promise<void>;

  /** `port`: a fixed port (free inside a namespace of the test's own); 0 or absent: any. */
  constructor(netns: string, specs: { address: string; port?: number; silent?: boolean }[]) {
    this.child = spawn(
      'ip',
      ['netns', 'exec', netns, process.execPath, '-e', SERVER_JS, JSON.stringify(specs)],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    this.child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    this.ready = new Promise((resolve, reject) => {
      this.child.on('exit', (code) => reject(new Error(`netns servers exited ${code}: ${stderr}`)));
      createInterface({ input: this.child.stdout! }).on('line', (line) => {
        const m = JSON.parse(line) as { event: string; servers?: NetnsServer[] } & NetnsConnection;
        if (m.event === 'ready') {
          this.servers.push(...(m.servers ?? []));
          resolve();
        } else this.connections.push(m);
      });
    });
  }

  async start(): Promise<this> {
    await this.ready;
    return this;
  }

  server(address: string): NetnsServer {
    const s = this.servers.find((x) => x.address === address);
    if (!s) throw new Error(`no server on ${address}`);
    return s;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.end();
    await done;
  }
}

/** Creates a network namespace with lo up and the given addresses on lo; returns its name and a remover. */
export function createNetns(label: string, addresses: string[]): { name: string; remove(): void } {
  const name = `kmt-${label}-${process.pid}-${Math.floor(Math.random() * 1e6)}`;
  execFileSync('ip', ['netns', 'add', name]);
  const remove = (): void => {
    execFileSync('ip', ['netns', 'del', name]);
  };
  try {
    execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    for (const a of addresses) {
      const v6 = a.includes(':');
      execFileSync('ip', [
        '-n',
        name,
        ...(v6 ? ['-6'] : []),
        'addr',
        'add',
        `${a}/${v6 ? 128 : 32}`,
        'dev',
        'lo',
        ...(v6 ? ['nodad'] : []),
      ]);
    }
  } catch (e) {
    remove();
    throw e;
  }
  return { name, remove };
}
