// The per-type xDS protocol state, without I/O: what is subscribed, what was accepted under which
// version, the nonce to echo, and the request each response or subscription change calls for.
// The accepted resources and versions outlive a stream; the nonce does not (streamStarted resets it).
// Each resource keeps its own refusals: this is the one store of what the source refused.
import { resourceType } from './resource-types/index.js';
import type { JsonObject, Rejection, XdsResource } from './types.js';

export type ResourceStatus = 'REQUESTED' | 'ACKED' | 'NACKED' | 'DOES_NOT_EXIST';

export interface ResourceState {
  name: string;
  status: ResourceStatus;
  /** The last accepted content, kept while a newer one is NACKED. */
  accepted?: XdsResource;
  /** The version the server last sent this resource under (accepted or not). */
  version?: string;
  lastError?: string;
  lastErrorTime?: string;
  /** The refusals of the latest version, while NACKED (as the NACK listed them). */
  rejections?: Rejection[];
  /** The content last refused, for config_dump's failed_configuration. */
  refused?: JsonObject;
}

/** One resource of a response, already decoded to proto3 JSON (or the reason it could not be). */
export interface DecodedResource {
  name: string;
  /** Delta's per-resource version; SotW resources take the response's version_info. */
  version?: string;
  resource?: JsonObject;
  error?: string;
}

/** The accepted resources of a type as the state holds them (warming ones included). */
export type HeldResources = (typeUrl: string) => readonly XdsResource[];

/**
 * Checks a response's resources (already decoded): each refusal names a resource and its path. `held`
 * gives what is accepted of other types, for the checks that only show when two types meet.
 */
export type Validator = (typeUrl: string, resources: XdsResource[], held: HeldResources) => Rejection[];

export interface ErrorDetail {
  /** google.rpc.Code; INVALID_ARGUMENT (3) for refused config. */
  code: number;
  message: string;
}

export interface SotwRequest {
  type_url: string;
  version_info: string;
  resource_names: string[];
  response_nonce: string;
  error_detail?: ErrorDetail;
}

export interface DeltaRequest {
  type_url: string;
  resource_names_subscribe: string[];
  resource_names_unsubscribe: string[];
  initial_resource_versions: Record<string, string>;
  response_nonce: string;
  error_detail?: ErrorDetail;
}

export interface SotwResponse {
  version_info: string;
  nonce: string;
  resources: DecodedResource[];
}

export interface DeltaResponse {
  system_version_info: string;
  nonce: string;
  resources: DecodedResource[];
  removed_resources: string[];
}

export interface ResponseOutcome<R> {
  /** The ACK or NACK to send. */
  request: R;
  /** Whether the accepted snapshot changed (an update event is due). */
  changed: boolean;
  rejections: Rejection[];
  /** Names whose accepted content is new or changed. */
  upserted: string[];
  /** Names whose accepted content is gone. */
  removed: string[];
}

export interface TypeStatus {
  typeUrl: string;
  /** SotW: the last accepted version_info; Delta: the last system_version_info seen. */
  version: string;
  nonce: string;
  status: ResourceStatus;
  lastError?: string;
  lastErrorTime?: string;
  lastUpdated?: string;
  resources: {
    name: string;
    status: ResourceStatus;
    version?: string;
    lastError?: string;
    lastErrorTime?: string;
    lastUpdated?: string;
  }[];
}

const INVALID_ARGUMENT = 3;

/** CDS, LDS and the workload API are wildcard subscriptions; EDS and RDS name what they want. */
export function isWildcardType(typeUrl: string): boolean {
  return resourceType(typeUrl)?.wildcard ?? false;
}

function sameContent(a: XdsResource | undefined, b: JsonObject): boolean {
  // toJson emits fields in declaration order, so equal messages serialise identically.
  return a !== undefined && JSON.stringify(a.resource) === JSON.stringify(b);
}

/** Formats rejections the way the NACK's error_detail.message lists them, one per line. */
export function formatRejections(rejections: Rejection[]): string {
  return rejections.map((r) => `${r.name}: ${r.reason}`).join('\n');
}

abstract class TypeStateBase {
  readonly typeUrl: string;
  readonly wildcard: boolean;
  protected readonly resources = new Map<string, ResourceState>();
  protected wanted = new Set<string>();
  protected nonce = '';
  protected active = false;
  protected typeError: { message: string; time: string } | undefined;
  protected lastUpdated: string | undefined;
  protected anyResponse = false;
  protected readonly now: () => Date;

  constructor(typeUrl: string, now: () => Date = () => new Date(), wildcard = isWildcardType(typeUrl)) {
    this.typeUrl = typeUrl;
    this.wildcard = wildcard;
    this.now = now;
  }

  /** The accepted resources, in name order. */
  snapshot(): XdsResource[] {
    const out: XdsResource[] = [];
    for (const name of [...this.resources.keys()].sort()) {
      const r = this.resources.get(name)?.accepted;
      if (r) out.push(r);
    }
    return out;
  }

  /** Every resource's state, in name order (the status and the refusals of each). */
  resourceStates(): ResourceState[] {
    return [...this.resources.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** The refusals of the resources that are NACKED now. */
  rejections(): Rejection[] {
    const out: Rejection[] = [];
    for (const r of this.resourceStates()) if (r.status === 'NACKED') out.push(...(r.rejections ?? []));
    return out;
  }

  /** Names explicitly subscribed (empty for wildcard types). */
  subscription(): string[] {
    return [...this.wanted].sort();
  }

  resourceState(name: string): ResourceState | undefined {
    return this.resources.get(name);
  }

  currentNonce(): string {
    return this.nonce;
  }

  /** Whether any response for the type has been handled (the initial fetch answered it). */
  answered(): boolean {
    return this.anyResponse;
  }

  /** Subscribed names still waiting for their first response (REQUESTED, nothing accepted). */
  awaited(): string[] {
    const out: string[] = [];
    for (const r of this.resources.values()) if (r.status === 'REQUESTED' && !r.accepted) out.push(r.name);
    return out.sort();
  }

  streamEnded(): void {
    this.active = false;
    this.nonce = '';
  }

  /**
   * Takes back what a previous run of the agent accepted (xds/persist.ts), before any stream: the
   * resources are held as accepted under their versions, and the type counts as answered, so the
   * first request tells the server what is held and the config is complete without a full push.
   */
  restore(resources: readonly XdsResource[], version: string | undefined): void {
    for (const r of resources) {
      this.resources.set(r.name, { name: r.name, status: 'ACKED', accepted: r, version: r.version });
      if (!this.wildcard) this.wanted.add(r.name);
    }
    this.anyResponse = true;
    this.restoredVersion(version ?? '');
  }

  protected abstract restoredVersion(version: string): void;

  /** The type's version now: SotW's last accepted version_info, Delta's last system_version_info. */
  version(): string {
    return this.typeVersion();
  }

  /** The initial fetch timed out without the resource: CSDS's DOES_NOT_EXIST; returns true if that changed. */
  markDoesNotExist(name: string): boolean {
    const r = this.resources.get(name);
    if (!r || r.status !== 'REQUESTED') return false;
    r.status = 'DOES_NOT_EXIST';
    return true;
  }

  protected abstract typeVersion(): string;

  status(): TypeStatus {
    const resources = [...this.resources.values()]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((r) => ({
        name: r.name,
        status: r.status,
        ...(r.version !== undefined ? { version: r.version } : {}),
        ...(r.lastError !== undefined ? { lastError: r.lastError, lastErrorTime: r.lastErrorTime } : {}),
        ...(r.accepted?.lastUpdated ? { lastUpdated: r.accepted.lastUpdated } : {}),
      }));
    const status: ResourceStatus = this.typeError ? 'NACKED' : this.anyResponse ? 'ACKED' : 'REQUESTED';
    return {
      typeUrl: this.typeUrl,
      version: this.typeVersion(),
      nonce: this.nonce,
      status,
      ...(this.typeError ? { lastError: this.typeError.message, lastErrorTime: this.typeError.time } : {}),
      ...(this.lastUpdated ? { lastUpdated: this.lastUpdated } : {}),
      resources,
    };
  }

  /** Applies a response's resources one by one: the valid ones are accepted, the rest rejected. */
  protected applyResources(
    decoded: DecodedResource[],
    responseVersion: string,
    validate: Validator | undefined,
    held: HeldResources,
  ): { upserted: string[]; rejections: Rejection[]; present: Set<string> } {
    const time = this.now().toISOString();
    const rejections: Rejection[] = [];
    const candidates: XdsResource[] = [];
    const present = new Set<string>();
    const decodedVersion = new Set(decoded.filter((d) => d.version !== undefined).map((d) => d.name));
    for (const d of decoded) {
      if (present.has(d.name)) {
        rejections.push({
          typeUrl: this.typeUrl,
          name: d.name,
          reason: 'duplicate resource name in one response',
        });
        continue;
      }
      present.add(d.name);
      // Bytes that do not decode are refused whether or not their name was asked for: the name may
      // be our fallback (the index), and Envoy NACKs a response it cannot decode. Never ACKed.
      if (d.error !== undefined || !d.resource) {
        rejections.push({ typeUrl: this.typeUrl, name: d.name, reason: d.error ?? 'empty resource' });
        continue;
      }
      if (!this.wildcard && !this.wanted.has(d.name)) continue; // not asked for: ignored, as Envoy does
      candidates.push({
        typeUrl: this.typeUrl,
        name: d.name,
        version: d.version ?? responseVersion,
        resource: d.resource,
        lastUpdated: time,
      });
    }
    if (validate && candidates.length > 0) {
      try {
        rejections.push(...validate(this.typeUrl, candidates, held));
      } catch (err) {
        // A validator bug must not take the stream down; refuse this response with its reason.
        const reason = `validation failed: ${(err as Error).message}`;
        for (const c of candidates) rejections.push({ typeUrl: this.typeUrl, name: c.name, reason });
      }
    }
    const rejected = new Map<string, Rejection[]>();
    // A resource whose every refusal is scoped to a part that translate skips is still applied.
    const refusedWhole = new Set<string>();
    for (const r of rejections) {
      rejected.set(r.name, [...(rejected.get(r.name) ?? []), r]);
      if (!r.partial) refusedWhole.add(r.name);
    }

    const upserted: string[] = [];
    for (const c of candidates) {
      const state = this.resources.get(c.name) ?? { name: c.name, status: 'REQUESTED' as ResourceStatus };
      this.resources.set(c.name, state);
      state.version = c.version;
      const refusals = rejected.get(c.name);
      if (refusals) {
        state.status = 'NACKED';
        state.lastError = refusals.map((r) => r.reason).join('; ');
        state.lastErrorTime = time;
        state.rejections = refusals;
        state.refused = c.resource;
        if (refusedWhole.has(c.name)) continue;
      } else {
        state.status = 'ACKED';
        delete state.lastError;
        delete state.lastErrorTime;
        delete state.rejections;
        delete state.refused;
      }
      if (sameContent(state.accepted, c.resource)) {
        // Same content resent (reconnect, unrelated push): not an update. SotW keeps the version it
        // was applied under, as Envoy's config_dump does; Delta tracks the server's per-resource version.
        if (state.accepted && decodedVersion.has(c.name))
          state.accepted = { ...state.accepted, version: c.version };
        continue;
      }
      state.accepted = c;
      upserted.push(c.name);
    }
    // Resources that failed to decode never reach validation: record them too, except under a name
    // this non-wildcard type does not subscribe to (the NACK and the type's error still list them).
    const candidateNames = new Set(candidates.map((c) => c.name));
    for (const [name, refusals] of rejected) {
      if (candidateNames.has(name)) continue;
      if (!this.wildcard && !this.wanted.has(name)) continue;
      const state = this.resources.get(name) ?? { name, status: 'NACKED' as ResourceStatus };
      state.status = 'NACKED';
      state.lastError = refusals.map((r) => r.reason).join('; ');
      state.lastErrorTime = time;
      state.rejections = refusals;
      this.resources.set(name, state);
    }
    this.anyResponse = true;
    if (rejections.length > 0) this.typeError = { message: formatRejections(rejections), time };
    else this.typeError = undefined;
    if (upserted.length > 0) this.lastUpdated = time;
    return { upserted, rejections, present };
  }

  /** Sets the explicit subscription; returns the names added and removed. */
  protected updateWanted(names: string[]): { added: string[]; removed: string[] } {
    const next = new Set(names);
    const added = [...next].filter((n) => !this.wanted.has(n)).sort();
    const removed = [...this.wanted].filter((n) => !next.has(n)).sort();
    for (const n of removed) this.resources.delete(n);
    for (const n of added)
      if (!this.resources.has(n)) this.resources.set(n, { name: n, status: 'REQUESTED' });
    this.wanted = next;
    return { added, removed };
  }

  /** Whether removing names dropped accepted content (an update is due). */
  protected droppedAccepted(removed: string[], before: Map<string, boolean>): boolean {
    return removed.some((n) => before.get(n));
  }
}

/** State-of-the-World: every response carries the full set (CDS/LDS) or the resources it updates (EDS/RDS). */
export class SotwTypeState extends TypeStateBase {
  private acceptedVersion = '';

  protected typeVersion(): string {
    return this.acceptedVersion;
  }

  /** SotW's equivalent of Delta's initial versions: the first request carries this version_info. */
  protected restoredVersion(version: string): void {
    this.acceptedVersion = version;
  }

  /** The first request of a new stream: the last accepted version and the current names, no nonce. */
  streamStarted(): SotwRequest {
    this.active = true;
    this.nonce = '';
    return this.request();
  }

  /**
   * Changes the EDS/RDS names. Returns the request to send now (latest nonce, last accepted version),
   * or undefined when nothing changed or no stream is up (the next initial request carries them),
   * plus whether accepted resources were dropped.
   */
  setSubscription(names: string[]): { request?: SotwRequest; changed: boolean } {
    if (this.wildcard) throw new Error(`${this.typeUrl} is a wildcard subscription`);
    const hadContent = new Map([...this.resources].map(([n, r]) => [n, r.accepted !== undefined]));
    const { added, removed } = this.updateWanted(names);
    if (added.length === 0 && removed.length === 0) return { changed: false };
    const changed = this.droppedAccepted(removed, hadContent);
    return this.active ? { request: this.request(), changed } : { changed };
  }

  handleResponse(
    resp: SotwResponse,
    validate?: Validator,
    held: HeldResources = () => [],
  ): ResponseOutcome<SotwRequest> {
    this.nonce = resp.nonce;
    const { upserted, rejections, present } = this.applyResources(
      resp.resources,
      resp.version_info,
      validate,
      held,
    );
    const removed: string[] = [];
    if (this.wildcard) {
      // SotW CDS/LDS: a resource missing from the response no longer exists.
      for (const name of [...this.resources.keys()]) {
        if (present.has(name)) continue;
        if (this.resources.get(name)?.accepted) removed.push(name);
        this.resources.delete(name);
      }
      if (removed.length > 0) this.lastUpdated = this.now().toISOString();
    }
    const changed = upserted.length > 0 || removed.length > 0;
    if (rejections.length === 0) {
      this.acceptedVersion = resp.version_info;
      return { request: this.request(), changed, rejections, upserted, removed };
    }
    return {
      request: {
        ...this.request(),
        error_detail: { code: INVALID_ARGUMENT, message: formatRejections(rejections) },
      },
      changed,
      rejections,
      upserted,
      removed,
    };
  }

  private request(): SotwRequest {
    return {
      type_url: this.typeUrl,
      version_info: this.acceptedVersion,
      resource_names: this.wildcard ? [] : this.subscription(),
      response_nonce: this.nonce,
    };
  }
}

/** Delta (incremental) xDS: responses carry only changes; subscriptions change by difference. */
export class DeltaTypeState extends TypeStateBase {
  private systemVersion = '';

  protected typeVersion(): string {
    return this.systemVersion;
  }

  protected restoredVersion(version: string): void {
    this.systemVersion = version;
  }

  /** The first request of a new stream: the names wanted and the versions we already hold. */
  streamStarted(): DeltaRequest {
    this.active = true;
    this.nonce = '';
    const initial: Record<string, string> = {};
    for (const r of this.resources.values()) if (r.accepted) initial[r.name] = r.accepted.version;
    return {
      type_url: this.typeUrl,
      resource_names_subscribe: this.wildcard ? [] : this.subscription(),
      resource_names_unsubscribe: [],
      initial_resource_versions: initial,
      response_nonce: '',
    };
  }

  /** Subscription changes go in their own request, never in an ACK. */
  setSubscription(names: string[]): { request?: DeltaRequest; changed: boolean } {
    if (this.wildcard) throw new Error(`${this.typeUrl} is a wildcard subscription`);
    const hadContent = new Map([...this.resources].map(([n, r]) => [n, r.accepted !== undefined]));
    const { added, removed } = this.updateWanted(names);
    if (added.length === 0 && removed.length === 0) return { changed: false };
    const changed = this.droppedAccepted(removed, hadContent);
    if (!this.active) return { changed };
    return {
      request: {
        type_url: this.typeUrl,
        resource_names_subscribe: added,
        resource_names_unsubscribe: removed,
        initial_resource_versions: {},
        response_nonce: '',
      },
      changed,
    };
  }

  handleResponse(
    resp: DeltaResponse,
    validate?: Validator,
    held: HeldResources = () => [],
  ): ResponseOutcome<DeltaRequest> {
    this.nonce = resp.nonce;
    this.systemVersion = resp.system_version_info;
    const { upserted, rejections } = this.applyResources(
      resp.resources,
      resp.system_version_info,
      validate,
      held,
    );
    const removed: string[] = [];
    for (const name of resp.removed_resources) {
      const r = this.resources.get(name);
      if (r?.accepted) removed.push(name);
      if (this.wildcard || !this.wanted.has(name)) this.resources.delete(name);
      else this.resources.set(name, { name, status: 'DOES_NOT_EXIST' });
    }
    const changed = upserted.length > 0 || removed.length > 0;
    if (removed.length > 0) this.lastUpdated = this.now().toISOString();
    const request: DeltaRequest = {
      type_url: this.typeUrl,
      resource_names_subscribe: [],
      resource_names_unsubscribe: [],
      initial_resource_versions: {},
      response_nonce: resp.nonce,
    };
    if (rejections.length > 0)
      request.error_detail = { code: INVALID_ARGUMENT, message: formatRejections(rejections) };
    return { request, changed, rejections, upserted, removed };
  }
}

export type TypeState = SotwTypeState | DeltaTypeState;
