// An enrolled pod as Istio's labels name it: the workload (its Deployment, else its owner, else the pod),
// the canonical service and revision from Istio's labels or the usual app labels, and its SPIFFE
// identity. The same rules istiod applies when it publishes the pod's Workload.
import type { V1Pod } from '@kubernetes/client-node';

import type { WorkloadIdentity } from '../telemetry/workloads.js';

/** The pod's workload name: a ReplicaSet's Deployment, a Job's CronJob, else the owner, else the pod. */
export function workloadName(pod: V1Pod): string {
  const name = pod.metadata?.name ?? 'unknown';
  const owner =
    pod.metadata?.ownerReferences?.find((o) => o.controller) ?? pod.metadata?.ownerReferences?.[0];
  if (!owner) return name;
  const hash = pod.metadata?.labels?.['pod-template-hash'];
  if (owner.kind === 'ReplicaSet' && hash && owner.name.endsWith(`-${hash}`))
    return owner.name.slice(0, -hash.length - 1);
  // A CronJob's Job is named <cronjob>-<scheduled time in minutes>.
  if (owner.kind === 'Job' && /-\d{8,}$/.test(owner.name)) return owner.name.replace(/-\d{8,}$/, '');
  return owner.name;
}

export function podWorkload(pod: V1Pod, trustDomain: string): WorkloadIdentity {
  const labels = pod.metadata?.labels ?? {};
  const namespace = pod.metadata?.namespace ?? 'unknown';
  const workload = workloadName(pod);
  return {
    workload,
    namespace,
    ...(pod.metadata?.name ? { name: pod.metadata.name } : {}),
    canonicalService:
      labels['service.istio.io/canonical-name'] ?? labels['app.kubernetes.io/name'] ?? labels.app ?? workload,
    canonicalRevision:
      labels['service.istio.io/canonical-revision'] ??
      labels['app.kubernetes.io/version'] ??
      labels.version ??
      'latest',
    principal: `spiffe://${trustDomain}/ns/${namespace}/sa/${pod.spec?.serviceAccountName ?? 'default'}`,
  };
}
