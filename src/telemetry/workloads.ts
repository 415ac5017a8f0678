// Who is behind each end of a connection, for Istio's standard labels: the workload API's workloads
// and services by address (when the agent subscribes to it), and the pod enrolled behind a cgroup
// (filled by Kubernetes enrollment). Plain lookups; the agent feeds them, telemetry reads them.
import { ipFromBase64 } from '../xds/waypoints.js';
import type { JsonObject, JsonValue, XdsResource } from '../xds/types.js';

/** A workload as Istio's labels name it (ztunnel's mapping of the workload API). */
export interface WorkloadIdentity {
  /** `source_workload`: the Deployment (or other owner) name, else the pod name. */
  workload: string;
  namespace: string;
  /** Pod name, when known (capture --pod). */
  name?: string;
  cluster?: string;
  canonicalService?: string;
  canonicalRevision?: string;
  /** spiffe://<trust domain>/ns/<namespace>/sa/<service account> */
  principal?: string;
  /** Services by "namespace/hostname" with the ports the workload serves for each. */
  services?: Map<string, { servicePort: number; targetPort: number }[]>;
}

export interface ServiceLabels {
  /** FQDN, `destination_service`. */
  host: string;
  name: string;
  namespace: string;
}

/** cgroup id → the pod enrolled behind it. Kubernetes enrollment (src/k8s) implements it. */
export interface CgroupWorkloads {
  byCgroup(cgroupId: bigint): WorkloadIdentity | undefined;
  /** A pod by name or namespace/name with its addresses (kernmesh capture --pod), when known. */
  pod?(name: string): (WorkloadIdentity & { addresses: string[] }) | undefined;
}

/** What telemetry asks about a connection's ends. */
export interface PeerDirectory {
  /** The workload a local socket belongs to: its cgroup's pod, else the workload at its address. */
  local(cgroupId: bigint, address: string): WorkloadIdentity | undefined;
  /** The workload at a remote address. */
  remote(address: string): WorkloadIdentity | undefined;
  /** The service a VIP:port belongs to. */
  serviceByVip(address: string, port: number): ServiceLabels | undefined;
  /** The service a workload serves on a target port (the destination's view of an inbound connection). */
  serviceOfWorkloadPort(w: WorkloadIdentity, port: number): ServiceLabels | undefined;
}

function obj(v: JsonValue | undefined): JsonObject | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
}

function text(v: JsonValue | undefined): string {
  return typeof v === 'string' ? v : '';
}

function ports(list: JsonValue | undefined): { servicePort: number; targetPort: number }[] {
  return (Array.isArray(list) ? list : []).map((p) => ({
    servicePort: Number(obj(p)?.service_port ?? 0),
    targetPort: Number(obj(p)?.target_port ?? 0),
  }));
}

/** IPv4-mapped IPv6 as IPv4, so a dual-stack socket's peer matches the workload API's IPv4 address. */
function plainAddress(a: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return m ? m[1]! : a;
}

interface ServiceEntry extends ServiceLabels {
  ports: { servicePort: number; targetPort: number }[];
}

/** The workload API's snapshot (istio.workload.Address resources, proto3 JSON) indexed by address. */
export class WorkloadIndex implements PeerDirectory {
  private byAddress = new Map<string, WorkloadIdentity>();
  private byPod = new Map<string, WorkloadIdentity & { addresses: string[] }>();
  private services = new Map<string, ServiceEntry>();
  private vips = new Map<string, ServiceEntry>();

  /** @param enrolled the pods enrolled behind cgroups, when enrollment runs (also set later). */
  constructor(public enrolled?: CgroupWorkloads) {}

  /** Replaces the snapshot (called with every workload API update). */
  update(addresses: XdsResource[]): void {
    const byAddress = new Map<string, WorkloadIdentity>();
    const byPod = new Map<string, WorkloadIdentity & { addresses: string[] }>();
    const services = new Map<string, ServiceEntry>();
    const vips = new Map<string, ServiceEntry>();
    for (const r of addresses) {
      const w = obj(r.resource.workload);
      const s = obj(r.resource.service);
      if (w) {
        const namespace = text(w.namespace);
        const sa = text(w.service_account);
        const identity: WorkloadIdentity & { addresses: string[] } = {
          workload: text(w.workload_name) || text(w.name) || 'unknown',
          namespace: namespace || 'unknown',
          addresses: [],
          services: new Map(),
        };
        if (text(w.name)) identity.name = text(w.name);
        if (text(w.cluster_id)) identity.cluster = text(w.cluster_id);
        if (text(w.canonical_name)) identity.canonicalService = text(w.canonical_name);
        if (text(w.canonical_revision)) identity.canonicalRevision = text(w.canonical_revision);
        if (sa && namespace)
          identity.principal = `spiffe://${text(w.trust_domain) || 'cluster.local'}/ns/${namespace}/sa/${sa}`;
        for (const [key, list] of Object.entries(obj(w.services) ?? {}))
          identity.services!.set(key, ports(obj(list)?.ports));
        for (const a of Array.isArray(w.addresses) ? w.addresses : []) {
          const ip = typeof a === 'string' ? ipFromBase64(a) : undefined;
          if (!ip) continue;
          identity.addresses.push(ip);
          byAddress.set(ip, identity);
        }
        if (identity.name) {
          byPod.set(`${identity.namespace}/${identity.name}`, identity);
          if (!byPod.has(identity.name)) byPod.set(identity.name, identity);
        }
      }
      if (s) {
        const entry: ServiceEntry = {
          host: text(s.hostname),
          name: text(s.name) || text(s.hostname).split('.')[0] || 'unknown',
          namespace: text(s.namespace) || 'unknown',
          ports: ports(s.ports),
        };
        services.set(`${entry.namespace}/${entry.host}`, entry);
        for (const na of Array.isArray(s.addresses) ? s.addresses : []) {
          const a = obj(na)?.address;
          const ip = typeof a === 'string' ? ipFromBase64(a) : undefined;
          if (ip) vips.set(ip, entry);
        }
      }
    }
    this.byAddress = byAddress;
    this.byPod = byPod;
    this.services = services;
    this.vips = vips;
  }

  local(cgroupId: bigint, address: string): WorkloadIdentity | undefined {
    return this.enrolled?.byCgroup(cgroupId) ?? this.remote(address);
  }

  remote(address: string): WorkloadIdentity | undefined {
    return this.byAddress.get(plainAddress(address));
  }

  serviceByVip(address: string, port: number): ServiceLabels | undefined {
    const s = this.vips.get(plainAddress(address));
    if (!s || (s.ports.length > 0 && !s.ports.some((p) => p.servicePort === port))) return undefined;
    return { host: s.host, name: s.name, namespace: s.namespace };
  }

  serviceOfWorkloadPort(w: WorkloadIdentity, port: number): ServiceLabels | undefined {
    // The first service (by name) that sends this port to the workload: Istio's inbound view.
    for (const key of [...(w.services?.keys() ?? [])].sort()) {
      const list = w.services!.get(key)!;
      const svc = this.services.get(key);
      const targets = list.length ? list : (svc?.ports ?? []);
      if (!targets.some((p) => (p.targetPort || p.servicePort) === port)) continue;
      const slash = key.indexOf('/');
      const host = key.slice(slash + 1);
      return svc
        ? { host: svc.host, name: svc.name, namespace: svc.namespace }
        : { host, name: host.split('.')[0] ?? host, namespace: key.slice(0, slash) };
    }
    return undefined;
  }

  /** A pod by name or namespace/name, with its addresses (capture --pod). */
  pod(name: string): (WorkloadIdentity & { addresses: string[] }) | undefined {
    return this.byPod.get(name) ?? this.enrolled?.pod?.(name);
  }

  get size(): number {
    return this.byAddress.size;
  }
}
