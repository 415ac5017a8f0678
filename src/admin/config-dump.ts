// Envoy's /config_dump, built from the resources the agent accepted, in the layout of
// envoy.admin.v3.ConfigDump so that istioctl proxy-config and other Envoy tooling read it.
import { redactSensitive } from './redact.js';
import { CONFIG_DUMP_TYPES, type ResourceType } from '../xds/resource-types/index.js';
import type { JsonObject, JsonValue, Rejection, XdsResource } from '../xds/types.js';

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
  /**
   * Dumps of kernmesh's own after Envoy's (the L4 authorization in force). istioctl reads a dump
   * whose configs hold a type it does not know: it decodes that Any as an empty message.
   */
  extra?: JsonObject[];
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

/** A resource as config_dump prints it: typed, and with Envoy's sensitive fields redacted. */
function withType(resource: JsonObject, typeUrl: string): JsonObject {
  return redactSensitive(resource['@type'] ? resource : { '@type': typeUrl, ...resource });
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

/** One type's section of the dump, laid out as its ResourceType says (listeners nest their state). */
function sectionOf(t: ResourceType, input: ConfigDumpInput, rx: RegExp | undefined, now: string): JsonObject {
  const dump = t.configDump!;
  const rejected = (input.rejections ?? []).filter(
    (r) => r.typeUrl === t.typeUrl && (!rx || rx.test(r.name)),
  );
  const resources = byType(input.resources, t.typeUrl, rx);
  const names = new Set(resources.map((r) => r.name));
  const version = dump.sectionVersion ? input.versions?.[t.typeUrl] : undefined;
  const entry = (r: XdsResource): JsonObject => {
    const state: JsonObject = {
      version_info: r.version,
      [dump.key]: withType(r.resource, t.typeUrl),
      last_updated: stamp(r, now),
    };
    const out: JsonObject = dump.nestedState ? { name: r.name, active_state: state } : state;
    const rej = rejected.find((x) => x.name === r.name);
    if (rej) {
      out.error_state = errorState(rej, t.typeUrl, now);
      out.client_status = 'NACKED';
    }
    return out;
  };
  // A resource refused before it was ever accepted still shows, with its error, as Envoy does.
  const refusedOnly = (x: (typeof rejected)[number]): JsonObject =>
    dump.nestedState
      ? { name: x.name, error_state: errorState(x, t.typeUrl, now), client_status: 'NACKED' }
      : {
          ...(x.failed ? { [dump.key]: withType(x.failed, t.typeUrl) } : {}),
          error_state: errorState(x, t.typeUrl, now),
          client_status: 'NACKED',
          last_updated: x.at ?? now,
        };
  return {
    '@type': `${ADMIN}${dump.section}`,
    ...(version ? { version_info: version } : {}),
    [dump.dynamicList]: [
      ...resources.map(entry),
      ...rejected.filter((x) => !names.has(x.name)).map(refusedOnly),
    ],
  };
}

/** Builds the ConfigDump JSON. Sections follow Envoy's order: bootstrap, clusters, endpoints, listeners, routes. */
export function buildConfigDump(input: ConfigDumpInput, opts: ConfigDumpOptions = {}): JsonObject {
  const now = new Date().toISOString();
  const bootstrapDump: JsonObject = {
    '@type': `${ADMIN}BootstrapConfigDump`,
    bootstrap: input.bootstrap,
    last_updated: input.startedAt,
  };
  const dumps = [
    bootstrapDump,
    ...CONFIG_DUMP_TYPES.filter((t) => !t.configDump!.onRequestOnly || opts.includeEds).map((t) =>
      sectionOf(t, input, opts.nameRegex, now),
    ),
    ...(input.extra ?? []),
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
const ELEMENT_TYPES: Record<string, string> = Object.fromEntries(
  CONFIG_DUMP_TYPES.flatMap((t) => {
    const d = t.configDump!;
    return d.lists.map((l) => [l, l.startsWith('static_') ? d.staticElement : d.dynamicElement]);
  }),
);

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
