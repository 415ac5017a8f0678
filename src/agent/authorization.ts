// L4 authorization for the agent on Kubernetes: the authorization object's program on each enrolled
// pod's network namespace (found through the pod's cgroup), and the workload API compiled and written
// into its maps at each update. Enrolled pods whose namespace cannot be attached are named in the
// agent's readiness: their inbound connections would not be judged.
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

import { AuthzKernel } from '../authz/authz.js';
import { compile } from '../authz/compile.js';
import { readWorkload, type AuthzPolicy, type AuthzWorkload, type RefusedPolicy } from '../authz/policy.js';
import { findPodNetns } from '../k8s/netns.js';
import { analysed } from '../translate/analysis.js';
import { AUTHORIZATION_ANALYSER } from '../translate/authorization.js';
import type { JsonObject } from '../xds/types.js';
import type { AuthorizationApplied, WorkloadApiSnapshot } from './stage-interfaces.js';

export type PodAuthorizationState = 'attached' | 'waiting' | 'shared';

export interface PodAuthorizationOptions {
  pinDir: string;
  nodeName: string;
  log: Logger;
  accessLog?: Logger;
  registry?: Registry;
  maxEntries?: Record<string, number>;
}

export class PodAuthorization {
  readonly kernel: AuthzKernel;
  /** Enrolled pod cgroups: the namespace found for each, or why there is none. */
  private readonly pods = new Map<
    number,
    { cgroup: string; inode?: number; state: PodAuthorizationState; why?: string }
  >();
  private last?: AuthorizationApplied & {
    at: string;
    /** The resource versions this apply was compiled from: policies, and the node's workloads. */
    versions: { policies: Record<string, string>; workloads: Record<string, string> };
  };

  constructor(private readonly opts: PodAuthorizationOptions) {
    this.kernel = AuthzKernel.open({
      pinDir: opts.pinDir,
      log: opts.log,
      ...(opts.accessLog ? { accessLog: opts.accessLog } : {}),
      ...(opts.maxEntries ? { maxEntries: opts.maxEntries } : {}),
    });
    if (opts.registry) this.kernel.registerMetrics(opts.registry);
    this.kernel.start();
  }

  /** Attaches the program to the pod's namespace; 'waiting' until the pod has a process. */
  enforce(cgroupId: number, cgroup: string): PodAuthorizationState {
    const ns = findPodNetns(cgroup);
    if (ns.state === 'waiting') {
      this.pods.set(cgroupId, { cgroup, state: 'waiting' });
      return 'waiting';
    }
    if (ns.state === 'shared') {
      const before = this.pods.get(cgroupId)?.state;
      this.pods.set(cgroupId, { cgroup, state: 'shared', why: ns.why });
      if (before !== 'shared')
        this.opts.log.error(
          { cgroup, netns: ns.path },
          `authorization cannot be enforced for this pod: its network namespace is not its own (${ns.why})`,
        );
      return 'shared';
    }
    const r = this.kernel.attachNetns(ns.path);
    this.pods.set(cgroupId, { cgroup, inode: r.inode, state: 'attached' });
    this.opts.log.info(
      { cgroup, netns: ns.path, inode: r.inode, via: r.via },
      'authorization attached to the pod',
    );
    return 'attached';
  }

  /** The pod is no longer enrolled (or gone): its namespace's program goes, unless another pod shares it. */
  release(cgroupId: number): void {
    const p = this.pods.get(cgroupId);
    this.pods.delete(cgroupId);
    if (p?.inode === undefined) return;
    if ([...this.pods.values()].some((o) => o.inode === p.inode)) return;
    this.kernel.detachNetns(p.inode);
  }

  /** Namespace links pinned by a previous run for pods that are no longer enrolled. */
  prune(): void {
    const live = new Set([...this.pods.values()].flatMap((p) => (p.inode !== undefined ? [p.inode] : [])));
    for (const inode of this.kernel.pinnedNetns())
      if (!live.has(inode)) {
        this.opts.log.info({ inode }, 'authorization link of a namespace no enrolled pod owns removed');
        this.kernel.detachNetns(inode);
      }
  }

  notReady(): string[] {
    return [...this.pods.values()]
      .filter((p) => p.state === 'shared')
      .map((p) => `authorization not enforced for the pod of cgroup ${p.cgroup}: ${p.why}`);
  }

  apply(s: WorkloadApiSnapshot): AuthorizationApplied {
    const workloads: AuthzWorkload[] = [];
    for (const r of s.addresses) {
      const w = readWorkload(r.resource);
      if (w) workloads.push(w);
    }
    const refused: RefusedPolicy[] = s.refused.map((r) => refusedPolicy(r.name, r.failed, r.reason));
    const refusedKeys = new Set(refused.map((r) => r.key));
    const policies: AuthzPolicy[] = [];
    for (const r of s.authorizations) {
      // a NACKed update: the last accepted version is not enforced in its place (it may be more open)
      if (refusedKeys.has(r.name)) continue;
      const reading = analysed(AUTHORIZATION_ANALYSER, r.name, r.resource).parsed;
      if (reading.errors) refused.push(reading.refused);
      else policies.push(reading.policy);
    }
    // the iterator judges open connections inside each namespace: a restarted pod has a new process
    for (const p of this.pods.values())
      if (p.inode !== undefined) {
        const ns = findPodNetns(p.cgroup);
        if (ns.state === 'found' && ns.inode === p.inode) this.kernel.netnsPath(p.inode, ns.path);
      }
    const model = compile({ policies, refused, workloads, node: this.opts.nodeName }, this.kernel.ids);
    const r = this.kernel.apply(model);
    const out: AuthorizationApplied = {
      policies: policies.length + refused.length,
      workloads: model.workloads.length,
      ops: r.ops,
      appliedAt: r.appliedAt,
      closed: r.closed,
      ...(r.closedAt !== undefined ? { closedAt: r.closedAt } : {}),
      errors: [
        ...r.closeErrors.map((e) => `close open connections in ${e.netns}: ${e.error}`),
        ...r.overflowed.map((a) => `${a}: km_authz_terms full, every connection denied`),
      ],
    };
    const local = new Set(model.workloads.map((w) => w.uid));
    this.last = {
      ...out,
      at: new Date(r.appliedAt).toISOString(),
      versions: {
        policies: Object.fromEntries(s.authorizations.map((x) => [x.name, x.version])),
        workloads: Object.fromEntries(
          s.addresses.filter((x) => local.has(x.name)).map((x) => [x.name, x.version]),
        ),
      },
    };
    return out;
  }

  view(): JsonObject {
    return {
      pods: [...this.pods.entries()].map(([cgroupId, p]) => ({
        cgroup_id: cgroupId,
        cgroup: p.cgroup,
        state: p.state,
        ...(p.inode !== undefined ? { netns_inode: p.inode } : {}),
        ...(p.why ? { why: p.why } : {}),
      })),
      ...(JSON.parse(JSON.stringify(this.kernel.view())) as JsonObject),
      last_apply: this.last ? (JSON.parse(JSON.stringify(this.last)) as JsonObject) : null,
    };
  }

  close(): void {
    this.kernel.close();
  }
}

/** What a NACKed resource still tells: its scope and action when they were understood. */
function refusedPolicy(name: string, failed: JsonObject | undefined, reason: string): RefusedPolicy {
  const slash = name.indexOf('/');
  const base = { key: name, namespace: name.slice(0, slash), name: name.slice(slash + 1), dryRun: false };
  if (!failed) return { ...base, errors: [reason] };
  const reading = analysed(AUTHORIZATION_ANALYSER, name, failed).parsed;
  if (reading.errors) return reading.refused;
  const { scope, action, dryRun } = reading.policy;
  return { ...base, scope, action, dryRun, errors: [reason] };
}
