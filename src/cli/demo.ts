// `kernmesh demo`: the whole flow on one machine, touching nothing it did not create. A cgroup of
// its own, backends on 127.77.0.x, VIPs in 127.100.0.0/16, the agent on deploy/demo/resources.yaml,
// connections from a child process in the cgroup, then a table of where they landed.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { startAgent, type RunningAgent } from '../agent/start.js';
import { loadConfig } from '../config/config.js';
import { typeLabel } from '../agent/metrics.js';
import { cleanupPinDir } from './cleanup.js';
import { table } from './view.js';

const HELP = `usage: kernmesh demo [--wait] [--admin ADDR:PORT] [--connections N]

Runs kernmesh on a bundled set of xDS resources, in a cgroup of its own, with demo backends on
loopback, and prints where connections to each service landed and the status of each resource.
--wait keeps the agent and its admin endpoint up until Ctrl-C. Everything it creates is removed
at exit (and on Ctrl-C): the cgroup, the programs attached to it and its pinned maps.
`;

/** What the demo connects to, and what the operator should see happen. */
export interface DemoTarget {
  service: string;
  vip: string;
  port: number;
  policy: string;
  expect: string;
}

export const DEMO_TARGETS: DemoTarget[] = [
  {
    service: 'reviews',
    vip: '127.100.0.1',
    port: 9080,
    policy: 'ROUND_ROBIN',
    expect: 'spread 1:1:2 by weight',
  },
  { service: 'ratings', vip: '127.100.0.2', port: 9080, policy: 'LEAST_REQUEST', expect: 'spread over both' },
  { service: 'details', vip: '127.100.0.3', port: 9080, policy: 'MAGLEV', expect: 'one endpoint per client' },
  {
    service: 'productpage',
    vip: '127.100.0.4',
    port: 9080,
    policy: 'RANDOM',
    expect: 'priority 1 (priority 0 unhealthy)',
  },
  {
    service: 'passthrough',
    vip: '127.100.0.9',
    port: 9080,
    policy: 'PassthroughCluster',
    expect: 'original destination',
  },
  {
    service: 'blackhole',
    vip: '127.100.0.10',
    port: 9080,
    policy: 'BlackHoleCluster',
    expect: 'ECONNREFUSED',
  },
  {
    service: 'web (HTTP)',
    vip: '127.100.0.20',
    port: 8080,
    policy: 'header routing',
    expect: 'refused route: not rewritten',
  },
];

/** Demo backends: each answers with its own name, then closes. */
export const DEMO_BACKENDS: { name: string; address: string; port: number }[] = [
  { name: 'reviews-1', address: '127.77.0.11', port: 9080 },
  { name: 'reviews-2', address: '127.77.0.12', port: 9080 },
  { name: 'reviews-3', address: '127.77.0.13', port: 9080 },
  { name: 'ratings-1', address: '127.77.0.21', port: 9080 },
  { name: 'ratings-2', address: '127.77.0.22', port: 9080 },
  { name: 'details-1', address: '127.77.0.31', port: 9080 },
  { name: 'details-2', address: '127.77.0.32', port: 9080 },
  { name: 'details-3', address: '127.77.0.33', port: 9080 },
  { name: 'productpage-a', address: '127.77.0.41', port: 9080 },
  { name: 'productpage-b', address: '127.77.0.42', port: 9080 },
  { name: 'external', address: '127.100.0.9', port: 9080 },
  { name: 'web', address: '127.77.0.51', port: 8080 },
  { name: 'web-canary', address: '127.77.0.52', port: 8080 },
];

/** The repository root, from src/cli/ under tsx or dist/src/cli/ when built. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'deploy', 'demo', 'resources.yaml'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find deploy/demo/resources.yaml above the kernmesh installation');
    dir = up;
  }
  return dir;
}

function cgroup2Mount(): string | undefined {
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, mnt, fstype] = line.split(' ');
    if (fstype === 'cgroup2' && mnt) return mnt;
  }
  return undefined;
}

// The client runs in the demo cgroup: each connect goes through the kernel's connect4 hook. It prints,
// per connection, the backend's name (or the error code) and the peer address the socket reports.
const CLIENT = `
import { connect } from 'node:net';
const targets = JSON.parse(process.argv[1]);
const one = (host, port) => new Promise((resolve) => {
  const s = connect({ host, port });
  let data = '';
  s.setTimeout(3000, () => { s.destroy(); resolve({ error: 'ETIMEDOUT' }); });
  s.on('connect', () => { s.peer = s.remoteAddress + ':' + s.remotePort; });
  s.on('data', (d) => (data += d));
  s.on('end', () => resolve({ landed: data.trim(), peer: s.peer }));
  s.on('error', (e) => resolve({ error: e.code ?? e.message }));
});
const out = [];
for (const t of targets) {
  const results = [];
  for (let i = 0; i < t.n; i++) results.push(await one(t.vip, t.port));
  out.push({ vip: t.vip, port: t.port, results });
}
process.stdout.write(JSON.stringify(out));
`;

export interface DemoResult {
  service: string;
  vip: string;
  port: number;
  landed: Record<string, number>;
  peers: string[];
}

async function runClient(
  cgroup: string,
  targets: { vip: string; port: number; n: number }[],
): Promise<DemoResult[]> {
  const script = `echo $$ > '${join(cgroup, 'cgroup.procs')}' && exec "$@"`;
  const child = spawn(
    '/bin/sh',
    ['-c', script, 'sh', process.execPath, '--input-type=module', '-e', CLIENT, JSON.stringify(targets)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0) throw new Error(`demo client exited with ${code}: ${stderr.trim()}`);
  const raw = JSON.parse(stdout) as {
    vip: string;
    port: number;
    results: { landed?: string; error?: string; peer?: string }[];
  }[];
  return raw.map((r) => {
    const landed: Record<string, number> = {};
    for (const x of r.results) {
      const key = x.error ?? (x.landed || '(no answer)');
      landed[key] = (landed[key] ?? 0) + 1;
    }
    const t = DEMO_TARGETS.find((d) => d.vip === r.vip && d.port === r.port);
    return {
      service: t?.service ?? `${r.vip}:${r.port}`,
      vip: r.vip,
      port: r.port,
      landed,
      peers: [...new Set(r.results.map((x) => x.peer).filter((p): p is string => !!p))],
    };
  });
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, host, () => probe.close(() => resolve(true)));
  });
}

async function startBackends(): Promise<Server[]> {
  const servers: Server[] = [];
  for (const b of DEMO_BACKENDS) {
    const server = createServer((sock) => sock.end(`${b.name}\n`));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) =>
        reject(new Error(`demo backend ${b.name} cannot listen on ${b.address}:${b.port}: ${e.message}`)),
      );
      server.listen(b.port, b.address, () => resolve());
    });
    servers.push(server);
  }
  return servers;
}

export interface DemoOptions {
  wait?: boolean;
  admin?: string;
  connections?: number;
  /** Where the agent's own JSON logs go. */
  logFile?: string;
}

/** Runs the demo and returns the results (the test suite checks them); prints as it goes. */
export async function demo(out: NodeJS.WritableStream, opts: DemoOptions = {}): Promise<DemoResult[]> {
  const say = (s: string) => out.write(`[demo] ${s}\n`);
  if (process.getuid?.() !== 0) throw new Error('the demo loads BPF programs and needs root');
  const mount = cgroup2Mount();
  if (!mount) throw new Error('no cgroup v2 mount in /proc/mounts');
  const root = repoRoot();
  const resources = join(root, 'deploy', 'demo', 'resources.yaml');
  const tag = `kernmesh-demo-${process.pid}`;
  const cgroup = join(mount, tag);
  const pinDir = join('/sys/fs/bpf', tag);
  const logFile = opts.logFile ?? join('/tmp', `${tag}.log`);

  let running: RunningAgent | undefined;
  let servers: Server[] = [];
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    say('cleaning up: stopping the agent, detaching its programs, unpinning its maps, removing the cgroup');
    await running?.stop().catch(() => undefined);
    if (existsSync(pinDir)) cleanupPinDir(pinDir);
    for (const s of servers) s.close();
    removeCgroup(cgroup);
    say('clean');
  };
  const onSignal = () => {
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    say(`cgroup ${cgroup} (only processes in it are routed)`);
    mkdirSync(cgroup);
    say(`${DEMO_BACKENDS.length} backends on loopback (127.77.0.x), each answers with its name`);
    servers = await startBackends();

    say(`agent: xDS from ${resources}, maps pinned under ${pinDir}, logs in ${logFile}`);
    const argv = [
      '--xds-file',
      resources,
      '--cgroup',
      cgroup,
      '--bpffs',
      pinDir,
      '--admin',
      opts.admin ?? '127.0.0.1:15000',
    ];
    const config = loadConfig(argv, {});
    writeFileSync(logFile, '');
    const log = pino(
      { level: 'info', base: { component: 'kernmesh' } },
      pino.destination({ dest: logFile, sync: true }),
    );
    // Another agent (or demo) may hold 15000: an ephemeral port keeps the demo working.
    if (!opts.admin && !(await portFree('127.0.0.1', 15000))) {
      say('127.0.0.1:15000 is taken; the admin endpoint takes a free port instead');
      config.admin = { host: '127.0.0.1', port: 0 };
    }
    running = await startAgent(config, log);
    say(`programs attached: ${running.agent.attachmentsSummary()}`);
    await running.agent.settled();
    const ready = running.agent.readiness();
    say(ready.ready ? 'agent ready: first config applied' : `agent not ready: ${ready.reasons.join('; ')}`);

    const n = opts.connections ?? 12;
    say(`connecting ${n} times to each VIP from a child process in the cgroup`);
    const results = await runClient(
      cgroup,
      DEMO_TARGETS.map((t) => ({ vip: t.vip, port: t.port, n })),
    );

    out.write('\nWhere the connections landed\n');
    out.write(
      table([
        ['SERVICE', 'VIP', 'POLICY', 'LANDED ON', 'EXPECTED'],
        ...results.map((r) => {
          const t = DEMO_TARGETS.find((d) => d.vip === r.vip && d.port === r.port)!;
          const landed = Object.entries(r.landed)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([k, v]) => `${k}×${v}`)
            .join(' ');
          return [t.service, `${r.vip}:${r.port}`, t.policy, landed, t.expect];
        }),
      ]),
    );
    const peers = results.flatMap((r) => r.peers.filter((p) => p !== `${r.vip}:${r.port}`));
    out.write(
      peers.length === 0
        ? '(every connected socket reports the VIP as its peer: getpeername is rewritten back, as with a sidecar)\n'
        : `(peers seen other than the VIP: ${peers.join(', ')})\n`,
    );

    out.write('\nStatus of each resource\n');
    const status = running.agent.resourceStatus();
    out.write(
      table([
        ['TYPE', 'NAME', 'STATUS', 'DETAIL'],
        ...status.map((s) => [typeLabel(s.typeUrl).toUpperCase(), s.name, s.status, s.detail ?? '']),
      ]),
    );

    const admin = running.admin.address;
    out.write(
      `\nAdmin endpoint: http://${admin}/  (try /config_dump, /clusters?format=json, /debug/maps, /stats/prometheus)\n`,
    );
    if (opts.wait) {
      say('--wait: the agent keeps running; press Ctrl-C to clean up and exit');
      await new Promise<void>(() => undefined);
    }
    say('the admin endpoint goes with the agent; run `kernmesh demo --wait` to keep both up and look around');
    return results;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

/** Removes the demo cgroup: the client has exited, but move any straggler out first. */
function removeCgroup(path: string): void {
  for (let attempt = 0; attempt < 50 && existsSync(path); attempt++) {
    try {
      for (const pid of readFileSync(join(path, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          writeFileSync(join(path, '..', 'cgroup.procs'), pid);
        } catch {
          /* exited meanwhile */
        }
      }
      rmdirSync(path);
    } catch {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}

export async function runDemo(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const opts: DemoOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      out.write(HELP);
      return 0;
    } else if (a === '--wait') opts.wait = true;
    else if (a === '--admin') opts.admin = argv[++i];
    else if (a === '--connections') opts.connections = Number(argv[++i]);
    else {
      process.stderr.write(`kernmesh demo: unknown flag ${a}\n${HELP}`);
      return 2;
    }
  }
  try {
    await demo(out, opts);
    return 0;
  } catch (e) {
    process.stderr.write(`kernmesh demo: ${(e as Error).message}\n`);
    return 1;
  }
}
