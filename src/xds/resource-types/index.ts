// Every resource type kernmesh reads, in the order Envoy subscribes (the wildcard CDS and LDS first,
// then what they name). Adding a type: one file here, one analyser in translate/, and its line below.
import { ADDRESS } from './address.js';
import { AUTHORIZATION } from './authorization.js';
import { CLUSTER } from './cluster.js';
import { ENDPOINT } from './endpoint.js';
import { LISTENER } from './listener.js';
import type { ResourceType } from './resource-type.js';
import { ROUTE } from './route.js';

export type { ConfigDumpSection, Dependency, ResourceType } from './resource-type.js';
export { ADDRESS, AUTHORIZATION, CLUSTER, ENDPOINT, LISTENER, ROUTE };
export { edsServiceName } from './cluster.js';
export { listenerName, routeNames } from './listener.js';

export const RESOURCE_TYPES: readonly ResourceType[] = [
  CLUSTER,
  LISTENER,
  ENDPOINT,
  ROUTE,
  ADDRESS,
  AUTHORIZATION,
];

/** The types with a config_dump section, in the order Envoy writes the sections. */
export const CONFIG_DUMP_TYPES: readonly ResourceType[] = RESOURCE_TYPES.filter((t) => t.configDump).sort(
  (a, b) => a.configDump!.position - b.configDump!.position,
);

const byUrl = new Map(RESOURCE_TYPES.map((t) => [t.typeUrl, t]));
const byV2Url = new Map(RESOURCE_TYPES.filter((t) => t.v2TypeUrl).map((t) => [t.v2TypeUrl!, t]));

/** The type of a type URL, or undefined for a type kernmesh does not read. */
export function resourceType(typeUrl: string): ResourceType | undefined {
  return byUrl.get(typeUrl);
}

/** The v3 type whose Envoy v2 predecessor this type URL names (refused, never read as v3). */
export function v2Predecessor(typeUrl: string): ResourceType | undefined {
  return byV2Url.get(typeUrl);
}

/** Short label for logs, metrics and tables: "CDS", or the message name for a type we do not read. */
export function typeLabel(typeUrl: string): string {
  return byUrl.get(typeUrl)?.label ?? typeUrl.slice(typeUrl.lastIndexOf('.') + 1);
}

/**
 * The types subscribed over ADS: Envoy's four, plus the workload API's addresses when waypoints or
 * authorization need them, and its authorization policies when authorization is on.
 */
export function subscribedTypes(opts: { waypoints?: boolean; authorization?: boolean }): ResourceType[] {
  return RESOURCE_TYPES.filter((t) => {
    if (!t.deltaOnly) return true;
    if (t === AUTHORIZATION) return opts.authorization === true;
    return opts.waypoints === true || opts.authorization === true;
  });
}
