// A test control plane that behaves as istiod does on its ADS endpoint: a fresh nonce per response,
// stale nonces ignored, NACKs recorded and not answered, partial EDS pushes, SotW and Delta, TLS and a
// bearer-token check when asked, and istiod's proxy-status bookkeeping per type (SYNCED / STALE /
// NOT SENT / ERROR) so tests can assert what `istioctl proxy-status` would show.
//
// Resources are given as proto3 JSON with "@type" (what config_dump and XdsResource carry); they are
// encoded with the project's fromJson, so what the client decodes went through real protobuf bytes.
import { createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { anyFromJson, decodeToJson } from '../../src/xds/proto-json.js';
import { requireType } from '../../src/xds/protos.js';
import { resourceType } from '../../src/xds/resource-types/index.js';
import { isWildcardType } from '../../src/xds/state.js';
import type { JsonObject, JsonValue, XdsResource } from '../../src/xds/types.js';

const SOTW_METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources';
const DELTA_METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources';

export type ProxyTypeStatus = 'SYNCED' | 'STALE' | 'NOT SENT' | 'ERROR';

export type RequestKind = 'initial' | 'ack' | 'nack' | 'stale' | 'subscription';

export interface RecordedRequest {
  stream: number;
  mode: 'sotw' | 'delta';
  typeUrl: string;
  kind: RequestKind;
  /** The request as proto3 JSON (defaults left out, as on the wire). */
  json: JsonObject;
  /** When it arrived (Date.now()). */
  at?: number;
}

export interface RecordedResponse {
  stream: number;
  mode: 'sotw' | 'delta';
  typeUrl: string;
  nonce: string;
  version: string;
  names: string[];
  removed: string[];
  bytes: number;
  /** Date.now() when the response was written to the stream. */
  at: number;
}

/** A resource as JSON with "@type", an XdsResource, or an already-encoded Any (for undecodable bytes). */
export type ServedResource =
  JsonObject | XdsResource | { name: string; any: { type_url: string; value: Uint8Array } };

interface StoredResource {
  name: string;
  version: string;
  any: { type_url: string; value: Uint8Array };
}

interface WatchedType {
  nonceSent: string;
  nonceAcked: string;
  nonceNacked: string;
  lastError: string;
  /** SotW: requested names; Delta: explicit subscriptions. */
  names: Set<string>;
  wildcard: boolean;
  /** Delta: what the client holds, name → version. */
  sent: Map<string, string>;
}

export interface StreamInfo {
  id: number;
  mode: 'sotw' | 'delta';
  metadata: Record<string, string>;
  node?: JsonObject;
  open: boolean;
  types: Map<string, WatchedType>;
}

interface LiveStream extends StreamInfo {
  call: grpc.ServerDuplexStream<Buffer, Buffer>;
}

export interface ControlPlaneOptions {
  tls?: { certChain: Buffer; privateKey: Buffer };
  /** Refuse streams without `authorization: Bearer <token>`. */
  requireToken?: string;
  /** Listen on this port of 127.0.0.1 (a restarted istiod); 0, the default, picks a free one. */
  port?: number;
}

interface Waiter {
  pred: (r: RecordedRequest) => boolean;
  from: number;
  resolve: (r: RecordedRequest) => void;
}

function nameOf(typeUrl: string, json: JsonObject): string {
  // As the client names what it decodes (an unnamed bootstrap listener goes by its address).
  const v = resourceType(typeUrl)?.nameOf(json) ?? json['name'];
  if (typeof v !== 'string' || !v)
    throw new Error(`resource of ${typeUrl} without a name: ${JSON.stringify(json).slice(0, 200)}`);
  return v;
}

export class TestControlPlane {
  readonly address: string;
  readonly requests: RecordedRequest[] = [];
  readonly responses: RecordedResponse[] = [];
  private readonly server: grpc.Server;
  private readonly opts: ControlPlaneOptions;
  private readonly resources = new Map<string, Map<string, StoredResource>>();
  private readonly versions = new Map<string, string>();
  private readonly streams: LiveStream[] = [];
  private waiters: Waiter[] = [];
  private nonceCounter = 0;
  private versionCounter = 0;
  /** When false, requests are recorded but never answered (a control plane that hangs). */
  respond = true;
  /** Types whose requests are recorded but not answered until release(). */
  private readonly held = new Set<string>();
  private refusals: { count: number; code: grpc.status; details: string } = {
    count: 0,
    code: grpc.status.OK,
    details: '',
  };

  private constructor(server: grpc.Server, address: string, opts: ControlPlaneOptions) {
    this.server = server;
    this.address = address;
    this.opts = opts;
  }

  static async start(opts: ControlPlaneOptions = {}): Promise<TestControlPlane> {
    const server = new grpc.Server({
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
    });
    const creds = opts.tls
      ? grpc.ServerCredentials.createSsl(
          null,
          [{ cert_chain: opts.tls.certChain, private_key: opts.tls.privateKey }],
          false,
        )
      : grpc.ServerCredentials.createInsecure();
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${opts.port ?? 0}`, creds, (err, p) => (err ? reject(err) : resolve(p))),
    );
    const cp = new TestControlPlane(server, `127.0.0.1:${port}`, opts);
    const identity = (b: Buffer): Buffer => b;
    const method = (path: string): grpc.MethodDefinition<Buffer, Buffer> => ({
      path,
      requestStream: true,
      responseStream: true,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    });
    server.addService(
      { StreamAggregatedResources: method(SOTW_METHOD), DeltaAggregatedResources: method(DELTA_METHOD) },
      {
        StreamAggregatedResources: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => cp.accept(call, 'sotw'),
        DeltaAggregatedResources: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => cp.accept(call, 'delta'),
      },
    );
    return cp;
  }

  async stop(): Promise<void> {
    for (const s of this.streams) if (s.open) s.call.end();
    await new Promise<void>((resolve) => {
      this.server.tryShutdown(() => resolve());
      setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000).unref();
    });
  }

  /** Replaces every resource of a type and pushes the change to subscribed streams (unless push: false). */
  setResources(
    typeUrl: string,
    resources: ServedResource[],
    opts: { version?: string; push?: boolean } = {},
  ): void {
    const m = new Map<string, StoredResource>();
    for (const r of resources) {
      const s = this.store(typeUrl, r);
      m.set(s.name, s);
    }
    this.resources.set(typeUrl, m);
    this.versions.set(typeUrl, opts.version ?? `v${++this.versionCounter}`);
    if (opts.push ?? true) this.push(typeUrl);
  }

  /** The version a served resource goes by (what the client reports having accepted). */
  versionOf(typeUrl: string, name: string): string | undefined {
    return this.resources.get(typeUrl)?.get(name)?.version;
  }

  /** Adds or replaces some resources of a type, keeping the others (istiod's incremental EDS). */
  updateResources(
    typeUrl: string,
    resources: ServedResource[],
    opts: { version?: string; push?: boolean } = {},
  ): void {
    const m = this.resources.get(typeUrl) ?? new Map<string, StoredResource>();
    const names: string[] = [];
    for (const r of resources) {
      const s = this.store(typeUrl, r);
      m.set(s.name, s);
      names.push(s.name);
    }
    this.resources.set(typeUrl, m);
    this.versions.set(typeUrl, opts.version ?? `v${++this.versionCounter}`);
    if (opts.push ?? true) this.push(typeUrl, { names });
  }

  private store(typeUrl: string, r: ServedResource): StoredResource {
    let any: { type_url: string; value: Uint8Array };
    let name: string;
    let version: string | undefined;
    if ('any' in r && typeof r['name'] === 'string') {
      // Raw bytes are served as given, whatever their type URL: tests send wrong and broken ones.
      any = r.any as { type_url: string; value: Uint8Array };
      name = r['name'];
      return { name, version: createHash('sha256').update(any.value).digest('hex').slice(0, 12), any };
    } else if ('resource' in r && 'typeUrl' in r) {
      const x = r as XdsResource;
      any = anyFromJson(x.resource) as { type_url: string; value: Uint8Array };
      name = x.name;
      version = x.version || undefined;
    } else {
      const json = r as JsonObject;
      any = anyFromJson(json) as { type_url: string; value: Uint8Array };
      name = nameOf(typeUrl, json);
    }
    if (any.type_url !== typeUrl) throw new Error(`resource ${name} is a ${any.type_url}, not a ${typeUrl}`);
    version ??= createHash('sha256').update(any.value).digest('hex').slice(0, 12);
    return { name, version, any };
  }

  /** Sends the type's current resources to every subscribed stream; `names` limits a SotW push (partial EDS). */
  /** Starts answering after `respond = false`: every watched type gets its answer, empty ones too. */
  resume(): void {
    this.respond = true;
    for (const s of this.streams) {
      if (!s.open) continue;
      for (const [typeUrl, w] of s.types) {
        if (s.mode === 'sotw') this.sendSotw(s, typeUrl, w);
        else this.sendDelta(s, typeUrl, w, true);
      }
    }
  }

  /** Stops answering one type (its requests are still recorded). */
  hold(typeUrl: string): void {
    this.held.add(typeUrl);
  }

  /** Answers a held type on every stream that asked for it, an empty answer too. */
  release(typeUrl: string): void {
    this.held.delete(typeUrl);
    for (const s of this.streams) {
      const w = s.types.get(typeUrl);
      if (!s.open || !w) continue;
      if (s.mode === 'sotw') this.sendSotw(s, typeUrl, w);
      else this.sendDelta(s, typeUrl, w, true);
    }
  }

  push(typeUrl: string, opts: { names?: string[] } = {}): void {
    for (const s of this.streams) {
      const w = s.types.get(typeUrl);
      if (!s.open || !w) continue;
      if (s.mode === 'sotw') this.sendSotw(s, typeUrl, w, opts.names);
      else this.sendDelta(s, typeUrl, w, false);
    }
  }

  /** Ends every open stream with the given status (UNAVAILABLE by default), as istiod does on shutdown. */
  disconnectAll(
    code: grpc.status = grpc.status.UNAVAILABLE,
    details = 'test control plane closed the stream',
  ): void {
    for (const s of this.streams) {
      if (!s.open) continue;
      s.open = false;
      s.call.emit('error', { code, details });
    }
  }

  /** Ends the next streams at once with this status, as istiod does before its caches are ready. */
  refuseNextStreams(
    count: number,
    code: grpc.status = grpc.status.UNAVAILABLE,
    details = 'server is not ready to serve discovery information',
  ): void {
    this.refusals = { count, code, details };
  }

  streamInfos(): StreamInfo[] {
    return this.streams.map(({ call: _call, ...info }) => info);
  }

  /** The latest stream (the proxy as istiod currently sees it). */
  lastStream(): StreamInfo | undefined {
    const s = this.streams[this.streams.length - 1];
    if (!s) return undefined;
    const { call: _call, ...info } = s;
    return info;
  }

  /**
   * istioctl proxy-status per type for a stream, by istiod's rules: nothing sent → NOT SENT; the last
   * response NACKed → ERROR; the last response ACKed → SYNCED; otherwise STALE.
   */
  proxyStatus(streamId?: number): Record<string, { status: ProxyTypeStatus; error?: string }> {
    const s =
      streamId === undefined
        ? this.streams[this.streams.length - 1]
        : this.streams.find((x) => x.id === streamId);
    const out: Record<string, { status: ProxyTypeStatus; error?: string }> = {};
    if (!s) return out;
    for (const [typeUrl, w] of s.types) {
      const short = typeUrl.slice(typeUrl.lastIndexOf('.') + 1);
      if (!w.nonceSent) out[short] = { status: 'NOT SENT' };
      else if (w.nonceNacked === w.nonceSent) out[short] = { status: 'ERROR', error: w.lastError };
      else if (w.nonceAcked === w.nonceSent) out[short] = { status: 'SYNCED' };
      else out[short] = { status: 'STALE' };
    }
    return out;
  }

  /** Resolves with the first request (recorded after `from`, default: any) matching the predicate. */
  waitFor(
    pred: (r: RecordedRequest) => boolean,
    opts: { from?: number; timeoutMs?: number } = {},
  ): Promise<RecordedRequest> {
    const from = opts.from ?? 0;
    const found = this.requests.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { pred, from, resolve };
      this.waiters.push(waiter);
      // A guard against a hung test, not a timing assertion.
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(
          new Error(
            `timed out waiting for a request; last requests: ${JSON.stringify(this.requests.slice(-5))}`,
          ),
        );
      }, opts.timeoutMs ?? 20_000);
      waiter.resolve = (r) => {
        clearTimeout(t);
        resolve(r);
      };
    });
  }

  waitForAck(
    typeUrl: string,
    opts: { from?: number; nonce?: string; timeoutMs?: number } = {},
  ): Promise<RecordedRequest> {
    return this.waitFor(
      (r) =>
        r.typeUrl === typeUrl && r.kind === 'ack' && (!opts.nonce || r.json['response_nonce'] === opts.nonce),
      opts,
    );
  }

  waitForNack(typeUrl: string, opts: { from?: number; timeoutMs?: number } = {}): Promise<RecordedRequest> {
    return this.waitFor((r) => r.typeUrl === typeUrl && r.kind === 'nack', opts);
  }

  /** The nonce of the last response sent for a type on the latest stream. */
  lastNonce(typeUrl: string): string {
    return this.streams[this.streams.length - 1]?.types.get(typeUrl)?.nonceSent ?? '';
  }

  // ------------------------------------------------------------------ streams

  private accept(call: grpc.ServerDuplexStream<Buffer, Buffer>, mode: 'sotw' | 'delta'): void {
    const metadata: Record<string, string> = {};
    for (const [k, v] of Object.entries(call.metadata.getMap()))
      metadata[k] = Buffer.isBuffer(v) ? v.toString('base64') : v;
    if (
      this.opts.requireToken !== undefined &&
      metadata['authorization'] !== `Bearer ${this.opts.requireToken}`
    ) {
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: 'authentication failure' });
      return;
    }
    if (this.refusals.count > 0) {
      this.refusals.count--;
      call.emit('error', { code: this.refusals.code, details: this.refusals.details });
      return;
    }
    const s: LiveStream = { id: this.streams.length + 1, mode, metadata, open: true, types: new Map(), call };
    this.streams.push(s);
    call.on('data', (b: Buffer) => {
      try {
        if (mode === 'sotw') this.onSotwRequest(s, b);
        else this.onDeltaRequest(s, b);
      } catch (err) {
        s.open = false;
        call.emit('error', {
          code: grpc.status.INTERNAL,
          details: `test control plane: ${(err as Error).message}`,
        });
      }
    });
    call.on('end', () => {
      if (s.open) {
        s.open = false;
        call.end();
      }
    });
    call.on('error', () => {
      s.open = false;
    });
    call.on('cancelled', () => {
      s.open = false;
    });
  }

  private record(s: LiveStream, typeUrl: string, kind: RequestKind, json: JsonObject): void {
    const r: RecordedRequest = { stream: s.id, mode: s.mode, typeUrl, kind, json, at: Date.now() };
    this.requests.push(r);
    const index = this.requests.length - 1;
    for (const w of [...this.waiters]) {
      if (index >= w.from && w.pred(r)) {
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(r);
      }
    }
  }

  private watched(s: LiveStream, typeUrl: string): WatchedType | undefined {
    return s.types.get(typeUrl);
  }

  private onSotwRequest(s: LiveStream, bytes: Buffer): void {
    const json = decodeToJson('envoy.service.discovery.v3.DiscoveryRequest', bytes) as JsonObject;
    if (json['node'] && !s.node) s.node = json['node'] as JsonObject;
    const typeUrl = typeof json['type_url'] === 'string' ? json['type_url'] : '';
    const nonce = typeof json['response_nonce'] === 'string' ? json['response_nonce'] : '';
    const names = new Set(((json['resource_names'] as JsonValue[] | undefined) ?? []).map(String));
    let w = this.watched(s, typeUrl);
    if (json['error_detail']) {
      this.record(s, typeUrl, w && nonce === w.nonceSent ? 'nack' : 'stale', json);
      if (w && nonce === w.nonceSent) {
        w.nonceNacked = nonce;
        const detail = json['error_detail'] as JsonObject;
        w.lastError = typeof detail['message'] === 'string' ? detail['message'] : '';
      }
      return;
    }
    if (!w || nonce === '') {
      this.record(s, typeUrl, 'initial', json);
      w ??= {
        nonceSent: '',
        nonceAcked: '',
        nonceNacked: '',
        lastError: '',
        names,
        wildcard: isWildcardType(typeUrl),
        sent: new Map(),
      };
      w.names = names;
      s.types.set(typeUrl, w);
      this.sendSotw(s, typeUrl, w);
      return;
    }
    if (nonce !== w.nonceSent) {
      this.record(s, typeUrl, 'stale', json);
      return;
    }
    w.nonceAcked = nonce;
    const changed = names.size !== w.names.size || [...names].some((n) => !w.names.has(n));
    this.record(s, typeUrl, changed ? 'subscription' : 'ack', json);
    if (changed) {
      w.names = names;
      this.sendSotw(s, typeUrl, w);
    }
  }

  private sendSotw(s: LiveStream, typeUrl: string, w: WatchedType, only?: string[]): void {
    if (!this.respond) return;
    const all = this.resources.get(typeUrl) ?? new Map<string, StoredResource>();
    let chosen = [...all.values()];
    if (!w.wildcard) chosen = chosen.filter((r) => w.names.has(r.name));
    if (only) chosen = chosen.filter((r) => only.includes(r.name));
    if (!w.wildcard && only && chosen.length === 0) return;
    const nonce = String(++this.nonceCounter);
    const version = this.versions.get(typeUrl) ?? '';
    const msg = { version_info: version, resources: chosen.map((r) => r.any), type_url: typeUrl, nonce };
    const bytes = requireType('envoy.service.discovery.v3.DiscoveryResponse').encode(msg).finish();
    w.nonceSent = nonce;
    this.responses.push({
      stream: s.id,
      mode: 'sotw',
      typeUrl,
      nonce,
      version,
      names: chosen.map((r) => r.name),
      removed: [],
      bytes: bytes.length,
      at: Date.now(),
    });
    s.call.write(Buffer.from(bytes));
  }

  private onDeltaRequest(s: LiveStream, bytes: Buffer): void {
    const json = decodeToJson('envoy.service.discovery.v3.DeltaDiscoveryRequest', bytes) as JsonObject;
    if (json['node'] && !s.node) s.node = json['node'] as JsonObject;
    const typeUrl = typeof json['type_url'] === 'string' ? json['type_url'] : '';
    const nonce = typeof json['response_nonce'] === 'string' ? json['response_nonce'] : '';
    const subscribe = ((json['resource_names_subscribe'] as JsonValue[] | undefined) ?? []).map(String);
    const unsubscribe = ((json['resource_names_unsubscribe'] as JsonValue[] | undefined) ?? []).map(String);
    let w = this.watched(s, typeUrl);
    if (json['error_detail']) {
      this.record(s, typeUrl, w && nonce === w.nonceSent ? 'nack' : 'stale', json);
      if (w && nonce === w.nonceSent) {
        w.nonceNacked = nonce;
        const detail = json['error_detail'] as JsonObject;
        w.lastError = typeof detail['message'] === 'string' ? detail['message'] : '';
      }
      return;
    }
    if (w && nonce !== '') {
      if (nonce !== w.nonceSent) {
        this.record(s, typeUrl, 'stale', json);
        return;
      }
      w.nonceAcked = nonce;
      if (subscribe.length === 0 && unsubscribe.length === 0) {
        this.record(s, typeUrl, 'ack', json);
        return;
      }
    }
    const first = !w;
    this.record(s, typeUrl, first ? 'initial' : 'subscription', json);
    if (!w) {
      const wildcard = subscribe.length === 0 || subscribe.includes('*');
      w = {
        nonceSent: '',
        nonceAcked: '',
        nonceNacked: '',
        lastError: '',
        names: new Set(),
        wildcard,
        sent: new Map(),
      };
      s.types.set(typeUrl, w);
      const initial = (json['initial_resource_versions'] as Record<string, string> | undefined) ?? {};
      for (const [n, v] of Object.entries(initial)) w.sent.set(n, v);
    }
    for (const n of subscribe) if (n !== '*') w.names.add(n);
    for (const n of unsubscribe) {
      w.names.delete(n);
      w.sent.delete(n);
    }
    this.sendDelta(s, typeUrl, w, true);
  }

  private sendDelta(s: LiveStream, typeUrl: string, w: WatchedType, always: boolean): void {
    if (!this.respond || this.held.has(typeUrl)) return;
    const all = this.resources.get(typeUrl) ?? new Map<string, StoredResource>();
    const wanted = (n: string): boolean => w.wildcard || w.names.has(n);
    const changed = [...all.values()].filter((r) => wanted(r.name) && w.sent.get(r.name) !== r.version);
    const removed: string[] = [];
    for (const n of [...w.sent.keys()]) if (!all.has(n)) removed.push(n);
    // Explicitly subscribed names that do not exist are reported removed once, as istiod does.
    if (always) for (const n of w.names) if (!all.has(n) && !removed.includes(n)) removed.push(n);
    if (!always && changed.length === 0 && removed.length === 0) return;
    const nonce = String(++this.nonceCounter);
    const version = this.versions.get(typeUrl) ?? '';
    const msg = {
      system_version_info: version,
      resources: changed.map((r) => ({ name: r.name, version: r.version, resource: r.any })),
      type_url: typeUrl,
      removed_resources: removed.sort(),
      nonce,
    };
    const bytes = requireType('envoy.service.discovery.v3.DeltaDiscoveryResponse').encode(msg).finish();
    for (const r of changed) w.sent.set(r.name, r.version);
    for (const n of removed) w.sent.delete(n);
    w.nonceSent = nonce;
    this.responses.push({
      stream: s.id,
      mode: 'delta',
      typeUrl,
      nonce,
      version,
      names: changed.map((r) => r.name),
      removed,
      bytes: bytes.length,
      at: Date.now(),
    });
    s.call.write(Buffer.from(bytes));
  }
}
