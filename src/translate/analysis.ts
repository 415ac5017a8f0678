// One analysis per resource content: what a resource type's analyser finds in a resource (its
// parsed form, refusals, notes) is kept with the resource object, so the check on receipt and every
// later translate() share it. A push is analysed once; a resource nobody changed is not analysed again.
import type { HeldResources } from '../xds/state.js';
import type { JsonObject, Rejection, XdsResource } from '../xds/types.js';
import { Findings, type ResourceFindings } from './types.js';

/** Refusals that show only when two types meet, checked on receipt against what is held. */
export type CrossCheck = (candidates: readonly XdsResource[], held: HeldResources) => Rejection[];

/** translate/'s side of one resource type (the xDS side is its ResourceType in xds/resource-types/). */
export interface Analyser<P> {
  readonly typeUrl: string;
  /** Reads one resource; every refusal goes to `res` with its path. Pure: no I/O, no other resource. */
  analyse(resource: JsonObject, res: ResourceFindings): P;
  /** Checks a response of the keyed type against held resources of other types. */
  readonly crossChecks?: Readonly<Record<string, CrossCheck>>;
}

export interface Analysis<P> {
  parsed: P;
  /** The findings of this resource alone. */
  findings: Findings;
  refused: boolean;
}

const cache = new WeakMap<JsonObject, Map<string, Analysis<unknown>>>();
let runs = 0;

/** The analysis of a resource, from the cache when this content (object) was analysed before. */
export function analysed<P>(a: Analyser<P>, name: string, resource: JsonObject): Analysis<P> {
  let byName = cache.get(resource);
  if (!byName) {
    byName = new Map();
    cache.set(resource, byName);
  }
  const key = `${a.typeUrl}\u0000${name}`;
  const hit = byName.get(key) as Analysis<P> | undefined;
  if (hit) return hit;
  runs++;
  const findings = new Findings();
  const parsed = a.analyse(resource, findings.forResource(a.typeUrl, name));
  const result = { parsed, findings, refused: findings.rejected.length > 0 };
  byName.set(key, result);
  return result;
}

/** How many analyses ran in this process (not cache hits): the count docs/architecture.md quotes. */
export function analysesRun(): number {
  return runs;
}
