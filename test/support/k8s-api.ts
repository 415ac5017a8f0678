// A Kubernetes API server for tests, speaking the list/watch protocol the way kube-apiserver does:
// lists carry a resourceVersion, watches stream JSON events over chunked HTTP from a resourceVersion,
// a resourceVersion older than the retained history gets 410 Gone (as an ERROR event, or as an HTTP
// status), and bookmarks are sent to watches that ask for them. Every event remembers when it was
// written to each stream, so tests can bound the time from an API event to its effect.
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { join } from 'node:path';

import { makeTestPki, type TestPki } from './control-plane-tls.js';

type Obj = {
  metadata: {
    name: string;
    namespace?: string;
    uid: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
} & Record<string, unknown>;
type Kind = 'pods' | 'namespaces' | 'nodes';

export interface ApiEvent {
  rv: number;
  kind: Kind;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: Obj;
  /** Date.now() when the event was written to a watch stream (one entry per stream). */
  writtenAt: number[];
}

interface WatchStream {
  kind: Kind;
  nodeName?: string;
  bookmarks: boolean;
  res: ServerResponse;
}

export interface PodSpec {
  namespace: string;
  name: string;
  nodeName: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  hostNetwork?: boolean;
  containers?: string[];
  initContainers?: string[];
  qosClass?: 'Guaranteed' | 'Burstable' | 'BestEffort';
  uid?: string;
}

export class KubeApiServer {
  private readonly store = new Map<string, { kind: Kind; obj: Obj }>();
  private readonly history: ApiEvent[] = [];
  private rv = 100;
  /** Events at or below this resourceVersion are no longer retained: watching from there is 410. */
  private compactedTo = 0;
  private readonly streams = new Set<WatchStream>();
  private failures = 0;
  private pathFailures: { prefix: string; left: number }[] = [];
  /** '410-event' (kube-apiserver's way) or '410-status' (an HTTP 410 on the watch request). */
  goneAs: '410-event' | '410-status' = '410-event';
  /** Every request as "METHOD path?query". */
  readonly requests: string[] = [];
  private server?: Server;
  port = 0;

  private pki?: TestPki;

  /** Serves HTTPS with a throwaway CA, as the API server does (client-node refuses plain HTTP). */
  async start(): Promise<this> {
    this.pki = makeTestPki('kubernetes.default.svc');
    this.server = createServer({ cert: this.pki.serverCert, key: this.pki.serverKey }, (req, res) =>
      this.handle(req, res),
    );
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** A kubeconfig file naming this server, for KUBECONFIG. */
  writeKubeconfig(dir: string): string {
    const path = join(dir, `kubeconfig-${this.port}`);
    writeFileSync(
      path,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [
          {
            name: 'test',
            cluster: {
              server: this.url,
              'certificate-authority': this.pki!.caCertFile,
              'tls-server-name': this.pki!.serverName,
            },
          },
        ],
        users: [{ name: 'test', user: { token: 'test-token' } }],
        contexts: [{ name: 'test', context: { cluster: 'test', user: 'test' } }],
        'current-context': 'test',
      }),
    );
    return path;
  }

  // ---- objects ----

  private key(kind: Kind, name: string, namespace?: string): string {
    return `${kind}/${namespace ?? ''}/${name}`;
  }

  private put(kind: Kind, obj: Obj, type?: ApiEvent['type']): ApiEvent {
    const k = this.key(kind, obj.metadata.name, obj.metadata.namespace);
    const existed = this.store.has(k);
    const rv = ++this.rv;
    const stored = structuredClone(obj);
    stored.metadata.resourceVersion = String(rv);
    if (type === 'DELETED') this.store.delete(k);
    else this.store.set(k, { kind, obj: stored });
    const ev: ApiEvent = {
      rv,
      kind,
      type: type ?? (existed ? 'MODIFIED' : 'ADDED'),
      object: stored,
      writtenAt: [],
    };
    this.history.push(ev);
    for (const s of this.streams) this.send(s, ev);
    return ev;
  }

  get(kind: Kind, name: string, namespace?: string): Obj | undefined {
    const o = this.store.get(this.key(kind, name, namespace))?.obj;
    return o ? structuredClone(o) : undefined;
  }

  namespace(name: string, labels: Record<string, string> = {}): ApiEvent {
    const old = this.get('namespaces', name);
    return this.put('namespaces', {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { ...(old?.metadata ?? { uid: randomUUID() }), name, labels },
    });
  }

  node(name: string, labels: Record<string, string> = {}): ApiEvent {
    return this.put('nodes', {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name, uid: randomUUID(), labels },
    });
  }

  pod(p: PodSpec): ApiEvent {
    const old = this.get('pods', p.name, p.namespace);
    return this.put('pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: p.name,
        namespace: p.namespace,
        uid: p.uid ?? old?.metadata.uid ?? randomUUID(),
        labels: p.labels ?? {},
        annotations: p.annotations ?? {},
      },
      spec: {
        nodeName: p.nodeName,
        hostNetwork: p.hostNetwork ?? false,
        containers: (p.containers ?? ['app']).map((name) => ({ name, image: 'app' })),
        ...(p.initContainers
          ? { initContainers: p.initContainers.map((name) => ({ name, image: 'init' })) }
          : {}),
      },
      status: { phase: 'Running', qosClass: p.qosClass ?? 'BestEffort' },
    });
  }

  /** Changes labels of an existing pod (a MODIFIED event). */
  relabelPod(namespace: string, name: string, labels: Record<string, string>): ApiEvent {
    const o = this.get('pods', name, namespace);
    if (!o) throw new Error(`no pod ${namespace}/${name}`);
    (o.metadata as { labels?: Record<string, string> }).labels = labels;
    return this.put('pods', o);
  }

  deletePod(namespace: string, name: string): ApiEvent {
    const o = this.get('pods', name, namespace);
    if (!o) throw new Error(`no pod ${namespace}/${name}`);
    return this.put('pods', o, 'DELETED');
  }

  // ---- protocol knobs ----

  /** Forgets the history up to a resourceVersion (default: now): a watch resuming from an older resourceVersion gets 410 Gone. */
  compact(upTo = this.rv): void {
    this.compactedTo = upTo;
    this.history.splice(0, this.history.filter((e) => e.rv <= upTo).length);
  }

  get resourceVersion(): number {
    return this.rv;
  }

  /** Ends every open watch stream (an API server restart, or its watch timeout). */
  dropWatches(): void {
    for (const s of this.streams) s.res.end();
    this.streams.clear();
  }

  /** The next n requests fail with 503 (an API server that is down). */
  failNext(n: number): void {
    this.failures = n;
  }

  /** Lists are answered only once release() is called (a slow API server); watches are not held. */
  holdLists(): { release: () => void } {
    let release!: () => void;
    this.listGate = new Promise<void>((r) => (release = r));
    return {
      release: () => {
        this.listGate = undefined;
        release();
      },
    };
  }
  private listGate: Promise<void> | undefined;

  /** The next n requests for paths starting with prefix fail with 503. */
  failPath(prefix: string, n: number): void {
    this.pathFailures.push({ prefix, left: n });
  }

  /** Sends a BOOKMARK with the current resourceVersion to every watch that asked for bookmarks. */
  bookmark(): number {
    let n = 0;
    for (const s of this.streams)
      if (s.bookmarks) {
        const kind = s.kind === 'pods' ? 'Pod' : s.kind === 'namespaces' ? 'Namespace' : 'Node';
        s.res.write(
          JSON.stringify({
            type: 'BOOKMARK',
            object: { kind, apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) } },
          }) + '\n',
        );
        n++;
      }
    return n;
  }

  watchers(kind: Kind): number {
    return [...this.streams].filter((s) => s.kind === kind).length;
  }

  // ---- HTTP ----

  private matches(s: { kind: Kind; nodeName?: string }, kind: Kind, obj: Obj): boolean {
    if (kind !== s.kind) return false;
    if (s.nodeName === undefined) return true;
    return (obj.spec as { nodeName?: string } | undefined)?.nodeName === s.nodeName;
  }

  private send(s: WatchStream, ev: ApiEvent): void {
    if (!this.matches(s, ev.kind, ev.object)) return;
    s.res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n');
    ev.writtenAt.push(Date.now());
  }

  private handle(req: IncomingMessage, res: ServerResponse, released = false): void {
    const url = new URL(req.url ?? '/', this.url);
    if (!released) this.requests.push(`${req.method} ${url.pathname}${url.search}`);
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const status = (code: number, reason: string, message: string): void =>
      json(code, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message });
    const pathFailure = this.pathFailures.find((f) => f.left > 0 && url.pathname.startsWith(f.prefix));
    if (this.failures > 0 || pathFailure) {
      if (pathFailure) pathFailure.left--;
      else this.failures--;
      return status(503, 'ServiceUnavailable', 'the test API server is down');
    }
    if (req.method !== 'GET') return status(405, 'MethodNotAllowed', `${req.method} is not allowed here`);
    const node = /^\/api\/v1\/nodes\/([^/]+)$/.exec(url.pathname);
    if (node) {
      const o = this.get('nodes', decodeURIComponent(node[1]!));
      return o ? json(200, o) : status(404, 'NotFound', `nodes "${node[1]}" not found`);
    }
    const kind = ({ '/api/v1/pods': 'pods', '/api/v1/namespaces': 'namespaces' } as Record<string, Kind>)[
      url.pathname
    ];
    if (!kind) return status(404, 'NotFound', `${url.pathname}: not served by the test API server`);
    const selector = url.searchParams.get('fieldSelector') ?? '';
    const m = /^spec\.nodeName=(.+)$/.exec(selector);
    if (selector && (!m || kind !== 'pods'))
      return status(400, 'BadRequest', `field selector "${selector}" not supported`);
    const filter = { kind, ...(m ? { nodeName: m[1]! } : {}) };
    if (url.searchParams.get('watch') !== 'true' && this.listGate) {
      const gate = this.listGate;
      void gate.then(() => this.handle(req, res, true));
      return;
    }
    if (url.searchParams.get('watch') !== 'true') {
      const items = [...this.store.values()]
        .filter((e) => this.matches(filter, e.kind, e.obj))
        .map((e) => e.obj);
      return json(200, {
        kind: kind === 'pods' ? 'PodList' : 'NamespaceList',
        apiVersion: 'v1',
        metadata: { resourceVersion: String(this.rv) },
        items,
      });
    }
    const from = Number(url.searchParams.get('resourceVersion') ?? '0');
    if (from < this.compactedTo) {
      const message = `too old resource version: ${from} (${this.compactedTo})`;
      if (this.goneAs === '410-status') return status(410, 'Expired', message);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          type: 'ERROR',
          object: {
            kind: 'Status',
            apiVersion: 'v1',
            status: 'Failure',
            code: 410,
            reason: 'Expired',
            message,
          },
        }) + '\n',
      );
      return;
    }
    // no content-length: Node sends the stream chunked, as the API server does
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const s: WatchStream = {
      ...filter,
      bookmarks: url.searchParams.get('allowWatchBookmarks') === 'true',
      res,
    };
    for (const ev of this.history) if (ev.rv > from) this.send(s, ev);
    this.streams.add(s);
    req.on('close', () => this.streams.delete(s));
  }

  async close(): Promise<void> {
    this.dropWatches();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.pki?.cleanup();
  }
}
