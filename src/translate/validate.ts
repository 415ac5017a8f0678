// Per-type validation for the xDS client: what it must NACK, each reason with its path inside the
// resource. The same analysis runs inside translate(), so a resource validate() accepts is one
// translate() can use (cross-resource refusals, such as mTLS-only endpoints, come from translate()).
import { TYPE, type JsonObject, type Rejection, type XdsResource } from '../xds/types.js';
import { analyseCluster } from './cluster.js';
import { analyseAssignment } from './endpoints.js';
import { analyseListener } from './listener.js';
import { analyseRouteConfig } from './route.js';
import { translate } from './translate.js';
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

/** The accepted resources of a type, as the xDS client holds them (warming clusters included). */
export type AcceptedResources = (typeUrl: string) => readonly XdsResource[];

/**
 * validate() plus the refusals that only show when CDS and EDS meet (a cluster requiring Istio mTLS
 * whose endpoints have no plaintext match, HBONE-only endpoints): a CDS response is checked against
 * the accepted ClusterLoadAssignments, an EDS response against the accepted clusters using it.
 * Only resources whose content changed are checked, so a push costs what it changes; an EDS
 * refusal of a cluster is reported on the ClusterLoadAssignment of the response that caused it.
 */
export function validateAgainst(
  typeUrl: string,
  candidates: readonly XdsResource[],
  accepted: AcceptedResources,
): Rejection[] {
  const own = validate(typeUrl, candidates);
  if (typeUrl !== TYPE.cluster && typeUrl !== TYPE.endpoint) return own;
  const refused = new Set(own.map((r) => r.name));
  const before = new Map(accepted(typeUrl).map((r) => [r.name, r.resource]));
  const changed = candidates.filter((c) => !refused.has(c.name) && !sameJson(before.get(c.name), c.resource));
  if (changed.length === 0) return own;

  let clusters: XdsResource[];
  let assignments: XdsResource[];
  if (typeUrl === TYPE.cluster) {
    clusters = changed;
    const wanted = new Set(clusters.map((c) => edsNameOf(c)).filter((n): n is string => n !== undefined));
    assignments = accepted(TYPE.endpoint).filter((a) => wanted.has(a.name));
  } else {
    assignments = changed;
    const names = new Set(changed.map((a) => a.name));
    clusters = accepted(TYPE.cluster).filter((c) => names.has(edsNameOf(c) ?? ''));
  }
  if (clusters.length === 0) return own;
  const edsOf = new Map(clusters.map((c) => [c.name, edsNameOf(c)]));
  const known = new Set(own.map((r) => `${r.typeUrl} ${r.name} ${r.reason}`));
  const out = [...own];
  for (const r of translate({ resources: [...clusters, ...assignments] }).rejected) {
    let found: Rejection | undefined;
    if (typeUrl === TYPE.cluster && r.typeUrl === TYPE.cluster) found = r;
    else if (typeUrl === TYPE.endpoint && r.typeUrl === TYPE.cluster) {
      const eds = edsOf.get(r.name);
      // The cluster was accepted on its own: what refuses it now is this assignment's content.
      if (eds !== undefined)
        found = { typeUrl: TYPE.endpoint, name: eds, reason: `cluster ${r.name}: ${r.reason}` };
    }
    if (!found) continue;
    const key = `${found.typeUrl} ${found.name} ${found.reason}`;
    if (known.has(key)) continue;
    known.add(key);
    out.push(found);
  }
  return out;
}

function sameJson(a: JsonObject | undefined, b: JsonObject): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}

/** The ClusterLoadAssignment name an EDS cluster uses; undefined for other discovery types. */
function edsNameOf(c: XdsResource): string | undefined {
  if (c.resource['type'] !== 'EDS') return undefined;
  const eds = c.resource['eds_cluster_config'];
  const service = eds && typeof eds === 'object' && !Array.isArray(eds) ? eds['service_name'] : undefined;
  return typeof service === 'string' && service ? service : c.name;
}
