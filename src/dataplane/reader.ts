// The one reader of the routing maps (bpf/route.h's structs, through codec.ts): what the kernel holds
// now, decoded. Restart recovery (RouteWriter.recover), /debug/maps (Dataplane.readActual), `kernmesh
// maps` (the maps pinned while the agent is down), the counts behind /clusters and the cluster stats
// (kernelStats) and telemetry's service names all read through it; nothing else decodes these maps.
import { join } from 'node:path';

import { BpfMap } from '../../native/index.js';
import { sumPerCpuU64, u32 } from '../../native/spec.js';
import {
  backendCodec,
  frontendCodec,
  frontendKeyCodec,
  hostKeyCodec,
  hostStateCodec,
  outlierCodec,
  OUTLIER_COUNTERS,
  REASON_SLOTS,
  REASONS,
  serviceCodec,
  serviceNameCodec,
  slotCodec,
  slotKeyCodec,
  type BackendValue,
  type FrontendKey,
  type HostKey,
  type OutlierCounter,
  type Reason,
  type ServiceValue,
  type SlotKey,
  type SlotValue,
} from './codec.js';
import { ROUTE_MAPS, type MapHandle, type RouteMapName, type RouteMaps } from './maps.js';

/** An entry as the map holds it, with its decoded form. */
export interface Entry<K, V> {
  key: Buffer;
  value: Buffer;
  k: K;
  v: V;
}

export interface ServiceCounters {
  service: string;
  id: number;
  counters: Record<Reason, bigint>;
}

/** One host of a service as outlier detection sees it now (km_hosts). */
export interface OutlierHost {
  address: string;
  port: number;
  ejected: boolean;
  /** CLOCK_MONOTONIC ns of the last ejection and return (0 before the first). */
  ejectedNs: bigint;
  unejectedNs: bigint;
  numEjections: number;
  consecutive5xx: number;
  consecutiveGatewayFailure: number;
  consecutiveLocalOriginFailure: number;
  backoff: number;
  failures: bigint;
}

export interface ServiceOutlier {
  service: string;
  id: number;
  /** ejections_active */
  active: number;
  /** Ejected hosts counted out of each priority's healthy hosts. */
  ejectedPerPriority: number[];
  counters: Record<OutlierCounter, bigint>;
  /** Hosts with something to remember: ejected, backing off, or failing. */
  hosts: OutlierHost[];
}

export interface ActualService {
  id: number;
  name: string;
  value: ServiceValue;
  /** Live generation's slots per priority group, in slot order. */
  slots: { priority: number; index: number; backendId: number; backend?: string; weight: number }[];
  maglevEntries: number;
  activeConnections: number;
}

export interface MapUsage {
  name: string;
  type: string;
  maxEntries: number;
  /** Entries counted in the kernel (hash maps; arrays are always full). */
  entries?: number;
}

/** The kernel's routing state, decoded from the maps (/debug/maps, `kernmesh maps`). */
export interface ActualState {
  pinDir: string;
  frontends: (FrontendKey & { serviceId: number; service?: string })[];
  services: ActualService[];
  backends: (BackendValue & { id: number; activeConnections: number })[];
  counters: ServiceCounters[];
  maps: MapUsage[];
}

/**
 * The kernel's counts by kernel service name (normally the Envoy cluster name) and by backend, for
 * /clusters and the cluster stats: what admin/cluster-stats.ts turns into Envoy's stat names.
 */
export interface KernelStats {
  services: {
    name: string;
    /** Established connections, counted by sockops. */
    activeConnections: number;
    /** connect() outcomes by reason (routed, no_endpoint, overflow, ...), summed over CPUs. */
    counters: Record<string, bigint | number>;
  }[];
  /** Shared by every cluster listing the same address and port: the kernel counts per backend. */
  backends: { address: string; port: number; activeConnections: number }[];
  /** Outlier detection per kernel service that has it: what the kernel decided (the agent only reads). */
  outlier?: {
    name: string;
    /** ejections_active */
    active: number;
    /** Envoy's outlier_detection counters by stat name (ejections_total, ejections_enforced_total, ...). */
    counters: Record<string, bigint | number>;
    /** Hosts ejected now. */
    ejected: { address: string; port: number }[];
  }[];
}

/** Who is who, as the writer programmed it: service names and backends by id. */
export interface RouteIds {
  services: { name: string; id: number; outlier: boolean }[];
  backends: { address: string; port: number; id: number }[];
}

const byName = (a: { name: string }, b: { name: string }): number =>
  a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
const hostPort = (address: string, port: number): string =>
  `${address.includes(':') ? `[${address}]` : address}:${port}`;
const COUNTED = new Set(['hash', 'lru_hash']);

/** Entries and capacity per map (counted in the kernel for hash maps). */
export function mapUsage(maps: readonly (MapHandle & { readonly type?: string })[]): MapUsage[] {
  return maps.map((m) => ({
    name: m.name,
    type: m.type ?? 'unknown',
    maxEntries: m.maxEntries,
    ...(m.type && COUNTED.has(m.type) ? { entries: m.keys().length } : {}),
  }));
}

export class RouteMapReader {
  /** maps: the routing maps, or a way to open each when first read (a map that cannot be opened throws). */
  constructor(private readonly maps: RouteMaps | ((name: RouteMapName) => MapHandle)) {}

  private map(name: RouteMapName): MapHandle {
    return typeof this.maps === 'function' ? this.maps(name) : this.maps[name];
  }

  /** km_svc_names: service id → name. */
  serviceNames(): Map<number, string> {
    const out = new Map<number, string>();
    for (const [k, v] of this.map('km_svc_names').entries())
      out.set(k.readUInt32LE(0), serviceNameCodec.decode(v).name);
    return out;
  }

  /** One service's name (one lookup), undefined when the id has none. */
  serviceName(id: number): string | undefined {
    const v = this.map('km_svc_names').lookup(u32(id));
    return v ? serviceNameCodec.decode(v).name : undefined;
  }

  /** km_services by id; `v` undefined for a value this agent cannot decode (an unknown kind or policy). */
  services(): Entry<number, ServiceValue | undefined>[] {
    return this.map('km_services')
      .entries()
      .map(([key, value]) => {
        let v: ServiceValue | undefined;
        try {
          v = serviceCodec.decode(value);
        } catch {
          v = undefined;
        }
        return { key, value, k: key.readUInt32LE(0), v };
      });
  }

  /** km_slots or km_maglev, both generations. */
  slots(map: 'km_slots' | 'km_maglev'): Entry<SlotKey, SlotValue>[] {
    return this.map(map)
      .entries()
      .map(([key, value]) => ({ key, value, k: slotKeyCodec.decode(key), v: slotCodec.decode(value) }));
  }

  /** km_maglev's keys alone (a table's entries are counted, not shown). */
  maglevKeys(): SlotKey[] {
    return this.map('km_maglev')
      .keys()
      .map((k) => slotKeyCodec.decode(k));
  }

  /** km_members (outlier detection's hosts per service), raw values. */
  members(): Entry<HostKey, Buffer>[] {
    return this.map('km_members')
      .entries()
      .map(([key, value]) => ({ key, value, k: hostKeyCodec.decode(key), v: value }));
  }

  /** km_backends: backend id → address and port. */
  backends(): Entry<number, BackendValue>[] {
    return this.map('km_backends')
      .entries()
      .map(([key, value]) => ({ key, value, k: key.readUInt32LE(0), v: backendCodec.decode(value) }));
  }

  /** km_frontends: what connect() asks for → service id. */
  frontends(): Entry<FrontendKey, number>[] {
    return this.map('km_frontends')
      .entries()
      .map(([key, value]) => ({
        key,
        value,
        k: frontendKeyCodec.decode(key),
        v: frontendCodec.decode(value).serviceId,
      }));
  }

  /** km_hosts keys of one service (hosts that failed a connect): few, so a scan is cheap. */
  hostKeysOf(serviceId: number): Buffer[] {
    return this.map('km_hosts')
      .keys()
      .filter((k) => hostKeyCodec.decode(k).serviceId === serviceId);
  }

  /** Active connections counted by sockops (km_service_conn, km_backend_conn). */
  serviceConnections(id: number): number {
    return this.map('km_service_conn').lookup(u32(id))?.readUInt32LE(0) ?? 0;
  }
  backendConnections(id: number): number {
    return this.map('km_backend_conn').lookup(u32(id))?.readUInt32LE(0) ?? 0;
  }

  /** Per service and reason, summed over CPUs (km_counters). */
  counters(rows: readonly { name: string; id: number }[]): ServiceCounters[] {
    const m = this.map('km_counters');
    return rows.map(({ name, id }) => {
      const counters = Object.fromEntries(REASONS.map((r) => [r, 0n])) as Record<Reason, bigint>;
      REASONS.forEach((reason, r) => {
        const v = m.lookup(u32(id * REASON_SLOTS + r));
        if (v) counters[reason] = sumPerCpuU64(v);
      });
      return { service: name, id, counters };
    });
  }

  /**
   * Outlier detection as the kernel decided it, per service with the detector on: ejections active
   * and Envoy's counters (km_outlier), and the hosts it remembers (km_hosts, only hosts that failed).
   */
  outlier(ids: RouteIds): ServiceOutlier[] {
    const services = ids.services.filter((s) => s.outlier);
    if (!services.length) return [];
    const wanted = new Set(services.map((s) => s.id));
    const backendById = new Map(ids.backends.map((b) => [b.id, b]));
    const hosts = new Map<number, OutlierHost[]>();
    for (const [k, v] of this.map('km_hosts').entries()) {
      const key = hostKeyCodec.decode(k);
      const backend = backendById.get(key.backendId);
      if (!wanted.has(key.serviceId) || backend === undefined) continue;
      const h = hostStateCodec.decode(v);
      const list = hosts.get(key.serviceId) ?? [];
      list.push({
        address: backend.address,
        port: backend.port,
        ejected: h.ejected,
        ejectedNs: h.ejectedNs,
        unejectedNs: h.unejectedNs,
        numEjections: h.numEjections,
        consecutive5xx: h.consecutive5xx,
        consecutiveGatewayFailure: h.consecutiveGateway,
        consecutiveLocalOriginFailure: h.consecutiveLocalOrigin,
        backoff: h.backoff,
        failures: h.failures,
      });
      hosts.set(key.serviceId, list);
    }
    const zero = Object.fromEntries(OUTLIER_COUNTERS.map((c) => [c, 0n])) as Record<OutlierCounter, bigint>;
    return services
      .map(({ name, id }) => {
        const raw = this.map('km_outlier').lookup(u32(id));
        const state = raw ? outlierCodec.decode(raw) : { active: 0, ejected: [], counters: zero };
        return {
          service: name,
          id,
          active: state.active,
          ejectedPerPriority: state.ejected,
          counters: state.counters,
          hosts: (hosts.get(id) ?? []).sort(
            (a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0) || a.port - b.port,
          ),
        };
      })
      .sort((a, b) => byName({ name: a.service }, { name: b.service }));
  }

  /** The counts /clusters and the cluster stats show, by the writer's ids: lookups, no map scan (but km_hosts'). */
  kernelStats(ids: RouteIds): KernelStats {
    const counters = new Map(
      this.counters(ids.services).map((c): [string, ServiceCounters['counters']] => [c.service, c.counters]),
    );
    return {
      services: ids.services
        .filter(({ id }) => id !== 0)
        .map(({ name, id }) => ({
          name,
          activeConnections: this.serviceConnections(id),
          counters: counters.get(name) ?? {},
        })),
      backends: ids.backends.map(({ address, port, id }) => ({
        address,
        port,
        activeConnections: this.backendConnections(id),
      })),
      outlier: this.outlier(ids).map((o) => ({
        name: o.service,
        active: o.active,
        counters: o.counters,
        ejected: o.hosts.filter((h) => h.ejected).map((h) => ({ address: h.address, port: h.port })),
      })),
    };
  }

  /** Everything decoded, as the kernel holds it now (not as the writer believes it wrote it). */
  actual(pinDir: string, maps: MapUsage[]): ActualState {
    const names = this.serviceNames();
    const backends = this.backends()
      .map((b) => ({ id: b.k, ...b.v, activeConnections: this.backendConnections(b.k) }))
      .sort((a, b) => a.id - b.id);
    const backendById = new Map(backends.map((b) => [b.id, b]));
    const slots = this.slots('km_slots');
    const maglev = this.maglevKeys();
    const services = this.services()
      .flatMap((s): ActualService[] => {
        const value = s.v;
        if (!value) return [];
        return [
          {
            id: s.k,
            name: names.get(s.k) ?? '',
            value,
            slots: slots
              .filter((x) => x.k.serviceId === s.k && x.k.generation === value.generation)
              .sort((a, b) => a.k.priority - b.k.priority || a.k.index - b.k.index)
              .map((x) => {
                const b = backendById.get(x.v.backendId);
                return {
                  priority: x.k.priority,
                  index: x.k.index,
                  backendId: x.v.backendId,
                  ...(b ? { backend: hostPort(b.address, b.port) } : {}),
                  weight: x.v.weight,
                };
              }),
            maglevEntries: maglev.filter((k) => k.serviceId === s.k && k.generation === value.generation)
              .length,
            activeConnections: this.serviceConnections(s.k),
          },
        ];
      })
      .sort((a, b) => a.id - b.id);
    const frontends = this.frontends().map((f) => {
      const name = names.get(f.v);
      return { ...f.k, serviceId: f.v, ...(name !== undefined ? { service: name } : {}) };
    });
    const rows = [
      { name: '', id: 0 },
      ...services.filter((s) => s.name).map((s) => ({ name: s.name, id: s.id })),
    ];
    return { pinDir, frontends, services, backends, counters: this.counters(rows), maps };
  }
}

/** The routing maps pinned under dir (the agent may be down), for one read; close() releases them. */
export function openPinnedRouteMaps(dir: string): { maps: RouteMaps; opened: BpfMap[]; close(): void } {
  const opened: BpfMap[] = [];
  const close = (): void => opened.forEach((m) => m.close());
  try {
    for (const n of ROUTE_MAPS) {
      const path = join(dir, n);
      try {
        opened.push(BpfMap.openPinned(path, n));
      } catch (e) {
        throw new Error(`open pinned map ${path}: ${(e as Error).message}`, { cause: e });
      }
    }
  } catch (e) {
    close();
    throw e;
  }
  const maps = Object.fromEntries(ROUTE_MAPS.map((n, i) => [n, opened[i]!])) as unknown as RouteMaps;
  return { maps, opened, close };
}

/**
 * Reads the pinned routing maps' service names as the routing agent wrote them (telemetry, whose
 * object shares the pin directory): km_svc_names opened when first needed; undefined while routing
 * has pinned none.
 */
export function pinnedServiceNames(dir: string): (id: number) => string | undefined {
  const opened = new Map<RouteMapName, BpfMap>();
  const reader = new RouteMapReader((name) => {
    const m = opened.get(name) ?? BpfMap.openPinned(join(dir, name), name);
    opened.set(name, m);
    return m;
  });
  return (id) => {
    if (id === 0) return undefined;
    try {
      return reader.serviceName(id);
    } catch {
      return undefined; // routing not loaded here: the service stays unknown
    }
  };
}
