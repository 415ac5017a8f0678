// Kernel telemetry (bpf/telemetry.bpf.c): loads and attaches it, consumes the connection events
// from the ring buffer into Istio's TCP metrics and optional access-log lines, and exports the
// lost-event count and the per-service packet/byte counters at scrape time.
import { Counter, Registry } from 'prom-client';
import type { Logger } from 'pino';

import { RingBuffer, type BpfObject } from '../../native/index.js';
import { attachPrograms, bpfObjectPath, openObject, type CgroupAttachment } from '../../native/objects.js';
import { sumPerCpuU64, u32 } from '../../native/spec.js';
import {
  decodeConnEvent,
  decodeServiceTraffic,
  encodeTelemetryConfig,
  TELEMETRY_COUNTERS,
  TELEMETRY_SPEC,
  type ConnEvent,
  type ServiceTraffic,
} from './codec.js';
import { pinnedServiceNames } from '../dataplane/reader.js';
import { istioLabels, IstioTcpMetrics, serviceIdentity } from './metrics.js';
import type { ConnectionTracer } from './traces.js';
import { WorkloadIndex, type PeerDirectory } from './workloads.js';

export interface TelemetryOptions {
  /** bpffs directory shared with routing (km_sock_route, km_svc_names) and acceleration. */
  pinDir: string;
  objectPath?: string;
  log?: Logger;
  registry?: Registry;
  /** One JSON line per closed connection through this logger; none when absent. */
  accessLog?: Logger;
  /** Who is behind each address and cgroup; by default an empty workload index the agent fills. */
  directory?: PeerDirectory;
  /** The agent's cluster id: `*_cluster` of the workloads on this node. */
  clusterId?: string;
  /** Spans of routed connections, when tracing is on. */
  tracer?: ConnectionTracer;
  /** Kernel service id → service (cluster) name; by default routing's km_svc_names, through dataplane's reader. */
  serviceName?: (id: number) => string | undefined;
  /** Every decoded event, after metrics (tests, debug endpoints). */
  onEvent?: (ev: ConnEvent) => void;
}

/** cgroup programs of bpf/telemetry.bpf.o, in attach order (CgroupAttachment.links follows it). */
export const TELEMETRY_CGROUP_PROGRAMS = [
  'km_telemetry_sock_create',
  'km_telemetry_sockops',
  'km_telemetry_ingress',
  'km_telemetry_egress',
] as const;

export class Telemetry {
  readonly registry: Registry;
  readonly metrics: IstioTcpMetrics;
  private ring: RingBuffer | undefined;
  private readonly serviceName: (id: number) => string | undefined;
  /** The workload API's workloads and services (the agent updates it); the default directory. */
  readonly workloads: WorkloadIndex;
  private readonly directory: PeerDirectory;

  private constructor(
    readonly object: BpfObject,
    private readonly opts: TelemetryOptions,
  ) {
    this.registry = opts.registry ?? new Registry();
    this.metrics = new IstioTcpMetrics(this.registry);
    this.serviceName = opts.serviceName ?? pinnedServiceNames(opts.pinDir);
    this.workloads = new WorkloadIndex();
    this.directory = opts.directory ?? this.workloads;
    this.registerKernelCounters();
  }

  static open(opts: TelemetryOptions): Telemetry {
    const path = opts.objectPath ?? bpfObjectPath('telemetry.bpf.o');
    try {
      return new Telemetry(
        openObject(path, TELEMETRY_SPEC, { pinDir: opts.pinDir, ...(opts.log ? { log: opts.log } : {}) }),
        opts,
      );
    } catch (e) {
      throw new Error(`load telemetry object ${path}: ${(e as Error).message}`, { cause: e });
    }
  }

  private registerKernelCounters(): void {
    const counters = this.object.map('km_telemetry_counters');
    const traffic = this.object.map('km_service_traffic');
    const kernelTotal = (index: number): number => {
      const v = counters.lookup(u32(index));
      return v ? Number(sumPerCpuU64(v)) : 0;
    };
    new Counter({
      name: 'kernmesh_telemetry_events_lost_total',
      help: 'Connection events dropped because the ring buffer was full (the data path never waits).',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(kernelTotal(TELEMETRY_COUNTERS.eventsLost));
      },
    });
    new Counter({
      name: 'kernmesh_telemetry_events_total',
      help: 'Connection events the kernel put in the ring buffer.',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(kernelTotal(TELEMETRY_COUNTERS.eventsSent));
      },
    });
    const serviceLabel = (id: number): string => serviceIdentity(this.serviceName(id))?.host ?? 'unknown';
    const perService = (name: string, help: string, pick: (t: ServiceTraffic) => bigint): void => {
      new Counter({
        name,
        help,
        labelNames: ['destination_service', 'service_id'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const [k, v] of traffic.entries()) {
            const id = k.readUInt32LE(0);
            this.inc(
              { destination_service: serviceLabel(id), service_id: String(id) },
              Number(pick(decodeServiceTraffic(v))),
            );
          }
        },
      });
    };
    perService(
      'kernmesh_service_received_packets_total',
      'Packets received by sockets of attached cgroups, per service.',
      (t) => t.rxPackets,
    );
    perService(
      'kernmesh_service_received_bytes_total',
      'Bytes received by sockets of attached cgroups, per service.',
      (t) => t.rxBytes,
    );
    perService(
      'kernmesh_service_sent_packets_total',
      'Packets sent by sockets of attached cgroups, per service.',
      (t) => t.txPackets,
    );
    perService(
      'kernmesh_service_sent_bytes_total',
      'Bytes sent by sockets of attached cgroups, per service.',
      (t) => t.txBytes,
    );
  }

  /**
   * Attaches socket creation, sockops and cgroup_skb ingress/egress to a cgroup through bpf_link; links
   * pinned in linkPinDir by a previous run are updated to this run's programs.
   */
  attach(cgroup: string, linkPinDir?: string): CgroupAttachment {
    return attachPrograms(this.object, TELEMETRY_CGROUP_PROGRAMS, cgroup, linkPinDir);
  }

  /** Off: no events and no counting; open connections are untouched. */
  setEnabled(enabled: boolean): void {
    this.object.map('km_telemetry_config').update(u32(0), encodeTelemetryConfig(enabled));
    this.opts.log?.info({ telemetry: enabled }, 'telemetry %s', enabled ? 'on' : 'off');
  }

  enabled(): boolean {
    const v = this.object.map('km_telemetry_config').lookup(u32(0));
    return v !== undefined && v.readUInt32LE(0) !== 0;
  }

  /** Starts consuming the ring buffer on the event loop. */
  start(): void {
    this.ring ??= new RingBuffer(this.object.map('km_conn_events'), (record) => this.handle(record));
  }

  /** Delivers the events pending now, synchronously; returns how many. */
  drain(): number {
    this.start();
    return this.ring!.consume();
  }

  lostEvents(): bigint {
    const v = this.object.map('km_telemetry_counters').lookup(u32(TELEMETRY_COUNTERS.eventsLost));
    return v ? sumPerCpuU64(v) : 0n;
  }

  serviceTraffic(): Map<number, ServiceTraffic> {
    const out = new Map<number, ServiceTraffic>();
    for (const [k, v] of this.object.map('km_service_traffic').entries())
      out.set(k.readUInt32LE(0), decodeServiceTraffic(v));
    return out;
  }

  private handle(record: Buffer): void {
    let ev: ConnEvent;
    try {
      ev = decodeConnEvent(record);
    } catch (e) {
      this.opts.log?.warn({ err: e }, 'undecodable connection event');
      return;
    }
    const kernelService = this.serviceName(ev.serviceId);
    const labels = istioLabels(ev, serviceIdentity(kernelService), {
      directory: this.directory,
      ...(this.opts.clusterId ? { clusterId: this.opts.clusterId } : {}),
    });
    this.metrics.record(ev, labels);
    this.opts.tracer?.record(ev, { labels, ...(kernelService ? { kernelService } : {}) });
    const service = labels.destination_service !== 'unknown' ? labels.destination_service : undefined;
    if (ev.type === 'close' && this.opts.accessLog) {
      this.opts.accessLog.info(
        {
          direction: ev.direction,
          source:
            ev.direction === 'outbound'
              ? `${ev.localAddress}:${ev.localPort}`
              : `${ev.remoteAddress}:${ev.remotePort}`,
          destination:
            ev.direction === 'outbound'
              ? `${ev.remoteAddress}:${ev.remotePort}`
              : `${ev.localAddress}:${ev.localPort}`,
          original_destination: ev.originalAddress ? `${ev.originalAddress}:${ev.originalPort}` : undefined,
          destination_service: service,
          source_workload: labels.source_workload,
          destination_workload: labels.destination_workload,
          bytes_sent: Number(ev.bytesSent),
          bytes_received: Number(ev.bytesReceived),
          duration_ms: Number(ev.durationNs) / 1e6,
          connect_us: ev.connectUs,
          srtt_us: ev.srttUs,
          retransmits: ev.retransmits,
          end: ev.endReason,
          accelerated: ev.accelerated,
          pid: ev.pid,
          cgroup_id: String(ev.cgroupId),
        },
        'connection closed',
      );
    }
    this.opts.onEvent?.(ev);
  }

  close(): void {
    this.ring?.close();
    this.ring = undefined;
    void this.opts.tracer?.shutdown();
    this.object.close();
  }
}
