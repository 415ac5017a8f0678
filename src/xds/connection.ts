// One control-plane server: a gRPC channel per attempt, the reconnect backoff, the per-type protocol
// state that outlives streams (accepted versions), and the ADS streams themselves (nonces, node sent).
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Backoff, type Clock } from './backoff.js';
import type { ConfigState, Subscriber, XdsProtocol } from './config-state.js';
import type { NodeIdentity } from './identity.js';
import { encodeFromJson } from './proto-json.js';
import { requireType } from './protos.js';
import { decodeResource, type RawAny } from './decode.js';
import type { ResourceLimits } from './limits.js';
import type { DecodedResource, DeltaRequest, ResponseOutcome, SotwRequest } from './state.js';
import type { JsonObject } from './types.js';

export type { XdsProtocol } from './config-state.js';

export const ADS_SERVICE = 'envoy.service.discovery.v3.AggregatedDiscoveryService';
export const SOTW_METHOD = `/${ADS_SERVICE}/StreamAggregatedResources`;
export const DELTA_METHOD = `/${ADS_SERVICE}/DeltaAggregatedResources`;

export interface TransportOptions {
  /** host:port of istiod (15010 plaintext, 15012 TLS). */
  address: string;
  tls?: { rootCaFile: string; serverName?: string };
  /** Bearer token file, read afresh at each (re)connect. */
  tokenFile?: string;
  /** Sent as the ClusterID header, as istio-agent does. */
  clusterId?: string;
  /** Keepalive ping interval; istiod sends GOAWAY to clients pinging more often than every 15 s. */
  keepaliveMs?: number;
}

export type ConnectionState = 'IDLE' | 'CONNECTING' | 'CONNECTED' | 'BACKOFF' | 'STOPPED';

export interface ConnectionStatus {
  address: string;
  protocol: XdsProtocol;
  state: ConnectionState;
  since: string;
  attempts: number;
  /** Streams opened so far (1 for the first connection). */
  streams: number;
  lastError?: string;
  lastErrorTime?: string;
  /** Delay of the pending reconnect, when in BACKOFF. */
  retryInMs?: number;
}

export interface ConnectionEvents {
  onStateChange(status: ConnectionStatus): void;
}

export interface ServerConnectionOptions extends TransportOptions {
  protocol: XdsProtocol;
  node: NodeIdentity;
  /** Types carried over Delta even when the protocol is SotW (Istio's workload API). */
  deltaOnlyTypes: string[];
  /** Resources past these are refused before they are decoded. */
  limits?: ResourceLimits;
  clock: Clock;
  random: () => number;
  backoff?: { initialMs?: number; maxMs?: number };
  logger: Logger;
  now: () => Date;
}

type AnyRequest = SotwRequest | DeltaRequest;

/** One ADS call in one mode. The nonce lives in the type states; this tracks what was sent on it. */
class AdsStream {
  readonly mode: XdsProtocol;
  private readonly call: grpc.ClientDuplexStream<Uint8Array, Buffer>;
  private nodeSent = false;
  private ended = false;
  readonly started = new Set<string>();
  gotResponse = false;

  constructor(
    mode: XdsProtocol,
    call: grpc.ClientDuplexStream<Uint8Array, Buffer>,
    private readonly node: NodeIdentity,
  ) {
    this.mode = mode;
    this.call = call;
  }

  on(handlers: { data: (b: Buffer) => void; end: (err: grpc.StatusObject) => void }): void {
    this.call.on('data', handlers.data);
    // 'error' carries the same status as 'status'; listening keeps it from being thrown.
    this.call.on('error', () => undefined);
    this.call.on('status', (s: grpc.StatusObject) => {
      if (this.ended) return;
      this.ended = true;
      handlers.end(s);
    });
  }

  send(request: AnyRequest): void {
    if (this.ended) return;
    const json: JsonObject = { ...(request as unknown as JsonObject) };
    // Envoy sends the node on the first request of a stream only; istiod keeps it for the stream.
    if (!this.nodeSent) {
      json['node'] = this.node as unknown as JsonObject;
      this.nodeSent = true;
    }
    const typeName =
      this.mode === 'delta'
        ? 'envoy.service.discovery.v3.DeltaDiscoveryRequest'
        : 'envoy.service.discovery.v3.DiscoveryRequest';
    this.call.write(encodeFromJson(typeName, json));
  }

  close(): void {
    this.ended = true;
    this.call.cancel();
  }
}

export class ServerConnection implements Subscriber {
  private readonly config: ConfigState;
  private readonly opts: ServerConnectionOptions;
  private readonly backoff: Backoff;
  private client: grpc.Client | undefined;
  private streams: AdsStream[] = [];
  private retryTimer: unknown;
  private stopped = true;
  private generation = 0;
  private stat: ConnectionStatus;
  private readonly events: ConnectionEvents;

  constructor(config: ConfigState, opts: ServerConnectionOptions, events: ConnectionEvents) {
    this.config = config;
    this.opts = opts;
    this.events = events;
    this.backoff = new Backoff({ ...opts.backoff, random: opts.random });
    config.setSubscriber(this);
    this.stat = {
      address: opts.address,
      protocol: opts.protocol,
      state: 'IDLE',
      since: opts.now().toISOString(),
      attempts: 0,
      streams: 0,
    };
  }

  status(): ConnectionStatus {
    return { ...this.stat };
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    if (this.retryTimer !== undefined) this.opts.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.teardown();
    this.setState({ state: 'STOPPED' });
  }

  /** Changes a non-wildcard type's names, sending the request now if a stream carries the type. */
  subscribe(typeUrl: string, names: string[]): boolean {
    const state = this.config.states.get(typeUrl);
    if (!state) throw new Error(`no subscription state for ${typeUrl}`);
    const { request, changed } = state.setSubscription(names);
    const stream = this.streamFor(typeUrl);
    if (request) stream?.send(request);
    else if (stream && !stream.started.has(typeUrl) && names.length > 0) {
      // First names for this type on the current stream: its initial request.
      stream.started.add(typeUrl);
      stream.send(state.streamStarted());
    }
    return changed;
  }

  private streamFor(typeUrl: string): AdsStream | undefined {
    const mode: XdsProtocol = this.opts.deltaOnlyTypes.includes(typeUrl) ? 'delta' : this.opts.protocol;
    return this.streams.find((s) => s.mode === mode);
  }

  private setState(patch: Partial<ConnectionStatus>): void {
    const next = { ...this.stat, ...patch };
    if (patch.state && patch.state !== this.stat.state) next.since = this.opts.now().toISOString();
    if (patch.state && patch.state !== 'BACKOFF') delete next.retryInMs;
    this.stat = next;
    this.events.onStateChange(this.status());
  }

  private async callMetadata(): Promise<grpc.Metadata> {
    const md = new grpc.Metadata();
    if (this.opts.tokenFile) {
      let token: string;
      try {
        token = (await readFile(this.opts.tokenFile, 'utf8')).trim();
      } catch (err) {
        throw new Error(`read token file ${this.opts.tokenFile}: ${(err as Error).message}`, { cause: err });
      }
      md.set('authorization', `Bearer ${token}`);
    }
    if (this.opts.clusterId) md.set('ClusterID', this.opts.clusterId);
    return md;
  }

  private async credentials(): Promise<grpc.ChannelCredentials> {
    if (!this.opts.tls) return grpc.credentials.createInsecure();
    try {
      return grpc.credentials.createSsl(await readFile(this.opts.tls.rootCaFile));
    } catch (err) {
      throw new Error(`read root CA ${this.opts.tls.rootCaFile}: ${(err as Error).message}`, { cause: err });
    }
  }

  private channelOptions(): grpc.ChannelOptions {
    const o: grpc.ChannelOptions = {
      'grpc.keepalive_time_ms': Math.max(30_000, this.opts.keepaliveMs ?? 30_000),
      'grpc.keepalive_timeout_ms': 10_000,
      // CDS and LDS of a large mesh pass gRPC's 4 MiB default.
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
    };
    const serverName = this.opts.tls?.serverName;
    if (serverName) {
      o['grpc.ssl_target_name_override'] = serverName;
      o['grpc.default_authority'] = serverName;
    }
    return o;
  }

  private describeTarget(): string {
    if (!this.opts.tls) return `${this.opts.address} (plaintext)`;
    return `${this.opts.address} (TLS, server name ${this.opts.tls.serverName ?? this.opts.address.replace(/:\d+$/, '')})`;
  }

  private async connect(): Promise<void> {
    const gen = ++this.generation;
    this.setState({ state: 'CONNECTING', attempts: this.stat.attempts + 1 });
    let md: grpc.Metadata;
    let creds: grpc.ChannelCredentials;
    try {
      [md, creds] = await Promise.all([this.callMetadata(), this.credentials()]);
    } catch (err) {
      if (gen === this.generation)
        this.retry(`connect to ${this.describeTarget()}: ${(err as Error).message}`);
      return;
    }
    if (gen !== this.generation || this.stopped) return;
    this.client = new grpc.Client(this.opts.address, creds, this.channelOptions());
    const modes: XdsProtocol[] = [this.opts.protocol];
    if (this.opts.protocol === 'sotw' && this.opts.deltaOnlyTypes.length > 0) modes.push('delta');
    this.stat.streams++;
    for (const mode of modes) {
      const call = this.client.makeBidiStreamRequest(
        mode === 'delta' ? DELTA_METHOD : SOTW_METHOD,
        (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength),
        (b: Buffer) => b,
        md,
        {},
      );
      const stream = new AdsStream(mode, call, this.opts.node);
      stream.on({
        data: (b) => this.onData(stream, b),
        end: (s) => {
          if (gen === this.generation) this.onStreamEnd(stream, s);
        },
      });
      this.streams.push(stream);
    }
    for (const stream of this.streams) this.sendInitialRequests(stream);
  }

  private sendInitialRequests(stream: AdsStream): void {
    // CDS and LDS first, as Envoy does; EDS and RDS when they have names (after a reconnect).
    for (const [typeUrl, state] of this.config.states) {
      if (this.streamFor(typeUrl) !== stream) continue;
      if (!state.wildcard && state.subscription().length === 0) continue;
      stream.started.add(typeUrl);
      stream.send(state.streamStarted());
    }
  }

  private onData(stream: AdsStream, bytes: Buffer): void {
    if (!stream.gotResponse) {
      stream.gotResponse = true;
      // A stream that delivered config is healthy: the next failure starts the backoff afresh.
      this.backoff.reset();
      this.setState({ state: 'CONNECTED' });
    }
    try {
      if (stream.mode === 'delta') this.onDeltaResponse(stream, bytes);
      else this.onSotwResponse(stream, bytes);
    } catch (err) {
      this.opts.logger.error({ err }, 'xDS response handling failed');
    }
  }

  private onSotwResponse(stream: AdsStream, bytes: Buffer): void {
    const resp = requireType('envoy.service.discovery.v3.DiscoveryResponse').decode(bytes) as unknown as {
      version_info?: string;
      type_url?: string;
      nonce?: string;
      resources?: RawAny[];
    };
    const typeUrl = resp.type_url ?? '';
    if (!this.config.states.has(typeUrl) || this.streamFor(typeUrl) !== stream) {
      this.opts.logger.warn({ typeUrl }, 'response for a type we did not subscribe to, ignored');
      return;
    }
    const decoded: DecodedResource[] = (resp.resources ?? []).map((any, i) =>
      decodeResource(typeUrl, any, `resources[${i}]`, undefined, this.opts.limits),
    );
    const outcome = this.config.handleSotw(typeUrl, {
      version_info: resp.version_info ?? '',
      nonce: resp.nonce ?? '',
      resources: decoded,
    });
    if (!outcome) return;
    stream.send(outcome.request);
    this.log(typeUrl, outcome, resp.version_info ?? '', resp.nonce ?? '', decoded.length);
    this.config.settle(typeUrl, outcome);
  }

  private onDeltaResponse(stream: AdsStream, bytes: Buffer): void {
    const resp = requireType('envoy.service.discovery.v3.DeltaDiscoveryResponse').decode(
      bytes,
    ) as unknown as {
      system_version_info?: string;
      type_url?: string;
      nonce?: string;
      resources?: { name?: string; version?: string; resource?: RawAny }[];
      removed_resources?: string[];
    };
    const typeUrl = resp.type_url ?? '';
    if (!this.config.states.has(typeUrl) || this.streamFor(typeUrl) !== stream) {
      this.opts.logger.warn({ typeUrl }, 'response for a type we did not subscribe to, ignored');
      return;
    }
    const decoded: DecodedResource[] = [];
    (resp.resources ?? []).forEach((r, i) => {
      if (!r.resource) return; // a heartbeat or TTL refresh without content
      const d = decodeResource(typeUrl, r.resource, `resources[${i}]`, r.name || undefined, this.opts.limits);
      decoded.push({ ...d, version: r.version ?? '' });
    });
    const outcome = this.config.handleDelta(typeUrl, {
      system_version_info: resp.system_version_info ?? '',
      nonce: resp.nonce ?? '',
      resources: decoded,
      removed_resources: resp.removed_resources ?? [],
    });
    if (!outcome) return;
    stream.send(outcome.request);
    this.log(typeUrl, outcome, resp.system_version_info ?? '', resp.nonce ?? '', decoded.length);
    this.config.settle(typeUrl, outcome);
  }

  private log(
    typeUrl: string,
    outcome: ResponseOutcome<AnyRequest>,
    version: string,
    nonce: string,
    count: number,
  ): void {
    const type = typeUrl.slice(typeUrl.lastIndexOf('.') + 1);
    if (outcome.rejections.length > 0) {
      this.opts.logger.warn(
        {
          type,
          version,
          nonce,
          rejected: outcome.rejections.length,
          error: outcome.request.error_detail?.message,
        },
        'xDS NACK',
      );
    } else if (this.opts.logger.isLevelEnabled('debug')) {
      this.opts.logger.debug({ type, version, nonce, resources: count, changed: outcome.changed }, 'xDS ACK');
    }
  }

  private onStreamEnd(stream: AdsStream, s: grpc.StatusObject): void {
    for (const t of stream.started) this.config.states.get(t)?.streamEnded();
    const unavailable = s.code === grpc.status.UNAVAILABLE;
    // istiod closes streams about every 30 minutes and answers "not ready" with Unavailable at start-up.
    const reason = `ADS stream to ${this.describeTarget()} closed: ${grpc.status[s.code] ?? s.code} ${s.details}`;
    if (unavailable || s.code === grpc.status.OK)
      this.opts.logger.info({ code: s.code, details: s.details }, reason);
    else this.opts.logger.warn({ code: s.code, details: s.details }, reason);
    this.teardown();
    this.retry(reason);
  }

  private teardown(): void {
    const streams = this.streams;
    this.streams = [];
    for (const st of streams) {
      for (const t of st.started) this.config.states.get(t)?.streamEnded();
      st.close();
    }
    this.client?.close();
    this.client = undefined;
  }

  private retry(reason: string): void {
    if (this.stopped) return;
    this.generation++;
    const delay = this.backoff.next();
    this.setState({
      state: 'BACKOFF',
      lastError: reason,
      lastErrorTime: this.opts.now().toISOString(),
      retryInMs: delay,
    });
    this.retryTimer = this.opts.clock.setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.stopped) void this.connect();
    }, delay);
  }
}
