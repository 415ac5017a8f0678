// What the kernel counts, in Envoy's cluster and host stat names: /clusters shows them per cluster and
// per host, /stats/prometheus per cluster. Only stats the kernel really keeps; none are estimated.
import type { KernelStats } from '../dataplane/reader.js';
import { canonicalAddress } from '../net/address.js';

export type { KernelStats } from '../dataplane/reader.js';

export interface EnvoyStat {
  name: string;
  value: number;
  type: 'COUNTER' | 'GAUGE';
}

/** Envoy cluster stat ← kernel reasons summed into it. map_miss and waypoint have no Envoy cluster stat. */
const CLUSTER_COUNTERS: { name: string; reasons: string[]; help: string }[] = [
  {
    name: 'upstream_cx_total',
    reasons: ['routed', 'passthrough'],
    help: 'Connections the kernel sent to an endpoint of the cluster (or let through, for PassthroughCluster)',
  },
  {
    name: 'upstream_cx_none_healthy',
    reasons: ['no_endpoint', 'blackhole'],
    help: 'Connections refused because the cluster had no selectable endpoint (BlackHoleCluster: all)',
  },
  {
    name: 'upstream_cx_overflow',
    reasons: ['overflow'],
    help: "Connections refused by the cluster's max_connections circuit breaker",
  },
];

const num = (v: unknown): number =>
  typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' ? Number(v) : 0;

/** IPv6 endpoints come in several spellings; the kernel's backends are in canonical form. */
function hostKey(address: string, port: number): string | undefined {
  try {
    return `${canonicalAddress(address)}|${port}`;
  } catch {
    return undefined; // a hostname (DNS cluster before resolution): not a kernel backend
  }
}

type Outlier = NonNullable<KernelStats['outlier']>[number];

/** Looks up kernel counts by Envoy cluster and host. */
export class ClusterStatsView {
  private readonly backends = new Map<string, number>();
  private readonly services = new Map<string, KernelStats['services'][number]>();
  private readonly outliers = new Map<string, Outlier>();
  /** "service\u0000address|port" of every host ejected now. */
  private readonly ejected = new Set<string>();

  constructor(stats: KernelStats) {
    for (const b of stats.backends) {
      const k = hostKey(b.address, b.port);
      if (k) this.backends.set(k, (this.backends.get(k) ?? 0) + b.activeConnections);
    }
    for (const s of stats.services) this.services.set(s.name, s);
    for (const o of stats.outlier ?? []) {
      this.outliers.set(o.name, o);
      for (const h of o.ejected) {
        const k = hostKey(h.address, h.port);
        if (k) this.ejected.add(`${o.name}\u0000${k}`);
      }
    }
  }

  /** The host is ejected by outlier detection in the cluster (its own service or its `|ipv6` one). */
  hostEjected(cluster: string, address: string, port: number): boolean {
    const k = hostKey(address, port);
    if (!k) return false;
    return this.ejected.has(`${cluster}\u0000${k}`) || this.ejected.has(`${cluster}|ipv6\u0000${k}`);
  }

  /** Envoy host stats: cx_active only (cx_total would need a per-backend total the kernel does not keep). */
  host(address: string, port: number): EnvoyStat[] {
    const k = hostKey(address, port);
    if (!k) return [];
    return [{ name: 'cx_active', value: this.backends.get(k) ?? 0, type: 'GAUGE' }];
  }

  /** A cluster's kernel services: its own, plus `<name>|ipv6` when its endpoints span both families. */
  private servicesOf(cluster: string): KernelStats['services'] {
    return [this.services.get(cluster), this.services.get(`${cluster}|ipv6`)].filter(
      (s): s is KernelStats['services'][number] => s !== undefined,
    );
  }

  /** Envoy cluster stats; empty for a cluster the kernel has no service for (not programmed, weighted). */
  cluster(cluster: string): EnvoyStat[] {
    const services = this.servicesOf(cluster);
    if (!services.length) return [];
    const sum = (f: (s: KernelStats['services'][number]) => number) => services.reduce((n, s) => n + f(s), 0);
    const out: EnvoyStat[] = [
      ...CLUSTER_COUNTERS.map((c): EnvoyStat => ({
        name: c.name,
        value: sum((s) => c.reasons.reduce((n, r) => n + num(s.counters[r]), 0)),
        type: 'COUNTER',
      })),
      { name: 'upstream_cx_active', value: sum((s) => s.activeConnections), type: 'GAUGE' },
    ];
    const od = [this.outliers.get(cluster), this.outliers.get(`${cluster}|ipv6`)].filter(
      (o): o is Outlier => o !== undefined,
    );
    if (od.length) {
      out.push({
        name: 'outlier_detection.ejections_active',
        value: od.reduce((n, o) => n + o.active, 0),
        type: 'GAUGE',
      });
      for (const c of Object.keys(od[0]!.counters))
        out.push({
          name: `outlier_detection.${c}`,
          value: od.reduce((n, o) => n + num(o.counters[c]), 0),
          type: 'COUNTER',
        });
    }
    return out;
  }
}

/** Label values escaped as the Prometheus text format wants them. */
function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/**
 * Per-cluster stats in the Prometheus text format, named as Envoy exports them (`envoy_cluster_*`,
 * label `cluster_name` as in Istio's sidecars). Counters whose Envoy name lacks `_total` get it, as
 * the OpenMetrics spelling of the same counter, so `promtool check metrics` accepts them.
 */
export function clusterMetrics(clusters: string[], view: ClusterStatsView): string {
  const series = new Map<string, { type: string; help: string; lines: string[] }>();
  const helpOf = (name: string) =>
    CLUSTER_COUNTERS.find((c) => c.name === name)?.help ??
    (name.startsWith('outlier_detection.')
      ? `Envoy's ${name}: outlier detection as the kernel decided it`
      : 'Connections of the cluster open now (established, counted by sockops)');
  for (const cluster of clusters) {
    for (const s of view.cluster(cluster)) {
      const base = `envoy_cluster_${s.name.replace(/\./g, '_')}`;
      const metric = s.type === 'COUNTER' && !base.endsWith('_total') ? `${base}_total` : base;
      const entry = series.get(metric) ?? {
        type: s.type === 'COUNTER' ? 'counter' : 'gauge',
        help: helpOf(s.name),
        lines: [],
      };
      entry.lines.push(`${metric}{cluster_name="${label(cluster)}"} ${s.value}`);
      series.set(metric, entry);
    }
  }
  let out = '';
  for (const [metric, e] of series)
    out += `# HELP ${metric} ${e.help}\n# TYPE ${metric} ${e.type}\n${e.lines.join('\n')}\n`;
  return out;
}
