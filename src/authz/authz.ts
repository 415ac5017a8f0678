// L4 authorization in the kernel (bpf/authz.bpf.o): loads the object with its maps pinned, attaches
// its sk_lookup program to enrolled pods' network namespaces, writes compiled policies, closes open
// connections a new policy denies (a socket iterator run inside each namespace), and turns the
// kernel's counters and events into metrics and access-log lines with policy names.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';

import { BpfLink, RingBuffer, isBpfError, type BpfObject } from '../../native/index.js';
import { bpfObjectPath, openObject } from '../../native/objects.js';
import { sumPerCpuU64, u32 } from '../../native/spec.js';
import { AuthzIds, REASON_NAMES, type AuthzModel, type AuthzNames, type ReasonName } from './compile.js';
import { AUTHZ_SPEC, decodeCounterKey, decodeEvent, encodeConfig, type AuthzEvent } from './codec.js';
import { AuthzWriter, type ApplyResult } from './writer.js';

export const AUTHZ_LOOKUP_PROGRAM = 'km_authz_lookup';
export const AUTHZ_CLOSE_PROGRAM = 'km_authz_close';

/** Pin name of a namespace's sk_lookup link: netns_<nsfs inode>_km_authz_lookup. */
export function netnsLinkName(inode: number): string {
  return `netns_${inode}_${AUTHZ_LOOKUP_PROGRAM}`;
}

export interface AuthzKernelOptions {
  pinDir: string;
  objectPath?: string;
  log?: Logger;
  /** Per map name: capacity (km_authz_terms, km_authz_dest...). */
  maxEntries?: Record<string, number>;
  accessLog?: Logger;
  /** Every decoded decision, after the access log (tests, debug views). */
  onDecision?: (d: AuthzDecision) => void;
}

/** One denied connection (or dry-run denial, or open connection closed), with names resolved. */
export interface AuthzDecision {
  reason: ReasonName;
  /** namespace/name of the policy at fault; '' for what no single policy decides. */
  policy: string;
  /** The policy's namespace, or the destination workload's when no policy is named. */
  namespace: string;
  destinationWorkload: string;
  sourceIdentity: string;
  source: string;
  destination: string;
  dryRun: boolean;
  closed: boolean;
  /** CLOCK_MONOTONIC of the kernel's decision, ns. */
  timestampNs: bigint;
}

/** A kernel counter with its labels. */
export interface AuthzCount {
  policy: string;
  namespace: string;
  reason: ReasonName;
  closed: boolean;
  value: bigint;
}

export interface AuthzApplied extends ApplyResult {
  /** When the last map write of the apply returned (ms since the epoch). */
  appliedAt: number;
  /** Open connections destroyed by the iterator runs that followed, and when they ended. */
  closed: number;
  closedAt?: number;
  /** Namespaces whose iterator failed (the error), e.g. without CAP_SYS_ADMIN. */
  closeErrors: { netns: string; error: string }[];
}

export class AuthzKernel {
  readonly ids = new AuthzIds();
  private readonly writer: AuthzWriter;
  /** Names of every id ever written: counters of removed policies keep their labels. */
  private readonly names: AuthzNames = { policies: new Map(), workloads: new Map(), identities: new Map() };
  /** nsfs inode → a path that opens the namespace now (for the iterator). */
  private readonly netns = new Map<number, string>();
  private ring?: RingBuffer;
  private iterRun = 0n;
  private lastModel?: AuthzModel;

  private constructor(
    readonly object: BpfObject,
    private readonly opts: AuthzKernelOptions,
  ) {
    this.writer = new AuthzWriter({
      index: object.map('km_authz_index'),
      dest: object.map('km_authz_dest'),
      src: object.map('km_authz_src'),
      terms: object.map('km_authz_terms'),
      ids: object.map('km_authz_ids'),
      ports: object.map('km_authz_ports'),
      cidrs: object.map('km_authz_cidrs'),
    });
    const pinned = this.writer.pinnedMaxIds();
    for (const kind of ['policy', 'workload', 'identity', 'set', 'list'] as const)
      this.ids.above(kind, pinned[kind]);
    const cfg = object.map('km_authz_config').lookup(u32(0));
    this.iterRun = cfg ? cfg.readBigUInt64LE(0) : 0n;
  }

  /** Loads bpf/authz.bpf.o, reusing maps pinned in pinDir (a restarted agent keeps enforcing). */
  static open(opts: AuthzKernelOptions): AuthzKernel {
    const path = opts.objectPath ?? bpfObjectPath('authz.bpf.o');
    let object: BpfObject;
    try {
      object = openObject(path, AUTHZ_SPEC, {
        pinDir: opts.pinDir,
        ...(opts.maxEntries ? { maxEntries: opts.maxEntries } : {}),
        ...(opts.log ? { log: opts.log } : {}),
      });
    } catch (e) {
      throw new Error(
        `load authorization object ${path}: ${(e as Error).message} (needs sk_lookup, Linux 5.9, and bpf_sock_destroy, Linux 6.5)`,
        { cause: e },
      );
    }
    try {
      return new AuthzKernel(object, opts);
    } catch (e) {
      object.close();
      throw e;
    }
  }

  /**
   * Attaches the sk_lookup program to the network namespace at netnsPath through a link pinned as
   * netns_<inode>_km_authz_lookup; a link a previous run pinned there is updated in place.
   */
  attachNetns(netnsPath: string): { inode: number; via: 'bpf_link' | 'existing bpf_link' } {
    const inode = statSync(netnsPath).ino;
    const pin = join(this.opts.pinDir, netnsLinkName(inode));
    const program = this.object.program(AUTHZ_LOOKUP_PROGRAM);
    this.netns.set(inode, netnsPath);
    if (existsSync(pin)) {
      const link = BpfLink.openPinned(pin);
      try {
        link.update(program);
        return { inode, via: 'existing bpf_link' };
      } catch (e) {
        // the namespace it was attached to is gone (an inode reused by a new one): attach afresh
        if (!isBpfError(e) || e.code !== 'ENOLINK') throw e;
        link.unpin();
      } finally {
        link.close();
      }
    }
    program.attachNetns(netnsPath, { pinPath: pin }).close();
    return { inode, via: 'bpf_link' };
  }

  /** A path that opens the namespace now (the process it was found through may have gone). */
  netnsPath(inode: number, path: string): void {
    if (this.netns.has(inode)) this.netns.set(inode, path);
  }

  /** Detaches and unpins a namespace's link (the pod unenrolled, or gone). */
  detachNetns(inode: number): void {
    this.netns.delete(inode);
    const pin = join(this.opts.pinDir, netnsLinkName(inode));
    if (!existsSync(pin)) return;
    const link = BpfLink.openPinned(pin);
    try {
      link.detach();
    } catch (e) {
      this.opts.log?.debug({ err: e, inode }, 'namespace link already detached (namespace gone)');
    }
    link.unpin();
    link.close();
  }

  /** Inodes of the namespaces with a link pinned here. */
  pinnedNetns(): number[] {
    return readdirSync(this.opts.pinDir).flatMap((f) => {
      const m = /^netns_(\d+)_km_authz_lookup$/.exec(f);
      return m ? [Number(m[1])] : [];
    });
  }

  /** Writes the model; when verdicts may have changed, judges open connections again. */
  apply(model: AuthzModel): AuthzApplied {
    for (const [k, m] of Object.entries(model.names) as [keyof AuthzNames, Map<number, unknown>][])
      for (const [id, v] of m) (this.names[k] as Map<number, unknown>).set(id, v);
    const r = this.writer.apply(model);
    this.lastModel = model;
    const appliedAt = Date.now();
    const out: AuthzApplied = { ...r, appliedAt, closed: 0, closeErrors: [] };
    if (r.overflowed.length > 0)
      this.opts.log?.error(
        { destinations: r.overflowed },
        'km_authz_terms is full: these destinations deny every connection until there is room (raise its size)',
      );
    if (r.changed) {
      const c = this.closeDenied();
      out.closed = c.closed;
      out.closedAt = Date.now();
      out.closeErrors = c.errors;
    }
    return out;
  }

  /** Runs the iterator in every attached namespace: open connections now denied are destroyed. */
  closeDenied(): { closed: number; errors: { netns: string; error: string }[] } {
    const before = this.closedTotal();
    const errors: { netns: string; error: string }[] = [];
    const program = this.object.program(AUTHZ_CLOSE_PROGRAM);
    for (const [inode, path] of this.netns) {
      this.iterRun++;
      this.object.map('km_authz_config').update(u32(0), encodeConfig(this.iterRun));
      try {
        // the namespace may be gone: then there is nothing open in it
        if (!existsSync(path) || statSync(path).ino !== inode) {
          this.netns.delete(inode);
          continue;
        }
        program.iterate({ netns: path });
      } catch (e) {
        errors.push({ netns: path, error: (e as Error).message });
      }
    }
    if (errors.length > 0)
      this.opts.log?.error(
        { errors },
        'open connections a new policy denies could not be judged again in some namespaces',
      );
    return { closed: Number(this.closedTotal() - before), errors };
  }

  private closedTotal(): bigint {
    let n = 0n;
    for (const c of this.counts()) if (c.closed) n += c.value;
    return n;
  }

  /** The kernel's counters, per policy (or destination workload) and reason. */
  counts(): AuthzCount[] {
    const out: AuthzCount[] = [];
    for (const [k, v] of this.object.map('km_authz_counters').entries()) {
      const key = decodeCounterKey(k);
      const reason = REASON_NAMES[key.reason];
      if (!reason) continue;
      out.push({ ...this.label(key.id, reason), reason, closed: key.closed, value: sumPerCpuU64(v) });
    }
    return out;
  }

  /** policy and namespace labels: the policy's, or '' and the destination workload's namespace. */
  private label(id: number, reason: ReasonName): { policy: string; namespace: string } {
    if (reason === 'no_allow_match' || reason === 'dry_run_no_allow_match' || reason === 'over_budget') {
      return { policy: '', namespace: this.names.workloads.get(id)?.namespace ?? '' };
    }
    if (reason === 'unknown_destination') return { policy: '', namespace: '' };
    const p = this.names.policies.get(id);
    return { policy: p?.name ?? `id:${id}`, namespace: p?.namespace ?? '' };
  }

  /** Starts reading the kernel's events on the event loop. */
  start(): void {
    this.ring ??= new RingBuffer(this.object.map('km_authz_events'), (record) => this.handle(record));
  }

  /** Delivers pending events now; returns how many. */
  drain(): number {
    this.start();
    return this.ring!.consume();
  }

  private handle(record: Buffer): void {
    let ev: AuthzEvent;
    try {
      ev = decodeEvent(record);
    } catch (e) {
      this.opts.log?.warn({ err: e }, 'undecodable authorization event');
      return;
    }
    const reason = REASON_NAMES[ev.reason] ?? 'deny_policy';
    const labels = this.label(ev.id, reason);
    const w = this.names.workloads.get(ev.workload);
    const policyKey = labels.policy ? `${labels.namespace}/${labels.policy}` : '';
    const d: AuthzDecision = {
      reason,
      policy: policyKey,
      namespace: labels.namespace,
      destinationWorkload: w ? `${w.namespace}/${w.name}` : '',
      sourceIdentity: this.names.identities.get(ev.identity) ?? '',
      source: `${ev.family === 6 ? `[${ev.source}]` : ev.source}:${ev.sourcePort}`,
      destination: `${ev.family === 6 ? `[${ev.destination}]` : ev.destination}:${ev.destinationPort}`,
      dryRun: reason === 'dry_run_deny' || reason === 'dry_run_no_allow_match',
      closed: ev.closed,
      timestampNs: ev.timestampNs,
    };
    this.opts.accessLog?.info(
      {
        direction: 'inbound',
        source: d.source,
        destination: d.destination,
        destination_workload: d.destinationWorkload || undefined,
        source_principal: d.sourceIdentity || undefined,
        authorization_policy: d.policy || undefined,
        authorization_reason: d.reason,
      },
      d.closed
        ? 'connection closed by authorization policy'
        : d.dryRun
          ? 'dry-run: connection would be denied'
          : 'connection denied',
    );
    this.opts.onDecision?.(d);
  }

  /** Registers kernmesh_authorization_* on the agent's registry (read from the kernel at each scrape). */
  registerMetrics(registry: Registry): void {
    const counts = (): AuthzCount[] => this.counts();
    const make = (name: string, help: string, pick: (c: AuthzCount) => boolean): void => {
      new Counter({
        name,
        help,
        labelNames: ['policy', 'namespace', 'reason'],
        registers: [registry],
        collect() {
          this.reset();
          for (const c of counts())
            if (pick(c))
              this.inc({ policy: c.policy, namespace: c.namespace, reason: c.reason }, Number(c.value));
        },
      });
    };
    make(
      'kernmesh_authorization_denied_total',
      'Inbound connections to enrolled pods refused before accept(), per policy (policy "" when none decides alone).',
      (c) => !c.closed && !c.reason.startsWith('dry_run'),
    );
    make(
      'kernmesh_authorization_dry_run_denied_total',
      'Inbound connections a dry-run policy would have denied (reported, not enforced).',
      (c) => !c.closed && c.reason.startsWith('dry_run'),
    );
    make(
      'kernmesh_authorization_closed_total',
      'Open connections closed because a new policy denies them.',
      (c) => c.closed,
    );
  }

  /** What the admin endpoint shows: per workload of the node, which policies apply and how. */
  view(): unknown {
    return {
      namespaces_enforced: [...this.netns.entries()].map(([inode, path]) => ({ inode, path })),
      workloads: this.lastModel?.workloads ?? [],
    };
  }

  close(): void {
    this.ring?.close();
    this.ring = undefined;
    this.object.close();
  }
}
