// Reading a file of xDS config: an Envoy admin config_dump (JSON or YAML, snake_case or
// lowerCamelCase as istiod's own /debug/config_dump writes it), a `{"resources": [Any...]}` file, or
// ztunnel's config dump (maps before Istio 1.24, lists since). Every resource comes out decoded to
// canonical proto3 JSON through the one mapping (proto-json.ts), or with the reason it cannot be:
// Envoy's v2 API, a field its message does not have, a wrong type. Nothing is dropped silently: what
// is not used is said in `notes`. Errors that make the whole file unusable name the file and line.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { parseDocument } from 'yaml';
import { encodeAddress } from '../net/address.js';
import { V2_REFUSAL } from './decode.js';
import { normalizeJson } from './proto-json.js';
import { arr, isObject, num, obj, str } from './read-json.js';
import {
  ADDRESS,
  RESOURCE_TYPES,
  resourceType,
  v2Predecessor,
  type ResourceType,
} from './resource-types/index.js';
import type { JsonObject, JsonValue } from './types.js';

/** One resource of the file: decoded, or refused with its reason (as a NACK would list it). */
export interface FileResource {
  typeUrl: string;
  name: string;
  version: string;
  /** Canonical proto3 JSON with "@type"; absent when the resource was refused on reading. */
  resource?: JsonObject;
  error?: string;
  lastUpdated?: string;
  /** Where in the file it was found (`configs[1].dynamic_active_clusters[3]`). */
  at: string;
}

export interface ConfigFileContents {
  /** The file's layout, for the operator: which kind of document and which spelling. */
  layout: string;
  resources: FileResource[];
  /** What the reader skipped or could not use, for the operator. */
  notes: string[];
}

export class ConfigFileError extends Error {
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = 'ConfigFileError';
  }
}

export async function readConfigFile(path: string): Promise<ConfigFileContents> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigFileError(path, `cannot read: ${(err as Error).message}`, { cause: err });
  }
  return parseConfigFile(text, path);
}

export function parseConfigFile(text: string, file: string): ConfigFileContents {
  const doc = parseText(text, file);
  if (!isObject(doc)) throw new ConfigFileError(file, 'expected an object with "configs" or "resources"');
  const out: ConfigFileContents = { layout: '', resources: [], notes: [] };
  if (Array.isArray(doc.configs)) readConfigDump(doc, file, out);
  else if (Array.isArray(doc.resources)) readResources(doc, file, out);
  else if (isZtunnelDump(doc)) readZtunnelDump(doc, out);
  else {
    throw new ConfigFileError(
      file,
      'not a config dump ("configs"), a resources file ("resources") or a ztunnel dump ("services", "workloads")',
    );
  }
  return out;
}

function parseText(text: string, file: string): JsonValue {
  const trimmed = text.trimStart();
  if (file.endsWith('.json') || trimmed.startsWith('{') || trimmed.startsWith('[')) {
    try {
      return JSON.parse(text) as JsonValue;
    } catch (err) {
      const message = (err as Error).message;
      const pos = /position (\d+)/.exec(message);
      const line = pos?.[1] ? text.slice(0, Number(pos[1])).split('\n').length : undefined;
      throw new ConfigFileError(file, `${line ? `line ${line}: ` : ''}invalid JSON: ${message}`, {
        cause: err,
      });
    }
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  const first = doc.errors[0];
  if (first) {
    const line = first.linePos?.[0]?.line;
    throw new ConfigFileError(
      file,
      `${line ? `line ${line}: ` : ''}invalid YAML: ${first.message.split('\n')[0] ?? ''}`,
      { cause: first },
    );
  }
  return doc.toJS({ maxAliasCount: 100 }) as JsonValue;
}

/** proto3 JSON readers accept both spellings of a field: `dynamic_active_clusters` or `dynamicActiveClusters`. */
function field(o: JsonObject, snake: string): JsonValue | undefined {
  const v = o[snake];
  return v !== undefined ? v : o[snake.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase())];
}

function typeName(v: JsonValue | undefined): string {
  const t = str(v) ?? '';
  return t.slice(t.lastIndexOf('.') + 1);
}

/** The lists of Envoy's v2 admin layout that v3 renamed (listeners had active/warming/draining lists). */
const V2_LISTS = ['dynamic_active_listeners', 'dynamic_warming_listeners', 'dynamic_draining_listeners'];

function readConfigDump(doc: JsonObject, file: string, out: ConfigFileContents): void {
  const spellings = new Set<string>();
  (doc.configs as JsonValue[]).forEach((section, i) => {
    if (!isObject(section)) throw new ConfigFileError(file, `configs[${i}]: not an object`);
    const sectionType = str(section['@type']) ?? '';
    const t = RESOURCE_TYPES.find((x) => x.configDump?.section === typeName(sectionType));
    if (!t?.configDump) {
      out.notes.push(`configs[${i}] (${typeName(sectionType) || 'no @type'}): not used by kernmesh`);
      return;
    }
    const v2Section = sectionType.includes('.v2alpha.') || sectionType.includes('.v2.');
    const sectionVersion = str(field(section, 'version_info'));
    const lists = [...t.configDump.lists, ...(t.configDump.nestedState ? V2_LISTS : [])];
    for (const list of lists) {
      const entries = field(section, list);
      if (entries === undefined) continue;
      if (section[list] === undefined) spellings.add('lowerCamelCase');
      else if (list.includes('_')) spellings.add('snake_case');
      if (!Array.isArray(entries)) throw new ConfigFileError(file, `configs[${i}].${list}: not a list`);
      const seen = new Set<string>();
      entries.forEach((entry, j) => {
        const at = `configs[${i}].${list}[${j}]`;
        if (!isObject(entry)) throw new ConfigFileError(file, `${at}: not an object`);
        // Listeners nest their state: the active one is what Envoy serves, a warming one is accepted config.
        const active = obj(field(entry, 'active_state'));
        const warming = obj(field(entry, 'warming_state'));
        // Only dynamic_listeners nests (static_listeners and v2's lists do not).
        const nested = t.configDump!.nestedState && list === t.configDump!.dynamicList;
        const state = nested ? (active ?? warming) : entry;
        if (!state) {
          const error = obj(field(entry, 'error_state'));
          out.notes.push(
            `${at}: ${str(entry.name) ?? 'unnamed'} has no active or warming state${error ? ` (refused by the proxy: ${str(field(error, 'details')) ?? ''})` : ''}, skipped`,
          );
          return;
        }
        const resource = obj(field(state, t.configDump!.key));
        if (!resource) {
          // An entry with only an error_state: the proxy refused it and holds nothing for it.
          if (obj(field(entry, 'error_state'))) {
            out.notes.push(`${at}: refused by the proxy that wrote the dump (error_state only), skipped`);
            return;
          }
          throw new ConfigFileError(file, `${at}: no "${t.configDump!.key}" object`);
        }
        const r = fileResource(t, dumpRendering(t, resource), at, v2Section || V2_LISTS.includes(list));
        // A cluster both active and warming: the active one is what runs.
        if (seen.has(r.name) && list === 'dynamic_warming_clusters') return;
        seen.add(r.name);
        r.version = str(field(state, 'version_info')) ?? sectionVersion ?? '';
        const updated = str(field(state, 'last_updated'));
        if (updated) r.lastUpdated = updated;
        out.resources.push(r);
      });
    }
  });
  out.layout = `Envoy config_dump (${[...spellings].sort().join(' and ') || 'no resources'})`;
}

/**
 * An EndpointsConfigDump is Envoy's rendering of its host sets, not config it was sent: a locality
 * with no weight is written as `load_balancing_weight: 0`, which as input Envoy's rules refuse (>= 1).
 */
function dumpRendering(t: ResourceType, resource: JsonObject): JsonObject {
  if (t.configDump?.section !== 'EndpointsConfigDump' || !Array.isArray(resource.endpoints)) return resource;
  return {
    ...resource,
    endpoints: resource.endpoints.map((g) => {
      if (!isObject(g)) return g;
      const w = field(g, 'load_balancing_weight');
      if (w !== 0 && !(isObject(w) && w.value === 0)) return g;
      const { load_balancing_weight: _a, loadBalancingWeight: _b, ...rest } = g;
      return rest;
    }),
  };
}

/** One resource of a dump or resources file, decoded through the proto3 JSON mapping, or refused. */
function fileResource(t: ResourceType, raw: JsonObject, at: string, v2: boolean): FileResource {
  const declared = str(raw['@type']);
  const name = nameOf(t, raw);
  const base = { typeUrl: t.typeUrl, name: name || at, version: '', at };
  if (v2 || (declared !== undefined && v2Predecessor(declared) === t)) return { ...base, error: V2_REFUSAL };
  if (declared !== undefined && declared !== t.typeUrl)
    return { ...base, error: `resource of type ${declared} where a ${t.typeUrl} belongs` };
  const { '@type': _type, ...fields } = raw;
  try {
    // Decoding with the protos catches misspelt fields and wrong types, as istiod's protobuf would,
    // and turns either spelling into the canonical one every later stage reads.
    const resource = { '@type': t.typeUrl, ...(normalizeJson(t.typeUrl, fields) as JsonObject) };
    return { ...base, name: t.nameOf(resource) || base.name, resource };
  } catch (e) {
    const short = t.typeUrl.slice(t.typeUrl.lastIndexOf('.') + 1);
    return { ...base, error: `not a valid ${short}: ${(e as Error).message}` };
  }
}

/** A name from the raw resource in either spelling, so a refused resource is still named. */
function nameOf(t: ResourceType, raw: JsonObject): string {
  const snake: JsonObject = {};
  for (const [k, v] of Object.entries(raw)) snake[k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = v;
  return t.nameOf(snake);
}

function readResources(doc: JsonObject, file: string, out: ConfigFileContents): void {
  out.layout = 'resources file';
  const version = str(field(doc, 'version_info')) ?? '';
  (doc.resources as JsonValue[]).forEach((value, i) => {
    const at = `resources[${i}]`;
    // A DiscoveryResponse wraps Delta resources as {name, version, resource}; accept both shapes.
    const wrapped = isObject(value) && isObject(value.resource);
    const raw = wrapped ? (value.resource as JsonObject) : value;
    if (!isObject(raw)) throw new ConfigFileError(file, `${at}: not an object`);
    const declared = str(raw['@type']);
    if (!declared) throw new ConfigFileError(file, `${at}: no "@type"`);
    const typeUrl = declared.includes('/') ? declared : `type.googleapis.com/${declared}`;
    const t = resourceType(typeUrl) ?? v2Predecessor(typeUrl);
    if (!t) {
      out.notes.push(`${at} (${typeUrl}): a resource type kernmesh does not read, not used`);
      return;
    }
    const r = fileResource(t, { ...raw, '@type': typeUrl }, at, false);
    const wrapperName = wrapped ? str(value.name) : undefined;
    if (wrapperName) r.name = wrapperName;
    r.version = (wrapped ? str(value.version) : undefined) ?? version;
    out.resources.push(r);
  });
}

function isZtunnelDump(doc: JsonObject): boolean {
  const layout = (v: JsonValue | undefined) => Array.isArray(v) || isObject(v);
  return layout(doc.services) && layout(doc.workloads);
}

/**
 * ztunnel's own dump, turned into the workload API's Address resources it was built from, so one
 * parser (waypoints.ts) reads both. Before Istio 1.24 services and workloads are maps and a waypoint
 * is `{destination: "network/ip", port}`; since, they are lists and a waypoint is
 * `{destination: "network/ip" | "namespace/hostname", hboneMtlsPort}`.
 */
function readZtunnelDump(doc: JsonObject, out: ConfigFileContents): void {
  const lists = Array.isArray(doc.services) || Array.isArray(doc.workloads);
  out.layout = `ztunnel config dump (${lists ? 'lists, Istio 1.24 and later' : 'maps, before Istio 1.24'})`;
  const entries = (v: JsonValue | undefined): [string, JsonObject][] =>
    Array.isArray(v)
      ? v.filter(isObject).map((x, i) => [String(i), x])
      : Object.entries(obj(v) ?? {}).filter((e): e is [string, JsonObject] => isObject(e[1]));
  for (const [key, svc] of entries(doc.services)) {
    const at = `services[${lists ? key : JSON.stringify(key)}]`;
    const address: JsonObject = {
      service: {
        name: str(svc.name) ?? '',
        namespace: str(svc.namespace) ?? '',
        hostname: str(svc.hostname) ?? '',
        addresses: arr(svc.vips ?? svc.addresses)
          .map((v) => networkAddress(str(v)))
          .filter((a): a is JsonObject => a !== undefined),
        ports: Object.entries(obj(svc.ports) ?? {}).map(([k, v]) => ({
          service_port: Number(k),
          target_port: num(v) ?? 0,
        })),
        ...(isObject(svc.waypoint) ? { waypoint: gatewayAddress(svc.waypoint) } : {}),
      },
    };
    out.resources.push(fileResource(ADDRESS, address, at, false));
  }
  for (const [key, w] of entries(doc.workloads)) {
    const at = `workloads[${lists ? key : JSON.stringify(key)}]`;
    const address: JsonObject = {
      workload: {
        uid: str(w.uid) ?? `${str(w.namespace) ?? ''}/${str(w.name) ?? key}`,
        name: str(w.name) ?? '',
        namespace: str(w.namespace) ?? '',
        addresses: arr(w.workloadIps)
          .map((v) => ipBytes(str(v)))
          .filter((b): b is string => b !== undefined),
        ...(isObject(w.waypoint) ? { waypoint: gatewayAddress(w.waypoint) } : {}),
      },
    };
    out.resources.push(fileResource(ADDRESS, address, at, false));
  }
  const other = Object.keys(doc).filter((k) => k !== 'services' && k !== 'workloads');
  if (other.length > 0) out.notes.push(`ztunnel dump: ${other.join(', ')} not used by kernmesh`);
}

/** ztunnel writes a waypoint's destination as `network/ip` or `namespace/hostname`. */
function gatewayAddress(wp: JsonObject): JsonObject {
  const destination = str(wp.destination) ?? '';
  const slash = destination.indexOf('/');
  const left = destination.slice(0, slash);
  const right = destination.slice(slash + 1);
  const port = num(wp.hboneMtlsPort ?? wp.hbone_mtls_port ?? wp.port);
  const out: JsonObject =
    slash >= 0 && isIP(right)
      ? { address: networkAddress(destination)! }
      : { hostname: { namespace: slash >= 0 ? left : '', hostname: slash >= 0 ? right : destination } };
  if (port !== undefined) out.hbone_mtls_port = port;
  return out;
}

/** `network/ip` (network possibly empty) as istio.workload.NetworkAddress in proto3 JSON. */
function networkAddress(v: string | undefined): JsonObject | undefined {
  if (!v) return undefined;
  const slash = v.indexOf('/');
  const bytes = ipBytes(v.slice(slash + 1));
  if (!bytes) return undefined;
  return { network: slash > 0 ? v.slice(0, slash) : '', address: bytes };
}

/** An IP literal as proto3 JSON bytes (base64): 4 bytes for IPv4, 16 for IPv6, as the workload API has them. */
function ipBytes(ip: string | undefined): string | undefined {
  const family = ip ? isIP(ip) : 0;
  if (!ip || family === 0) return undefined;
  const b = encodeAddress(ip);
  return (family === 4 ? b.subarray(0, 4) : b).toString('base64');
}
