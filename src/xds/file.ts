// The file source: xDS resources from an Envoy admin config_dump (JSON or YAML), from a
// `{"resources": [Any...]}` file, or services with waypoints from ztunnel's config dump. Errors name
// the file and, for syntax errors, the line.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { parseDocument } from 'yaml';
import { TYPE, type JsonObject, type JsonValue, type ServiceWaypoint, type XdsResource } from './types.js';

export interface XdsFileContents {
  resources: XdsResource[];
  /** Services with a waypoint (workload API resources, or a ztunnel config dump). */
  waypoints: ServiceWaypoint[];
  /** What the reader skipped or could not use, for the operator. */
  notes: string[];
}

export class XdsFileError extends Error {
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = 'XdsFileError';
  }
}

export async function readXdsFile(path: string): Promise<XdsFileContents> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new XdsFileError(path, `cannot read: ${(err as Error).message}`, { cause: err });
  }
  return parseXdsFile(text, path);
}

export function parseXdsFile(text: string, file: string): XdsFileContents {
  const doc = parseText(text, file);
  if (!isObject(doc)) throw new XdsFileError(file, 'expected an object with "configs" or "resources"');
  const out: XdsFileContents = { resources: [], waypoints: [], notes: [] };
  if (Array.isArray(doc.configs)) readConfigDump(doc, file, out);
  else if (Array.isArray(doc.resources)) readResources(doc, file, out);
  else if (isObject(doc.services) && isObject(doc.workloads)) readZtunnelDump(doc, out);
  else {
    throw new XdsFileError(
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
      throw new XdsFileError(file, `${line ? `line ${line}: ` : ''}invalid JSON: ${message}`, { cause: err });
    }
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  const first = doc.errors[0];
  if (first) {
    const line = first.linePos?.[0]?.line;
    throw new XdsFileError(
      file,
      `${line ? `line ${line}: ` : ''}invalid YAML: ${first.message.split('\n')[0] ?? ''}`,
      {
        cause: first,
      },
    );
  }
  return doc.toJS({ maxAliasCount: 100 }) as JsonValue;
}

/** Envoy admin config_dump sections and the key holding each resource. */
const SECTIONS: Record<string, { lists: string[]; key: string; typeUrl: string }> = {
  ClustersConfigDump: {
    lists: ['static_clusters', 'dynamic_active_clusters', 'dynamic_warming_clusters'],
    key: 'cluster',
    typeUrl: TYPE.cluster,
  },
  ListenersConfigDump: {
    lists: ['static_listeners', 'dynamic_listeners'],
    key: 'listener',
    typeUrl: TYPE.listener,
  },
  RoutesConfigDump: {
    lists: ['static_route_configs', 'dynamic_route_configs'],
    key: 'route_config',
    typeUrl: TYPE.route,
  },
  EndpointsConfigDump: {
    lists: ['static_endpoint_configs', 'dynamic_endpoint_configs'],
    key: 'endpoint_config',
    typeUrl: TYPE.endpoint,
  },
};

function readConfigDump(doc: JsonObject, file: string, out: XdsFileContents): void {
  (doc.configs as JsonValue[]).forEach((section, i) => {
    if (!isObject(section)) throw new XdsFileError(file, `configs[${i}]: not an object`);
    const type = typeName(section['@type']);
    const spec = SECTIONS[type];
    if (!spec) {
      out.notes.push(`configs[${i}] (${type || 'no @type'}): not used by kernmesh`);
      return;
    }
    const sectionVersion = str(section.version_info);
    for (const list of spec.lists) {
      const entries = section[list];
      if (entries === undefined) continue;
      if (!Array.isArray(entries)) throw new XdsFileError(file, `configs[${i}].${list}: not a list`);
      const seen = new Set<string>();
      entries.forEach((entry, j) => {
        const at = `configs[${i}].${list}[${j}]`;
        if (!isObject(entry)) throw new XdsFileError(file, `${at}: not an object`);
        // Listeners nest their state: the active one is what Envoy serves, a warming one is accepted config.
        const state = isObject(entry.active_state)
          ? entry.active_state
          : isObject(entry.warming_state)
            ? entry.warming_state
            : entry;
        if (list === 'dynamic_listeners' && !isObject(entry.active_state) && !isObject(entry.warming_state)) {
          out.notes.push(`${at}: no active or warming state (${str(entry.name) ?? 'unnamed'}), skipped`);
          return;
        }
        const resource = state[spec.key];
        if (!isObject(resource)) throw new XdsFileError(file, `${at}: no "${spec.key}" object`);
        const name = resourceName(resource, spec.typeUrl);
        // A cluster both active and warming: the active one is what runs.
        if (seen.has(name) && list === 'dynamic_warming_clusters') return;
        seen.add(name);
        const r: XdsResource = {
          typeUrl: spec.typeUrl,
          name,
          version: str(state.version_info) ?? sectionVersion ?? '',
          resource,
        };
        const updated = str(state.last_updated);
        if (updated) r.lastUpdated = updated;
        out.resources.push(r);
      });
    }
  });
}

function readResources(doc: JsonObject, file: string, out: XdsFileContents): void {
  const version = str(doc.version_info) ?? '';
  (doc.resources as JsonValue[]).forEach((value, i) => {
    // A DiscoveryResponse wraps Delta resources as {name, version, resource}; accept both shapes.
    const resource = isObject(value) && isObject(value.resource) ? value.resource : value;
    if (!isObject(resource)) throw new XdsFileError(file, `resources[${i}]: not an object`);
    const t = str(resource['@type']);
    if (!t) throw new XdsFileError(file, `resources[${i}]: no "@type"`);
    const typeUrl = t.includes('/') ? t : `type.googleapis.com/${t}`;
    if (typeUrl === TYPE.address) {
      const w = waypointFromAddress(resource);
      if (w) out.waypoints.push(w);
    }
    out.resources.push({
      typeUrl,
      name: resourceName(resource, typeUrl),
      version: (isObject(value) ? str(value.version) : undefined) ?? version,
      resource: { ...resource, '@type': typeUrl },
    });
  });
}

function resourceName(resource: JsonObject, typeUrl: string): string {
  if (typeUrl === TYPE.endpoint) return str(resource.cluster_name) ?? '';
  if (typeUrl === TYPE.listener && str(resource.name) === undefined) {
    // Bootstrap listeners may be unnamed; Envoy then names them by address.
    const sa = isObject(resource.address) ? resource.address.socket_address : undefined;
    if (isObject(sa)) return `${str(sa.address) ?? ''}_${num(sa.port_value)}`;
  }
  if (typeUrl === TYPE.address) {
    const svc = isObject(resource.service) ? resource.service : undefined;
    if (svc) return `${str(svc.namespace) ?? ''}/${str(svc.hostname) ?? ''}`;
    const wl = isObject(resource.workload) ? resource.workload : undefined;
    return str(wl?.uid) ?? '';
  }
  return str(resource.name) ?? '';
}

/** istio.workload.Address in proto3 JSON: NetworkAddress.address is bytes, so base64. */
function waypointFromAddress(resource: JsonObject): ServiceWaypoint | undefined {
  const svc = isObject(resource.service) ? resource.service : undefined;
  const wp = svc && isObject(svc.waypoint) ? svc.waypoint : undefined;
  if (!svc || !wp) return undefined;
  const vips = (Array.isArray(svc.addresses) ? svc.addresses : [])
    .map((a) => (isObject(a) ? bytesToIp(str(a.address)) : undefined))
    .filter((a): a is string => a !== undefined);
  const ports = (Array.isArray(svc.ports) ? svc.ports : []).filter(isObject).map((p) => ({
    servicePort: num(p.service_port),
    targetPort: num(p.target_port),
  }));
  const waypoint: ServiceWaypoint['waypoint'] = { port: num(wp.hbone_mtls_port) || 15008 };
  const address = isObject(wp.address) ? bytesToIp(str(wp.address.address)) : undefined;
  if (address) waypoint.address = address;
  if (isObject(wp.hostname)) {
    waypoint.hostname = {
      namespace: str(wp.hostname.namespace) ?? '',
      hostname: str(wp.hostname.hostname) ?? '',
    };
  }
  return { namespace: str(svc.namespace) ?? '', hostname: str(svc.hostname) ?? '', vips, ports, waypoint };
}

/** ztunnel's own dump: services keyed by name, VIPs as `network/ip`, waypoints as {destination, port}. */
function readZtunnelDump(doc: JsonObject, out: XdsFileContents): void {
  for (const svc of Object.values(doc.services as JsonObject)) {
    if (!isObject(svc)) continue;
    const vips = (Array.isArray(svc.vips) ? svc.vips : [])
      .map((v) => stripNetwork(str(v)))
      .filter((v): v is string => v !== undefined);
    const ports = Object.entries(isObject(svc.ports) ? svc.ports : {}).map(([k, v]) => ({
      servicePort: Number(k),
      targetPort: num(v),
    }));
    const wp = isObject(svc.waypoint) ? svc.waypoint : undefined;
    if (!wp) continue;
    const address = stripNetwork(str(wp.destination));
    const waypoint: ServiceWaypoint['waypoint'] = { port: num(wp.port) || 15008 };
    if (address) waypoint.address = address;
    out.waypoints.push({
      namespace: str(svc.namespace) ?? '',
      hostname: str(svc.hostname) ?? '',
      vips,
      ports,
      waypoint,
    });
  }
  for (const w of Object.values(doc.workloads as JsonObject)) {
    if (!isObject(w) || !isObject(w.waypoint)) continue;
    out.notes.push(
      `workload ${str(w.namespace) ?? ''}/${str(w.name) ?? ''} has waypoint ${stripNetwork(str(w.waypoint.destination)) ?? '?'}:${num(w.waypoint.port)}: ` +
        'workload-addressed waypoints are not applied (kernmesh rewrites service VIPs only)',
    );
  }
  out.notes.push('ztunnel dump: services and waypoints only; no clusters or listeners');
}

function stripNetwork(v: string | undefined): string | undefined {
  if (!v) return undefined;
  const ip = v.slice(v.indexOf('/') + 1);
  return isIP(ip) ? ip : undefined;
}

function bytesToIp(b64: string | undefined): string | undefined {
  if (!b64) return undefined;
  const bytes = Buffer.from(b64, 'base64');
  if (bytes.length === 4) return [...bytes].join('.');
  if (bytes.length === 16) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
    // Let the URL parser compress zeros into the canonical form.
    return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
  }
  return undefined;
}

function typeName(v: JsonValue | undefined): string {
  const t = str(v) ?? '';
  return t.slice(t.lastIndexOf('.') + 1);
}

function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: JsonValue | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function num(v: JsonValue | undefined): number {
  return typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : 0;
}
