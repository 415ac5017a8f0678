// The xDS client for the life of the agent: ConfigState (what is accepted, warming, subscriptions
// that follow each other) fed by one control-plane connection, and status() as plain data for the
// admin endpoint. The protocol itself lives in connection.ts and state.ts.
import { EventEmitter } from 'node:events';
import { pino, type Logger } from 'pino';
import { systemClock, type Clock } from './backoff.js';
import {
  ConfigState,
  DEFAULT_INITIAL_FETCH_TIMEOUT_MS,
  type ConfigStateEvents,
  type XdsProtocol,
} from './config-state.js';
import { ServerConnection, type ConnectionStatus } from './connection.js';
import type { NodeIdentity } from './identity.js';
import type { ResourceLimits } from './limits.js';
import { subscribedTypes } from './resource-types/index.js';
import type { TypeStatus, Validator } from './state.js';
import type { Rejection, ServiceWaypoint, XdsResource } from './types.js';
import type { XdsStateStore } from './persist.js';

export type { XdsRejectionEvent, XdsUpdate } from './config-state.js';
export { DEFAULT_INITIAL_FETCH_TIMEOUT_MS };

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
  /** Subscribe to Istio's workload API (Delta): workloads and their L4 authorization policies. */
  authorization?: boolean;
  /** Supplied by translate/: resources it refuses are NACKed, the rest of the response applies. */
  validate?: Validator;
  /** What one resource may hold (the kernel's capacity): more is refused before it is decoded. */
  limits?: ResourceLimits;
  /** How long a new EDS cluster waits for its first ClusterLoadAssignment (Envoy's initial_fetch_timeout). */
  initialFetchTimeoutMs?: number;
  backoff?: { initialMs?: number; maxMs?: number };
  keepaliveMs?: number;
  clock?: Clock;
  random?: () => number;
  logger?: Logger;
  /** Accepted resources kept across restarts: restored at start, told to the server (persist.ts). */
  store?: XdsStateStore;
}

export interface XdsClientStatus {
  node: { id: string; cluster: string };
  connection: ConnectionStatus;
  types: TypeStatus[];
  /** EDS clusters waiting for their first ClusterLoadAssignment. */
  warming: string[];
}

export interface XdsClientEvents extends ConfigStateEvents {
  connection: [ConnectionStatus];
}

export class XdsClient extends EventEmitter<XdsClientEvents> {
  readonly config: ConfigState;
  private readonly opts: XdsClientOptions;
  private readonly connection: ServerConnection;
  private readonly logger: Logger;

  constructor(opts: XdsClientOptions) {
    super();
    this.opts = opts;
    const clock = opts.clock ?? systemClock;
    const logger = opts.logger ?? pino({ name: 'xds', level: process.env['KERNMESH_LOG_LEVEL'] ?? 'info' });
    const now = () => new Date(clock.now());
    const types = subscribedTypes({
      waypoints: opts.waypoints ?? false,
      authorization: opts.authorization ?? false,
    });
    const protocol = opts.protocol ?? 'delta';
    this.config = new ConfigState({
      types,
      protocol,
      ...(opts.validate ? { validate: opts.validate } : {}),
      ...(opts.limits ? { limits: opts.limits } : {}),
      ...(opts.initialFetchTimeoutMs !== undefined
        ? { initialFetchTimeoutMs: opts.initialFetchTimeoutMs }
        : {}),
      clock,
      now,
      logger,
      ...(opts.store ? { store: opts.store } : {}),
    });
    this.logger = logger;
    for (const event of ['update', 'waypoints', 'rejected', 'initialized'] as const)
      this.config.on(event, (...args: unknown[]) => this.emit(event, ...(args as [never])));
    this.connection = new ServerConnection(
      this.config,
      {
        address: opts.address,
        tls: opts.tls,
        tokenFile: opts.tokenFile,
        clusterId: opts.clusterId,
        keepaliveMs: opts.keepaliveMs,
        protocol,
        node: opts.node,
        deltaOnlyTypes: types.filter((t) => t.deltaOnly).map((t) => t.typeUrl),
        ...(opts.limits ? { limits: opts.limits } : {}),
        clock,
        random: opts.random ?? Math.random,
        backoff: opts.backoff,
        logger,
        now,
      },
      { onStateChange: (s) => this.emit('connection', s) },
    );
  }

  start(): void {
    const store = this.opts.store;
    if (store) {
      // what the previous run accepted: the first request tells the server, which sends what changed
      let restored = 0;
      try {
        restored = this.config.restore(store.load());
      } catch (e) {
        this.logger.warn({ err: e, dir: store.dir }, 'kept xDS resources unreadable: a full push follows');
      }
      this.logger.info({ resources: restored, dir: store.dir }, 'xDS resources kept from the previous run');
    }
    this.config.start();
    this.connection.start();
  }

  stop(): void {
    this.config.stop();
    this.connection.stop();
  }

  /** The accepted resources of a type, as update events carry them (for CDS, only warm clusters). */
  snapshot(typeUrl: string): readonly XdsResource[] {
    return this.config.snapshot(typeUrl);
  }

  /** Which services use which waypoint (empty unless waypoints are enabled). */
  waypoints(): ServiceWaypoint[] {
    return this.config.waypoints();
  }

  /** Every accepted resource of a type, warming clusters included (for validating a response against them). */
  accepted(typeUrl: string): readonly XdsResource[] {
    return this.config.accepted(typeUrl);
  }

  /** The refusals of the resources NACKED now. */
  rejections(): Rejection[] {
    return this.config.rejections();
  }

  /** See ConfigState.initialized(). */
  initialized(): boolean {
    return this.config.initialized();
  }

  /** What the initial fetch still waits for, in the operator's words (empty once complete). */
  initialFetchMissing(): string[] {
    return this.config.initialFetchMissing();
  }

  connected(): boolean {
    return this.connection.status().state === 'CONNECTED';
  }

  status(): XdsClientStatus {
    return {
      node: { id: this.opts.node.id, cluster: this.opts.node.cluster },
      connection: this.connection.status(),
      types: this.config.status(),
      warming: this.config.warming(),
    };
  }
}
