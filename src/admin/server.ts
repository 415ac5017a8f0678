// The admin endpoint (node:http): Envoy's routes where Envoy has one, so that istioctl and
// dashboards built for Envoy work, plus kernmesh's own /debug/* views of the xDS and kernel state.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { TYPE, type JsonObject } from '../xds/types.js';
import { ClusterStatsView, clusterMetrics, type KernelStats } from './cluster-stats.js';
import { buildClusters, clustersText } from './clusters.js';
import { AdminRequestError, buildConfigDump, type ConfigDumpInput } from './config-dump.js';

export interface Readiness {
  ready: boolean;
  /** Why not ready, one line each. */
  reasons: string[];
  /** What an operator should know while ready (the control plane is away, config kept), one line each. */
  notes?: string[];
}

/** What the admin endpoint reads from the running agent. */
export interface AdminSource {
  readiness(): Readiness;
  serverInfo(): JsonObject;
  configDump(): ConfigDumpInput;
  /** The kernel's connection counts (dataplane's reader); without them /clusters and the stats show none. */
  kernelStats?(): KernelStats | undefined;
  debugXds(): unknown;
  debugMaps(): unknown;
  debugBpf(): unknown;
  renderMetrics(): Promise<{ contentType: string; body: string }>;
}

export interface AdminServer {
  /** host:port actually bound (port 0 picks one). */
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
}

/** JSON with 64-bit counters as strings, as proto3 JSON writes them. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n';
}

const ROUTES: Record<string, string> = {
  '/ready': 'LIVE once programs are attached and the first config is applied, else 503 with why',
  '/healthz': 'the process is up',
  '/server_info': 'envoy.admin.v3.ServerInfo',
  '/config_dump': 'envoy.admin.v3.ConfigDump (include_eds, mask, resource, name_regex)',
  '/clusters': 'clusters and hosts with the kernel connection counts (format=json: envoy.admin.v3.Clusters)',
  '/stats/prometheus': 'metrics in Prometheus text format, with envoy_cluster_upstream_cx_* per cluster',
  '/metrics': 'same as /stats/prometheus',
  '/debug/xds': 'per type and resource: version, nonce, status, last NACK reason',
  '/debug/maps': 'kernel maps decoded: frontends, services, endpoints, counters, capacity',
  '/debug/bpf': 'programs, attach points, run time and count',
};

/** The read-only routes of the probe listener (Istio's 15020): readiness and metrics, never config. */
export const PROBE_ROUTES: readonly string[] = [
  '/ready',
  '/healthz/ready',
  '/healthz',
  '/stats/prometheus',
  '/metrics',
];

export interface AdminServerOptions {
  host: string;
  port: number;
  log?: Logger;
  /** 'probes': only PROBE_ROUTES are served (for a listener reachable from outside the node). */
  routes?: 'all' | 'probes';
  /** A client that has not sent its whole request by then is cut off (slow clients). */
  requestTimeoutMs?: number;
  /** Connections past this are closed at once, so many clients cannot exhaust the agent. */
  maxConnections?: number;
}

/** Longest request target served: /config_dump's parameters fit many times over. */
export const MAX_URL_LENGTH = 8192;

export async function startAdminServer(source: AdminSource, opts: AdminServerOptions): Promise<AdminServer> {
  const requestTimeout = opts.requestTimeoutMs ?? 10_000;
  const server: Server = createServer(
    {
      // Slow clients (headers or body trickling in) are cut off; none can hold a connection forever.
      headersTimeout: requestTimeout,
      requestTimeout,
      keepAliveTimeout: 5_000,
      // Node checks those timeouts on this period (30 s by default, longer than the timeout itself).
      connectionsCheckingInterval: Math.min(1_000, Math.max(100, requestTimeout / 2)),
      maxHeaderSize: 16 * 1024,
    },
    (req, res) => {
      // A whole request arrived: its connection's clock stops until the response is out.
      waiting.get(req.socket)?.stop();
      res.on('finish', () => waiting.get(req.socket)?.start());
      handle(source, req, res, opts).catch((e: unknown) => {
        opts.log?.error({ err: e, url: req.url }, 'admin request failed');
        if (!res.headersSent) send(res, 500, 'text/plain', `internal error: ${(e as Error).message}\n`);
        else res.end();
      });
    },
  );
  server.maxConnections = opts.maxConnections ?? 256;
  // Each connection must deliver a whole request within requestTimeout of opening (or of its last
  // response). Node's own headersTimeout misses a client trickling bytes while others are served.
  const waiting = new WeakMap<Socket, { start(): void; stop(): void }>();
  server.on('connection', (socket: Socket) => {
    let timer: NodeJS.Timeout | undefined;
    const clock = {
      start: () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          socket.end('HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
          socket.destroySoon();
        }, requestTimeout);
        timer.unref();
      },
      stop: () => clearTimeout(timer),
    };
    waiting.set(socket, clock);
    clock.start();
    socket.on('close', () => clock.stop());
  });
  // A malformed request is answered 400 and its connection closed; nothing reaches a handler.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return socket.destroy();
    const status =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? '408 Request Timeout'
          : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) =>
      reject(
        new Error(`admin endpoint cannot listen on ${opts.host}:${opts.port}: ${e.message}`, { cause: e }),
      ),
    );
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    address: `${host}:${addr.port}`,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-cache, max-age=0' });
  res.end(body);
}

function sendJson(res: ServerResponse, value: unknown, status = 200): void {
  send(res, status, 'application/json', toJson(value));
}

/** Envoy treats a query parameter given without a value (`?include_eds`) as set. */
function flag(q: URLSearchParams, name: string): boolean {
  const v = q.get(name);
  return v !== null && v !== 'false' && v !== '0';
}

/** The kernel's counts, or undefined (logged) when the kernel cannot be read: the views still serve config. */
function clusterStats(source: AdminSource, opts: { log?: Logger }): ClusterStatsView | undefined {
  try {
    const stats = source.kernelStats?.();
    return stats ? new ClusterStatsView(stats) : undefined;
  } catch (e) {
    opts.log?.warn({ err: e }, 'kernel counts unreadable; cluster and host stats left out');
    return undefined;
  }
}

/** Appends series to an exposition, before OpenMetrics' `# EOF` when there is one. */
function withSeries(body: string, series: string): string {
  if (!series) return body;
  const eof = body.endsWith('# EOF\n') ? '# EOF\n' : '';
  const head = eof ? body.slice(0, -eof.length) : body;
  return `${head}${head.endsWith('\n') || !head ? '' : '\n'}${series}${eof}`;
}

async function handle(
  source: AdminSource,
  req: IncomingMessage,
  res: ServerResponse,
  opts: AdminServerOptions,
): Promise<void> {
  if ((req.url ?? '').length > MAX_URL_LENGTH) {
    send(res, 414, 'text/plain', `request target longer than ${MAX_URL_LENGTH} bytes\n`);
    return;
  }
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://admin');
  } catch {
    send(res, 400, 'text/plain', 'malformed request target\n');
    return;
  }
  const q = url.searchParams;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(
      res,
      405,
      'text/plain',
      'only GET is served; kernmesh changes no state through the admin endpoint\n',
    );
    return;
  }
  if (opts.routes === 'probes' && !PROBE_ROUTES.includes(url.pathname)) {
    send(
      res,
      404,
      'text/plain',
      `no route ${url.pathname}; this listener serves ${PROBE_ROUTES.join(', ')}\n`,
    );
    return;
  }
  switch (url.pathname) {
    case '/':
      send(
        res,
        200,
        'text/plain',
        Object.entries(ROUTES)
          .map(([p, d]) => `${p.padEnd(18)} ${d}`)
          .join('\n') + '\n',
      );
      return;
    case '/ready':
    case '/healthz/ready': {
      const r = source.readiness();
      send(
        res,
        r.ready ? 200 : 503,
        'text/plain',
        r.ready
          ? `LIVE\n${(r.notes ?? []).map((x) => `- ${x}\n`).join('')}`
          : `NOT READY\n${r.reasons.map((x) => `- ${x}`).join('\n')}\n`,
      );
      return;
    }
    case '/healthz':
      send(res, 200, 'text/plain', 'OK\n');
      return;
    case '/server_info':
      sendJson(res, source.serverInfo());
      return;
    case '/config_dump': {
      const mask = q.get('mask');
      const regex = q.get('name_regex');
      let nameRegex: RegExp | undefined;
      try {
        nameRegex = regex ? new RegExp(regex) : undefined;
      } catch (e) {
        send(res, 400, 'text/plain', `name_regex: ${(e as Error).message}\n`);
        return;
      }
      try {
        const dump = buildConfigDump(source.configDump(), {
          includeEds: flag(q, 'include_eds'),
          mask: mask ? mask.split(',').filter(Boolean) : undefined,
          resource: q.get('resource') ?? undefined,
          nameRegex,
        });
        sendJson(res, dump);
      } catch (e) {
        if (e instanceof AdminRequestError) send(res, 400, 'text/plain', `${e.message}\n`);
        else throw e;
      }
      return;
    }
    case '/clusters': {
      const stats = clusterStats(source, opts);
      const clusters = buildClusters(source.configDump().resources, stats);
      if (q.get('format') === 'json') {
        sendJson(res, clusters);
        return;
      }
      send(res, 200, 'text/plain', clustersText(clusters, stats));
      return;
    }
    case '/stats/prometheus':
    case '/metrics': {
      const m = await source.renderMetrics();
      const stats = clusterStats(source, opts);
      const clusters = source
        .configDump()
        .resources.filter((r) => r.typeUrl === TYPE.cluster)
        .map((r) => r.name)
        .sort();
      send(res, 200, m.contentType, withSeries(m.body, stats ? clusterMetrics(clusters, stats) : ''));
      return;
    }
    case '/debug/xds':
      sendJson(res, source.debugXds());
      return;
    case '/debug/maps':
      sendJson(res, source.debugMaps());
      return;
    case '/debug/bpf':
      sendJson(res, source.debugBpf());
      return;
    default:
      send(res, 404, 'text/plain', `no route ${url.pathname}; GET / lists them\n`);
  }
}
