// Both ends of accelerated connections for tests: an echo server and long-lived client sessions, each a
// process inside a cgroup, so the sockmap carries their bytes. A session sends exactly the bytes the
// test gives it and reports the echo, so tests know every byte that crossed each direction.
import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

import { spawnInCgroup, type KernelEnv } from './kernel.js';

const PEER = String.raw`
const net = require('node:net');
const cfg = JSON.parse(process.argv[1]);
if (cfg.mode === 'server') {
  const srv = net.createServer((s) => { s.pipe(s); s.on('error', () => {}); });
  srv.listen(cfg.port || 0, cfg.host, () => console.log(JSON.stringify({ port: srv.address().port })));
} else {
  const opts = { host: cfg.host, port: cfg.port };
  if (cfg.localAddress) opts.localAddress = cfg.localAddress;
  const s = net.connect(opts, () => console.log(JSON.stringify({ local: s.localAddress, localPort: s.localPort })));
  let got = [], want = 0, reply = null;
  s.on('data', (d) => {
    got.push(d);
    const all = Buffer.concat(got);
    if (reply && all.length >= want) { got = []; const r = reply; reply = null; r(all); }
  });
  s.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
  require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
    const c = JSON.parse(line);
    if (c.op === 'close') { s.end(); s.on('close', () => { console.log(JSON.stringify({ closed: true })); process.exit(0); }); return; }
    const data = Buffer.from(c.data, 'base64');
    want = data.length;
    reply = (all) => console.log(JSON.stringify({ echoed: all.toString('base64') }));
    s.write(data);
  });
}
`;

function lines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  const queue: Record<string, unknown>[] = [];
  const waiters: ((v: Record<string, unknown>) => void)[] = [];
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (l) => {
    const v = JSON.parse(l) as Record<string, unknown>;
    const w = waiters.shift();
    if (w) w(v);
    else queue.push(v);
  });
  child.on('exit', (code) => {
    for (const w of waiters.splice(0)) w({ error: `peer exited ${code}: ${stderr}` });
  });
  return () => {
    const v = queue.shift();
    return v ? Promise.resolve(v) : new Promise((resolve) => waiters.push(resolve));
  };
}

function killAtEnd(env: KernelEnv, child: ChildProcess): void {
  env.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
}

/** An echo server in the cgroup; resolves with its port. */
export async function echoServer(env: KernelEnv, cgroup: string, host: string): Promise<number> {
  const child = spawnInCgroup(cgroup, process.execPath, [
    '-e',
    PEER,
    JSON.stringify({ mode: 'server', host }),
  ]);
  killAtEnd(env, child);
  const first = await lines(child)();
  if (typeof first.port !== 'number') throw new Error(`echo server: ${JSON.stringify(first)}`);
  return first.port;
}

/** One open connection from a process in the cgroup; send() returns what came back. */
export class EchoSession {
  /** The client's own end, as getsockname() reports it. */
  local = '';
  localPort = 0;
  private constructor(
    private readonly child: ChildProcess,
    private readonly next: () => Promise<Record<string, unknown>>,
  ) {}

  static async open(
    env: KernelEnv,
    cgroup: string,
    target: { host: string; port: number; localAddress?: string },
  ): Promise<EchoSession> {
    const child = spawnInCgroup(
      cgroup,
      process.execPath,
      ['-e', PEER, JSON.stringify({ mode: 'client', ...target })],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    killAtEnd(env, child);
    const s = new EchoSession(child, lines(child));
    const first = await s.next();
    if (typeof first.localPort !== 'number') throw new Error(`echo client: ${JSON.stringify(first)}`);
    s.local = String(first.local);
    s.localPort = first.localPort;
    return s;
  }

  async send(data: Buffer): Promise<Buffer> {
    this.child.stdin!.write(JSON.stringify({ op: 'send', data: data.toString('base64') }) + '\n');
    const r = await this.next();
    if (typeof r.echoed !== 'string') throw new Error(`echo session: ${JSON.stringify(r)}`);
    return Buffer.from(r.echoed, 'base64');
  }

  async close(): Promise<void> {
    this.child.stdin!.write(JSON.stringify({ op: 'close' }) + '\n');
    await this.next();
  }
}
