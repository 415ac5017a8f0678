// Per-type validation for the xDS client: what it must NACK, each reason with its path inside the
// resource. The same analysis runs inside translate(), so a resource validate() accepts is one
// translate() can use (cross-resource refusals, such as mTLS-only endpoints, come from translate()).
import { TYPE, type Rejection, type XdsResource } from '../xds/types.js';
import { analyseCluster } from './cluster.js';
import { analyseAssignment } from './endpoints.js';
import { analyseListener } from './listener.js';
import { analyseRouteConfig } from './route.js';
import { Findings } from './types.js';

export function validate(typeUrl: string, resources: readonly XdsResource[]): Rejection[] {
  const findings = new Findings();
  for (const r of resources) {
    const res = findings.forResource(typeUrl, r.name);
    switch (typeUrl) {
      case TYPE.cluster:
        analyseCluster(r.resource, res);
        break;
      case TYPE.endpoint:
        analyseAssignment(r.resource, res, '', false);
        break;
      case TYPE.listener:
        analyseListener(r.resource, res);
        break;
      case TYPE.route:
        analyseRouteConfig(r.resource, res);
        break;
      default:
        // Other types (the workload API) are validated by their own decoders.
        break;
    }
  }
  return findings.rejected;
}

/**
 * True when a rejection concerns one virtual host of a RouteConfiguration only (Rejection.partial).
 * translate() skips such virtual hosts (their VIPs keep their last accepted entries, or are not
 * rewritten), so the xDS state applies the resource while listing the reason in its NACK: otherwise
 * one L7 VirtualService on a port would hold back every other service on that port.
 */
export function concernsOneVirtualHost(r: Rejection): boolean {
  return r.partial === true;
}
