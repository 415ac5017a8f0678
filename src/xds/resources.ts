// What one resource type needs beyond the protocol: how to name a decoded resource, and which
// names a type makes us subscribe to in another (CDS → EDS, LDS → RDS).
import { decodeToJson } from './json.js';
import { lookupType } from './protos.js';
import type { DecodedResource } from './state.js';
import { TYPE, type JsonObject, type JsonValue, type XdsResource } from './types.js';

/** A google.protobuf.Any as protobufjs decodes it. */
export interface RawAny {
  type_url?: string;
  value?: Uint8Array;
}

/** The resource's own name: cluster_name for a ClusterLoadAssignment, name for the others. */
export function resourceName(typeUrl: string, json: JsonObject): string {
  const key = typeUrl === TYPE.endpoint ? 'cluster_name' : 'name';
  const v = json[key];
  return typeof v === 'string' ? v : '';
}

/**
 * Decodes one Any of a response to proto3 JSON with "@type". Errors become the resource's rejection
 * reason, named by `fallbackName` (Delta's wrapper name, or the resource's index) when unnamed.
 */
export function decodeResource(
  expectedTypeUrl: string,
  any: RawAny,
  fallbackName: string,
  wrapperName?: string,
): DecodedResource {
  const typeUrl = any.type_url ?? '';
  if (typeUrl !== expectedTypeUrl) {
    return {
      name: wrapperName ?? fallbackName,
      error: `resource of type ${typeUrl} in a ${expectedTypeUrl} response`,
    };
  }
  if (!lookupType(typeUrl))
    return { name: wrapperName ?? fallbackName, error: `unknown resource type ${typeUrl}` };
  try {
    const json = decodeToJson(typeUrl, any.value ?? new Uint8Array()) as JsonObject;
    const name = wrapperName ?? resourceName(typeUrl, json);
    if (!name) return { name: fallbackName, error: 'resource has no name' };
    return { name, resource: { '@type': typeUrl, ...json } };
  } catch (err) {
    return { name: wrapperName ?? fallbackName, error: `cannot decode: ${(err as Error).message}` };
  }
}

/** EDS names a set of clusters needs: every EDS cluster's service_name, or its name when unset. */
export function edsNamesOfClusters(clusters: XdsResource[]): Map<string, string> {
  const byCluster = new Map<string, string>();
  for (const c of clusters) {
    const r = c.resource;
    if (r['type'] !== 'EDS') continue;
    const eds = r['eds_cluster_config'];
    const serviceName =
      eds && typeof eds === 'object' && !Array.isArray(eds) && typeof eds['service_name'] === 'string'
        ? eds['service_name']
        : '';
    byCluster.set(c.name, serviceName || c.name);
  }
  return byCluster;
}

/** Route configuration names referenced through RDS anywhere in the listeners (HCMs in filter chains). */
export function rdsNamesOfListeners(listeners: XdsResource[]): string[] {
  const names = new Set<string>();
  const walk = (v: JsonValue): void => {
    if (Array.isArray(v)) for (const x of v) walk(x);
    else if (v && typeof v === 'object') {
      const rds = v['rds'];
      if (
        rds &&
        typeof rds === 'object' &&
        !Array.isArray(rds) &&
        typeof rds['route_config_name'] === 'string'
      )
        names.add(rds['route_config_name']);
      for (const x of Object.values(v)) walk(x);
    }
  };
  for (const l of listeners) walk(l.resource);
  return [...names].sort();
}
