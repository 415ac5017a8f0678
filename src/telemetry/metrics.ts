// Connection events → Istio's standard TCP metrics, so existing Istio dashboards read kernmesh.
// Istio's convention: *_received_bytes_total counts request bytes (source → destination) and
// *_sent_bytes_total response bytes (destination → source), whichever side reports.
import { Counter, type Registry } from 'prom-client';

import type { ConnEvent } from './codec.js';

export const ISTIO_TCP_LABELS = [
  'reporter',
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'source_workload',
  'destination_workload',
] as const;
export type IstioTcpLabel = (typeof ISTIO_TCP_LABELS)[number];
export type IstioTcpLabels = Record<IstioTcpLabel, string>;

export const UNKNOWN = 'unknown';

export interface Workload {
  name: string;
  namespace?: string;
}

export interface ServiceIdentity {
  /** FQDN, e.g. reviews.default.svc.cluster.local */
  host: string;
  name: string;
  namespace: string;
}

/**
 * The service behind a kernel service name: an Envoy cluster name
 * (`outbound|9080||reviews.default.svc.cluster.local`) or a bare host.
 */
export function serviceIdentity(serviceName: string | undefined): ServiceIdentity | undefined {
  if (!serviceName) return undefined;
  const parts = serviceName.split('|');
  const host = parts.length === 4 ? parts[3]! : serviceName;
  if (!host) return undefined;
  const labels = host.split('.');
  return { host, name: labels[0] ?? host, namespace: labels.length > 1 ? labels[1]! : UNKNOWN };
}

export function istioLabels(
  ev: ConnEvent,
  service: ServiceIdentity | undefined,
  workload?: Workload,
): IstioTcpLabels {
  const local = workload?.name ?? UNKNOWN;
  const source = ev.direction === 'outbound';
  return {
    reporter: source ? 'source' : 'destination',
    destination_service: service?.host ?? UNKNOWN,
    destination_service_name: service?.name ?? UNKNOWN,
    destination_service_namespace: service?.namespace ?? UNKNOWN,
    source_workload: source ? local : UNKNOWN,
    destination_workload: source ? UNKNOWN : local,
  };
}

export class IstioTcpMetrics {
  readonly opened: Counter<IstioTcpLabel>;
  readonly closed: Counter<IstioTcpLabel>;
  readonly sentBytes: Counter<IstioTcpLabel>;
  readonly receivedBytes: Counter<IstioTcpLabel>;

  constructor(registry: Registry) {
    const counter = (name: string, help: string): Counter<IstioTcpLabel> =>
      new Counter({ name, help, labelNames: ISTIO_TCP_LABELS, registers: [registry] });
    this.opened = counter(
      'istio_tcp_connections_opened_total',
      'TCP connections opened, reported by the kernel.',
    );
    this.closed = counter(
      'istio_tcp_connections_closed_total',
      'TCP connections closed, reported by the kernel.',
    );
    this.sentBytes = counter(
      'istio_tcp_sent_bytes_total',
      'Response bytes (destination to source) of closed TCP connections.',
    );
    this.receivedBytes = counter(
      'istio_tcp_received_bytes_total',
      'Request bytes (source to destination) of closed TCP connections.',
    );
  }

  record(ev: ConnEvent, labels: IstioTcpLabels): void {
    if (ev.type === 'open') {
      this.opened.inc(labels);
      return;
    }
    this.closed.inc(labels);
    const request = ev.direction === 'outbound' ? ev.bytesSent : ev.bytesReceived;
    const response = ev.direction === 'outbound' ? ev.bytesReceived : ev.bytesSent;
    this.receivedBytes.inc(labels, Number(request));
    this.sentBytes.inc(labels, Number(response));
  }
}
