// A node in miniature for authorization tests, every piece a network namespace the test creates:
// the node's own namespace, a server pod and an unenrolled pod behind veths in it, a local client pod,
// and another host reaching the pods through the node (several source addresses, IPv4 and IPv6).
// Addresses are RFC 2544's 198.18.0.0/15 and the documentation prefix 2001:db8::/32: nothing else
// routes them. A server reports each accept() and each close as it happens.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

import { spawnInCgroup } from './kernel.js';

let seq = 0;

export interface AuthzTopology {
  /** Namespace names. */
  node: string;
  pod: string;
  other: string;
  local: string;
  host: string;
  /** nsfs paths (what the agent opens). */
  podNetns: string;
  otherNetns: string;
  addr: {
    pod: string;
    pod6: string;
    other: string;
    local: string;
    /** The node's address on the server pod's link: the source of the node's own connects. */
    node: string;
    hosts: string[];
    host6: string;
  };
  remove(): void;
}

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Namespaces and links; removed (with everything in them) by remove(). */
export function createAuthzTopology(): AuthzTopology {
  const tag = `${process.pid % 10000}${seq++}`;
  const names = {
    node: `kma-node-${tag}`,
    pod: `kma-pod-${tag}`,
    other: `kma-other-${tag}`,
    local: `kma-local-${tag}`,
    host: `kma-host-${tag}`,
  };
  const created: string[] = [];
  const remove = (): void => {
    for (const n of created.reverse()) {
      try {
        ip(['netns', 'del', n]);
      } catch {
        /* already gone */
      }
    }
  };
  try {
    for (const n of Object.values(names)) {
      ip(['netns', 'add', n]);
      created.push(n);
      ip(['-n', n, 'link', 'set', 'lo', 'up']);
    }
    execFileSync('ip', ['netns', 'exec', names.node, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    execFileSync('ip', ['netns', 'exec', names.node, 'sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
    const link = (peer: string, i: number, v4: string, v6?: string): void => {
      const a = `kma${tag}n${i}`;
      const b = `kma${tag}p${i}`;
      ip(['link', 'add', a, 'netns', names.node, 'type', 'veth', 'peer', 'name', b, 'netns', peer]);
      ip(['-n', names.node, 'addr', 'add', `198.18.${i}.1/24`, 'dev', a]);
      ip(['-n', peer, 'addr', 'add', `${v4}/24`, 'dev', b]);
      if (v6) {
        ip(['-n', names.node, '-6', 'addr', 'add', `2001:db8:${i}::1/64`, 'dev', a, 'nodad']);
        ip(['-n', peer, '-6', 'addr', 'add', `${v6}/64`, 'dev', b, 'nodad']);
      }
      ip(['-n', names.node, 'link', 'set', a, 'up']);
      ip(['-n', peer, 'link', 'set', b, 'up']);
      ip(['-n', peer, 'route', 'add', 'default', 'via', `198.18.${i}.1`]);
      if (v6) ip(['-n', peer, '-6', 'route', 'add', 'default', 'via', `2001:db8:${i}::1`]);
    };
    link(names.pod, 1, '198.18.1.2', '2001:db8:1::2');
    link(names.other, 2, '198.18.2.2');
    link(names.local, 3, '198.18.3.2');
    link(names.host, 4, '198.18.4.2', '2001:db8:4::2');
    const hosts = ['198.18.4.2', '198.18.4.3', '198.18.4.4', '198.18.4.5'];
    for (const h of hosts.slice(1)) ip(['-n', names.host, 'addr', 'add', `${h}/24`, 'dev', `kma${tag}p4`]);
    return {
      ...names,
      podNetns: `/var/run/netns/${names.pod}`,
      otherNetns: `/var/run/netns/${names.other}`,
      addr: {
        pod: '198.18.1.2',
        pod6: '2001:db8:1::2',
        other: '198.18.2.2',
        local: '198.18.3.2',
        node: '198.18.1.1',
        hosts,
        host6: '2001:db8:4::2',
      },
      remove,
    };
  } catch (e) {
    remove();
    throw e;
  }
}

const SERVER_JS = String.raw`
const net = require('net');
const specs = JSON.parse(process.argv[1]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let pending = specs.length;
const ready = [];
for (const spec of specs) {
  const server = net.createServer((sock) => {
    const peer = (sock.remoteAddress || '').replace(/^::ffff:/, '') + '|' + sock.remotePort;
    const id = spec.address + '|' + spec.port;
    out({ event: 'accept', server: id, peer });
    sock.write(id + '\n');
    sock.on('error', () => {});
    sock.on('close', () => out({ event: 'closed', server: id, peer }));
    sock.resume();
  });
  server.listen({ host: spec.address, port: spec.port }, () => {
    ready.push(spec);
    if (--pending === 0) out({ event: 'ready' });
  });
}
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

export interface ServerEvent {
  event: 'accept' | 'closed';
  /** "address|port" of the listener. */
  server: string;
  /** "address|port" of the client. */
  peer: string;
}

/** Servers inside a pod's namespace, reporting every accept() and close. */
export class PodServers {
  readonly events: ServerEvent[] = [];
  private readonly child: ChildProcess;
  private readonly ready: Promise<void>;

  /** With a cgroup, the servers are that pod's process (what the agent finds its namespace through). */
  constructor(netns: string, specs: { address: string; port: number }[], cgroup?: string) {
    const args = ['netns', 'exec', netns, process.execPath, '-e', SERVER_JS, JSON.stringify(specs)];
    this.child = cgroup
      ? spawnInCgroup(cgroup, 'ip', args, { stdio: ['pipe', 'pipe', 'pipe'] })
      : spawn('ip', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    this.child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    this.ready = new Promise((resolve, reject) => {
      this.child.on('exit', (code) => reject(new Error(`pod servers exited ${code}: ${stderr}`)));
      createInterface({ input: this.child.stdout! }).on('line', (line) => {
        const m = JSON.parse(line) as Omit<ServerEvent, 'event'> & { event: ServerEvent['event'] | 'ready' };
        if (m.event === 'ready') resolve();
        else this.events.push(m as ServerEvent);
      });
    });
  }

  start(): Promise<void> {
    return this.ready;
  }

  /** accept() calls so far, optionally only from one client address. */
  accepted(from?: string): number {
    return this.events.filter((e) => e.event === 'accept' && (!from || e.peer.startsWith(`${from}|`))).length;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.end();
    await done;
  }
}

const CLIENT_JS = String.raw`
const net = require('net');
const held = new Map();
function connect(c) {
  return new Promise((resolve) => {
    const opts = { host: c.host, port: c.port };
    if (c.localAddress) opts.localAddress = c.localAddress;
    const s = net.connect(opts);
    let done = false;
    const finish = (r) => { if (!done) { done = true; clearTimeout(guard); resolve(r); } };
    // a guard only: a denied connect is refused at once; a dropped SYN would show as TIMEOUT
    const guard = setTimeout(() => { s.destroy(); finish({ ok: false, err: 'TIMEOUT' }); }, c.timeoutMs || 20000);
    s.on('error', (e) => { finish({ ok: false, err: e.code || String(e) }); });
    s.once('connect', () => {
      let buf = '';
      s.setEncoding('utf8');
      s.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const r = { ok: true, server: buf.slice(0, nl), local: s.localAddress + '|' + s.localPort };
        if (c.hold) {
          const h = { sock: s, closed: false, err: undefined };
          s.on('error', (e) => { h.err = e.code || String(e); });
          s.on('close', () => { h.closed = true; });
          held.set(c.tag, h);
        } else s.destroy();
        finish(r);
      });
      s.on('end', () => finish({ ok: false, err: 'EOF' }));
    });
  });
}
require('readline').createInterface({ input: process.stdin }).on('line', async (line) => {
  const c = JSON.parse(line);
  let r;
  if (c.op === 'connect') r = await connect(c);
  else if (c.op === 'held') {
    const h = held.get(c.tag);
    r = h ? { ok: true, closed: h.closed, err: h.err } : { ok: false };
  } else if (c.op === 'send') {
    const h = held.get(c.tag);
    if (h && !h.closed) h.sock.write('x');
    r = { ok: !!h };
  } else if (c.op === 'exit') { for (const h of held.values()) h.sock.destroy(); process.exit(0); }
  process.stdout.write(JSON.stringify(Object.assign({ seq: c.seq }, r)) + '\n');
});
`;

export interface AuthzConnect {
  ok: boolean;
  err?: string;
  /** "address|port" of the listener that answered. */
  server?: string;
  local?: string;
}

/** A client process in a namespace (and cgroup): connects, holds connections, reports their state. */
export class NetnsClient {
  private readonly child: ChildProcess;
  private seq = 0;
  private readonly waiting = new Map<number, (r: unknown) => void>();
  private stderr = '';

  constructor(cgroup: string, netns: string) {
    this.child = spawnInCgroup(cgroup, 'ip', ['netns', 'exec', netns, process.execPath, '-e', CLIENT_JS], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
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

  connect(c: {
    host: string;
    port: number;
    localAddress?: string;
    hold?: boolean;
    tag?: string;
  }): Promise<AuthzConnect> {
    return this.request({ op: 'connect', ...c });
  }

  held(tag: string): Promise<{ ok: boolean; closed?: boolean; err?: string }> {
    return this.request({ op: 'held', tag });
  }

  /** Writes a byte on a held connection (a reset by the peer shows on the next read or write). */
  send(tag: string): Promise<{ ok: boolean }> {
    return this.request({ op: 'send', tag });
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.write(JSON.stringify({ op: 'exit' }) + '\n');
    await done;
  }
}
