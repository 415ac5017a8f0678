// What one resource may hold before it is refused unread: bounded by what the kernel can program,
// so a response's cost (decode, JSON, analysis, plan) never grows past what could ever be applied.
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { JsonObject } from './types.js';
import { TYPE } from './types.js';

export interface ResourceLimits {
  /** Most endpoints one ClusterLoadAssignment may list: the backends the kernel's map can hold. */
  endpointsPerResource: number;
}

/** ClusterLoadAssignment.endpoints and LocalityLbEndpoints.lb_endpoints are both field 2. */
const ENDPOINTS_FIELD = 2;
const CLUSTER_NAME_FIELD = 1;

/**
 * Counts a ClusterLoadAssignment's endpoints (and reads its name) from its bytes without decoding them: one pass over
 * the wire format, no object built. Returns undefined when the bytes are not well-formed (the
 * decoder then says why).
 */
export function countEndpointsInBytes(bytes: Uint8Array): { count: number; clusterName: string } | undefined {
  try {
    let n = 0;
    let clusterName = '';
    const cla = new BinaryReader(bytes);
    while (cla.pos < cla.len) {
      const [field, wire] = cla.tag();
      if (field === CLUSTER_NAME_FIELD && wire === WireType.LengthDelimited) {
        clusterName = cla.string();
        continue;
      }
      if (field !== ENDPOINTS_FIELD || wire !== WireType.LengthDelimited) {
        cla.skip(wire, field);
        continue;
      }
      const group = new BinaryReader(cla.bytes());
      while (group.pos < group.len) {
        const [f, w] = group.tag();
        if (f === ENDPOINTS_FIELD && w === WireType.LengthDelimited) n++;
        group.skip(w, f);
      }
    }
    return { count: n, clusterName };
  } catch {
    return undefined;
  }
}

export function countEndpointsInJson(cla: JsonObject): number {
  let n = 0;
  const groups = cla['endpoints'];
  if (!Array.isArray(groups)) return 0;
  for (const g of groups) {
    const eps =
      g && typeof g === 'object' && !Array.isArray(g) ? (g['lb_endpoints'] ?? g['lbEndpoints']) : undefined;
    if (Array.isArray(eps)) n += eps.length;
  }
  return n;
}

/** The refusal of a resource over the limits, or undefined when it fits. */
export function overLimit(
  typeUrl: string,
  count: number | undefined,
  limits: ResourceLimits | undefined,
): string | undefined {
  if (!limits || typeUrl !== TYPE.endpoint || count === undefined || count <= limits.endpointsPerResource)
    return undefined;
  return `endpoints: ${count} endpoints, more than the ${limits.endpointsPerResource} backends the kernel can hold (--map-size backends); refused unread`;
}
