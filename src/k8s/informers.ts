// The pods of this node and every namespace, learnt from the Kubernetes API with client-node's
// list/watch informers: relisted after 410 Gone (client-node), restarted after errors with backoff
// and kept while disconnected (here), watch bookmarks asked for so a reconnect resumes cheaply.
import {
  CoreV1Api,
  KubeConfig,
  ListWatch,
  Watch,
  type KubernetesObject,
  type V1Namespace,
  type V1Pod,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';

import { Backoff } from '../xds/backoff.js';

export type Change = 'add' | 'update' | 'delete';

export interface ClusterHandlers {
  /** `at`: Date.now() when the event reached the agent. */
  pod(pod: V1Pod, change: Change, at: number): void;
  namespace(ns: V1Namespace, change: Change, at: number): void;
}

/** Watch that asks for bookmarks: the server then keeps the resourceVersion fresh on quiet streams. */
class BookmarkWatch extends Watch {
  private closed = false;
  private readonly open = new Set<AbortController>();

  constructor(
    config: KubeConfig,
    private readonly onEvent: () => void,
  ) {
    super(config);
  }
  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    if (this.closed) {
      const none = new AbortController();
      none.abort();
      return none;
    }
    // done() may run before super.watch() resolves (a request that fails at once)
    const ref: { request?: AbortController; ended?: boolean } = {};
    const request = await super.watch(
      path,
      { ...queryParams, allowWatchBookmarks: true },
      (phase, obj, raw) => {
        this.onEvent();
        callback(phase, obj, raw);
      },
      (err) => {
        ref.ended = true;
        if (ref.request) this.open.delete(ref.request);
        done(err);
      },
    );
    ref.request = request;
    if (!ref.ended) this.open.add(request);
    if (this.closed) request.abort();
    return request;
  }

  /**
   * Ends every watch and refuses new ones. client-node's ListWatch.stop() aborts only a watch that
   * is already set up: one it starts after a list that was in flight, or while stop() runs, stayed
   * open and kept the agent's process from exiting after SIGTERM (the restart test caught it).
   */
  close(): void {
    this.closed = true;
    for (const r of this.open) r.abort();
    this.open.clear();
  }
}

interface Informer<T extends KubernetesObject> {
  what: string;
  lw: ListWatch<T>;
  watch: BookmarkWatch;
  backoff: Backoff;
  listed: boolean;
  timer?: NodeJS.Timeout;
}

export interface ClusterWatchOptions {
  /** Backoff after a failed list or watch (default 0.5 s to 30 s, jittered). */
  backoff?: { initialMs?: number; maxMs?: number };
}

export class ClusterWatch {
  private readonly informers: [Informer<V1Pod>, Informer<V1Namespace>];
  private stopped = false;
  private readonly starting = new Set<Promise<unknown>>();
  private readonly syncWaiters: (() => void)[] = [];

  constructor(
    kc: KubeConfig,
    readonly nodeName: string,
    private readonly handlers: ClusterHandlers,
    private readonly log: Logger,
    opts: ClusterWatchOptions = {},
  ) {
    const core = kc.makeApiClient(CoreV1Api);
    const fieldSelector = `spec.nodeName=${nodeName}`;
    const make = <T extends KubernetesObject>(
      what: string,
      path: string,
      list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>,
      selector?: string,
    ): Informer<T> => {
      const backoff = new Backoff(opts.backoff ?? {});
      const inf = {} as Informer<T>;
      const listed = async (): Promise<{ items: T[]; metadata?: { resourceVersion?: string } }> => {
        const l = await list();
        inf.listed = true;
        backoff.reset();
        this.log.debug(
          { what, items: l.items.length, resourceVersion: l.metadata?.resourceVersion },
          'listed',
        );
        if (this.synced()) for (const w of this.syncWaiters.splice(0)) w();
        return l;
      };
      const watch = new BookmarkWatch(kc, () => backoff.reset());
      Object.assign(inf, {
        what,
        watch,
        backoff,
        listed: false,
        // client-node types the list function with its generated list classes; ours are plain data
        lw: new ListWatch<T>(path, watch, listed as never, false, undefined, selector),
      });
      return inf;
    };
    this.informers = [
      make('pods', '/api/v1/pods', () => core.listPodForAllNamespaces({ fieldSelector }), fieldSelector),
      make('namespaces', '/api/v1/namespaces', () => core.listNamespace()),
    ];
    const [pods, namespaces] = this.informers;
    for (const change of ['add', 'update', 'delete'] as const) {
      pods.lw.on(change, (p) => this.handlers.pod(p, change, Date.now()));
      namespaces.lw.on(change, (n) => this.handlers.namespace(n, change, Date.now()));
    }
    for (const inf of this.informers as Informer<KubernetesObject>[])
      inf.lw.on('error', (err) => this.restartLater(inf, err));
  }

  /** A failed list or watch (not 410, which client-node relists itself) is retried with backoff. */
  private restartLater(inf: Informer<KubernetesObject>, err: unknown): void {
    if (this.stopped) return;
    const delay = inf.backoff.next();
    this.log.warn(
      { what: inf.what, err: (err as Error)?.message ?? String(err), retryInMs: delay },
      'Kubernetes list/watch failed; enrollment stays as it is until it reconnects',
    );
    clearTimeout(inf.timer);
    inf.timer = setTimeout(() => {
      if (!this.stopped) this.begin(inf);
    }, delay);
  }

  /** Starts both informers; resolves once each has listed (retrying meanwhile). */
  async start(): Promise<void> {
    const synced = new Promise<void>((resolve) => this.syncWaiters.push(resolve));
    for (const inf of this.informers) this.begin(inf);
    await synced;
  }

  /** A list then a watch; its failures reach restartLater through the ListWatch's error event. */
  private begin(inf: Informer<KubernetesObject>): void {
    const started = inf.lw.start().catch(() => undefined);
    this.starting.add(started);
    void started.finally(() => this.starting.delete(started));
  }

  /** Resolves once every list and watch set-up begun so far has finished (or been refused after stop). */
  async settled(): Promise<void> {
    while (this.starting.size > 0) await Promise.all([...this.starting]);
  }

  synced(): boolean {
    return this.informers.every((i) => i.listed);
  }

  pods(): readonly V1Pod[] {
    return this.informers[0].lw.list();
  }

  namespace(name: string): V1Namespace | undefined {
    return this.informers[1].lw.get(name);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const inf of this.informers) {
      clearTimeout(inf.timer);
      inf.watch.close();
      await inf.lw.stop();
    }
    for (const w of this.syncWaiters.splice(0)) w();
  }
}

/** In-cluster service account, or KUBECONFIG / ~/.kube/config: the standard client configuration. */
export function kubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}

/** region/zone/subzone from the node's topology labels, as Istio reads a node's locality. */
export async function nodeLocality(kc: KubeConfig, nodeName: string): Promise<string | undefined> {
  const node = await kc.makeApiClient(CoreV1Api).readNode({ name: nodeName });
  const l = node.metadata?.labels ?? {};
  const [region, zone, subzone] = [
    l['topology.kubernetes.io/region'],
    l['topology.kubernetes.io/zone'],
    l['topology.istio.io/subzone'],
  ];
  if (!region) return undefined;
  return [region, zone ?? '', subzone ?? ''].join('/').replace(/\/+$/, '');
}
