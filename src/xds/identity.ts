// The node identity and metadata sent on every ADS stream, typed exactly as istiod parses them:
// INSTANCE_IPS a comma-separated string, booleans the strings "true"/"false", PROXY_CONFIG an object
// (always present, or istiod leaves the proxy out of `istioctl proxy-status`), LABELS a string map.
import type { JsonObject, JsonValue } from './types.js';

export interface Locality {
  region?: string;
  zone?: string;
  subZone?: string;
}

export interface IdentityOptions {
  podName?: string;
  namespace?: string;
  /** The pod's (or node's) IPs; the first one goes into node.id. */
  instanceIps?: string[];
  serviceAccount?: string;
  nodeName?: string;
  clusterId?: string;
  meshId?: string;
  istioVersion?: string;
  workloadName?: string;
  labels?: Record<string, string>;
  proxyConfig?: JsonObject;
  /** Cluster DNS domain used in node.id (`<ns>.svc.<domain>`). */
  dnsDomain?: string;
  locality?: Locality;
  /** Extra metadata; booleans and numbers are sent as strings, as istiod expects. */
  metadata?: Record<string, string | boolean | number | JsonObject>;
  /** The downward-API environment to read (POD_NAME, POD_NAMESPACE, INSTANCE_IP, ISTIO_META_*...). */
  env?: NodeJS.ProcessEnv;
}

/** envoy.config.core.v3.Node as proto3 JSON. */
export interface NodeIdentity {
  id: string;
  cluster: string;
  metadata: JsonObject;
  locality?: { region?: string; zone?: string; sub_zone?: string };
  user_agent_name: string;
  user_agent_version: string;
}

export const AGENT_NAME = 'kernmesh';
export const AGENT_VERSION = '0.1.0';

function parseLocality(s: string | undefined): Locality | undefined {
  if (!s) return undefined;
  const [region, zone, subZone] = s.split('/');
  return { region: region || undefined, zone: zone || undefined, subZone: subZone || undefined };
}

function metaString(v: string | boolean | number): string {
  return typeof v === 'boolean' ? (v ? 'true' : 'false') : String(v);
}

/** Builds node.id and metadata from options, falling back to the downward-API environment. */
export function buildNodeIdentity(opts: IdentityOptions = {}): NodeIdentity {
  const env = opts.env ?? process.env;
  const namespace = opts.namespace ?? env['POD_NAMESPACE'] ?? 'default';
  const podName = opts.podName ?? env['POD_NAME'] ?? env['HOSTNAME'] ?? 'kernmesh';
  const ips =
    opts.instanceIps ??
    (env['INSTANCE_IP'] ?? env['INSTANCE_IPS'] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const ip = ips[0] ?? '127.0.0.1';
  const domain = opts.dnsDomain ?? env['DNS_DOMAIN'] ?? 'cluster.local';

  const metadata: JsonObject = {};
  // ISTIO_META_FOO=bar becomes FOO: "bar"; ISTIO_METAJSON_FOO holds JSON (istio-agent's convention).
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    if (k.startsWith('ISTIO_METAJSON_')) {
      try {
        metadata[k.slice('ISTIO_METAJSON_'.length)] = JSON.parse(v) as JsonValue;
      } catch (err) {
        throw new Error(`environment ${k} is not JSON: ${(err as Error).message}`, { cause: err });
      }
    } else if (k.startsWith('ISTIO_META_')) {
      metadata[k.slice('ISTIO_META_'.length)] = v;
    }
  }

  const set = (key: string, value: string | undefined): void => {
    if (value !== undefined && value !== '') metadata[key] = value;
  };
  metadata['INSTANCE_IPS'] = ips.length ? ips.join(',') : ip;
  set('NAMESPACE', namespace);
  set('NAME', podName);
  set('SERVICE_ACCOUNT', opts.serviceAccount ?? env['SERVICE_ACCOUNT']);
  set('NODE_NAME', opts.nodeName ?? env['NODE_NAME']);
  set(
    'CLUSTER_ID',
    opts.clusterId ?? env['CLUSTER_ID'] ?? (metadata['CLUSTER_ID'] as string | undefined) ?? 'Kubernetes',
  );
  set('MESH_ID', opts.meshId ?? env['MESH_ID'] ?? (metadata['MESH_ID'] as string | undefined));
  set(
    'ISTIO_VERSION',
    opts.istioVersion ?? env['ISTIO_VERSION'] ?? (metadata['ISTIO_VERSION'] as string | undefined),
  );
  const workloadName =
    opts.workloadName ?? env['WORKLOAD_NAME'] ?? (metadata['WORKLOAD_NAME'] as string | undefined) ?? podName;
  set('WORKLOAD_NAME', workloadName);
  if (opts.labels) metadata['LABELS'] = { ...opts.labels };
  else if (!(metadata['LABELS'] && typeof metadata['LABELS'] === 'object')) metadata['LABELS'] = {};

  let proxyConfig: JsonValue | undefined = opts.proxyConfig;
  if (proxyConfig === undefined && env['PROXY_CONFIG']) {
    try {
      proxyConfig = JSON.parse(env['PROXY_CONFIG']) as JsonValue;
    } catch (err) {
      throw new Error(`environment PROXY_CONFIG is not JSON: ${(err as Error).message}`, { cause: err });
    }
  }
  metadata['PROXY_CONFIG'] =
    proxyConfig && typeof proxyConfig === 'object' && !Array.isArray(proxyConfig) ? proxyConfig : {};

  for (const [k, v] of Object.entries(opts.metadata ?? {})) {
    metadata[k] = typeof v === 'object' ? v : metaString(v);
  }

  const node: NodeIdentity = {
    id: `sidecar~${ip}~${podName}.${namespace}~${namespace}.svc.${domain}`,
    cluster: `${workloadName}.${namespace}`,
    metadata,
    user_agent_name: AGENT_NAME,
    user_agent_version: AGENT_VERSION,
  };
  const loc = opts.locality ?? parseLocality(env['ISTIO_LOCALITY']);
  if (loc && (loc.region || loc.zone || loc.subZone)) {
    node.locality = {};
    if (loc.region) node.locality.region = loc.region;
    if (loc.zone) node.locality.zone = loc.zone;
    if (loc.subZone) node.locality.sub_zone = loc.subZone;
  }
  return node;
}
