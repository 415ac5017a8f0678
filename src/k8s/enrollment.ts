// Which pods of this node kernmesh serves: a pure decision from the pod, its namespace and the
// agent's own name, with the reason in the operator's words. No I/O here.
import type { V1Namespace, V1Pod } from '@kubernetes/client-node';

/** The label Istio's ambient mode and Kmesh use for the same choice; its value names the data plane. */
export const DATAPLANE_MODE = 'istio.io/dataplane-mode';
export const KERNMESH_MODE = 'kernmesh';
export const OPT_OUT_MODE = 'none';
/** Set by istiod's injector on every pod it gave a sidecar. */
export const SIDECAR_STATUS = 'sidecar.istio.io/status';
/** Set by istio-cni on pods whose traffic ztunnel captures. */
export const AMBIENT_REDIRECTION = 'ambient.istio.io/redirection';

export type Decision = { enroll: true; reason: string } | { enroll: false; reason: string };

export interface Self {
  name: string;
  namespace: string;
}

/**
 * Enrolled: the pod (whose label wins) or else its namespace says dataplane-mode=kernmesh. Never a pod
 * that another data plane already routes (sidecar, ztunnel), a hostNetwork pod (its sockets are the
 * node's) or the agent itself, whatever the labels say.
 */
export function decide(pod: V1Pod, namespace: V1Namespace | undefined, self: Self): Decision {
  const meta = pod.metadata ?? {};
  if (meta.name === self.name && meta.namespace === self.namespace)
    return { enroll: false, reason: "the agent's own pod" };
  if (pod.spec?.hostNetwork) return { enroll: false, reason: 'hostNetwork pod (its sockets are the node’s)' };
  if (meta.annotations?.[SIDECAR_STATUS] !== undefined)
    return { enroll: false, reason: `has an Istio sidecar (annotation ${SIDECAR_STATUS})` };
  // native sidecars (Istio 1.27+) put istio-proxy among the init containers
  const containers = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])];
  if (containers.some((c) => c.name === 'istio-proxy'))
    return { enroll: false, reason: 'has an Istio sidecar (container istio-proxy)' };
  if (meta.annotations?.[AMBIENT_REDIRECTION] === 'enabled')
    return { enroll: false, reason: `ztunnel captures it (annotation ${AMBIENT_REDIRECTION})` };
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return { enroll: false, reason: `pod ${phase}` };

  const podMode = meta.labels?.[DATAPLANE_MODE];
  const nsMode = namespace?.metadata?.labels?.[DATAPLANE_MODE];
  if (podMode !== undefined) {
    if (podMode === KERNMESH_MODE) {
      // istio-cni captures every pod of an ambient namespace that has not opted out with "none"
      if (nsMode === 'ambient')
        return {
          enroll: false,
          reason: `namespace is ${DATAPLANE_MODE}=ambient: ztunnel would also route it`,
        };
      return { enroll: true, reason: `pod label ${DATAPLANE_MODE}=${KERNMESH_MODE}` };
    }
    if (podMode === OPT_OUT_MODE)
      return { enroll: false, reason: `pod label ${DATAPLANE_MODE}=none (opted out)` };
    return { enroll: false, reason: `pod label ${DATAPLANE_MODE}=${podMode} (another data plane)` };
  }
  if (nsMode === KERNMESH_MODE)
    return { enroll: true, reason: `namespace label ${DATAPLANE_MODE}=${KERNMESH_MODE}` };
  if (namespace === undefined) return { enroll: false, reason: 'namespace not known yet' };
  return {
    enroll: false,
    reason: nsMode === undefined ? 'not labelled' : `namespace label ${DATAPLANE_MODE}=${nsMode}`,
  };
}
