// The check on receipt, for whichever source hands in resources (ADS or a file): each resource is
// analysed by its type's analyser (analysis.ts keeps the result for translate()), and a response is
// checked against the held resources of the types it meets. Nothing here translates the world.
import type { HeldResources } from '../xds/state.js';
import type { Rejection, XdsResource } from '../xds/types.js';
import { analysed, type Analyser } from './analysis.js';
import { AUTHORIZATION_ANALYSER } from './authorization.js';
import { CLUSTER_ANALYSER } from './cluster.js';
import { ENDPOINT_ANALYSER } from './endpoints.js';
import { LISTENER_ANALYSER } from './listener.js';
import { ROUTE_ANALYSER } from './route.js';

/**
 * translate/'s side of every resource type it reads; the workload API's addresses are read by
 * xds/waypoints.ts and src/authz/policy.ts.
 */
export const ANALYSERS: readonly Analyser<unknown>[] = [
  CLUSTER_ANALYSER,
  ENDPOINT_ANALYSER,
  LISTENER_ANALYSER,
  ROUTE_ANALYSER,
  AUTHORIZATION_ANALYSER,
];

const byType = new Map(ANALYSERS.map((a) => [a.typeUrl, a]));

export function analyserOf(typeUrl: string): Analyser<unknown> | undefined {
  return byType.get(typeUrl);
}

/** Each resource's own refusals, each with its path inside the resource. */
export function validate(typeUrl: string, resources: readonly XdsResource[]): Rejection[] {
  const a = byType.get(typeUrl);
  if (!a) return []; // other types (the workload API) are checked by their own decoders
  return resources.flatMap((r) => analysed(a, r.name, r.resource).findings.rejected);
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

/** The accepted resources of a type, as the source holds them (warming clusters included). */
export type AcceptedResources = HeldResources;

/**
 * validate() plus the refusals that only show when two types meet (a cluster requiring Istio mTLS
 * whose endpoints have no plaintext match, HBONE-only endpoints): a CDS response is checked against
 * the held ClusterLoadAssignments, an EDS response against the held clusters using it. Only content
 * that changed is checked again, so a push costs what it changes.
 */
export function validateAgainst(
  typeUrl: string,
  candidates: readonly XdsResource[],
  held: HeldResources,
): Rejection[] {
  const own = validate(typeUrl, candidates);
  const refused = new Set(own.map((r) => r.name));
  const fine = candidates.filter((c) => !refused.has(c.name));
  const out = [...own];
  const known = new Set(own.map((r) => `${r.name}\u0000${r.reason}`));
  for (const a of ANALYSERS) {
    const check = a.crossChecks?.[typeUrl];
    if (!check || fine.length === 0) continue;
    for (const r of check(fine, held)) {
      const key = `${r.name}\u0000${r.reason}`;
      if (known.has(key)) continue;
      known.add(key);
      out.push(r);
    }
  }
  return out;
}
