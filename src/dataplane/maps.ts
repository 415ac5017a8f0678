// The routing maps of bpf/route.bpf.c described once, as data: names, key/value sizes, default
// sizes and how the agent's capacity flags size them.

/** The map operations the writer needs; native's BpfMap provides them. */
export interface MapHandle {
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  lookup(key: Buffer): Buffer | undefined;
  update(key: Buffer, value: Buffer, flag?: 'any' | 'noexist' | 'exist'): void;
  delete(key: Buffer): boolean;
  keys(): Buffer[];
  entries(): [Buffer, Buffer][];
  /**
   * One syscall for many entries, where the kernel has batch operations for the map type. The
   * kernel applies the elements one after another, each atomically, as single updates would.
   */
  updateBatch?(keys: Buffer[], values: Buffer[]): void;
  deleteBatch?(keys: Buffer[]): number;
  readonly supportsBatch?: boolean;
}

export const ROUTE_MAPS = [
  'km_frontends',
  'km_services',
  'km_svc_names',
  'km_slots',
  'km_maglev',
  'km_backends',
  'km_backend_conn',
  'km_service_conn',
  'km_rr',
  'km_counters',
  'km_hosts',
  'km_members',
  'km_outlier',
] as const;
export type RouteMapName = (typeof ROUTE_MAPS)[number];
export type RouteMaps = Record<RouteMapName, MapHandle>;

/** How many of each thing the kernel can hold; fixed at load (the maps are sized from it). */
export interface Capacity {
  frontends: number;
  /** Service ids are 1..services-1 (0 collects counters that have no service). */
  services: number;
  /** Backend ids are 1..backends-1. */
  backends: number;
  /** Endpoint slots over all services and both generations. */
  slots: number;
  /** Maglev table entries over all services and both generations. */
  maglev: number;
}

export const DEFAULT_CAPACITY: Capacity = {
  frontends: 65536,
  services: 16384,
  backends: 65536,
  slots: 262144,
  // 4093-entry tables, two generations: 128 Maglev services. The map is NO_PREALLOC, so
  // entries cost memory only once written.
  maglev: 1048576,
};

/** Per-map max_entries for BpfObject.open, derived from the capacity. */
export function mapSizes(c: Capacity, reasonSlots: number): Record<string, number> {
  return {
    km_frontends: c.frontends,
    km_services: c.services,
    km_svc_names: c.services,
    km_service_conn: c.services,
    km_rr: c.services,
    km_counters: c.services * reasonSlots,
    km_backends: c.backends,
    km_backend_conn: c.backends,
    km_slots: c.slots,
    km_maglev: c.maglev,
    // outlier detection: a host state per (service, backend) that failed, a member per endpoint slot
    km_hosts: c.backends,
    km_members: c.slots,
    km_outlier: c.services,
  };
}
