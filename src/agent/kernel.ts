// The agent's kernel side: the routing dataplane (and acceleration when asked), loaded with maps
// pinned under --bpffs and attached to every --cgroup. Only dataplane/ and accel/ write maps.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BpfLink, enableStats, type BpfProgram } from '../../native/index.js';
import { registerAccelMetrics } from '../accel/metrics.js';
import { ACCEL_CGROUP_PROGRAMS, Accelerator, watchAccelRules } from '../accel/accel.js';
import type { CgroupAttachment } from '../../native/objects.js';
import type { AgentConfig } from '../config/config.js';
import { Dataplane } from '../dataplane/dataplane.js';
import { TELEMETRY_CGROUP_PROGRAMS, Telemetry } from '../telemetry/telemetry.js';
import type { ConnectionTracer } from '../telemetry/traces.js';
import type { Registry } from 'prom-client';
import { DEFAULT_CAPACITY, type Capacity } from '../dataplane/maps.js';
import type { DesiredState } from '../dataplane/model.js';
import type { KernelStats } from '../dataplane/reader.js';
import type { JsonObject } from '../xds/types.js';
import { findPodNetns } from '../k8s/netns.js';
import { PodAuthorization, type PodAuthorizationState } from './authorization.js';
import type { Attachment, AuthorizationApplied, Kernel, WorkloadApiSnapshot } from './stage-interfaces.js';

/** --map-size names: the dataplane's capacity knobs (each sizes one or more maps). */
export const CAPACITY_NAMES = Object.keys(DEFAULT_CAPACITY) as (keyof Capacity)[];

export function capacityFrom(mapSizes: Record<string, number>): Partial<Capacity> {
  const out: Partial<Capacity> = {};
  for (const [k, v] of Object.entries(mapSizes)) {
    if (!(CAPACITY_NAMES as string[]).includes(k))
      throw new Error(`--map-size ${k}: not a capacity name (${CAPACITY_NAMES.join(', ')})`);
    out[k as keyof Capacity] = v;
  }
  return out;
}

export interface KernelOptions {
  /** Keep BPF run-time statistics on (per-program kernel time in /debug/bpf and metrics). */
  stats?: boolean;
  /** Registry the Istio TCP metrics go to (the agent's, so one scrape has everything). */
  registry?: Registry;
  /** One JSON line per closed connection. */
  accessLog?: Logger;
  /** The agent's cluster id, for the `*_cluster` labels of workloads on this node. */
  clusterId?: string;
  /** Spans of routed connections (--trace-endpoint). */
  tracer?: ConnectionTracer;
}

/**
 * The network namespaces of the processes in these cgroups that are their own (not the agent's or
 * the host's), found through their processes now: where the connection closer walks besides the
 * agent's namespace.
 */
function ownNamespaces(cgroups: Iterable<string>): string[] {
  const out: string[] = [];
  for (const cgroup of cgroups) {
    const ns = findPodNetns(cgroup);
    if (ns.state === 'found') out.push(ns.path);
  }
  return out;
}

/** Routing hooks that act only on sockets connect4/6 routed: they outlive a pod's unenrollment. */
const STAY_UNTIL_POD_GOES = ['km_sockops', 'km_getpeername4', 'km_getpeername6'];

export class AgentKernel implements Kernel {
  readonly pinDir: string;
  private readonly attached: Attachment[] = [];
  private accelRulesWatch?: { close(): void };
  private readonly statsHandle?: { close(): void };
  private lastRefused: { kind: string; name: string; reason: string }[] = [];
  /** Set on Kubernetes, where pods come and go: readiness waits for the first list instead. */
  notReady?: () => string[] | undefined;
  /** Called after each apply (a running capture re-resolves its --service endpoints). */
  readonly onApplied: (() => void)[] = [];
  /** L4 authorization of enrolled pods (--authorization). */
  authorization?: PodAuthorization;

  private constructor(
    config: AgentConfig,
    readonly dataplane: Dataplane,
    private readonly pinned: DesiredState,
    readonly accel: Accelerator | undefined,
    readonly telemetry: Telemetry,
    private readonly log: Logger,
    opts: KernelOptions,
    /** Pod cgroups with programs attached (cgroup id → path), until the pod is forgotten. */
    private readonly podCgroups: Map<number, string>,
  ) {
    this.pinDir = config.bpffs;
    if (opts.stats !== false) {
      try {
        this.statsHandle = enableStats();
      } catch (e) {
        log.warn({ err: e }, 'BPF run-time statistics unavailable; per-program kernel time will read 0');
      }
    }
  }

  /** Loads and attaches everything; a failure part way leaves what was attached pinned, as SIGTERM does. */
  static open(config: AgentConfig, log: Logger, opts: KernelOptions = {}): AgentKernel {
    const podCgroups = new Map<number, string>();
    const dataplane = Dataplane.open({
      pinDir: config.bpffs,
      capacity: capacityFrom(config.mapSizes),
      log: log.child({ stage: 'dataplane' }),
      ...(config.drainRemovedAfterMs !== undefined ? { drainAfterMs: config.drainRemovedAfterMs } : {}),
      // --cgroup's processes may have namespaces of their own too
      podNetns: () => ownNamespaces([...config.cgroups, ...podCgroups.values()]),
    });
    let pinned: DesiredState;
    try {
      // before the first apply, the writer's mirror is exactly what the previous agent left pinned
      pinned = dataplane.live();
    } catch (e) {
      void dataplane.close();
      throw new Error(`read the routing state pinned in ${config.bpffs}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    if (pinned.services.length > 0)
      log.info(
        { services: pinned.services.length, frontends: pinned.frontends.length },
        'routing state found pinned: a service refused by the first config keeps these entries',
      );
    let accel: Accelerator | undefined;
    let telemetry: Telemetry;
    try {
      if (config.accelerate)
        accel = Accelerator.open({ pinDir: config.bpffs, log: log.child({ stage: 'accel' }) });
      // Telemetry shares the pin directory: it reads routing's km_sock_route and km_svc_names.
      telemetry = Telemetry.open({
        pinDir: config.bpffs,
        log: log.child({ stage: 'telemetry' }),
        ...(opts.registry ? { registry: opts.registry } : {}),
        ...(opts.accessLog ? { accessLog: opts.accessLog } : {}),
        ...(opts.clusterId ? { clusterId: opts.clusterId } : {}),
        ...(opts.tracer ? { tracer: opts.tracer } : {}),
      });
    } catch (e) {
      accel?.close();
      void dataplane.close();
      throw e;
    }
    const kernel = new AgentKernel(config, dataplane, pinned, accel, telemetry, log, opts, podCgroups);
    if (config.authorization) {
      try {
        kernel.authorization = new PodAuthorization({
          pinDir: config.bpffs,
          nodeName: config.identity.nodeName,
          log: log.child({ stage: 'authz' }),
          ...(opts.accessLog ? { accessLog: opts.accessLog } : {}),
          ...(opts.registry ? { registry: opts.registry } : {}),
        });
      } catch (e) {
        void kernel.close();
        throw e;
      }
    }
    try {
      for (const cg of config.cgroups) {
        kernel.attached.push(...dataplane.attach(cg));
        if (accel) kernel.record(accel.attach(cg, config.bpffs), ACCEL_CGROUP_PROGRAMS);
        kernel.record(telemetry.attach(cg, config.bpffs), TELEMETRY_CGROUP_PROGRAMS);
      }
      telemetry.setEnabled(true);
      telemetry.start();
      if (accel) {
        if (opts.registry) registerAccelMetrics(opts.registry, () => accel.counters());
        accel.setEnabled(true);
        if (config.accelRules) kernel.accelRulesWatch = watchAccelRules(config.accelRules, accel, log);
        else accel.setRules([], 'none (every local connection)');
      }
    } catch (e) {
      // Attached programs stay (pinned links) like after SIGTERM; kernmesh cleanup removes them.
      void kernel.close();
      throw e;
    }
    return kernel;
  }

  /** Kubernetes: every program on a pod's cgroup, through pinned links (a previous run's are updated). */
  enrollCgroup(cgroup: string): void {
    this.podCgroups.set(statSync(cgroup).ino, cgroup);
    this.dataplane.attachCgroupHooks(cgroup);
    for (const a of [this.accel?.attach(cgroup, this.pinDir), this.telemetry.attach(cgroup, this.pinDir)])
      a?.links.forEach((l) => l.close());
  }

  /** Kubernetes, --authorization: the pod's network namespace gets the inbound check (undefined: off). */
  enforceAuthorization(cgroupId: number, cgroup: string): PodAuthorizationState | undefined {
    return this.authorization?.enforce(cgroupId, cgroup);
  }

  releaseAuthorization(cgroupId: number): void {
    this.authorization?.release(cgroupId);
  }

  pruneAuthorization(): void {
    this.authorization?.prune();
  }

  applyAuthorization(snapshot: WorkloadApiSnapshot): AuthorizationApplied | undefined {
    return this.authorization?.apply(snapshot);
  }

  authorizationView(): JsonObject | undefined {
    return this.authorization?.view();
  }

  /**
   * Kubernetes: detaches what routes and reports new connections. The per-socket routing hooks stay
   * until the pod goes (forgetCgroup): connections routed before keep their VIP and active counts.
   */
  unenrollCgroup(cgroupId: number): void {
    this.unpinLinks(cgroupId, (program) => !STAY_UNTIL_POD_GOES.includes(program));
  }

  /** Detaches and unpins every link of a cgroup (the pod is gone, or was never ours to serve). */
  forgetCgroup(cgroupId: number): void {
    this.podCgroups.delete(cgroupId);
    this.unpinLinks(cgroupId, () => true);
  }

  /** Cgroup ids (inodes) with links pinned here, and the programs pinned for each. */
  pinnedCgroups(): Map<number, string[]> {
    const out = new Map<number, string[]>();
    for (const f of readdirSync(this.pinDir)) {
      const m = /^link_(\d+)_(.+)$/.exec(f);
      if (m) out.set(Number(m[1]), [...(out.get(Number(m[1])) ?? []), m[2]!]);
    }
    return out;
  }

  private unpinLinks(cgroupId: number, which: (program: string) => boolean): void {
    for (const program of this.pinnedCgroups().get(cgroupId) ?? []) {
      if (!which(program)) continue;
      const link = BpfLink.openPinned(join(this.pinDir, `link_${cgroupId}_${program}`));
      try {
        link.detach();
      } catch (e) {
        this.log.debug({ err: e, cgroupId, program }, 'link already detached (cgroup gone)');
      }
      link.unpin();
      link.close();
    }
  }

  recovered(): DesiredState {
    return this.pinned;
  }

  private record(a: CgroupAttachment, programs: readonly string[]): void {
    a.links.forEach((l, i) => {
      const program = programs[i] ?? 'unknown';
      this.attached.push({
        program,
        attachType: this.programByName(program)?.attachType ?? 'cgroup',
        cgroup: a.cgroup,
        via: a.via[i] ?? (l.legacy ? 'prog_attach' : 'bpf_link'),
        ...(l.pinned ? { pinned: l.pinned } : {}),
      });
      // The link is pinned: closing our fd keeps the program attached.
      l.close();
    });
  }

  private programByName(name: string): BpfProgram | undefined {
    return this.programs().find((p) => p.name === name);
  }

  attachments(): Attachment[] {
    return [...this.attached];
  }

  async apply(state: DesiredState): Promise<void> {
    const result = await this.dataplane.apply(state);
    this.lastRefused = result.refused;
    for (const f of this.onApplied) f();
  }

  private programs(): BpfProgram[] {
    return [
      ...this.dataplane.programs(),
      ...(this.accel?.object.programs() ?? []),
      ...this.telemetry.object.programs(),
      ...(this.authorization?.kernel.object.programs() ?? []),
    ];
  }

  readonly gauges = {
    maps: () => {
      try {
        return this.dataplane
          .mapUsage()
          .map((m) => ({ name: m.name, entries: m.entries ?? 0, capacity: m.maxEntries }));
      } catch {
        return [];
      }
    },
    fallbacks: () => {
      const sum: Record<string, number> = {};
      for (const s of this.dataplane.counters())
        for (const [reason, n] of Object.entries(s.counters)) sum[reason] = (sum[reason] ?? 0) + Number(n);
      return sum;
    },
    programs: () => this.programs().map((p) => ({ name: p.name, ...p.stats() })),
    closedConnections: () => this.dataplane.drainedConnections(),
  };

  /** Connection counts for /clusters and the cluster metrics, by the writer's ids: no map scan. */
  kernelStats(): KernelStats {
    return this.dataplane.kernelStats();
  }

  debugMaps(): unknown {
    return {
      ...this.dataplane.readActual(),
      refused_by_dataplane: this.lastRefused,
      accel: this.accel?.counters(),
    };
  }

  debugBpf(): unknown {
    return {
      programs: this.programs().map((p) => ({ name: p.name, type: p.type, id: p.id, ...p.stats() })),
      stats_enabled: this.statsHandle !== undefined,
    };
  }

  async close(): Promise<void> {
    this.authorization?.close();
    this.telemetry.close();
    this.accelRulesWatch?.close();
    this.accel?.close();
    await this.dataplane.close();
    this.statsHandle?.close();
  }
}
