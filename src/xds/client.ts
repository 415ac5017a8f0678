// The xDS client for the life of the agent: subscriptions that follow each other (CDS → EDS,
// LDS → RDS), EDS warming, update events with the full accepted snapshot per type, and status()
// as plain data for the admin endpoint. The protocol itself lives in connection.ts and state.ts.
import { EventEmitter } from 'node:events';
import { pino, type Logger } from 'pino';
import { systemClock, type Clock } from './backoff.js';
import { ServerConnection, subscribedTypes, type ConnectionStatus, type XdsProtocol } from './connection.js';
import type { NodeIdentity } from './identity.js';
import { edsNamesOfClusters, rdsNamesOfListeners } from './resources.js';
import type { DeltaRequest, ResponseOutcome, SotwRequest, TypeStatus, Validator } from './state.js';
import { TYPE, type Rejection, type ServiceWaypoint, type XdsResource } from './types.js';
import { serviceWaypoints } from './waypoints.js';

export interface XdsClientOptions {
  /** host:port of istiod: 15010 plaintext, 15012 TLS. */
  address: string;
  /** Delta ADS is Istio's default since 1.22; SotW on request. */
  protocol?: XdsProtocol;
  tls?: { rootCaFile: string; serverName?: string };
  tokenFile?: string;
  clusterId?: string;
  node: NodeIdentity;
  /** Subscribe to Istio's workload API (Delta) to learn which services use a waypoint. */
  waypoints?: boolean;
  /** Supplied by translate/: resources it refuses are NACKed, the rest of the response applies. */
  validate?: Validator;
  /** How long a new EDS cluster waits for its first ClusterLoadAssignment (Envoy's initial_fetch_timeout). */
  initialFetchTimeoutMs?: number;
  backoff?: { initialMs?: number; maxMs?: number };
  keepaliveMs?: number;
  clock?: Clock;
  random?: () => number;
  logger?: Logger;
}

export interface XdsUpdate {
  typeUrl: string;
  /** Every accepted resource of the type (for CDS: the warm clusters). */
  resources: XdsResource[];
}

export interface XdsRejectionEvent {
  typeUrl: string;
  rejections: Rejection[];
}

export interface XdsClientStatus {
  node: { id: string; cluster: string };
  connection: ConnectionStatus;
  types: TypeStatus[];
  /** EDS clusters waiting for their first ClusterLoadAssignment. */
  warming: string[];
}

export interface XdsClientEvents {
  update: [XdsUpdate];
  waypoints: [ServiceWaypoint[]];
  rejected: [XdsRejectionEvent];
  connection: [ConnectionStatus];
  /** The initial fetch is complete (or timed out): emitted once, after the update events it covers. */
  initialized: [{ timedOut: boolean; missing: string[] }];
}

export const DEFAULT_INITIAL_FETCH_TIMEOUT_MS = 15_000;

export class XdsClient extends EventEmitter<XdsClientEvents> {
  private readonly opts: XdsClientOptions;
  private readonly clock: Clock;
  private readonly connection: ServerConnection;
  private readonly logger: Logger;
  /** cluster name → EDS service name, for the EDS clusters of the current CDS snapshot. */
  private edsOfCluster = new Map<string, string>();
  /** EDS clusters usable by translate/: their first ClusterLoadAssignment arrived, or the wait timed out. */
  private readonly warm = new Set<string>();
  private readonly fetchTimers = new Map<string, unknown>();
  private lastClusterEvent: string | undefined;
  private initialDone = false;
  private initialTimer: unknown;

  constructor(opts: XdsClientOptions) {
    super();
    this.opts = opts;
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? pino({ name: 'xds', level: process.env['KERNMESH_LOG_LEVEL'] ?? 'info' });
    const types = subscribedTypes(opts.waypoints ?? false);
    this.connection = new ServerConnection(
      {
        address: opts.address,
        tls: opts.tls,
        tokenFile: opts.tokenFile,
        clusterId: opts.clusterId,
        keepaliveMs: opts.keepaliveMs,
        protocol: opts.protocol ?? 'delta',
        node: opts.node,
        sotwOrDeltaTypes: types.envoy,
        deltaOnlyTypes: types.workload,
        validate: opts.validate,
        clock: this.clock,
        random: opts.random ?? Math.random,
        backoff: opts.backoff,
        logger: this.logger,
        now: () => new Date(this.clock.now()),
      },
      {
        onApplied: (typeUrl, outcome) => this.onApplied(typeUrl, outcome),
        onStateChange: (s) => this.emit('connection', s),
      },
    );
  }

  start(): void {
    if (!this.initialDone && this.initialTimer === undefined) {
      const timeout = this.opts.initialFetchTimeoutMs ?? DEFAULT_INITIAL_FETCH_TIMEOUT_MS;
      this.initialTimer = this.clock.setTimeout(() => {
        this.initialTimer = undefined;
        this.finishInitialFetch(true);
      }, timeout);
    }
    this.connection.start();
  }

  stop(): void {
    if (this.initialTimer !== undefined) this.clock.clearTimeout(this.initialTimer);
    this.initialTimer = undefined;
    this.connection.stop();
    for (const t of this.fetchTimers.values()) this.clock.clearTimeout(t);
    this.fetchTimers.clear();
  }

  /** The accepted resources of a type (for CDS, only warm clusters), as update events carry them. */
  snapshot(typeUrl: string): XdsResource[] {
    const all = this.connection.states.get(typeUrl)?.snapshot() ?? [];
    if (typeUrl !== TYPE.cluster) return all;
    return all.filter((c) => !this.edsOfCluster.has(c.name) || this.warm.has(c.name));
  }

  /** Which services use which waypoint (empty unless waypoints are enabled). */
  waypoints(): ServiceWaypoint[] {
    return serviceWaypoints(this.connection.states.get(TYPE.address)?.snapshot() ?? []);
  }

  /** Every accepted resource of a type, warming clusters included (for validating a response against them). */
  accepted(typeUrl: string): XdsResource[] {
    return this.connection.states.get(typeUrl)?.snapshot() ?? [];
  }

  /**
   * Whether the initial fetch is complete, as Envoy's init manager sees it: CDS and LDS answered,
   * every EDS cluster warm, every route named by LDS received (and the workload API answered when
   * subscribed). Until then a snapshot is partial: programming it would drop what a restarted
   * agent finds pinned. The initial fetch timeout ends the wait regardless.
   */
  initialized(): boolean {
    return this.initialDone;
  }

  /** What the initial fetch still waits for, in the operator's words (empty once complete). */
  initialFetchMissing(): string[] {
    const missing: string[] = [];
    const state = (t: string) => this.connection.states.get(t);
    if (!state(TYPE.cluster)?.answered()) missing.push('clusters (CDS)');
    if (!state(TYPE.listener)?.answered()) missing.push('listeners (LDS)');
    const addresses = state(TYPE.address);
    if (addresses && !addresses.answered()) missing.push('addresses (workload API)');
    let warming = 0;
    for (const c of this.edsOfCluster.keys()) if (!this.warm.has(c)) warming++;
    if (warming > 0) missing.push(`endpoints of ${warming} cluster(s) (EDS)`);
    const routes = state(TYPE.route)?.awaited() ?? [];
    if (routes.length > 0) missing.push(`route(s) ${routes.join(', ')} (RDS)`);
    return missing;
  }

  private checkInitialized(): void {
    if (!this.initialDone && this.initialFetchMissing().length === 0) this.finishInitialFetch(false);
  }

  private finishInitialFetch(timedOut: boolean): void {
    if (this.initialDone) return;
    this.initialDone = true;
    if (this.initialTimer !== undefined) this.clock.clearTimeout(this.initialTimer);
    this.initialTimer = undefined;
    const missing = timedOut ? this.initialFetchMissing() : [];
    if (timedOut)
      this.logger.warn({ missing }, 'initial xDS fetch timed out: using the config received so far');
    this.emit('initialized', { timedOut, missing });
  }

  status(): XdsClientStatus {
    return {
      node: { id: this.opts.node.id, cluster: this.opts.node.cluster },
      connection: this.connection.status(),
      types: [...this.connection.states.values()].map((s) => s.status()),
      warming: [...this.edsOfCluster.keys()].filter((c) => !this.warm.has(c)).sort(),
    };
  }

  private onApplied(typeUrl: string, outcome: ResponseOutcome<SotwRequest | DeltaRequest>): void {
    this.applyOutcome(typeUrl, outcome);
    this.checkInitialized();
  }

  private applyOutcome(typeUrl: string, outcome: ResponseOutcome<SotwRequest | DeltaRequest>): void {
    if (outcome.rejections.length > 0) this.emit('rejected', { typeUrl, rejections: outcome.rejections });
    if (!outcome.changed) return;
    switch (typeUrl) {
      case TYPE.cluster:
        this.onClustersChanged();
        break;
      case TYPE.endpoint:
        this.emit('update', { typeUrl, resources: this.snapshot(typeUrl) });
        this.refreshWarmth();
        break;
      case TYPE.listener:
        this.emit('update', { typeUrl, resources: this.snapshot(typeUrl) });
        this.resubscribe(TYPE.route, rdsNamesOfListeners(this.snapshot(TYPE.listener)));
        break;
      case TYPE.address:
        this.emit('update', { typeUrl, resources: this.snapshot(typeUrl) });
        this.emit('waypoints', this.waypoints());
        break;
      default:
        this.emit('update', { typeUrl, resources: this.snapshot(typeUrl) });
    }
  }

  private resubscribe(typeUrl: string, names: string[]): void {
    if (this.connection.subscribe(typeUrl, names)) {
      // Unsubscribed resources were dropped from the snapshot.
      this.emit('update', { typeUrl, resources: this.snapshot(typeUrl) });
    }
  }

  private onClustersChanged(): void {
    const clusters = this.connection.states.get(TYPE.cluster)?.snapshot() ?? [];
    this.edsOfCluster = edsNamesOfClusters(clusters);
    for (const c of [...this.warm]) if (!this.edsOfCluster.has(c)) this.warm.delete(c);
    const edsNames = [...new Set(this.edsOfCluster.values())].sort();
    this.resubscribe(TYPE.endpoint, edsNames);
    for (const [name, timer] of this.fetchTimers) {
      if (!edsNames.includes(name)) {
        this.clock.clearTimeout(timer);
        this.fetchTimers.delete(name);
      }
    }
    this.refreshWarmth();
  }

  /** Marks EDS clusters warm whose endpoints arrived; starts the initial fetch timer for the others. */
  private refreshWarmth(): void {
    const eds = this.connection.states.get(TYPE.endpoint);
    for (const [cluster, edsName] of this.edsOfCluster) {
      if (this.warm.has(cluster)) continue;
      const st = eds?.resourceState(edsName);
      if (st?.accepted || st?.status === 'DOES_NOT_EXIST') {
        this.warm.add(cluster);
        continue;
      }
      if (!this.fetchTimers.has(edsName)) {
        const timeout = this.opts.initialFetchTimeoutMs ?? DEFAULT_INITIAL_FETCH_TIMEOUT_MS;
        this.fetchTimers.set(
          edsName,
          this.clock.setTimeout(() => this.onInitialFetchTimeout(edsName), timeout),
        );
      }
    }
    for (const [name, timer] of this.fetchTimers) {
      if (eds?.resourceState(name)?.accepted) {
        this.clock.clearTimeout(timer);
        this.fetchTimers.delete(name);
      }
    }
    this.emitClusters();
  }

  private onInitialFetchTimeout(edsName: string): void {
    this.fetchTimers.delete(edsName);
    const eds = this.connection.states.get(TYPE.endpoint);
    if (eds?.markDoesNotExist(edsName)) {
      this.logger.warn(
        { cluster: edsName },
        'no endpoints within the initial fetch timeout; cluster used without them',
      );
    }
    this.refreshWarmth();
    this.checkInitialized();
  }

  /** Emits the warm clusters when they differ from the last emitted set (warming can hold a change back). */
  private emitClusters(): void {
    const resources = this.snapshot(TYPE.cluster);
    const key = resources
      .map((r) => `${r.name}\u0000${r.version}\u0000${r.lastUpdated ?? ''}`)
      .join('\u0001');
    if (key === this.lastClusterEvent) return;
    this.lastClusterEvent = key;
    this.emit('update', { typeUrl: TYPE.cluster, resources });
  }
}
