// What the agent needs from each stage, in the agent's own terms: the config source (xds/), the
// translation (translate/) and the kernel (dataplane/, accel/, telemetry/). start.ts wires the real
// ones; the agent itself only sees plain data.
import type { Attachment } from '../dataplane/dataplane.js';
import type { DesiredState } from '../dataplane/model.js';
import type { JsonObject, Rejection, ServiceWaypoint, XdsResource } from '../xds/types.js';
import type { KernelStats } from '../admin/cluster-stats.js';
import type { KernelGauges } from './metrics.js';

/** What changed in the source's accepted config: per type, how many resources came and went. */
export interface SourceUpdate {
  changes: { typeUrl: string; upserted: number; removed: number }[];
  /** process.hrtime.bigint() when the update arrived: the start of the apply-latency measurement. */
  receivedAt: bigint;
}

/** A resource's refusal as the source holds it, with the content refused when it decoded. */
export type SourceRejection = Rejection & { failed?: JsonObject; at?: string };

/** Istio's workload API as the source holds it: what authorization is compiled from. */
export interface WorkloadApiSnapshot {
  /** Both types answered at least once: before that, nothing is known to enforce. */
  answered: boolean;
  /** istio.workload.Address resources (workloads and services). */
  addresses: readonly XdsResource[];
  /** Accepted istio.security.Authorization resources (a NACKed update keeps its last accepted one here). */
  authorizations: readonly XdsResource[];
  /** Authorization resources NACKED now, with the content refused where it decoded. */
  refused: SourceRejection[];
}

export interface ConfigSource {
  /** 'istiod' or 'file', for logs and /server_info. */
  readonly kind: 'istiod' | 'file';
  /** Where it reads from (address or path). */
  readonly target: string;
  /**
   * onUpdate: the accepted config changed (never before the initial fetch is complete);
   * onRejected: resources refused in a response, whether or not anything else changed.
   */
  start(onUpdate: (u: SourceUpdate) => void, onRejected?: (r: Rejection[]) => void): Promise<void>;
  stop(): Promise<void>;
  connected(): boolean;
  /** Why the source is not connected now and when it retries (istiod), for /ready's detail. */
  connectionProblem?(): { message: string; since?: string; retryInMs?: number } | undefined;
  /** The accepted resources now (for CDS: warm clusters), every type: the one store translate reads. */
  resources(): XdsResource[];
  /** Services with a waypoint (workload API). */
  waypoints(): ServiceWaypoint[];
  /** Last accepted version per type URL. */
  versions(): Record<string, string>;
  /** /debug/xds: per type and per resource status, versions, nonces, last NACK reason. */
  debug(): unknown;
  /** The node identity sent to istiod, for the Bootstrap section of /config_dump. */
  node(): JsonObject;
  /** The refusals of the resources NACKED now (the source's per-resource state). */
  rejections(): SourceRejection[];
  /** What readiness still waits for from the source ("clusters (CDS)"), empty once answered. */
  waitingFor(): string[];
  /** The workload API, when authorization is subscribed. */
  workloadApi?(): WorkloadApiSnapshot | undefined;
}

export interface TranslateResult {
  state: DesiredState;
  rejections: Rejection[];
  /** Per-resource remarks in the operator's words ("waiting for RDS 8080"). */
  notes?: { typeUrl: string; name: string; note: string }[];
  /** Fields accepted but not acted on by the kernel (outlier detection, idle timeouts...). */
  notEnforced?: { typeUrl: string; name: string; field: string }[];
}

/**
 * `previous`: the state last programmed, so a service refused now keeps its entries (DESIGN.md);
 * `refused`: what the source NACKed, which may hold no accepted version after a restart.
 */
export type Translate = (
  resources: XdsResource[],
  waypoints: ServiceWaypoint[],
  previous?: DesiredState,
  refused?: Rejection[],
) => TranslateResult;

export type { Attachment } from '../dataplane/dataplane.js';

/** The kernel side: programs loaded and attached, maps written only through apply(). */
export interface Kernel {
  readonly pinDir: string;
  attachments(): Attachment[];
  apply(state: DesiredState): Promise<void>;
  /**
   * What was already programmed when the kernel side opened (pinned by the agent that ran before),
   * as a DesiredState; the first translation's `previous`.
   */
  recovered?(): DesiredState;
  /** Why the kernel side is not ready, where "a program is attached" is not the test (Kubernetes). */
  notReady?(): string[] | undefined;
  gauges: KernelGauges;
  /** Connection counts per service and backend (optional: test kernels may not count). */
  kernelStats?(): KernelStats;
  debugMaps(): unknown;
  debugBpf(): unknown;
  /**
   * Compiles and programs L4 authorization from the workload API (only when it is enforced);
   * returns what the log and the admin endpoint show of the apply.
   */
  applyAuthorization?(snapshot: WorkloadApiSnapshot): AuthorizationApplied | undefined;
  /** Per workload of the node, which policies apply and how (the admin endpoint's view). */
  authorizationView?(): JsonObject | undefined;
  /** Closes our fds; pinned maps and links stay, so traffic keeps its last programming. */
  close(): Promise<void>;
}

export interface AuthorizationApplied {
  policies: number;
  workloads: number;
  /** Map entries written or deleted. */
  ops: number;
  /** When the maps were written (ms since the epoch). */
  appliedAt: number;
  /** Open connections the new state denies, closed after it was written. */
  closed: number;
  closedAt?: number;
  errors: string[];
}
