// Istio workload API resources as src/xds hands them on (proto3 JSON with the proto's field names):
// istio.workload.Address workloads and istio.security.Authorization policies, for tests.
import { encodeAddress, familyOf } from '../../src/net/address.js';
import type { JsonObject } from '../../src/xds/types.js';

export const ADDRESS_TYPE = 'type.googleapis.com/istio.workload.Address';
export const AUTHORIZATION_TYPE = 'type.googleapis.com/istio.security.Authorization';

export function ipBase64(ip: string): string {
  const b = encodeAddress(ip);
  return (familyOf(ip) === 4 ? b.subarray(0, 4) : b).toString('base64');
}

export interface WorkloadSpec {
  name: string;
  namespace: string;
  ips: string[];
  /** '' leaves it out (istiod's empty value: ztunnel reads `default`). */
  serviceAccount?: string;
  /** '' leaves it out (ztunnel reads `cluster.local`). */
  trustDomain?: string;
  node?: string;
  policies?: string[];
  hostNetwork?: boolean;
}

export function workloadUid(namespace: string, name: string): string {
  return `Kubernetes//Pod/${namespace}/${name}`;
}

/** An Address resource holding a Workload, named by its uid. */
export function workload(s: WorkloadSpec): { name: string; resource: JsonObject } {
  const uid = workloadUid(s.namespace, s.name);
  const w: JsonObject = { uid, name: s.name, namespace: s.namespace, addresses: s.ips.map(ipBase64) };
  if (s.serviceAccount) w.service_account = s.serviceAccount;
  if (s.trustDomain) w.trust_domain = s.trustDomain;
  if (s.node) w.node = s.node;
  if (s.policies?.length) w.authorization_policies = s.policies;
  if (s.hostNetwork) w.network_mode = 'HOST_NETWORK';
  return { name: uid, resource: { '@type': ADDRESS_TYPE, workload: w } };
}

export interface PolicySpec {
  name: string;
  namespace: string;
  scope?: 'GLOBAL' | 'NAMESPACE' | 'WORKLOAD_SELECTOR';
  action?: 'ALLOW' | 'DENY';
  dryRun?: boolean;
  /** Each group: its rules (clauses), each a list of matches. */
  groups: JsonObject[][][];
}

/** An Authorization resource named namespace/name; zero values (GLOBAL, ALLOW) left out as istiod does. */
export function policy(p: PolicySpec): { name: string; resource: JsonObject } {
  const r: JsonObject = { '@type': AUTHORIZATION_TYPE, name: p.name, namespace: p.namespace };
  if (p.scope && p.scope !== 'GLOBAL') r.scope = p.scope;
  if (p.action === 'DENY') r.action = 'DENY';
  if (p.groups.length > 0)
    r.groups = p.groups.map((rules) => ({ rules: rules.map((matches) => ({ matches })) }));
  if (p.dryRun) r.dry_run = true;
  return { name: `${p.namespace}/${p.name}`, resource: r };
}

export const presence = (): JsonObject => ({ presence: {} });
export const exact = (v: string): JsonObject => ({ exact: v });
export const prefix = (v: string): JsonObject => ({ prefix: v });
export const suffix = (v: string): JsonObject => ({ suffix: v });

export function cidr(text: string): JsonObject {
  const [ip, len] = text.split('/') as [string, string | undefined];
  return { address: ipBase64(ip), length: len === undefined ? (familyOf(ip) === 4 ? 32 : 128) : Number(len) };
}
