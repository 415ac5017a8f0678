// kernmesh's own metrics (the Istio TCP metrics come from telemetry/ and share the registry).
// Names follow Prometheus conventions so `promtool check metrics` passes: base units, _total on counters.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { typeLabel as resourceTypeLabel } from '../xds/resource-types/index.js';

/** Short names for type URLs in labels, as istioctl prints them: cds, eds, lds, rds, wds. */
export function typeLabel(typeUrl: string): string {
  return resourceTypeLabel(typeUrl).toLowerCase();
}

export interface KernelGauges {
  maps(): { name: string; entries: number; capacity: number }[];
  fallbacks(): Record<string, number>;
  programs(): { name: string; runTimeNs: bigint; runCount: bigint }[];
  /** Open connections the kernel closed, by why (removed, draining, unhealthy, ejected, host set changed). */
  closedConnections?(): Record<string, number>;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly xdsConnected: Gauge;
  readonly pushes: Counter;
  readonly rejections: Counter;
  readonly applyDuration: Histogram;
  readonly applyErrors: Counter;
  readonly services: Gauge;
  readonly frontends: Gauge;
  private kernel?: KernelGauges;
  /** Read at scrape time: the connection state changes between updates too. */
  connected?: () => boolean;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // prom-client names these gauges *_total, which Prometheus reserves for counters (promtool refuses them).
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ])
      this.registry.removeSingleMetric(name);
    const connected = (): boolean | undefined => this.connected?.();
    this.xdsConnected = new Gauge({
      name: 'kernmesh_xds_connected',
      help: '1 while the ADS stream to istiod is up (always 1 with a file source)',
      registers,
      collect() {
        const up = connected();
        if (up !== undefined) this.set(up ? 1 : 0);
      },
    });
    this.pushes = new Counter({
      name: 'kernmesh_xds_pushes_total',
      help: 'xDS updates received, per type',
      labelNames: ['type'],
      registers,
    });
    this.rejections = new Counter({
      name: 'kernmesh_xds_rejected_resources_total',
      help: 'Resources refused (NACKed) by validation or translation, per type',
      labelNames: ['type'],
      registers,
    });
    this.applyDuration = new Histogram({
      name: 'kernmesh_apply_duration_seconds',
      help: 'Time from an xDS update received to the kernel maps programmed',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.applyErrors = new Counter({
      name: 'kernmesh_apply_errors_total',
      help: 'Updates that could not be programmed into the kernel (the previous state stays)',
      registers,
    });
    this.services = new Gauge({
      name: 'kernmesh_services',
      help: 'Services programmed in the kernel',
      registers,
    });
    this.frontends = new Gauge({
      name: 'kernmesh_frontends',
      help: 'Frontends (VIP, port, protocol) intercepted at connect()',
      registers,
    });
    // collect() runs with `this` bound to the metric, so the kernel is reached through a closure.
    const kernel = (): KernelGauges | undefined => this.kernel;
    new Gauge({
      name: 'kernmesh_map_entries',
      help: 'Entries in each BPF map',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset();
        for (const m of kernel()?.maps() ?? []) this.set({ map: m.name }, m.entries);
      },
    });
    new Gauge({
      name: 'kernmesh_map_capacity',
      help: 'max_entries of each BPF map',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset();
        for (const m of kernel()?.maps() ?? []) this.set({ map: m.name }, m.capacity);
      },
    });
    // Kernel counters only grow; exposed as counters by setting the absolute value at scrape.
    new Counter({
      name: 'kernmesh_fallback_total',
      help: 'Connections the kernel did not rewrite or refused, by reason',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(kernel()?.fallbacks() ?? {})) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: 'kernmesh_connections_closed_total',
      help: 'Open connections to endpoints that went away or turned unhealthy, closed by the kernel, by why',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(kernel()?.closedConnections?.() ?? {}))
          this.inc({ reason }, n);
      },
    });
    new Counter({
      name: 'kernmesh_bpf_program_run_seconds_total',
      help: 'Kernel CPU time spent in each BPF program (needs BPF stats enabled)',
      labelNames: ['program'],
      registers,
      collect() {
        this.reset();
        for (const p of kernel()?.programs() ?? []) this.inc({ program: p.name }, Number(p.runTimeNs) / 1e9);
      },
    });
    new Counter({
      name: 'kernmesh_bpf_program_runs_total',
      help: 'Times each BPF program ran (needs BPF stats enabled)',
      labelNames: ['program'],
      registers,
      collect() {
        this.reset();
        for (const p of kernel()?.programs() ?? []) this.inc({ program: p.name }, Number(p.runCount));
      },
    });
  }

  /** Connects the scrape-time gauges to the live kernel state. */
  setKernel(kernel: KernelGauges): void {
    this.kernel = kernel;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
