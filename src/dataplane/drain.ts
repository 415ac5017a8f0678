// Closing the connections of enrolled pods to endpoints that are gone (issue 17). The kernel does the
// closing (bpf/drain.bpf.c: a TCP socket iterator calling bpf_sock_destroy on the routed sockets of a
// listed (service, backend)), once in the agent's network namespace and once in each served pod's
// own (a socket iterator walks the namespace it runs in); this file decides when, from what each
// apply changed:
// - an endpoint EDS removed, or marked DRAINING, loses its connections after the node's drain window
//   (--drain-removed-after; off unless set), unless it is selectable again by then;
// - a cluster's close_connections_on_host_health_failure closes a host's connections as soon as it
//   turns unhealthy (EDS, or ejected by outlier detection: checked every second);
// - common_lb_config.close_connections_on_host_set_change closes all of a cluster's connections
//   whenever a host is added or removed.
import { statSync } from 'node:fs';

import type { Logger } from 'pino';

import type { BpfObject } from '../../native/index.js';
import { bpfObjectPath, openObject } from '../../native/objects.js';
import { DRAIN_SPEC, drainCodec, drainedCodec, hostKeyCodec, type DrainedSocket } from './codec.js';
import type { DesiredState, Service } from './model.js';
import { backendKey, type BackendKey } from './plan.js';

/** What a drain closes: a backend's connections in one service, or (backendId 0) all of the service's. */
export interface DrainTarget {
  service: string;
  serviceId: number;
  /** 0: every connection of the service. */
  backendId: number;
  address?: string;
  port?: number;
  why: 'removed' | 'draining' | 'unhealthy' | 'ejected' | 'host set changed';
}

/** One run of the iterator: what it was asked to close and what the kernel closed. */
export interface DrainEvent {
  targets: DrainTarget[];
  /** process.hrtime (CLOCK_MONOTONIC, the kernel's bpf_ktime_get_ns clock) when the change was applied. */
  changedNs: bigint;
  /** When the iterator ran (same clock). */
  ranNs: bigint;
  closed: DrainedSocket[];
}

/** Where a closer run could not walk a namespace, and why (the other namespaces still ran). */
export interface NetnsFailure {
  netns: string;
  error: string;
}

function inodeOf(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined; // the namespace is gone: nothing is open in it
  }
}

/** The drain program and its map; closes what it is given, nothing else. */
export class SocketCloser {
  private constructor(private readonly object: BpfObject) {}

  /** Loads drain.bpf.o sharing km_sock_route pinned in pinDir; throws when the kernel cannot (before 6.5). */
  static open(pinDir: string, log?: Logger): SocketCloser {
    const path = bpfObjectPath('drain.bpf.o');
    try {
      return new SocketCloser(openObject(path, DRAIN_SPEC, { pinDir, ...(log ? { log } : {}) }));
    } catch (e) {
      throw new Error(
        `load ${path} (closing connections needs bpf_sock_destroy, Linux 6.5+): ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /**
   * Closes the routed sockets of the targets now, in the agent's network namespace and in each of
   * `netns` (nsfs paths of pods' own namespaces; the agent's own and repeats are walked once);
   * returns each socket the kernel closed, and the namespaces it could not walk.
   */
  close(
    targets: readonly DrainTarget[],
    netns: readonly string[] = [],
  ): { closed: DrainedSocket[]; failed: NetnsFailure[] } {
    const map = this.object.map('km_drain');
    const keys: Buffer[] = [];
    for (const t of targets) {
      const key = hostKeyCodec.encode({ serviceId: t.serviceId, backendId: t.backendId });
      const value =
        t.backendId && t.address !== undefined && t.port !== undefined
          ? drainCodec.encode({ address: t.address, port: t.port, closed: 0n })
          : Buffer.alloc(drainCodec.size);
      map.update(key, value);
      keys.push(key);
    }
    const program = this.object.program('km_drain_iter');
    const closed: DrainedSocket[] = [];
    const failed: NetnsFailure[] = [];
    const decode = (out: Buffer): void => {
      for (let off = 0; off + drainedCodec.size <= out.length; off += drainedCodec.size)
        closed.push(drainedCodec.decode(out.subarray(off, off + drainedCodec.size)));
    };
    try {
      decode(program.iterate());
      const walked = new Set([inodeOf('/proc/self/ns/net')]);
      for (const path of netns) {
        const inode = inodeOf(path);
        if (inode === undefined || walked.has(inode)) continue;
        walked.add(inode);
        try {
          decode(program.iterate({ netns: path }));
        } catch (e) {
          failed.push({ netns: path, error: (e as Error).message });
        }
      }
      return { closed, failed };
    } finally {
      for (const k of keys) map.delete(k);
    }
  }

  closeObject(): void {
    this.object.close();
  }
}

interface Member {
  selectable: boolean;
  health: string;
}

function members(s: Service): Map<BackendKey, Member> {
  const m = new Map<BackendKey, Member>();
  for (const e of s.endpoints) {
    const k = backendKey(e.address, e.port);
    const selectable = e.health === 'healthy' || e.health === 'unknown';
    const before = m.get(k);
    m.set(k, {
      selectable: (before?.selectable ?? false) || selectable,
      health: before?.selectable ? before.health : e.health,
    });
  }
  return m;
}

/** Ids as the writer holds them, before an apply forgets a removed backend's. */
export interface IdLookup {
  serviceId(name: string): number | undefined;
  backendId(address: string, port: number): number | undefined;
}

/**
 * What one apply changes for open connections: targets to close now, and targets to close after the
 * drain window (when `windowMs` is set). Computed from the previous and the next desired state, with
 * ids read before the apply (a removed backend's id is freed by it).
 */
export function drainPlan(
  before: DesiredState,
  after: DesiredState,
  ids: IdLookup,
  windowMs: number | undefined,
): { now: DrainTarget[]; later: DrainTarget[] } {
  const now: DrainTarget[] = [];
  const later: DrainTarget[] = [];
  const next = new Map(after.services.map((s) => [s.name, s]));
  for (const old of before.services) {
    const s = next.get(old.name);
    const serviceId = ids.serviceId(old.name);
    if (!s || s.kind !== 'endpoints' || serviceId === undefined) continue;
    const was = members(old);
    const is = members(s);
    const target = (k: BackendKey, why: DrainTarget['why']): DrainTarget | undefined => {
      const [address, port] = [k.slice(0, k.lastIndexOf('|')), Number(k.slice(k.lastIndexOf('|') + 1))];
      const backendId = ids.backendId(address, port);
      return backendId === undefined
        ? undefined
        : { service: s.name, serviceId, backendId, address, port, why };
    };
    const changed = [...is.keys()].some((k) => !was.has(k)) || [...was.keys()].some((k) => !is.has(k));
    if (s.closeConnections?.onHostSetChange && changed) {
      now.push({ service: s.name, serviceId, backendId: 0, why: 'host set changed' });
      continue;
    }
    for (const [k, m] of was) {
      if (!m.selectable) continue;
      const n = is.get(k);
      if (n?.selectable) continue;
      if (s.closeConnections?.onHostHealthFailure && n && n.health !== 'draining') {
        const t = target(k, 'unhealthy');
        if (t) now.push(t);
        continue;
      }
      if (windowMs === undefined) continue;
      if (!n || n.health === 'draining') {
        const t = target(k, n ? 'draining' : 'removed');
        if (t) later.push(t);
      }
    }
  }
  return { now, later };
}

/** Whether a target's backend is still not selectable in the service (checked when its window ends). */
export function stillGone(t: DrainTarget, current: DesiredState): boolean {
  if (!t.backendId || t.address === undefined || t.port === undefined) return true;
  const s = current.services.find((x) => x.name === t.service);
  if (!s) return false; // the service itself is gone: its id may belong to another by now
  return !members(s).get(backendKey(t.address, t.port))?.selectable;
}
