// The istiod source: xds/'s XdsClient seen as the agent's ConfigSource. Every update event becomes a
// full snapshot of the four Envoy types (the agent translates the whole config each time).
import type { Logger } from 'pino';
import type { XdsClient } from '../xds/client.js';
import type { NodeIdentity } from '../xds/identity.js';
import { TYPE, type JsonObject, type Rejection } from '../xds/types.js';
import type { ConfigSource, SourceUpdate } from './ports.js';

const ENVOY_TYPES = [TYPE.cluster, TYPE.endpoint, TYPE.listener, TYPE.route];

export class IstiodSource implements ConfigSource {
  readonly kind = 'istiod' as const;
  readonly target: string;
  private lastRejections = new Map<string, (Rejection & { at: string })[]>();

  constructor(
    private readonly client: XdsClient,
    address: string,
    private readonly node_: NodeIdentity,
    private readonly log: Logger,
  ) {
    this.target = address;
  }

  async start(onUpdate: (u: SourceUpdate) => void, onRejected?: (r: Rejection[]) => void): Promise<void> {
    await Promise.resolve();
    const snapshot = (changedTypes: string[]): SourceUpdate => ({
      resources: ENVOY_TYPES.flatMap((t) => this.client.snapshot(t)),
      waypoints: this.client.waypoints(),
      changedTypes,
      receivedAt: process.hrtime.bigint(),
    });
    // Until the initial fetch completes, updates are partial (CDS without LDS...): programming one
    // would tear down what a restarted agent finds pinned. They are held and applied as one.
    const held = new Set<string>();
    const changed = (typeUrl: string) => {
      if (this.client.initialized()) onUpdate(snapshot([typeUrl]));
      else held.add(typeUrl);
    };
    this.client.on('update', (u) => changed(u.typeUrl));
    this.client.on('waypoints', () => changed(TYPE.address));
    this.client.on('initialized', (i) => {
      this.log.info(
        { types: [...held].map((t) => t.slice(t.lastIndexOf('.') + 1)), ...i },
        'initial xDS fetch complete',
      );
      // Nothing held: every response was empty; nothing to program yet.
      if (held.size > 0) onUpdate(snapshot([...held]));
      held.clear();
    });
    this.client.on('rejected', (r) => {
      const at = new Date().toISOString();
      this.lastRejections.set(
        r.typeUrl,
        r.rejections.map((x) => ({ ...x, at })),
      );
      onRejected?.(r.rejections);
    });
    this.client.on('connection', (s) => {
      this.log.info(
        { xds: s.address, state: s.state, protocol: s.protocol, error: s.lastError },
        `xDS connection ${s.state}`,
      );
    });
    this.client.start();
  }

  async stop(): Promise<void> {
    await Promise.resolve();
    this.client.stop();
  }

  connected(): boolean {
    return this.client.status().connection.state === 'CONNECTED';
  }

  versions(): Record<string, string> {
    return Object.fromEntries(this.client.status().types.map((t) => [t.typeUrl, t.version]));
  }

  node(): JsonObject {
    return this.node_ as unknown as JsonObject;
  }

  /** Resources NACKed in the type's last rejected response that are still NACKED now. */
  rejections(): (Rejection & { at?: string })[] {
    const nacked = new Set<string>();
    for (const t of this.client.status().types)
      for (const r of t.resources) if (r.status === 'NACKED') nacked.add(`${t.typeUrl} ${r.name}`);
    return [...this.lastRejections.values()].flat().filter((r) => nacked.has(`${r.typeUrl} ${r.name}`));
  }

  debug(): unknown {
    const s = this.client.status();
    return {
      node: s.node,
      connection: s.connection,
      warming: s.warming,
      initial_fetch: this.client.initialized()
        ? { complete: true }
        : { complete: false, waiting_for: this.client.initialFetchMissing() },
      types: s.types.map((t) => ({
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
      last_error: s.connection.lastError
        ? { message: s.connection.lastError, at: s.connection.lastErrorTime }
        : null,
    };
  }
}
