// One resource of an ADS response, from its Any to proto3 JSON with "@type" and its name, or the
// reason it cannot be: a wrong or unknown type, Envoy's v2 API, bytes that do not decode.
import { countEndpointsInBytes, overLimit, type ResourceLimits } from './limits.js';
import { decodeToJson } from './proto-json.js';
import { lookupType } from './protos.js';
import { resourceType, v2Predecessor } from './resource-types/index.js';
import type { DecodedResource } from './state.js';
import { TYPE, type JsonObject } from './types.js';

/** A google.protobuf.Any as protobufjs decodes it. */
export interface RawAny {
  type_url?: string;
  value?: Uint8Array;
}

/** Why a v2 resource is refused, in one sentence: it is never read as if it were v3. */
export const V2_REFUSAL = "xDS v2 is not supported (Envoy's v2 API, removed in Istio 1.8; istiod sends v3)";

/**
 * Decodes one Any of a response. Errors become the resource's rejection reason, named by
 * `fallbackName` (the resource's index) when the resource has no name of its own.
 */
export function decodeResource(
  expectedTypeUrl: string,
  any: RawAny,
  fallbackName: string,
  wrapperName?: string,
  limits?: ResourceLimits,
): DecodedResource {
  const typeUrl = any.type_url ?? '';
  if (typeUrl !== expectedTypeUrl) {
    const reason =
      v2Predecessor(typeUrl)?.typeUrl === expectedTypeUrl
        ? V2_REFUSAL
        : `resource of type ${typeUrl} in a ${expectedTypeUrl} response`;
    return { name: wrapperName ?? fallbackName, error: reason };
  }
  if (!lookupType(typeUrl))
    return { name: wrapperName ?? fallbackName, error: `unknown resource type ${typeUrl}` };
  if (limits && typeUrl === TYPE.endpoint) {
    // Refused before anything is built from it: its cost stays that of one pass over its bytes.
    const scan = countEndpointsInBytes(any.value ?? new Uint8Array());
    const reason = overLimit(typeUrl, scan?.count, limits);
    if (reason) return { name: wrapperName ?? (scan?.clusterName || fallbackName), error: reason };
  }
  try {
    const json = decodeToJson(typeUrl, any.value ?? new Uint8Array()) as JsonObject;
    const name = wrapperName ?? resourceType(typeUrl)?.nameOf(json) ?? '';
    if (!name) return { name: fallbackName, error: 'resource has no name' };
    return { name, resource: { '@type': typeUrl, ...json } };
  } catch (err) {
    const message = (err as Error).message;
    const bad = /utf-8/i.test(message) ? invalidUtf8Path(typeUrl, any.value ?? new Uint8Array()) : undefined;
    const error = bad !== undefined ? `${bad || '(resource)'}: not valid UTF-8` : `cannot decode: ${message}`;
    return { name: wrapperName ?? fallbackName, error };
  }
}

/**
 * Where a string that is not UTF-8 sits: the strict decoder only says that one is there, so decode
 * leniently (protobufjs puts U+FFFD in its place) and look for the replacement character.
 */
function invalidUtf8Path(typeUrl: string, bytes: Uint8Array): string | undefined {
  let message: unknown;
  try {
    message = lookupType(typeUrl)?.toObject(lookupType(typeUrl)!.decode(bytes), { defaults: false });
  } catch {
    return undefined;
  }
  const walk = (v: unknown, path: string): string | undefined => {
    if (typeof v === 'string') return v.includes('\uFFFD') ? path : undefined;
    if (Array.isArray(v)) {
      for (const [i, x] of v.entries()) {
        const p = walk(x, `${path}[${i}]`);
        if (p !== undefined) return p;
      }
    } else if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
      for (const [k, x] of Object.entries(v)) {
        const p = walk(x, path ? `${path}.${k}` : k);
        if (p !== undefined) return p;
      }
    }
    return undefined;
  };
  return walk(message, '');
}
