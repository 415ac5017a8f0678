// Reads an xDS file with xds/'s reader (config_dump JSON/YAML or {"resources": [Any...]}), then
// gives each resource the checks istiod's pushes get: it must decode as its Envoy type and pass
// translate/'s validation. One that does not is refused with its reason (as a NACK would list it)
// and the others are kept.
import { validate } from '../translate/index.js';
import { parseXdsFile } from '../xds/file.js';
import { normalizeJson } from '../xds/proto-json.js';
import { TYPE, type JsonObject, type Rejection, type XdsResource } from '../xds/types.js';
import type { FileReader } from './file-source.js';

const ENVOY_TYPES = [TYPE.cluster, TYPE.endpoint, TYPE.listener, TYPE.route] as string[];

export const readXdsFile: FileReader = (path, text, fileVersion) => {
  const contents = parseXdsFile(text, path);
  const rejections: (Rejection & { failed?: JsonObject })[] = [];
  const decoded: XdsResource[] = [];
  for (const r of contents.resources) {
    if (!ENVOY_TYPES.includes(r.typeUrl)) continue; // workload API entries arrive as waypoints
    // Decoding with the Envoy protos catches misspelt fields and wrong types, as istiod's protobuf would.
    const { '@type': _type, ...fields } = r.resource;
    try {
      normalizeJson(r.typeUrl.slice(r.typeUrl.lastIndexOf('/') + 1), fields);
    } catch (e) {
      const short = r.typeUrl.slice(r.typeUrl.lastIndexOf('.') + 1);
      // No `failed` copy: what does not decode cannot be shown as an Any in /config_dump.
      rejections.push({
        typeUrl: r.typeUrl,
        name: r.name,
        reason: `not a valid ${short}: ${(e as Error).message}`,
      });
      continue;
    }
    decoded.push({ ...r, version: r.version || fileVersion });
  }
  const refused = new Set<string>();
  for (const typeUrl of ENVOY_TYPES) {
    const ofType = decoded.filter((r) => r.typeUrl === typeUrl);
    for (const rej of validate(typeUrl, ofType)) {
      refused.add(`${rej.typeUrl} ${rej.name}`);
      const failed = ofType.find((r) => r.name === rej.name)?.resource;
      rejections.push({ ...rej, ...(failed ? { failed } : {}) });
    }
  }
  return {
    resources: decoded.filter((r) => !refused.has(`${r.typeUrl} ${r.name}`)),
    rejections,
    waypoints: contents.waypoints,
    notes: contents.notes,
  };
};
