// The running agent: updates from the config source are translated and programmed into the kernel
// one at a time (p-queue), the admin endpoint reads the result. Stopping closes file descriptors
// only: pinned maps and links stay, so traffic keeps its last programming while the agent is away.
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { AdminSource, Readiness } from '../admin/server.js';
import type { KernelStats } from '../admin/cluster-stats.js';
import type { ConfigDumpInput } from '../admin/config-dump.js';
import type { DesiredState } from '../dataplane/model.js';
import { RESOURCE_TYPES } from '../xds/resource-types/index.js';
import { rejectionKey, resourceKey, type JsonObject, type Rejection } from '../xds/types.js';
import { AgentMetrics, typeLabel } from './metrics.js';
import type { ConfigSource, Kernel, SourceRejection, SourceUpdate, Translate } from './stage-interfaces.js';

export const VERSION = '0.1.0';

export interface AgentDeps {
  source: ConfigSource;
  translate: Translate;
  kernel: Kernel;
  log: Logger;
  metrics?: AgentMetrics;
  /** Extra lines for /server_info's command_line_options. */
  commandLine?: JsonObject;
}

interface ApplyRecord {
  at: string;
  seconds: number;
  services: number;
  frontends: number;
  rejected: number;
  error?: string;
}

export class Agent implements AdminSource {
  readonly metrics: AgentMetrics;
  /** The one queue: an update waits here while the previous one is translated and programmed. */
  private readonly queue = new PQueue({ concurrency: 1 });
  private readonly startedAt = new Date();
  private translateRejections: (Rejection & { at: string })[] = [];
  /**
   * The last programmed state, translate's `previous`. It starts as what is pinned in the kernel,
   * so after a restart a service refused by the first config keeps its entries instead of being
   * deleted (the pinned entries re-plan to themselves: no map write for it). Chosen over a list of
   * services for the writer to leave alone: translate already keeps refused entries from `previous`.
   */
  private state: DesiredState;
  private applied = 0;
  private authzApplied = 0;
  private lastApply?: ApplyRecord;
  private lastError?: string;
  private pending?: SourceUpdate;
  /** The refusals already counted in the metrics (by rejectionKey), so each is counted once. */
  private counted = new Set<string>();
  private notes: { typeUrl: string; name: string; note: string }[] = [];
  private notEnforced: { typeUrl: string; name: string; field: string }[] = [];
  private stopped = false;

  constructor(private readonly deps: AgentDeps) {
    this.metrics = deps.metrics ?? new AgentMetrics();
    this.state = deps.kernel.recovered?.() ?? { services: [], frontends: [] };
    this.metrics.setKernel(deps.kernel.gauges);
    this.metrics.connected = () => deps.source.connected();
  }

  async start(): Promise<void> {
    const { source, log } = this.deps;
    await source.start(
      (u) => this.onUpdate(u),
      (r) => this.countRejections(r),
    );
    log.info({ source: source.kind, target: source.target }, 'config source started');
  }

  /**
   * Updates arriving while one is being applied are merged: the next apply reads the source's
   * config as it is then, so only the newest is programmed.
   */
  private onUpdate(u: SourceUpdate): void {
    if (this.stopped) return;
    for (const c of u.changes) this.metrics.pushes.inc({ type: typeLabel(c.typeUrl) });
    this.metrics.xdsConnected.set(this.deps.source.connected() ? 1 : 0);
    if (this.pending) {
      this.pending = {
        changes: [...this.pending.changes, ...u.changes],
        receivedAt: this.pending.receivedAt,
      };
      return;
    }
    this.pending = u;
    void this.queue.add(() => this.applyPending());
  }

  private async applyPending(): Promise<void> {
    const u = this.pending;
    this.pending = undefined;
    if (!u || this.stopped) return;
    const { translate, kernel, log, source } = this.deps;
    const at = new Date().toISOString();
    let result;
    try {
      // What the kernel holds now: a service refused in this update keeps its entries from it.
      result = translate(source.resources(), source.waypoints(), this.state, source.rejections());
    } catch (e) {
      this.fail(`translate: ${(e as Error).message}`, e, at);
      return;
    }
    this.translateRejections = result.rejections.map((r) => ({ ...r, at }));
    this.notes = result.notes ?? [];
    this.notEnforced = result.notEnforced ?? [];
    // Count each refusal once, whether the source (NACK) or translation refused it.
    this.countRejections(this.rejections(), true);
    try {
      await kernel.apply(result.state);
    } catch (e) {
      this.fail(`program kernel: ${(e as Error).message}`, e, at);
      return;
    }
    this.state = result.state;
    this.applied++;
    const seconds = Number(process.hrtime.bigint() - u.receivedAt) / 1e9;
    this.metrics.applyDuration.observe(seconds);
    this.metrics.services.set(result.state.services.length);
    this.metrics.frontends.set(result.state.frontends.length);
    this.lastApply = {
      at,
      seconds,
      services: result.state.services.length,
      frontends: result.state.frontends.length,
      rejected: result.rejections.length,
    };
    this.lastError = undefined;
    log.info(
      {
        services: result.state.services.length,
        frontends: result.state.frontends.length,
        rejected: result.rejections.length,
        ms: Math.round(seconds * 1000 * 100) / 100,
      },
      this.applied === 1 ? 'first config applied' : 'config applied',
    );
    this.applyAuthorization(u);
  }

  /**
   * L4 authorization from the workload API, once both of its types have answered: until then the
   * enrolled pods' namespaces deny (nothing known) or keep what a previous agent left pinned.
   */
  private applyAuthorization(u: SourceUpdate): void {
    const { kernel, log, source } = this.deps;
    const snapshot = kernel.applyAuthorization ? source.workloadApi?.() : undefined;
    if (!snapshot?.answered) return;
    try {
      const r = kernel.applyAuthorization!(snapshot);
      if (!r) return;
      this.authzApplied++;
      const fields = {
        policies: r.policies,
        workloads: r.workloads,
        ops: r.ops,
        closed: r.closed,
        received_at: new Date(
          Date.now() - Number(process.hrtime.bigint() - u.receivedAt) / 1e6,
        ).toISOString(),
        applied_at: new Date(r.appliedAt).toISOString(),
        ...(r.closedAt !== undefined ? { closed_at: new Date(r.closedAt).toISOString() } : {}),
      };
      for (const e of r.errors) log.error({ error: e }, 'authorization not fully applied');
      log.info(fields, this.authzApplied === 1 ? 'first authorization applied' : 'authorization applied');
    } catch (e) {
      this.lastError = `authorization: ${(e as Error).message}`;
      this.metrics.applyErrors.inc();
      log.error({ err: e }, 'authorization not applied: enrolled pods keep the previous state');
    }
  }

  private fail(message: string, cause: unknown, at: string): void {
    this.lastError = message;
    this.metrics.applyErrors.inc();
    this.lastApply = { at, seconds: 0, services: 0, frontends: 0, rejected: 0, error: message };
    // The source still holds what it accepted; the kernel keeps the previous state.
    this.deps.log.error({ err: cause }, `config not applied, kernel keeps the previous state: ${message}`);
  }

  /** Counts and logs refusals not seen before; with `current`, forgets the ones no longer refused. */
  private countRejections(rejections: Rejection[], current = false): void {
    const now = new Set<string>();
    for (const r of rejections) {
      const key = rejectionKey(r);
      now.add(key);
      if (this.counted.has(key)) continue;
      this.metrics.rejections.inc({ type: typeLabel(r.typeUrl) });
      this.deps.log.warn(
        { type: typeLabel(r.typeUrl), resource: r.name, reason: r.reason },
        'resource refused',
      );
    }
    this.counted = current ? now : new Set([...this.counted, ...now]);
  }

  /** Re-programs the current resources (an input outside xDS changed, e.g. a DNS answer). */
  reapply(): void {
    if (this.applied === 0 && !this.lastError) return;
    this.onUpdate({ changes: [], receivedAt: process.hrtime.bigint() });
  }

  /** Resolves when every update received so far has been applied (tests and the demo wait on it). */
  async settled(): Promise<void> {
    await this.queue.onIdle();
  }

  get appliedCount(): number {
    return this.applied;
  }

  /** One line for logs and the demo: which programs are attached to which cgroups, and how. */
  attachmentsSummary(): string {
    const byCgroup = new Map<string, string[]>();
    for (const a of this.deps.kernel.attachments()) {
      const list = byCgroup.get(a.cgroup) ?? [];
      list.push(`${a.program} (${a.via})`);
      byCgroup.set(a.cgroup, list);
    }
    return [...byCgroup].map(([cg, progs]) => `${progs.join(', ')} on ${cg}`).join('; ') || 'none';
  }

  /** Every resource the source holds or refused, with ACKED or NACKED and the reason. */
  resourceStatus(): { typeUrl: string; name: string; status: string; version?: string; detail?: string }[] {
    const refused = new Map<string, { typeUrl: string; name: string; reasons: string[] }>();
    for (const r of this.rejections()) {
      const k = resourceKey(r.typeUrl, r.name);
      const entry = refused.get(k) ?? { typeUrl: r.typeUrl, name: r.name, reasons: [] };
      entry.reasons.push(r.reason);
      refused.set(k, entry);
    }
    const notes = new Map<string, string[]>();
    for (const n of this.notes) {
      const k = resourceKey(n.typeUrl, n.name);
      notes.set(k, [...(notes.get(k) ?? []), n.note]);
    }
    const out = this.deps.source.resources().map((r) => {
      const k = resourceKey(r.typeUrl, r.name);
      const reasons = refused.get(k)?.reasons;
      refused.delete(k);
      return {
        typeUrl: r.typeUrl,
        name: r.name,
        version: r.version,
        status: reasons ? 'NACKED' : 'ACKED',
        ...(reasons
          ? { detail: reasons.join('; ') }
          : notes.has(k)
            ? { detail: notes.get(k)!.join('; ') }
            : {}),
      };
    });
    for (const { typeUrl, name, reasons } of refused.values())
      out.push({ typeUrl, name, version: '', status: 'NACKED', detail: reasons.join('; ') });
    // Envoy's config_dump order: clusters, endpoints, listeners, routes, then the workload API.
    const order = (t: string) => RESOURCE_TYPES.find((x) => x.typeUrl === t)?.configDump?.position ?? 9;
    return out.sort((a, b) => order(a.typeUrl) - order(b.typeUrl) || a.name.localeCompare(b.name));
  }

  desiredState(): DesiredState {
    return this.state;
  }

  rejections(): SourceRejection[] {
    // A virtual host refused in the NACK is refused again by translation (its route was applied): once.
    return [...this.deps.source.rejections(), ...this.translationOnly()];
  }

  /** Refused by translation and not by the source (what only shows when the whole config meets). */
  private translationOnly(): (Rejection & { at: string })[] {
    const bySource = new Set(this.deps.source.rejections().map(rejectionKey));
    return this.translateRejections.filter((r) => !bySource.has(rejectionKey(r)));
  }

  /** Stops the source and closes fds; pinned maps and links are left in place on purpose. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.deps.source.stop();
    await this.queue.onIdle();
    await this.deps.kernel.close();
  }

  // ---- AdminSource ----

  readiness(): Readiness {
    const reasons: string[] = [];
    const kernelNotReady = this.deps.kernel.notReady?.();
    if (kernelNotReady) reasons.push(...kernelNotReady);
    else if (this.deps.kernel.attachments().length === 0) reasons.push('no program attached');
    if (this.applied === 0) {
      if (this.lastError) reasons.push(`first config not applied: ${this.lastError}`);
      else if (this.deps.source.kind === 'istiod' && !this.deps.source.connected())
        reasons.push(`not connected to istiod at ${this.deps.source.target}`);
      else reasons.push('waiting for the first config');
    } else if (this.deps.source.kind === 'istiod') {
      // As Envoy's initial fetch: ready once both wildcard types (clusters, listeners) have answered,
      // even empty: an empty answer is an answer (a node with no services yet).
      for (const what of this.deps.source.waitingFor()) reasons.push(`waiting for ${what} from istiod`);
    }
    // Envoy stays LIVE without its control plane; the detail says so, and that the last config holds.
    const problem = this.applied > 0 ? this.deps.source.connectionProblem?.() : undefined;
    const notes = problem
      ? [
          `not connected to istiod at ${this.deps.source.target}${problem.since ? ` since ${problem.since}` : ''}: the last accepted config stays in force; ${problem.message}${problem.retryInMs !== undefined ? `; retrying in ${(problem.retryInMs / 1000).toFixed(1)} s` : ''}`,
        ]
      : [];
    return { ready: reasons.length === 0, reasons, ...(notes.length > 0 ? { notes } : {}) };
  }

  bootstrap(): JsonObject {
    return { node: this.deps.source.node() };
  }

  serverInfo(): JsonObject {
    const uptime = `${Math.floor((Date.now() - this.startedAt.getTime()) / 1000)}s`;
    return {
      version: `kernmesh/${VERSION}/Node ${process.version}`,
      state: this.readiness().ready ? 'LIVE' : 'INITIALIZING',
      uptime_current_epoch: uptime,
      uptime_all_epochs: uptime,
      hot_restart_version: 'disabled',
      command_line_options: this.deps.commandLine ?? {},
      node: this.deps.source.node(),
    };
  }

  configDump(): ConfigDumpInput {
    const resources = this.deps.source.resources();
    const failedByName = new Map(resources.map((r) => [resourceKey(r.typeUrl, r.name), r.resource]));
    const authorization = this.authorizationDump();
    return {
      bootstrap: this.bootstrap(),
      startedAt: this.startedAt.toISOString(),
      ...(authorization ? { extra: [authorization] } : {}),
      resources,
      versions: this.deps.source.versions(),
      rejections: this.rejections().map((r) => ({
        ...r,
        failed: r.failed ?? failedByName.get(resourceKey(r.typeUrl, r.name)),
      })),
    };
  }

  debugXds(): unknown {
    return {
      source: {
        kind: this.deps.source.kind,
        target: this.deps.source.target,
        connected: this.deps.source.connected(),
      },
      xds: this.deps.source.debug(),
      ...this.authorizationSection(),
      // Refused by translation (what the kernel cannot express), on top of the source's own validation:
      // a virtual host the source NACKed but applied is refused again by translation, listed once there.
      translation_rejections: this.translationOnly(),
      notes: this.notes,
      not_enforced: this.notEnforced,
      last_apply: this.lastApply ?? null,
      applied_updates: this.applied,
    };
  }

  private authorizationSection(): { authorization?: JsonObject } {
    const view = this.deps.kernel.authorizationView?.();
    return view ? { authorization: view } : {};
  }

  /**
   * The authorization policies in force (each with its state: ACKED, or NACKED with the reason and
   * denying what it applies to) and, per workload of the node, which apply and how.
   */
  private authorizationDump(): JsonObject | undefined {
    const view = this.deps.kernel.authorizationView?.();
    const snapshot = this.deps.source.workloadApi?.();
    if (!view || !snapshot) return undefined;
    const refused = new Map(snapshot.refused.map((r) => [r.name, r]));
    const policies: JsonObject[] = snapshot.authorizations.map((r) => ({
      name: r.name,
      version: r.version,
      last_updated: r.lastUpdated ?? null,
      status: refused.has(r.name) ? 'NACKED' : 'ACKED',
      ...(refused.has(r.name) ? { error: refused.get(r.name)!.reason } : {}),
      policy: r.resource,
    }));
    for (const [name, r] of refused)
      if (!snapshot.authorizations.some((a) => a.name === name))
        policies.push({ name, status: 'NACKED', error: r.reason, ...(r.failed ? { policy: r.failed } : {}) });
    return {
      '@type': 'type.googleapis.com/kernmesh.admin.AuthorizationConfigDump',
      policies,
      workloads: (view.workloads ?? []) as JsonObject[],
    };
  }

  kernelStats(): KernelStats | undefined {
    return this.deps.kernel.kernelStats?.();
  }

  debugMaps(): unknown {
    return this.deps.kernel.debugMaps();
  }

  debugBpf(): unknown {
    return {
      pin_dir: this.deps.kernel.pinDir,
      attachments: this.deps.kernel.attachments(),
      ...(this.deps.kernel.debugBpf() as object),
    };
  }

  renderMetrics(): Promise<{ contentType: string; body: string }> {
    return this.metrics.render();
  }
}
