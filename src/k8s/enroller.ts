// Keeps the kernel's per-pod attachments equal to the enrollment decisions: attaches the programs to
// an enrolled pod's cgroup as soon as both the API event and the cgroup are there, detaches on
// unenrollment, and forgets pods that are gone. Nothing is detached before the first full list, so
// a restarted agent never leaves an enrolled pod's connects unrouted.
import type { V1Namespace, V1Pod } from '@kubernetes/client-node';
import type { Logger } from 'pino';

import { cgroupId, cgroupTree, findPodCgroup } from './cgroups.js';
import { decide, type Self } from './enrollment.js';
import type { Change } from './informers.js';

/** The kernel side of enrollment (AgentKernel): synchronous, idempotent. */
export interface PodKernel {
  enrollCgroup(cgroup: string): void;
  unenrollCgroup(cgroupId: number): void;
  forgetCgroup(cgroupId: number): void;
  pinnedCgroups(): Map<number, string[]>;
  /**
   * --authorization: the inbound check on the pod's network namespace. 'waiting' until the pod has
   * a process to find it through; undefined when authorization is off.
   */
  enforceAuthorization?(cgroupId: number, cgroup: string): 'attached' | 'waiting' | 'shared' | undefined;
  releaseAuthorization?(cgroupId: number): void;
  /** Removes namespace links of pods no longer enrolled (after the first list). */
  pruneAuthorization?(): void;
}

/** What the enroller needs from the informers. */
export interface PodView {
  pods(): readonly V1Pod[];
  namespace(name: string): V1Namespace | undefined;
}

interface PodState {
  uid: string;
  /** ns/name, for logs. */
  pod: string;
  /** The decision: enrolled by its labels. */
  wanted: boolean;
  /** The kernel: the pod's cgroup has our programs. */
  enrolled: boolean;
  cgroup?: string;
  cgroupId?: number;
  /** When the kubelet's cgroup for the pod was first seen (ms since the epoch). */
  cgroupFoundAt?: number;
  /** When the event that made the current decision reached the agent (ms since the epoch). */
  eventAt: number;
  reason: string;
  /** --authorization: whether the pod's namespace has the inbound check yet. */
  authz?: 'attached' | 'waiting' | 'shared';
}

export interface EnrollerOptions {
  kernel: PodKernel;
  view: PodView;
  /** The kubelet's cgroup root (holds kubepods.slice or kubepods). */
  cgroupRoot: string;
  self: Self;
  log: Logger;
  /** Cgroup ids served by --cgroup: never detached by the enroller. */
  keep?: number[];
  /** How often a pod enrolled before its cgroup exists is looked for again (default 100 ms). */
  cgroupPollMs?: number;
  /** Full re-check of every pod and pinned link (default 5 min). */
  resyncMs?: number;
}

export interface EnrollmentView {
  pod: string;
  uid: string;
  enrolled: boolean;
  reason: string;
  cgroup?: string;
}

/**
 * Looked for again with the cgroup poll: a pod with no process yet, or whose first process is still
 * in the node's namespace (a sandbox being set up), gets its own namespace moments later.
 */
function isPending(authz: PodState['authz']): boolean {
  return authz === 'waiting' || authz === 'shared';
}

export class Enroller {
  private readonly pods = new Map<string, PodState>();
  private synced = false;
  private pollTimer?: NodeJS.Timeout;
  /** cgroup inode → pod uid, for the enrolled pods' cgroup trees (podOfCgroup). */
  private readonly cgroupOwners = new Map<number, string>();
  private readonly missedAt = new Map<number, number>();
  private resyncTimer?: NodeJS.Timeout;

  constructor(private readonly opts: EnrollerOptions) {}

  /** Informer callback: decides for this pod. Before the first sync, only remembers. */
  onPod(pod: V1Pod, change: Change, at: number): void {
    if (!this.synced) return;
    if (change === 'delete') this.gone(pod.metadata?.uid ?? '', 'pod deleted');
    else this.reconcile(pod, at);
  }

  /** A namespace relabelled decides again for its pods on this node. */
  onNamespace(ns: V1Namespace, _change: Change, at: number): void {
    if (!this.synced) return;
    for (const p of this.opts.view.pods())
      if (p.metadata?.namespace === ns.metadata?.name) this.reconcile(p, at);
  }

  /**
   * After the first full list of pods and namespaces: decide for every pod, then detach links of
   * cgroups no enrolled pod owns (pods gone or unenrolled while the agent was away).
   */
  sync(at = Date.now()): void {
    this.synced = true;
    this.resync(at);
    this.resyncTimer ??= setInterval(() => this.resync(Date.now()), this.opts.resyncMs ?? 300_000).unref();
  }

  private resync(at: number): void {
    const seen = new Set<string>();
    for (const p of this.opts.view.pods()) {
      seen.add(p.metadata?.uid ?? '');
      this.reconcile(p, at, true);
    }
    for (const uid of [...this.pods.keys()]) if (!seen.has(uid)) this.gone(uid, 'pod no longer listed');
    const ours = new Set([
      ...(this.opts.keep ?? []),
      ...[...this.pods.values()].flatMap((s) => (s.cgroupId !== undefined ? [s.cgroupId] : [])),
    ]);
    for (const id of this.opts.kernel.pinnedCgroups().keys())
      if (!ours.has(id)) {
        this.opts.log.info({ cgroupId: id }, 'links of a cgroup no pod here owns removed');
        this.opts.kernel.forgetCgroup(id);
      }
    this.opts.kernel.pruneAuthorization?.();
  }

  private reconcile(pod: V1Pod, at: number, resync = false): void {
    const uid = pod.metadata?.uid;
    if (!uid) return;
    const d = decide(pod, this.opts.view.namespace(pod.metadata?.namespace ?? ''), this.opts.self);
    let s = this.pods.get(uid);
    if (!s) {
      s = {
        uid,
        pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`,
        wanted: false,
        enrolled: false,
        eventAt: at,
        reason: '',
      };
      this.pods.set(uid, s);
    }
    if (s.cgroup === undefined) {
      s.cgroup = findPodCgroup(this.opts.cgroupRoot, uid, pod.status?.qosClass);
      if (s.cgroup !== undefined) {
        s.cgroupId = cgroupId(s.cgroup);
        s.cgroupFoundAt = Date.now();
        // links a previous run pinned: the pod is enrolled in the kernel already
        s.enrolled = this.opts.kernel.pinnedCgroups().get(s.cgroupId)?.includes('km_connect4') ?? false;
      }
    }
    const changed = d.enroll !== s.wanted || d.reason !== s.reason;
    if (changed) s.eventAt = at;
    s.wanted = d.enroll;
    s.reason = d.reason;
    if (changed && s.wanted && s.cgroup === undefined)
      this.opts.log.info(
        { pod: s.pod, uid, reason: s.reason },
        'pod enrolled by its labels; waiting for its cgroup',
      );
    if (s.wanted && (!s.enrolled || resync)) this.enroll(s);
    else if (!s.wanted && s.enrolled) this.unenroll(s);
    if (s.wanted && s.enrolled && s.authz !== 'attached') this.authorize(s);
    this.pollWhilePending();
  }

  private enroll(s: PodState): void {
    if (s.cgroup === undefined) return; // waits for the kubelet to create it (pollWhilePending)
    const wasEnrolled = s.enrolled;
    try {
      this.opts.kernel.enrollCgroup(s.cgroup);
    } catch (e) {
      this.opts.log.error({ err: e, pod: s.pod, cgroup: s.cgroup }, 'pod not enrolled: attach failed');
      return;
    }
    s.enrolled = true;
    if (wasEnrolled) return;
    const enrolledAt = Date.now();
    this.opts.log.info(
      {
        pod: s.pod,
        uid: s.uid,
        cgroup: s.cgroup,
        reason: s.reason,
        event_at: new Date(s.eventAt).toISOString(),
        cgroup_found_at: new Date(s.cgroupFoundAt ?? s.eventAt).toISOString(),
        enrolled_at: new Date(enrolledAt).toISOString(),
        after_event_ms: enrolledAt - Math.max(s.eventAt, s.cgroupFoundAt ?? 0),
      },
      'pod enrolled',
    );
  }

  /** The pod's namespace gets the inbound check once the pod has a process (its sandbox) to find it by. */
  private authorize(s: PodState): void {
    if (s.cgroup === undefined || s.cgroupId === undefined || !this.opts.kernel.enforceAuthorization) return;
    const before = s.authz;
    try {
      s.authz = this.opts.kernel.enforceAuthorization(s.cgroupId, s.cgroup);
    } catch (e) {
      s.authz = 'waiting';
      this.opts.log.error({ err: e, pod: s.pod }, 'authorization not attached to the pod yet');
    }
    if (s.authz === 'attached' && before !== 'attached')
      this.opts.log.info(
        { pod: s.pod, uid: s.uid, attached_at: new Date().toISOString() },
        'pod authorization enforced',
      );
  }

  private unenroll(s: PodState): void {
    if (s.cgroupId !== undefined) this.opts.kernel.releaseAuthorization?.(s.cgroupId);
    s.authz = undefined;
    if (s.cgroupId !== undefined) this.opts.kernel.unenrollCgroup(s.cgroupId);
    s.enrolled = false;
    const at = Date.now();
    this.opts.log.info(
      {
        pod: s.pod,
        uid: s.uid,
        reason: s.reason,
        event_at: new Date(s.eventAt).toISOString(),
        unenrolled_at: new Date(at).toISOString(),
        after_event_ms: at - s.eventAt,
      },
      'pod unenrolled: new connections are not routed, open ones continue',
    );
  }

  private gone(uid: string, why: string): void {
    const s = this.pods.get(uid);
    if (!s) return;
    this.pods.delete(uid);
    if (s.cgroupId !== undefined) this.opts.kernel.releaseAuthorization?.(s.cgroupId);
    if (s.cgroupId !== undefined && this.opts.kernel.pinnedCgroups().has(s.cgroupId)) {
      this.opts.kernel.forgetCgroup(s.cgroupId);
      this.opts.log.info({ pod: s.pod, uid, why }, 'pod gone: its links removed');
    }
  }

  /** Pods enrolled before the kubelet created their cgroup are looked for until it appears. */
  private pollWhilePending(): void {
    const pending = [...this.pods.values()].some(
      (s) => s.wanted && (s.cgroup === undefined || (s.enrolled && isPending(s.authz))),
    );
    if (pending && !this.pollTimer) {
      this.pollTimer = setInterval(() => this.poll(), this.opts.cgroupPollMs ?? 100).unref();
    } else if (!pending && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = undefined;
    }
  }

  private poll(): void {
    for (const pod of this.opts.view.pods()) {
      const s = this.pods.get(pod.metadata?.uid ?? '');
      if (s?.wanted && (s.cgroup === undefined || isPending(s.authz))) this.reconcile(pod, s.eventAt);
    }
  }

  view(): EnrollmentView[] {
    return [...this.pods.values()].map((s) => ({
      pod: s.pod,
      uid: s.uid,
      enrolled: s.enrolled,
      reason: s.reason,
      ...(s.cgroup ? { cgroup: s.cgroup } : {}),
    }));
  }

  /**
   * The uid of the enrolled pod a cgroup belongs to (connection labels): the pod's own cgroup or one of
   * its containers' below it, which is where processes run. Found by inode; a miss rescans the enrolled
   * pods' cgroup trees at most every 5 s.
   */
  podOfCgroup(cgroupId: number): string | undefined {
    const hit = this.cgroupOwners.get(cgroupId);
    if (hit && this.pods.get(hit)?.enrolled) return hit;
    if (Date.now() - (this.missedAt.get(cgroupId) ?? -Infinity) < 5000) return undefined;
    this.cgroupOwners.clear();
    for (const s of this.pods.values())
      if (s.enrolled && s.cgroup !== undefined)
        for (const id of cgroupTree(s.cgroup)) this.cgroupOwners.set(id, s.uid);
    const found = this.cgroupOwners.get(cgroupId);
    if (found === undefined) this.missedAt.set(cgroupId, Date.now());
    else this.missedAt.delete(cgroupId);
    return found;
  }

  isSynced(): boolean {
    return this.synced;
  }

  stop(): void {
    clearInterval(this.pollTimer);
    clearInterval(this.resyncTimer);
  }
}
