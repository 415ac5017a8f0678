// Connection events → Istio's standard TCP metrics, so existing Istio dashboards read kernmesh.
// Istio's convention: *_received_bytes_total counts request bytes (source → destination) and
// *_sent_bytes_total response bytes (destination → source), whichever side reports.
import { Counter, type Registry } from 'prom-client';

import type { ConnEvent } from './codec.js';
import type { PeerDirectory, ServiceLabels, WorkloadIdentity } from './workloads.js';

/** Istio's standard labels on its TCP metrics (those a sidecar's Envoy reports for a TCP connection). */
export const ISTIO_TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_canonical_service',
  'source_canonical_revision',
  'source_cluster',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_cluster',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
] as const;
export type IstioTcpLabel = (typeof ISTIO_TCP_LABELS)[number];
export type IstioTcpLabels = Record<IstioTcpLabel, string>;

export const UNKNOWN = 'unknown';

export type ServiceIdentity = ServiceLabels;

/**
 * The service behind a kernel service name: an Envoy cluster name
 * (`outbound|9080||reviews.default.svc.cluster.local`) or a bare host.
 */
export function serviceIdentity(serviceName: string | undefined): ServiceIdentity | undefined {
  if (!serviceName) return undefined;
  const parts = serviceName.split('|');
  // waypoint|ADDR|PORT is routing's own name for "through the waypoint": not a service.
  if (parts[0] === 'waypoint') return undefined;
  const host = parts.length >= 4 ? parts[3]! : serviceName;
  if (!host) return undefined;
  const labels = host.split('.');
  return { host, name: labels[0] ?? host, namespace: labels.length > 1 ? labels[1]! : UNKNOWN };
}

/** What the agent knows beyond the event: who is behind each address and cgroup, and its cluster. */
export interface LabelContext {
  directory?: PeerDirectory;
  /** The agent's cluster: the cluster of every workload on this node. */
  clusterId?: string;
}

function side(prefix: 'source' | 'destination', w: WorkloadIdentity | undefined, cluster: string) {
  return {
    [`${prefix}_workload`]: w?.workload ?? UNKNOWN,
    [`${prefix}_workload_namespace`]: w?.namespace ?? UNKNOWN,
    [`${prefix}_principal`]: w?.principal ?? UNKNOWN,
    [`${prefix}_app`]: w?.canonicalService ?? UNKNOWN,
    [`${prefix}_version`]: w?.canonicalRevision ?? UNKNOWN,
    [`${prefix}_canonical_service`]: w?.canonicalService ?? UNKNOWN,
    [`${prefix}_canonical_revision`]: w?.canonicalRevision ?? UNKNOWN,
    [`${prefix}_cluster`]: cluster,
  } as Partial<IstioTcpLabels>;
}

/**
 * Istio's labels for one connection event, from the reporting socket's point of view: the local end
 * (by its cgroup's enrolled pod, else its address) and the remote end (by address); `unknown` only
 * where nothing is known. The destination service is the VIP the client asked for (workload API),
 * else routing's service; for inbound connections, the service the workload serves on that port.
 */
export function istioLabels(
  ev: ConnEvent,
  kernelService: ServiceIdentity | undefined,
  ctx: LabelContext = {},
): IstioTcpLabels {
  const dir = ctx.directory;
  const outbound = ev.direction === 'outbound';
  const local = dir?.local(ev.cgroupId, ev.localAddress);
  const remote = dir?.remote(ev.remoteAddress);
  const localCluster = local?.cluster ?? ctx.clusterId ?? UNKNOWN;
  const remoteCluster = remote?.cluster ?? UNKNOWN;
  let service: ServiceLabels | undefined;
  if (outbound) {
    service =
      (ev.originalAddress !== undefined && ev.originalPort !== undefined
        ? dir?.serviceByVip(ev.originalAddress, ev.originalPort)
        : dir?.serviceByVip(ev.remoteAddress, ev.remotePort)) ?? kernelService;
  } else if (local) {
    service = dir?.serviceOfWorkloadPort(local, ev.localPort);
  }
  return {
    reporter: outbound ? 'source' : 'destination',
    ...side('source', outbound ? local : remote, outbound ? localCluster : remoteCluster),
    ...side('destination', outbound ? remote : local, outbound ? remoteCluster : localCluster),
    destination_service: service?.host ?? UNKNOWN,
    destination_service_name: service?.name ?? UNKNOWN,
    destination_service_namespace: service?.namespace ?? UNKNOWN,
    request_protocol: 'tcp',
    response_flags: '-',
    // kernmesh carries no mTLS: Istio's value for plaintext is "none" at the destination.
    connection_security_policy: outbound ? UNKNOWN : 'none',
  } as IstioTcpLabels;
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
