// The accepted config of every subscribed type, whatever feeds it: ADS responses from istiod
// (connection.ts) or the resources of a file (file-source.ts). Per-resource acceptance, warming,
// subscriptions that follow each other (CDS → EDS, LDS → RDS), the initial fetch, CSDS statuses
// and the refusals all live here once, so every source gets the same acceptance path.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Clock } from './backoff.js';
import { countEndpointsInJson, overLimit, type ResourceLimits } from './limits.js';
import { declaredRuleViolations } from './proto-rules.js';
import { resourceType, type ResourceType } from './resource-types/index.js';
import {
  DeltaTypeState,
  SotwTypeState,
  type DeltaRequest,
  type DeltaResponse,
  type ResponseOutcome,
  type SotwRequest,
  type SotwResponse,
  type TypeState,
  type TypeStatus,
  type Validator,
} from './state.js';
import { TYPE, type Rejection, type ServiceWaypoint, type XdsResource } from './types.js';
import { serviceWaypoints } from './waypoints.js';
import type { SavedType, XdsStateStore } from './persist.js';

export type XdsProtocol = 'delta' | 'sotw';

export const DEFAULT_INITIAL_FETCH_TIMEOUT_MS = 15_000;

/** What changed in one type, as handed on: warming resources are left out until they are warm. */
export interface XdsUpdate {
  typeUrl: string;
  /** Resources new or changed since the last update of this type. */
  upserted: XdsResource[];
  /** Names gone since the last update of this type. */
  removed: string[];
  /** Every resource of the type handed on now (for CDS: the warm clusters), in name order. */
  resources: readonly XdsResource[];
}

export interface XdsRejectionEvent {
  typeUrl: string;
  rejections: Rejection[];
}

export interface ConfigStateEvents {
  update: [XdsUpdate];
  waypoints: [ServiceWaypoint[]];
  rejected: [XdsRejectionEvent];
  /** The initial fetch is complete (or timed out): emitted once, after the update events it covers. */
  initialized: [{ timedOut: boolean; missing: string[] }];
}

/** Whoever carries requests to the config's origin: changes a non-wildcard type's names. */
export interface Subscriber {
  /** Returns whether accepted content was dropped by the change. */
  subscribe(typeUrl: string, names: string[]): boolean;
}

export interface ConfigStateOptions {
  types: readonly ResourceType[];
  /** SotW or Delta for the Envoy types; Delta-only types (the workload API) always use Delta. */
  protocol: XdsProtocol;
  validate?: Validator;
  /** What one resource may hold; a file's resources are counted here, ADS ones before decoding too. */
  limits?: ResourceLimits;
  /** How long a resource waits for what it depends on (Envoy's initial_fetch_timeout). */
  initialFetchTimeoutMs?: number;
  clock: Clock;
  now: () => Date;
  logger: Logger;
  /** Where accepted resources are kept across restarts (persist.ts); none: not kept. */
  store?: XdsStateStore;
}

export class ConfigState extends EventEmitter<ConfigStateEvents> {
  readonly states = new Map<string, TypeState>();
  private readonly opts: ConfigStateOptions;
  private readonly types: readonly ResourceType[];
  private subscriber: Subscriber | undefined;
  /** What was last handed on per type, by name: the base of the next update's difference. */
  private readonly handedOn = new Map<string, Map<string, XdsResource>>();
  private readonly visibleCache = new Map<string, readonly XdsResource[]>();
  private readonly acceptedCache = new Map<string, readonly XdsResource[]>();
  /** Per dependency type, the names whose initial fetch timer runs. */
  private readonly fetchTimers = new Map<string, Map<string, unknown>>();
  /**
   * Per dependency type, the names the wait ended for without content: the initial fetch timed out,
   * or a complete source (a file) does not have them. What waits on them is used without them.
   */
  private readonly gaveUp = new Map<string, Set<string>>();
  private initialDone = false;
  private initialTimer: unknown;

  /** Envoy's declared API rules first (proto-rules.ts), then the source's own check on what keeps them. */
  private readonly validate: Validator = (typeUrl, candidates, held) => {
    const declared: Rejection[] = [];
    const fine: XdsResource[] = [];
    for (const c of candidates) {
      const over = overLimit(
        typeUrl,
        typeUrl === TYPE.endpoint ? countEndpointsInJson(c.resource) : undefined,
        this.opts.limits,
      );
      if (over) {
        declared.push({ typeUrl, name: c.name, reason: over });
        continue;
      }
      const v = declaredRuleViolations(typeUrl, c.resource);
      if (v.length === 0) fine.push(c);
      else for (const reason of v) declared.push({ typeUrl, name: c.name, reason });
    }
    const own = this.opts.validate && fine.length > 0 ? this.opts.validate(typeUrl, fine, held) : [];
    return [...declared, ...own];
  };

  constructor(opts: ConfigStateOptions) {
    super();
    this.opts = opts;
    this.types = opts.types;
    for (const t of opts.types) {
      const delta = t.deltaOnly || opts.protocol === 'delta';
      this.states.set(
        t.typeUrl,
        delta ? new DeltaTypeState(t.typeUrl, opts.now) : new SotwTypeState(t.typeUrl, opts.now),
      );
      this.handedOn.set(t.typeUrl, new Map());
    }
  }

  /** Connects whoever sends subscription changes (the ADS connection, or the file source). */
  setSubscriber(s: Subscriber): void {
    this.subscriber = s;
  }

  /** Starts the initial fetch timeout; at its end the config received so far is complete. */
  start(): void {
    if (this.initialDone || this.initialTimer !== undefined) return;
    this.initialTimer = this.opts.clock.setTimeout(() => {
      this.initialTimer = undefined;
      this.finishInitialFetch(true);
    }, this.timeoutMs());
  }

  stop(): void {
    if (this.initialTimer !== undefined) this.opts.clock.clearTimeout(this.initialTimer);
    this.initialTimer = undefined;
    for (const timers of this.fetchTimers.values())
      for (const t of timers.values()) this.opts.clock.clearTimeout(t);
    this.fetchTimers.clear();
  }

  // ---- responses, from whichever source ----

  /** Applies a SotW response of a type; returns the ACK or NACK to send (settle() after sending it). */
  handleSotw(typeUrl: string, resp: SotwResponse): ResponseOutcome<SotwRequest> | undefined {
    const state = this.states.get(typeUrl);
    if (!(state instanceof SotwTypeState)) return undefined;
    return state.handleResponse(resp, this.validate, (t) => this.accepted(t));
  }

  /** Applies a Delta response of a type; returns the ACK or NACK to send (settle() after sending it). */
  handleDelta(typeUrl: string, resp: DeltaResponse): ResponseOutcome<DeltaRequest> | undefined {
    const state = this.states.get(typeUrl);
    if (!(state instanceof DeltaTypeState)) return undefined;
    return state.handleResponse(resp, this.validate, (t) => this.accepted(t));
  }

  /** Hands on what a handled response changed: follow-up subscriptions, warming, update events. */
  settle(typeUrl: string, outcome: ResponseOutcome<SotwRequest | DeltaRequest>): void {
    if (outcome.rejections.length > 0) this.emit('rejected', { typeUrl, rejections: outcome.rejections });
    this.persist(typeUrl, outcome);
    if (outcome.changed) this.changed([typeUrl]);
    this.checkInitialized();
  }

  /**
   * Takes back what a previous run accepted, before the first stream: the types hold it as accepted
   * (so Delta's first request lists it in initial_resource_versions, SotW's carries the version) and
   * count as answered; it is handed on as an update, and the initial fetch may be complete at once.
   * Returns how many resources were restored.
   */
  restore(saved: ReadonlyMap<string, SavedType>): number {
    let n = 0;
    const typeUrls: string[] = [];
    for (const [typeUrl, s] of saved) {
      const state = this.states.get(typeUrl);
      if (!state) continue;
      state.restore(s.resources, s.version);
      typeUrls.push(typeUrl);
      n += s.resources.length;
    }
    if (typeUrls.length) this.changed(typeUrls);
    this.checkInitialized();
    return n;
  }

  /** Keeps what a response changed for the next run (a failure to write is logged, never fatal). */
  private persist(typeUrl: string, outcome: ResponseOutcome<SotwRequest | DeltaRequest>): void {
    const store = this.opts.store;
    const state = this.states.get(typeUrl);
    if (!store || !state || (outcome.upserted.length === 0 && outcome.removed.length === 0)) return;
    const upserted = outcome.upserted
      .map((n) => state.resourceState(n)?.accepted)
      .filter((r): r is XdsResource => r !== undefined);
    try {
      store.save(typeUrl, upserted, outcome.removed, state.version());
    } catch (e) {
      this.opts.logger.warn(
        { err: e, dir: store.dir },
        'accepted xDS resources could not be kept for a restart',
      );
    }
  }

  // ---- views ----

  /** The resources of a type as handed on (for CDS, only warm clusters), in name order. */
  snapshot(typeUrl: string): readonly XdsResource[] {
    let cached = this.visibleCache.get(typeUrl);
    if (!cached) {
      cached = this.computeVisible(typeUrl);
      this.visibleCache.set(typeUrl, cached);
    }
    return cached;
  }

  /** Every accepted resource of a type, warming ones included (what a response is checked against). */
  accepted(typeUrl: string): readonly XdsResource[] {
    let cached = this.acceptedCache.get(typeUrl);
    if (!cached) {
      cached = this.states.get(typeUrl)?.snapshot() ?? [];
      this.acceptedCache.set(typeUrl, cached);
    }
    return cached;
  }

  /** Every resource handed on, of every type, in type order. */
  resources(): XdsResource[] {
    return this.types.flatMap((t) => this.snapshot(t.typeUrl));
  }

  /** Which services use which waypoint (empty unless the workload API is subscribed). */
  waypoints(): ServiceWaypoint[] {
    return serviceWaypoints(this.snapshot(TYPE.address));
  }

  /** The refusals of every resource NACKED now, with the content refused where it decoded. */
  rejections(): (Rejection & { failed?: XdsResource['resource']; at?: string })[] {
    const out: (Rejection & { failed?: XdsResource['resource']; at?: string })[] = [];
    for (const state of this.states.values())
      for (const r of state.resourceStates()) {
        if (r.status !== 'NACKED') continue;
        for (const x of r.rejections ?? [])
          out.push({
            ...x,
            ...(r.refused ? { failed: r.refused } : {}),
            ...(r.lastErrorTime ? { at: r.lastErrorTime } : {}),
          });
      }
    return out;
  }

  status(): TypeStatus[] {
    return [...this.states.values()].map((s) => s.status());
  }

  /** Resources held back until what they depend on arrives (EDS clusters waiting for endpoints). */
  warming(): string[] {
    const out: string[] = [];
    for (const t of this.types) if (t.dependency?.warms) out.push(...this.coldNames(t));
    return out.sort();
  }

  /**
   * Whether the initial fetch is complete, as Envoy's init manager sees it: every wildcard type
   * answered, every warming resource warm, every dependency name received. Until then a snapshot
   * is partial: programming it would drop what a restarted agent finds pinned. The initial fetch
   * timeout ends the wait regardless.
   */
  initialized(): boolean {
    return this.initialDone;
  }

  /** Whether the type has been answered at least once (an empty answer is an answer). */
  answered(typeUrl: string): boolean {
    return this.states.get(typeUrl)?.answered() ?? false;
  }

  /** What the initial fetch still waits for, in the operator's words (empty once complete). */
  initialFetchMissing(): string[] {
    const missing: string[] = [];
    for (const t of this.types)
      if (t.wildcard && !this.answered(t.typeUrl)) missing.push(`${t.plural} (${t.label})`);
    for (const t of this.types) {
      const dep = t.dependency && resourceType(t.dependency.typeUrl);
      if (!t.dependency || !dep || !this.states.has(dep.typeUrl)) continue;
      if (t.dependency.warms) {
        const cold = this.coldNames(t).length;
        if (cold > 0) missing.push(`${dep.plural} of ${cold} ${t.noun}(s) (${dep.label})`);
      } else {
        const awaited = this.states.get(dep.typeUrl)?.awaited() ?? [];
        if (awaited.length > 0) missing.push(`${dep.noun}(s) ${awaited.join(', ')} (${dep.label})`);
      }
    }
    return missing;
  }

  // ---- internals ----

  private timeoutMs(): number {
    return this.opts.initialFetchTimeoutMs ?? DEFAULT_INITIAL_FETCH_TIMEOUT_MS;
  }

  /** A type's content changed: subscriptions follow, then every type whose hand-on may differ. */
  private changed(typeUrls: string[]): void {
    const touched = new Set(typeUrls);
    for (const typeUrl of typeUrls) this.acceptedCache.delete(typeUrl);
    for (const typeUrl of typeUrls) {
      const t = resourceType(typeUrl);
      const dep = t?.dependency;
      if (!t || !dep || !this.states.has(dep.typeUrl) || !this.subscriber) continue;
      const names = new Set<string>();
      for (const r of this.accepted(typeUrl)) for (const n of dep.namesOf(r.resource, r.name)) names.add(n);
      // A name no longer wanted waits afresh if it is wanted again.
      const gaveUp = this.gaveUp.get(dep.typeUrl);
      if (gaveUp) for (const n of [...gaveUp]) if (!names.has(n)) gaveUp.delete(n);
      if (this.subscriber.subscribe(dep.typeUrl, [...names].sort())) {
        this.acceptedCache.delete(dep.typeUrl);
        touched.add(dep.typeUrl);
      }
    }
    // A type that warms on a touched type may have resources turning warm (or cold) now.
    for (const t of this.types)
      if (t.dependency?.warms && touched.has(t.dependency.typeUrl)) touched.add(t.typeUrl);
    for (const t of this.types) if (touched.has(t.typeUrl)) this.handOn(t);
  }

  private handOn(t: ResourceType): void {
    if (t.dependency?.warms) this.startFetchTimers(t);
    this.visibleCache.delete(t.typeUrl);
    const visible = this.snapshot(t.typeUrl);
    const before = this.handedOn.get(t.typeUrl) ?? new Map<string, XdsResource>();
    const now = new Map(visible.map((r) => [r.name, r]));
    const upserted = visible.filter((r) => before.get(r.name)?.resource !== r.resource);
    const removed = [...before.keys()].filter((n) => !now.has(n)).sort();
    this.handedOn.set(t.typeUrl, now);
    if (upserted.length === 0 && removed.length === 0) return;
    this.emit('update', { typeUrl: t.typeUrl, upserted, removed, resources: visible });
    if (t.typeUrl === TYPE.address) this.emit('waypoints', this.waypoints());
  }

  private computeVisible(typeUrl: string): readonly XdsResource[] {
    const t = resourceType(typeUrl);
    const all = this.accepted(typeUrl);
    if (!t?.dependency?.warms) return all;
    return all.filter((r) => this.isWarm(t, r));
  }

  /** Every name the resource depends on has arrived, or is known not to exist (timed out, removed). */
  private isWarm(t: ResourceType, r: XdsResource): boolean {
    const dep = t.dependency;
    const depState = dep && this.states.get(dep.typeUrl);
    if (!dep || !depState) return true;
    const gaveUp = this.gaveUp.get(dep.typeUrl);
    return dep
      .namesOf(r.resource, r.name)
      .every((n) => depState.resourceState(n)?.accepted !== undefined || gaveUp?.has(n) === true);
  }

  private coldNames(t: ResourceType): string[] {
    return this.accepted(t.typeUrl)
      .filter((r) => !this.isWarm(t, r))
      .map((r) => r.name);
  }

  /** Each name a cold resource waits for gets Envoy's initial fetch timeout; arrivals clear it. */
  private startFetchTimers(t: ResourceType): void {
    const dep = t.dependency!;
    const depState = this.states.get(dep.typeUrl);
    if (!depState) return;
    const timers = this.fetchTimers.get(dep.typeUrl) ?? new Map<string, unknown>();
    this.fetchTimers.set(dep.typeUrl, timers);
    const waiting = new Set<string>();
    const gaveUp = this.gaveUp.get(dep.typeUrl);
    for (const r of this.accepted(t.typeUrl))
      for (const n of dep.namesOf(r.resource, r.name))
        if (depState.resourceState(n)?.accepted === undefined && !gaveUp?.has(n)) waiting.add(n);
    for (const [name, timer] of timers) {
      if (waiting.has(name)) continue;
      this.opts.clock.clearTimeout(timer);
      timers.delete(name);
    }
    for (const name of waiting) {
      if (timers.has(name)) continue;
      timers.set(
        name,
        this.opts.clock.setTimeout(() => this.onFetchTimeout(t, name), this.timeoutMs()),
      );
    }
  }

  private onFetchTimeout(t: ResourceType, name: string): void {
    const dep = t.dependency!;
    this.fetchTimers.get(dep.typeUrl)?.delete(name);
    this.giveUp(dep.typeUrl, name);
    if (this.states.get(dep.typeUrl)?.markDoesNotExist(name)) {
      this.opts.logger.warn(
        { [dep.typeUrl.slice(dep.typeUrl.lastIndexOf('.') + 1)]: name },
        `no ${resourceType(dep.typeUrl)?.plural ?? 'resource'} within the initial fetch timeout; ${t.noun} used without them`,
      );
    }
    this.handOn(t);
    this.checkInitialized();
  }

  /**
   * A complete source (a file) has no resource of these names: they are DOES_NOT_EXIST at once, and
   * what waits on them is used without them, as at the end of the initial fetch timeout.
   */
  doNotExist(typeUrl: string, names: string[]): void {
    const state = this.states.get(typeUrl);
    if (!state) return;
    for (const n of names) {
      state.markDoesNotExist(n);
      this.giveUp(typeUrl, n);
    }
    for (const t of this.types) if (t.dependency?.warms && t.dependency.typeUrl === typeUrl) this.handOn(t);
    this.checkInitialized();
  }

  private giveUp(typeUrl: string, name: string): void {
    const set = this.gaveUp.get(typeUrl) ?? new Set<string>();
    set.add(name);
    this.gaveUp.set(typeUrl, set);
  }

  private checkInitialized(): void {
    if (!this.initialDone && this.initialFetchMissing().length === 0) this.finishInitialFetch(false);
  }

  private finishInitialFetch(timedOut: boolean): void {
    if (this.initialDone) return;
    this.initialDone = true;
    if (this.initialTimer !== undefined) this.opts.clock.clearTimeout(this.initialTimer);
    this.initialTimer = undefined;
    const missing = timedOut ? this.initialFetchMissing() : [];
    if (timedOut)
      this.opts.logger.warn({ missing }, 'initial xDS fetch timed out: using the config received so far');
    this.emit('initialized', { timedOut, missing });
  }
}
