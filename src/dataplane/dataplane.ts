// The routing dataplane: loads bpf/route.bpf.o with its maps pinned, attaches its programs to
// cgroups through pinned bpf_links, and programs the maps from a DesiredState (writer.ts).
import { existsSync } from 'node:fs';

import PQueue from 'p-queue';
import type { Logger } from 'pino';

import { BpfLink, type BpfMap, type BpfObject, type BpfProgram } from '../../native/index.js';
import { attachPrograms, bpfObjectPath, cgroupLinkPath, openObject } from '../../native/objects.js';
import { REASON_SLOTS, ROUTE_SPEC, type DrainedSocket } from './codec.js';
import { DEFAULT_CAPACITY, mapSizes, ROUTE_MAPS, type Capacity, type RouteMaps } from './maps.js';
import type { DesiredState } from './model.js';
import { backendKey, DEFAULT_PLAN_OPTIONS, type PlanOptions } from './plan.js';
import { drainPlan, SocketCloser, stillGone, type DrainEvent, type DrainTarget } from './drain.js';
import {
  mapUsage,
  RouteMapReader,
  type ActualState,
  type KernelStats,
  type ServiceCounters,
  type ServiceOutlier,
} from './reader.js';
import { RouteWriter, type ApplyResult } from './writer.js';

export type { ActualService, ActualState, KernelStats } from './reader.js';

/** cgroup hooks in attach order; sk_msg goes to km_waypoint_sk instead. */
export const CGROUP_PROGRAMS = [
  'km_sockops',
  'km_getpeername4',
  'km_getpeername6',
  'km_connect4',
  'km_connect6',
] as const;
export const WAYPOINT_MSG_PROGRAM = 'km_waypoint_msg';

export interface DataplaneOptions {
  /** bpffs directory for maps and links (e.g. /sys/fs/bpf/kernmesh); reused when already populated. */
  pinDir: string;
  objectPath?: string;
  capacity?: Partial<Capacity>;
  plan?: Partial<PlanOptions>;
  log?: Logger;
  /**
   * Node-wide drain window: connections to an endpoint EDS removed or marked DRAINING are closed by
   * the kernel this long after, unless it is back. Undefined: they are left open.
   */
  drainAfterMs?: number;
  /**
   * The network namespaces (nsfs paths) of the served pods that have their own: connections are
   * closed in each of them as well as in the agent's (a socket iterator sees one namespace).
   * Read at each closing, so pods enrolled since are included.
   */
  podNetns?: () => string[];
}

export interface Attachment {
  program: string;
  attachType: string;
  cgroup: string;
  /**
   * 'bpf_link', 'existing bpf_link' (a previous run's pinned link, updated to run this program),
   * 'prog_attach' (fallback; 'replaced prog_attach' when it took over a previous run's) or 'sockmap'.
   */
  via: string;
  pinned?: string;
  /** The program id the hook ran before this attach (a previous run's instance), when there was one. */
  replacedProgramId?: number;
}

/** The program a sockmap runs before ours replaces it; unknown before Linux 6.0 (no BPF_PROG_QUERY there). */
function previousSockmapProgram(map: BpfMap, program: BpfProgram): number | undefined {
  try {
    return map.attachedPrograms(program.attachType).find((p) => p.id !== program.id)?.id;
  } catch {
    return undefined;
  }
}

export class Dataplane {
  private readonly queue = new PQueue({ concurrency: 1 });
  private readonly writer: RouteWriter;
  private readonly reader: RouteMapReader;
  private readonly routeMaps: RouteMaps;
  private readonly attached: Attachment[] = [];
  /** The last desired state applied: what the next apply's changes to open connections are read against. */
  private lastDesired?: DesiredState;
  private closer?: SocketCloser;
  private closerError?: string;
  private readonly drainTimers = new Set<NodeJS.Timeout>();
  private ejectionWatch?: NodeJS.Timeout;
  /** (service id, backend id, ejection time) of ejections whose connections were closed already. */
  private readonly closedEjections = new Set<string>();
  private readonly drains: DrainEvent[] = [];
  private readonly drainedTotal = new Map<DrainTarget['why'], number>();
  private closed = false;

  private constructor(
    readonly pinDir: string,
    private readonly object: BpfObject,
    planOptions: PlanOptions,
    private readonly log?: Logger,
    private readonly drainAfterMs?: number,
    private readonly podNetns: () => string[] = () => [],
  ) {
    this.routeMaps = Object.fromEntries(ROUTE_MAPS.map((n) => [n, object.map(n)])) as unknown as RouteMaps;
    this.reader = new RouteMapReader(this.routeMaps);
    this.writer = RouteWriter.recover(this.routeMaps, planOptions);
  }

  /** Loads the programs; maps already pinned in pinDir are reused, and ids recovered from them. */
  static open(opts: DataplaneOptions): Dataplane {
    const capacity = { ...DEFAULT_CAPACITY, ...opts.capacity };
    const path = opts.objectPath ?? bpfObjectPath('route.bpf.o');
    let object: BpfObject;
    try {
      object = openObject(path, ROUTE_SPEC, {
        pinDir: opts.pinDir,
        maxEntries: mapSizes(capacity, REASON_SLOTS),
        ...(opts.log ? { log: opts.log } : {}),
      });
    } catch (e) {
      const message = (e as Error).message;
      // libbpf's words when a pinned map's sizes differ from the object's
      const hint = /parameter mismatch/.test(message)
        ? ` (maps pinned with another capacity or by a kernmesh with another map layout: run ` +
          `\`kernmesh cleanup --bpffs ${opts.pinDir}\`, then start again)`
        : '';
      throw new Error(`load ${path} with maps pinned in ${opts.pinDir}: ${message}${hint}`, { cause: e });
    }
    try {
      return new Dataplane(
        opts.pinDir,
        object,
        { ...DEFAULT_PLAN_OPTIONS, ...opts.plan },
        opts.log,
        opts.drainAfterMs,
        opts.podNetns,
      );
    } catch (e) {
      object.close();
      throw new Error(`recover routing state from ${opts.pinDir}: ${(e as Error).message}`, { cause: e });
    }
  }

  map(name: string): BpfMap {
    return this.object.map(name);
  }

  /** The routing programs as loaded (for per-program kernel time and /debug/bpf). */
  programs(): BpfProgram[] {
    return this.object.programs();
  }

  /**
   * Attaches the routing programs to a cgroup v2 directory with pinned bpf_links, so traffic keeps
   * its routing while the agent is down. A link pinned by a previous run is updated in place to run
   * this process's programs (atomically: connects never go unrouted), so an upgrade runs its new code.
   */
  attach(cgroup: string): Attachment[] {
    const out = this.attachCgroupHooks(cgroup);
    // The sockhash holds one sk_msg program: attaching replaces a previous run's for sockets added
    // from now on (sockets already there keep theirs until they close).
    const sockhash = this.object.map('km_waypoint_sk');
    const msg = this.object.program(WAYPOINT_MSG_PROGRAM);
    const before = previousSockmapProgram(sockhash, msg);
    try {
      msg.attachSockmap(sockhash);
    } catch (e) {
      throw new Error(`attach ${WAYPOINT_MSG_PROGRAM} to km_waypoint_sk: ${(e as Error).message}`, {
        cause: e,
      });
    }
    out.push({
      program: WAYPOINT_MSG_PROGRAM,
      attachType: msg.attachType,
      cgroup,
      via: 'sockmap',
      ...(before !== undefined ? { replacedProgramId: before } : {}),
    });
    this.attached.push(...out);
    this.log?.info(
      { cgroup, programs: out.map((a) => `${a.program}:${a.via}`) },
      'routing programs attached',
    );
    return out;
  }

  /** attach()'s cgroup hooks alone, not recorded: pod cgroups (Kubernetes) come and go. */
  attachCgroupHooks(cgroup: string): Attachment[] {
    const a = attachPrograms(this.object, CGROUP_PROGRAMS, cgroup, this.pinDir);
    return a.links.map((link, i) => {
      const program = CGROUP_PROGRAMS[i]!;
      const replacedProgramId = a.replacedProgramIds[i];
      const out: Attachment = {
        program,
        attachType: this.object.program(program).attachType,
        cgroup,
        via: a.via[i]!,
        ...(link.pinned ? { pinned: link.pinned } : {}),
        ...(replacedProgramId !== undefined ? { replacedProgramId } : {}),
      };
      link.close();
      return out;
    });
  }

  /** Detaches the routing programs from a cgroup and removes their pinned links. */
  detach(cgroup: string): void {
    for (const name of CGROUP_PROGRAMS) {
      const p = cgroupLinkPath(this.pinDir, cgroup, name);
      if (!existsSync(p)) continue;
      const link = BpfLink.openPinned(p);
      link.detach();
      link.unpin();
      link.close();
    }
  }

  attachments(): Attachment[] {
    return [...this.attached];
  }

  /**
   * Programs the maps from the desired state; applies run one at a time in call order. Connections
   * to hosts the change took away are closed as the cluster and the drain window say (drain.ts).
   */
  apply(desired: DesiredState): Promise<ApplyResult> {
    return this.queue.add(() => {
      // ids before the apply: it frees a removed backend's
      const before = this.lastDesired ?? this.writer.live();
      const drain = drainPlan(before, desired, this.writer, this.drainAfterMs);
      const changedNs = process.hrtime.bigint();
      const result = this.writer.apply(desired);
      this.lastDesired = desired;
      if (result.refused.length) this.log?.warn({ refused: result.refused }, 'routing entries refused');
      const byMap: Record<string, number> = {};
      for (const o of result.ops) byMap[`${o.op} ${o.map}`] = (byMap[`${o.op} ${o.map}`] ?? 0) + 1;
      this.log?.debug({ ops: result.ops.length, syscalls: result.syscalls, byMap }, 'routing applied');
      if (drain.now.length) this.runDrain(drain.now, changedNs);
      if (drain.later.length && this.drainAfterMs !== undefined) this.scheduleDrain(drain.later, changedNs);
      this.watchEjections(desired);
      return result;
    });
  }

  private scheduleDrain(targets: DrainTarget[], changedNs: bigint): void {
    const timer = setTimeout(() => {
      this.drainTimers.delete(timer);
      void this.queue.add(() => {
        if (this.closed) return;
        const current = this.lastDesired ?? { services: [], frontends: [] };
        const gone = targets.filter((t) => stillGone(t, current));
        if (gone.length) this.runDrain(gone, changedNs);
      });
    }, this.drainAfterMs);
    timer.unref();
    this.drainTimers.add(timer);
  }

  /** close_connections_on_host_health_failure with outlier detection: a host the kernel ejects loses its connections. */
  private watchEjections(desired: DesiredState): void {
    const watched = desired.services.some(
      (s) => s.closeConnections?.onHostHealthFailure && s.outlierDetection,
    );
    if (!watched) {
      if (this.ejectionWatch) clearInterval(this.ejectionWatch);
      this.ejectionWatch = undefined;
      return;
    }
    if (this.ejectionWatch) return;
    this.ejectionWatch = setInterval(() => {
      void this.queue.add(() => {
        if (this.closed) return;
        const wanted = new Set(
          (this.lastDesired?.services ?? [])
            .filter((s) => s.closeConnections?.onHostHealthFailure)
            .map((s) => s.name),
        );
        const targets: DrainTarget[] = [];
        for (const o of this.outlier()) {
          if (!wanted.has(o.service)) continue;
          for (const h of o.hosts) {
            const backendId = this.writer.backendId(h.address, h.port);
            const mark = `${o.id}|${backendId}|${h.ejectedNs}`;
            if (!h.ejected || backendId === undefined || this.closedEjections.has(mark)) continue;
            this.closedEjections.add(mark);
            targets.push({
              service: o.service,
              serviceId: o.id,
              backendId,
              address: h.address,
              port: h.port,
              why: 'ejected',
            });
          }
        }
        if (targets.length) this.runDrain(targets, process.hrtime.bigint());
      });
    }, 1000);
    this.ejectionWatch.unref();
  }

  private runDrain(targets: DrainTarget[], changedNs: bigint): void {
    if (!this.closer && !this.closerError) {
      try {
        this.closer = SocketCloser.open(this.pinDir, this.log);
      } catch (e) {
        this.closerError = (e as Error).message;
        this.log?.warn({ err: e }, 'open connections to removed or unhealthy endpoints cannot be closed');
      }
    }
    if (!this.closer) return;
    let closed: DrainedSocket[] = [];
    try {
      const r = this.closer.close(targets, this.podNetns());
      closed = r.closed;
      if (r.failed.length)
        this.log?.warn(
          { failed: r.failed, targets },
          "connections could not be closed in some pods' network namespaces",
        );
    } catch (e) {
      this.log?.warn({ err: e, targets }, 'closing connections failed');
      return;
    }
    const event: DrainEvent = { targets, changedNs, ranNs: process.hrtime.bigint(), closed };
    this.drains.push(event);
    if (this.drains.length > 100) this.drains.shift();
    for (const c of closed) {
      const t =
        targets.find((x) => x.serviceId === c.serviceId && x.backendId === c.backendId) ??
        targets.find((x) => x.serviceId === c.serviceId && x.backendId === 0);
      const why = t?.why ?? 'removed';
      this.drainedTotal.set(why, (this.drainedTotal.get(why) ?? 0) + 1);
      this.log?.info(
        {
          service: t?.service,
          why,
          client: `${c.localAddress}:${c.localPort}`,
          endpoint: `${c.remoteAddress}:${c.remotePort}`,
          cookie: String(c.cookie),
        },
        'connection closed by the kernel',
      );
    }
  }

  /** Every run of the connection closer (the last 100): targets, when, and what the kernel closed. */
  drainEvents(): DrainEvent[] {
    return [...this.drains];
  }

  /** Connections the kernel closed, by why. */
  drainedConnections(): Record<string, number> {
    return Object.fromEntries(this.drainedTotal);
  }

  /** Waits for the applies queued so far (and the drains they started). */
  idle(): Promise<void> {
    return this.queue.onIdle();
  }

  /** Per service and reason, summed over CPUs. Service id 0 ("") collects what had no service. */
  counters(): ServiceCounters[] {
    return this.reader.counters(this.writer.ids().services);
  }

  /** What is programmed now as a DesiredState (after open: what the previous agent left pinned). */
  live(): DesiredState {
    return this.writer.live();
  }

  /** Active connections per service and per backend ("address|port"), as counted by sockops. */
  activeConnections(): { services: Record<string, number>; backends: Record<string, number> } {
    const ids = this.writer.ids();
    const services: Record<string, number> = {};
    for (const s of ids.services) if (s.id) services[s.name] = this.reader.serviceConnections(s.id);
    const backends: Record<string, number> = {};
    for (const b of ids.backends)
      backends[backendKey(b.address, b.port)] = this.reader.backendConnections(b.id);
    return { services, backends };
  }

  /** The counts behind /clusters and the cluster stats, by the writer's ids. */
  kernelStats(): KernelStats {
    return this.reader.kernelStats(this.writer.ids());
  }

  serviceId(name: string): number | undefined {
    return this.writer.serviceId(name);
  }

  /** Outlier detection per service, as the kernel decided it (ejections, counters, failing hosts). */
  outlier(): ServiceOutlier[] {
    return this.reader.outlier(this.writer.ids());
  }

  backendId(address: string, port: number): number | undefined {
    return this.writer.backendId(address, port);
  }

  /** Decodes what the kernel holds now (not what the writer believes it wrote): /debug/maps. */
  readActual(): ActualState {
    return this.reader.actual(this.pinDir, this.mapUsage());
  }

  /**
   * Entries and capacity per map of the object, counted in the kernel (hash maps; arrays are always
   * full): what the map gauges need, without decoding every service as readActual() does.
   */
  mapUsage(): ActualState['maps'] {
    return mapUsage(this.object.maps());
  }

  /** Waits for queued applies, then closes our fds: pinned maps and links keep the routing. */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.drainTimers) clearTimeout(t);
    this.drainTimers.clear();
    if (this.ejectionWatch) clearInterval(this.ejectionWatch);
    await this.queue.onIdle();
    this.closer?.closeObject();
    this.object.close();
  }
}
