// Envoy's /config_dump, built from the resources the agent accepted, in the layout of
// envoy.admin.v3.ConfigDump so that istioctl proxy-config and other Envoy tooling read it.
import { TYPE, type JsonObject, type JsonValue, type Rejection, type XdsResource } from '../xds/types.js';

const ADMIN = 'type.googleapis.com/envoy.admin.v3.';

export interface ConfigDumpInput {
  /** The Bootstrap the agent would have been started with: at least `node`. */
  bootstrap: JsonObject;
  startedAt: string;
  /** Accepted resources, as xds/ keeps them. */
  resources: XdsResource[];
  /** Resources refused by validation or translation, shown as error_state on their entry. */
  rejections?: (Rejection & { failed?: JsonObject; version?: string; at?: string })[];
  /** Last accepted version per type URL, the dump's version_info. */
  versions?: Record<string, string>;
}

export interface ConfigDumpOptions {
  includeEds?: boolean;
  /** FieldMask paths (comma-separated in the query), applied to each top-level dump. */
  mask?: string[];
  /** Only this repeated field of the dumps (e.g. dynamic_active_clusters), each element as its own Any. */
  resource?: string;
  /** Keep only resources whose name matches. */
  nameRegex?: RegExp;
}

function byType(resources: XdsResource[], typeUrl: string, nameRegex?: RegExp): XdsResource[] {
  return resources
    .filter((r) => r.typeUrl === typeUrl && (!nameRegex || nameRegex.test(r.name)))
    .sort((a, b) => a.name.localeCompare(b.name));
}

function stamp(r: XdsResource, fallback: string): string {
  return r.lastUpdated ?? fallback;
}

function withType(resource: JsonObject, typeUrl: string): JsonObject {
  return resource['@type'] ? resource : { '@type': typeUrl, ...resource };
}

function errorState(
  rej: NonNullable<ConfigDumpInput['rejections']>[number],
  typeUrl: string,
  now: string,
): JsonObject {
  // Without the failed resource the entry has no name of its own: the details carry it.
  const details = rej.failed ? rej.reason : `${rej.name}: ${rej.reason}`;
  const state: JsonObject = { details, last_update_attempt: rej.at ?? now };
  if (rej.failed) state.failed_configuration = withType(rej.failed, typeUrl);
  if (rej.version) state.version_info = rej.version;
  return state;
}

/** Builds the ConfigDump JSON. Sections follow Envoy's order: bootstrap, clusters, endpoints, listeners, routes. */
export function buildConfigDump(input: ConfigDumpInput, opts: ConfigDumpOptions = {}): JsonObject {
  const now = new Date().toISOString();
  const rx = opts.nameRegex;
  const rejected = (typeUrl: string) =>
    (input.rejections ?? []).filter((r) => r.typeUrl === typeUrl && (!rx || rx.test(r.name)));
  const versionOf = (typeUrl: string) => input.versions?.[typeUrl];

  const clusters = byType(input.resources, TYPE.cluster, rx);
  const clusterNames = new Set(clusters.map((c) => c.name));
  const clusterDump: JsonObject = {
    '@type': `${ADMIN}ClustersConfigDump`,
    ...(versionOf(TYPE.cluster) ? { version_info: versionOf(TYPE.cluster)! } : {}),
    dynamic_active_clusters: [
      ...clusters.map((r) => {
        const entry: JsonObject = {
          version_info: r.version,
          cluster: withType(r.resource, TYPE.cluster),
          last_updated: stamp(r, now),
        };
        const rej = rejected(TYPE.cluster).find((x) => x.name === r.name);
        if (rej) {
          entry.error_state = errorState(rej, TYPE.cluster, now);
          entry.client_status = 'NACKED';
        }
        return entry;
      }),
      // A cluster refused before it was ever accepted still shows, with its error, as Envoy does.
      ...rejected(TYPE.cluster)
        .filter((x) => !clusterNames.has(x.name))
        .map((x) => ({
          ...(x.failed ? { cluster: withType(x.failed, TYPE.cluster) } : {}),
          error_state: errorState(x, TYPE.cluster, now),
          client_status: 'NACKED',
          last_updated: x.at ?? now,
        })),
    ],
  };

  const endpointDump: JsonObject = {
    '@type': `${ADMIN}EndpointsConfigDump`,
    dynamic_endpoint_configs: byType(input.resources, TYPE.endpoint, rx).map((r) => ({
      version_info: r.version,
      endpoint_config: withType(r.resource, TYPE.endpoint),
      last_updated: stamp(r, now),
    })),
  };

  const listenerRejections = rejected(TYPE.listener);
  const listeners = byType(input.resources, TYPE.listener, rx);
  const listenerNames = new Set(listeners.map((l) => l.name));
  const listenerDump: JsonObject = {
    '@type': `${ADMIN}ListenersConfigDump`,
    ...(versionOf(TYPE.listener) ? { version_info: versionOf(TYPE.listener)! } : {}),
    dynamic_listeners: [
      ...listeners.map((r) => {
        const entry: JsonObject = {
          name: r.name,
          active_state: {
            version_info: r.version,
            listener: withType(r.resource, TYPE.listener),
            last_updated: stamp(r, now),
          },
        };
        const rej = listenerRejections.find((x) => x.name === r.name);
        if (rej) {
          entry.error_state = errorState(rej, TYPE.listener, now);
          entry.client_status = 'NACKED';
        }
        return entry;
      }),
      ...listenerRejections
        .filter((x) => !listenerNames.has(x.name))
        .map((x) => ({
          name: x.name,
          error_state: errorState(x, TYPE.listener, now),
          client_status: 'NACKED',
        })),
    ],
  };

  const routeDump: JsonObject = {
    '@type': `${ADMIN}RoutesConfigDump`,
    dynamic_route_configs: byType(input.resources, TYPE.route, rx).map((r) => {
      const entry: JsonObject = {
        version_info: r.version,
        route_config: withType(r.resource, TYPE.route),
        last_updated: stamp(r, now),
      };
      const rej = rejected(TYPE.route).find((x) => x.name === r.name);
      if (rej) {
        entry.error_state = errorState(rej, TYPE.route, now);
        entry.client_status = 'NACKED';
      }
      return entry;
    }),
  };

  const bootstrapDump: JsonObject = {
    '@type': `${ADMIN}BootstrapConfigDump`,
    bootstrap: input.bootstrap,
    last_updated: input.startedAt,
  };

  const dumps = [
    bootstrapDump,
    clusterDump,
    ...(opts.includeEds ? [endpointDump] : []),
    listenerDump,
    routeDump,
  ];

  if (opts.resource) {
    const field = opts.resource;
    const elements: JsonValue[] = [];
    for (const d of dumps) {
      const list = d[field];
      if (!Array.isArray(list)) continue;
      const elementType = `${d['@type'] as string}.${ELEMENT_TYPES[field] ?? field}`;
      for (const e of list as JsonObject[]) {
        const masked = opts.mask ? applyMask(e, opts.mask) : e;
        elements.push({ '@type': elementType, ...masked });
      }
    }
    if (elements.length === 0 && !dumps.some((d) => field in d))
      throw new AdminRequestError(`${field} is not a repeated field of any config dump`);
    return { configs: elements };
  }
  return {
    configs: opts.mask ? dumps.map((d) => ({ '@type': d['@type']!, ...applyMask(d, opts.mask!) })) : dumps,
  };
}

/** The message type of each repeated field, for `resource=` dumps (Envoy wraps each element in its own Any). */
const ELEMENT_TYPES: Record<string, string> = {
  dynamic_active_clusters: 'DynamicCluster',
  dynamic_warming_clusters: 'DynamicCluster',
  static_clusters: 'StaticCluster',
  dynamic_endpoint_configs: 'DynamicEndpointConfig',
  static_endpoint_configs: 'StaticEndpointConfig',
  dynamic_listeners: 'DynamicListener',
  static_listeners: 'StaticListener',
  dynamic_route_configs: 'DynamicRouteConfig',
  static_route_configs: 'StaticRouteConfig',
};

/** A bad admin request (400), as opposed to an agent fault (500). */
export class AdminRequestError extends Error {}

/**
 * Applies a protobuf FieldMask to proto3 JSON: keeps only the listed paths; repeated fields are
 * masked element by element, and an Any keeps its @type so the result still decodes.
 */
export function applyMask(obj: JsonObject, paths: string[]): JsonObject {
  const tree: MaskTree = new Map();
  for (const p of paths) {
    let node = tree;
    for (const part of p.split('.').filter(Boolean)) {
      if (!node.has(part)) node.set(part, new Map());
      node = node.get(part)!;
    }
  }
  return maskObject(obj, tree);
}

type MaskTree = Map<string, MaskTree>;

function maskValue(v: JsonValue, tree: MaskTree): JsonValue | undefined {
  if (tree.size === 0) return v;
  if (Array.isArray(v))
    return v.map((e) => maskValue(e, tree)).filter((e): e is JsonValue => e !== undefined);
  if (v !== null && typeof v === 'object') return maskObject(v, tree);
  return undefined;
}

function maskObject(obj: JsonObject, tree: MaskTree): JsonObject {
  const out: JsonObject = {};
  if (typeof obj['@type'] === 'string') out['@type'] = obj['@type'];
  for (const [key, sub] of tree) {
    const v = obj[key];
    if (v === undefined) continue;
    const masked = maskValue(v, sub);
    if (masked !== undefined) out[key] = masked;
  }
  return out;
}
