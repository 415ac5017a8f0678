// What the agent needs from each stage, in the agent's own terms. stages.ts adapts the real
// xds/, translate/ and dataplane/ modules to these; the agent itself only sees plain data.
import type { Attachment } from '../dataplane/dataplane.js';
import type { DesiredState } from '../dataplane/model.js';
import type { JsonObject, Rejection, ServiceWaypoint, XdsResource } from '../xds/types.js';
import type { KernelStats } from '../admin/cluster-stats.js';
import type { KernelGauges } from './metrics.js';

/** A complete view of the accepted resources after an update (xds/ keeps the state; we take snapshots). */
export interface SourceUpdate {
  resources: XdsResource[];
  /** Services with a waypoint (workload API), when waypoints are on. */
  waypoints?: ServiceWaypoint[];
  /** Type URLs that changed in this update, for the push counters. */
  changedTypes: string[];
  /** process.hrtime.bigint() when the update arrived: the start of the apply-latency measurement. */
  receivedAt: bigint;
}

export interface ConfigSource {
  /** 'istiod' or 'file', for logs and /server_info. */
  readonly kind: 'istiod' | 'file';
  /** Where it reads from (address or path). */
  readonly target: string;
  /** onRejected: resources NACKed in a response that changed nothing else (no update follows). */
  start(onUpdate: (u: SourceUpdate) => void, onRejected?: (r: Rejection[]) => void): Promise<void>;
  stop(): Promise<void>;
  connected(): boolean;
  /** Last accepted version per type URL. */
  versions(): Record<string, string>;
  /** /debug/xds: per type and per resource status, versions, nonces, last NACK reason. */
  debug(): unknown;
  /** The node identity sent to istiod, for the Bootstrap section of /config_dump. */
  node(): JsonObject;
  /** Resources refused by the source itself (validation before translation), with what was refused. */
  rejections(): (Rejection & { failed?: JsonObject; at?: string })[];
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
  /** Closes our fds; pinned maps and links stay, so traffic keeps its last programming. */
  close(): Promise<void>;
}
