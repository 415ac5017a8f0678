// The agent's config source: xds/'s ConfigState, fed by istiod (XdsClient) or by a file
// (XdsFileSource) — one implementation for both, so both get the same acceptance, statuses and
// refusals. Until the initial fetch is complete, changes are held (programming a partial config
// would tear down what a restarted agent finds pinned), then handed on as one update.
import type { Logger } from 'pino';
import type { XdsClient } from '../xds/client.js';
import type { ConfigState } from '../xds/config-state.js';
import type { XdsFileSource } from '../xds/file-source.js';
import type { NodeIdentity } from '../xds/identity.js';
import { RESOURCE_TYPES, typeLabel } from '../xds/resource-types/index.js';
import {
  TYPE,
  type JsonObject,
  type Rejection,
  type ServiceWaypoint,
  type XdsResource,
} from '../xds/types.js';
import type { ConfigSource, SourceRejection, SourceUpdate, WorkloadApiSnapshot } from './stage-interfaces.js';

/** The Envoy types: what translate/ and /config_dump read (the workload API reaches them as waypoints). */
const ENVOY_TYPES = RESOURCE_TYPES.filter((t) => t.configDump);

type Feed = { kind: 'istiod'; client: XdsClient } | { kind: 'file'; file: XdsFileSource };

export class XdsSource implements ConfigSource {
  readonly kind: 'istiod' | 'file';
  readonly target: string;
  private readonly config: ConfigState;

  constructor(
    private readonly feed: Feed,
    target: string,
    private readonly node_: NodeIdentity | JsonObject,
    private readonly log: Logger,
  ) {
    this.kind = feed.kind;
    this.target = target;
    this.config = feed.kind === 'istiod' ? feed.client.config : feed.file.config;
  }

  async start(onUpdate: (u: SourceUpdate) => void, onRejected?: (r: Rejection[]) => void): Promise<void> {
    await Promise.resolve();
    const held = new Map<string, { upserted: number; removed: number }>();
    let receivedAt: bigint | undefined;
    const flush = () => {
      const changes = [...held].map(([typeUrl, c]) => ({ typeUrl, ...c }));
      held.clear();
      onUpdate({ changes, receivedAt: receivedAt ?? process.hrtime.bigint() });
      receivedAt = undefined;
    };
    this.config.on('update', (u) => {
      const c = held.get(u.typeUrl) ?? { upserted: 0, removed: 0 };
      c.upserted += u.upserted.length;
      c.removed += u.removed.length;
      held.set(u.typeUrl, c);
      receivedAt ??= process.hrtime.bigint();
      if (this.config.initialized()) flush();
    });
    this.config.on('initialized', (i) => {
      this.log.info(
        { types: [...held.keys()].map(typeLabel), ...i },
        this.kind === 'file' ? 'xDS file applied' : 'initial xDS fetch complete',
      );
      // An empty answer is an answer: a node without services yet is programmed (empty) and ready.
      // Without any answer (the wait timed out while unreachable), nothing is programmed.
      if (held.size > 0 || this.waitingFor().length === 0) flush();
    });
    this.config.on('rejected', (r) => onRejected?.(r.rejections));
    if (this.feed.kind === 'istiod') {
      this.feed.client.on('connection', (s) => {
        this.log.info(
          { xds: s.address, state: s.state, protocol: s.protocol, error: s.lastError },
          `xDS connection ${s.state}`,
        );
      });
      this.feed.client.start();
    } else {
      this.feed.file.start();
    }
  }

  async stop(): Promise<void> {
    await Promise.resolve();
    if (this.feed.kind === 'istiod') this.feed.client.stop();
    else this.feed.file.stop();
  }

  connected(): boolean {
    return this.feed.kind === 'istiod' ? this.feed.client.connected() : true;
  }

  connectionProblem(): { message: string; since?: string; retryInMs?: number } | undefined {
    if (this.feed.kind !== 'istiod' || this.feed.client.connected()) return undefined;
    const c = this.feed.client.status().connection;
    return {
      message: c.lastError ?? c.state,
      ...(c.lastErrorTime ? { since: c.lastErrorTime } : {}),
      ...(c.retryInMs !== undefined ? { retryInMs: c.retryInMs } : {}),
    };
  }

  resources(): XdsResource[] {
    return ENVOY_TYPES.flatMap((t) => this.config.snapshot(t.typeUrl));
  }

  waypoints(): ServiceWaypoint[] {
    return this.config.waypoints();
  }

  versions(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const t of this.config.status()) if (t.version) out[t.typeUrl] = t.version;
    return out;
  }

  node(): JsonObject {
    return this.node_ as unknown as JsonObject;
  }

  rejections(): SourceRejection[] {
    return this.config.rejections();
  }

  waitingFor(): string[] {
    // with authorization on, enrolled pods deny every connection until the workload API answers
    const types = this.authorization()
      ? RESOURCE_TYPES.filter((t) => this.config.states.has(t.typeUrl))
      : ENVOY_TYPES;
    return types
      .filter((t) => t.wildcard && !this.config.answered(t.typeUrl))
      .map((t) => `${t.plural} (${t.label})`);
  }

  private authorization(): boolean {
    return this.config.states.has(TYPE.authorization) && this.feed.kind === 'istiod';
  }

  workloadApi(): WorkloadApiSnapshot | undefined {
    if (!this.config.states.has(TYPE.authorization)) return undefined;
    return {
      answered: this.config.answered(TYPE.address) && this.config.answered(TYPE.authorization),
      addresses: this.config.snapshot(TYPE.address),
      authorizations: this.config.snapshot(TYPE.authorization),
      refused: this.config.rejections().filter((r) => r.typeUrl === TYPE.authorization),
    };
  }

  debug(): unknown {
    const header =
      this.feed.kind === 'istiod'
        ? (() => {
            const s = this.feed.client.status();
            return {
              node: s.node,
              connection: s.connection,
              last_error: s.connection.lastError
                ? { message: s.connection.lastError, at: s.connection.lastErrorTime }
                : null,
            };
          })()
        : this.feed.file.status();
    return {
      ...header,
      warming: this.config.warming(),
      initial_fetch: this.config.initialized()
        ? { complete: true }
        : { complete: false, waiting_for: this.config.initialFetchMissing() },
      types: this.config.status().map((t) => ({
        type_url: t.typeUrl,
        version: t.version,
        nonce: t.nonce,
        status: t.status,
        last_nack: t.lastError ?? null,
        last_nack_time: t.lastErrorTime ?? null,
        last_updated: t.lastUpdated ?? null,
        resources: t.resources.map((r) => ({
          name: r.name,
          status: r.status,
          ...(r.version !== undefined ? { version: r.version } : {}),
          ...(r.lastError ? { error: r.lastError, error_time: r.lastErrorTime } : {}),
          ...(r.lastUpdated ? { last_updated: r.lastUpdated } : {}),
        })),
      })),
    };
  }
}
