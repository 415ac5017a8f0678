// Routed connections as OpenTelemetry spans: connect → established → close, with the service, the
// chosen endpoint, the waypoint, bytes each way, RTT and how it ended, exported over OTLP/HTTP
// (protobuf). Sampled at the open, queued with a bound, and every span lost is counted by reason.
import { SpanKind, SpanStatusCode, type Attributes, type HrTime, type Tracer } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
} from '@opentelemetry/sdk-trace-base';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from 'pino';

import type { ConnEvent } from './codec.js';
import type { IstioTcpLabels } from './metrics.js';

export interface TraceOptions {
  /** OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces. */
  endpoint: string;
  /** Fraction of routed connections traced, 0 to 1. */
  sampling: number;
  /** Spans waiting for export at most; more are dropped and counted. */
  queueSize: number;
  /** Resource attributes (service.instance.id, k8s.node.name...). */
  resource?: Attributes;
  /** How often a batch is sent (ms). */
  exportIntervalMs?: number;
  /** Connections sampled and still open at most (their open event is held until the close). */
  maxOpen?: number;
  random?: () => number;
}

/** What telemetry knows about a connection beyond its event. */
export interface ConnectionFacts {
  labels: IstioTcpLabels;
  /** Routing's service name (an Envoy cluster, or waypoint|ADDR|PORT). */
  kernelService?: string;
}

export type DropReason = 'queue_full' | 'export_failed' | 'too_many_open';

interface Pending {
  open: ConnEvent;
}

function hrTime(unixNs: bigint): HrTime {
  return [Number(unixNs / 1_000_000_000n), Number(unixNs % 1_000_000_000n)];
}

/** Counts what each export does with the spans it was given. */
class CountingExporter implements SpanExporter {
  constructor(
    private readonly inner: SpanExporter,
    private readonly settled: (n: number, ok: boolean) => void,
  ) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      this.settled(spans.length, result.code === ExportResultCode.SUCCESS);
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

export class ConnectionTracer {
  private readonly provider: BasicTracerProvider;
  private readonly tracer: Tracer;
  private readonly open = new Map<bigint, Pending>();
  private readonly maxOpen: number;
  private readonly random: () => number;
  /** Spans handed to the batch processor and not yet settled by an export. */
  private inFlight = 0;
  /** CLOCK_MONOTONIC (the kernel's timestamps) → Unix time, in ns. */
  private readonly toUnixNs: bigint;
  readonly exported: Counter;
  readonly dropped: Counter<'reason'>;

  constructor(
    private readonly opts: TraceOptions,
    registry: Registry,
    private readonly log?: Logger,
  ) {
    if (!(opts.sampling >= 0 && opts.sampling <= 1))
      throw new Error(`trace sampling ${opts.sampling}: not 0 to 1`);
    this.maxOpen = opts.maxOpen ?? 65536;
    this.random = opts.random ?? Math.random;
    this.toUnixNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
    const exporter = new CountingExporter(new OTLPTraceExporter({ url: opts.endpoint }), (n, ok) => {
      this.inFlight -= n;
      if (ok) this.exported.inc(n);
      else {
        this.dropped.inc({ reason: 'export_failed' }, n);
        this.log?.warn({ spans: n, endpoint: opts.endpoint }, 'span export failed; spans dropped');
      }
    });
    this.provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': 'kernmesh', ...opts.resource }),
      spanProcessors: [
        new BatchSpanProcessor(exporter, {
          maxQueueSize: opts.queueSize,
          maxExportBatchSize: Math.min(512, opts.queueSize),
          scheduledDelayMillis: opts.exportIntervalMs ?? 1000,
        }),
      ],
    });
    this.tracer = this.provider.getTracer('kernmesh');
    this.exported = new Counter({
      name: 'kernmesh_trace_spans_exported_total',
      help: 'Connection spans the OTLP endpoint accepted.',
      registers: [registry],
    });
    this.dropped = new Counter({
      name: 'kernmesh_trace_spans_dropped_total',
      help: 'Connection spans lost: export queue full, export failed, or too many sampled connections open.',
      labelNames: ['reason'],
      registers: [registry],
    });
    for (const reason of ['queue_full', 'export_failed', 'too_many_open'] as DropReason[])
      this.dropped.inc({ reason }, 0);
  }

  /** Feeds one connection event; only connections rewritten by routing (routed, outbound) are traced. */
  record(ev: ConnEvent, facts: ConnectionFacts): void {
    if (ev.direction !== 'outbound' || ev.originalAddress === undefined) return;
    if (ev.type === 'open') {
      if (this.opts.sampling <= 0 || this.random() >= this.opts.sampling) return;
      if (this.open.size >= this.maxOpen) {
        this.dropped.inc({ reason: 'too_many_open' });
        return;
      }
      this.open.set(ev.cookie, { open: ev });
      return;
    }
    const pending = this.open.get(ev.cookie);
    if (!pending) return;
    this.open.delete(ev.cookie);
    if (this.inFlight >= this.opts.queueSize) {
      this.dropped.inc({ reason: 'queue_full' });
      return;
    }
    this.inFlight++;
    this.emit(pending.open, ev, facts);
  }

  private emit(open: ConnEvent, close: ConnEvent, facts: ConnectionFacts): void {
    const established = open.timestampNs + this.toUnixNs;
    const connected = established - BigInt(open.connectUs) * 1000n;
    const closed = close.timestampNs + this.toUnixNs;
    const l = facts.labels;
    const service = l.destination_service !== 'unknown' ? l.destination_service : undefined;
    const endpoint = `${close.remoteAddress}:${close.remotePort}`;
    const waypoint = facts.kernelService?.startsWith('waypoint|') ? endpoint : undefined;
    const attributes: Attributes = {
      'network.transport': 'tcp',
      'network.type': close.localAddress.includes(':') ? 'ipv6' : 'ipv4',
      'server.address': service ?? open.originalAddress!,
      'server.port': open.originalPort!,
      'network.peer.address': close.remoteAddress,
      'network.peer.port': close.remotePort,
      'network.local.address': close.localAddress,
      'network.local.port': close.localPort,
      'kernmesh.service': l.destination_service,
      'kernmesh.original_destination': `${open.originalAddress}:${open.originalPort}`,
      'kernmesh.endpoint': endpoint,
      'kernmesh.bytes_sent': Number(close.bytesSent),
      'kernmesh.bytes_received': Number(close.bytesReceived),
      'kernmesh.rtt_us': close.srttUs,
      'kernmesh.connect_us': open.connectUs,
      'kernmesh.retransmits': close.retransmits,
      'kernmesh.close_reason': close.endReason,
      'kernmesh.accelerated': close.accelerated,
      'kernmesh.source_workload': l.source_workload,
      'kernmesh.source_workload_namespace': l.source_workload_namespace,
      'kernmesh.destination_workload': l.destination_workload,
      'kernmesh.destination_workload_namespace': l.destination_workload_namespace,
      ...(facts.kernelService ? { 'kernmesh.cluster': facts.kernelService } : {}),
      ...(waypoint ? { 'kernmesh.waypoint': waypoint } : {}),
    };
    const span = this.tracer.startSpan(`connect ${service ?? open.originalAddress}:${open.originalPort}`, {
      kind: SpanKind.CLIENT,
      startTime: hrTime(connected),
      attributes,
    });
    span.addEvent('connect', hrTime(connected));
    span.addEvent('established', { 'kernmesh.rtt_us': open.srttUs }, hrTime(established));
    span.addEvent('close', { 'kernmesh.close_reason': close.endReason }, hrTime(closed));
    if (close.endReason === 'aborted')
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'connection reset or timed out' });
    span.end(hrTime(closed));
  }

  /** Sends what is queued now (tests, shutdown). */
  flush(): Promise<void> {
    return this.provider.forceFlush();
  }

  async shutdown(): Promise<void> {
    this.open.clear();
    await this.provider.shutdown();
  }
}
