// The one proto3 JSON mapping of kernmesh, every reader's and writer's: @bufbuild/protobuf (which
// passes the protobuf conformance suite: Any, Duration, Timestamp, Struct, wrappers, 64-bit integers,
// enums by name, bytes, both field-name spellings) over descriptors built from our protos
// (descriptors.ts). Output uses the proto's own field names (snake_case), as Envoy's config_dump.
// What is ours: an Any whose type no proto here declares (Istio-private filters we do not know)
// stays opaque as {"@type": url, "@bytes": base64} and is re-encoded byte for byte; and an error
// names the path of the value at fault inside the message.
import {
  create,
  fromBinary,
  fromJson as bufFromJson,
  toBinary,
  toJson as bufToJson,
  type DescField,
  type DescMessage,
  type JsonValue as BufJsonValue,
  type Message,
} from '@bufbuild/protobuf';
import { bufbuildRegistry, OPAQUE_ANY } from './descriptors.js';
import { lookupType, requireType } from './protos.js';
import type { JsonObject, JsonValue } from './types.js';

/** The message as protobufjs encodes and decodes it (keepCase field names). */
export type ProtoMessage = { [field: string]: unknown };

export const OPAQUE_BYTES_KEY = '@bytes';

export interface FromJsonOptions {
  /** Skip fields this build's protos do not declare (a config dump from a newer Envoy) instead of failing. */
  ignoreUnknownFields?: boolean;
}

export class JsonMappingError extends Error {}

const ANY = 'google.protobuf.Any';
const OPAQUE_URL = `type.googleapis.com/${OPAQUE_ANY}`;

function descOf(typeName: string): DescMessage {
  const name = typeName.slice(typeName.lastIndexOf('/') + 1);
  const d = bufbuildRegistry().getMessage(name);
  if (!d) throw new Error(`unknown protobuf type ${typeName}`);
  return d;
}

function knownType(typeUrl: string): boolean {
  return bufbuildRegistry().getMessage(typeUrl.slice(typeUrl.lastIndexOf('/') + 1)) !== undefined;
}

/** The library's JSON type and ours describe the same values. */
function fromLibrary(v: BufJsonValue): JsonValue {
  return v;
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unknownAnyError(e: unknown): boolean {
  return e instanceof Error && /is not in the type registry/.test(e.message);
}

// ---------------------------------------------------------------- binary → JSON

/** Decodes protobuf bytes of the named type (full name or type URL) straight to proto3 JSON. */
export function decodeToJson(typeName: string, bytes: Uint8Array): JsonValue {
  const desc = descOf(typeName);
  const msg = fromBinary(desc, bytes);
  return messageToJson(desc, msg);
}

function messageToJson(desc: DescMessage, msg: Message): JsonValue {
  const registry = bufbuildRegistry();
  try {
    return fromLibrary(bufToJson(desc, msg, { registry, useProtoFieldName: true }));
  } catch (e) {
    if (!unknownAnyError(e)) throw e;
  }
  // Slow path, only when some Any is of a type we do not know: carry it through as OpaqueAny.
  const opaque = descOf(OPAQUE_ANY);
  const wrapped = mapAnys(desc, msg, (any) =>
    knownType(any.typeUrl)
      ? undefined
      : {
          typeUrl: OPAQUE_URL,
          value: toBinary(opaque, create(opaque, { typeUrl: any.typeUrl, value: any.value })),
        },
  );
  return unwrapOpaque(fromLibrary(bufToJson(desc, wrapped, { registry, useProtoFieldName: true })));
}

/** {"@type": OpaqueAny, type_url, value} → {"@type": url, "@bytes": base64}, everywhere in a JSON value. */
function unwrapOpaque(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(unwrapOpaque);
  if (!isObject(v)) return v;
  if (v['@type'] === OPAQUE_URL) {
    const out: JsonObject = { '@type': typeof v['type_url'] === 'string' ? v['type_url'] : '' };
    if (typeof v['value'] === 'string' && v['value'] !== '') out[OPAQUE_BYTES_KEY] = v['value'];
    return out;
  }
  const out: JsonObject = {};
  for (const [k, x] of Object.entries(v)) out[k] = unwrapOpaque(x);
  return out;
}

interface AnyMessage {
  typeUrl: string;
  value: Uint8Array;
}

/** A copy of the message with every Any for which fn returns a replacement replaced. */
function mapAnys(desc: DescMessage, msg: Message, fn: (any: AnyMessage) => AnyMessage | undefined): Message {
  if (desc.typeName === ANY) {
    const any = msg as unknown as AnyMessage;
    const r = fn(any);
    return r ? { ...msg, ...r } : msg;
  }
  const out: Record<string, unknown> = { ...msg };
  const rec = msg as unknown as Record<string, unknown>;
  for (const f of desc.fields) {
    const v = f.oneof
      ? (rec[f.oneof.localName] as { case?: string; value?: unknown } | undefined)
      : undefined;
    if (f.oneof) {
      if (v?.case === f.localName && f.message)
        out[f.oneof.localName] = { case: v.case, value: mapAnys(f.message, v.value as Message, fn) };
      continue;
    }
    const value = rec[f.localName];
    if (value === undefined) continue;
    out[f.localName] = mapField(f, value, fn);
  }
  return out as unknown as Message;
}

function mapField(f: DescField, value: unknown, fn: (any: AnyMessage) => AnyMessage | undefined): unknown {
  if (f.fieldKind === 'message') return mapAnys(f.message, value as Message, fn);
  if (f.fieldKind === 'list' && f.listKind === 'message')
    return (value as Message[]).map((m) => mapAnys(f.message, m, fn));
  if (f.fieldKind === 'map' && f.mapKind === 'message') {
    const out: Record<string, unknown> = {};
    for (const [k, m] of Object.entries(value as Record<string, Message>)) out[k] = mapAnys(f.message, m, fn);
    return out;
  }
  return value;
}

// ---------------------------------------------------------------- JSON → binary

/** Encodes proto3 JSON (either field-name spelling) of the named type to protobuf bytes; throws with the path. */
export function encodeFromJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): Uint8Array {
  const desc = descOf(typeName);
  return toBinary(desc, jsonToMessage(desc, json, options));
}

/** Canonical proto3 JSON of a JSON resource: accepts either name style, returns snake_case, defaults left out. */
export function normalizeJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): JsonValue {
  const desc = descOf(typeName);
  return messageToJson(desc, jsonToMessage(desc, json, options));
}

function jsonToMessage(desc: DescMessage, json: JsonValue, options: FromJsonOptions): Message {
  const opts = { registry: bufbuildRegistry(), ignoreUnknownFields: options.ignoreUnknownFields ?? false };
  try {
    return bufFromJson(desc, json, opts);
  } catch (e) {
    if (!unknownAnyError(e))
      throw new JsonMappingError(`${locate(desc, json, '', opts)}: ${(e as Error).message}`, { cause: e });
  }
  // Slow path, only when some Any is of a type we do not know: opaque bytes pass, fields cannot.
  const wrapped = wrapOpaque(json, '');
  let msg: Message;
  try {
    msg = bufFromJson(desc, wrapped, opts);
  } catch (e) {
    throw new JsonMappingError(`${locate(desc, wrapped, '', opts)}: ${(e as Error).message}`, { cause: e });
  }
  const opaque = descOf(OPAQUE_ANY);
  return mapAnys(desc, msg, (any) => {
    if (any.typeUrl !== OPAQUE_URL) return undefined;
    const o = fromBinary(opaque, any.value) as unknown as AnyMessage;
    return { typeUrl: o.typeUrl, value: o.value };
  });
}

/** {"@type": unknown url, "@bytes"?} → an OpaqueAny the registry knows; an unknown Any with fields is refused. */
function wrapOpaque(v: JsonValue, path: string): JsonValue {
  if (Array.isArray(v)) return v.map((x, i) => wrapOpaque(x, `${path}[${i}]`));
  if (!isObject(v)) return v;
  const t = v['@type'];
  if (typeof t === 'string' && !knownType(t)) {
    const rest = Object.keys(v).filter((k) => k !== '@type' && k !== OPAQUE_BYTES_KEY);
    if (rest.length > 0)
      throw new JsonMappingError(
        `${path || '<root>'}: unknown Any type ${t} carries fields; without its schema it cannot be encoded`,
      );
    const bytes = v[OPAQUE_BYTES_KEY];
    return { '@type': OPAQUE_URL, type_url: t, ...(typeof bytes === 'string' ? { value: bytes } : {}) };
  }
  const out: JsonObject = {};
  for (const [k, x] of Object.entries(v)) out[k] = wrapOpaque(x, path ? `${path}.${k}` : k);
  return out;
}

/**
 * The path of the value the mapping refuses, found by asking it about ever smaller parts (only on
 * error): the library names the message and field, an operator needs where in the resource.
 */
function locate(
  desc: DescMessage,
  json: JsonValue,
  path: string,
  opts: { registry: ReturnType<typeof bufbuildRegistry>; ignoreUnknownFields: boolean },
): string {
  const at = path || '<root>';
  if (!isObject(json)) return at;
  if (desc.typeName === ANY) {
    const t = json['@type'];
    const inner =
      typeof t === 'string' ? opts.registry.getMessage(t.slice(t.lastIndexOf('/') + 1)) : undefined;
    if (!inner || inner.typeName.startsWith('google.protobuf.')) return at;
    const { '@type': _t, ...rest } = json;
    return locate(inner, rest, path, opts);
  }
  if (desc.typeName.startsWith('google.protobuf.')) return at;
  const fails = (d: DescMessage, v: JsonValue) => {
    try {
      bufFromJson(d, v, opts);
      return false;
    } catch {
      return true;
    }
  };
  for (const [key, value] of Object.entries(json)) {
    const fpath = path ? `${path}.${key}` : key;
    const field = desc.fields.find((f) => f.name === key || f.jsonName === key);
    if (!field) return opts.ignoreUnknownFields ? at : fpath;
    if (!fails(desc, { [key]: value })) continue;
    if (field.fieldKind === 'message') return locate(field.message, value, fpath, opts);
    if (field.fieldKind === 'list' && field.listKind === 'message' && Array.isArray(value)) {
      const i = value.findIndex((x) => fails(field.message, x));
      return i < 0 ? fpath : locate(field.message, value[i]!, `${fpath}[${i}]`, opts);
    }
    if (field.fieldKind === 'map' && field.mapKind === 'message' && isObject(value)) {
      const bad = Object.entries(value).find(([, x]) => fails(field.message, x));
      return bad ? locate(field.message, bad[1], `${fpath}["${bad[0]}"]`, opts) : fpath;
    }
    return fpath;
  }
  return at;
}

// ---------------------------------------------------------------- protobufjs messages

/** An `{"@type": ...}` JSON object as a google.protobuf.Any message in protobufjs form (type_url + bytes). */
export function anyFromJson(json: JsonValue, options: FromJsonOptions = {}): ProtoMessage {
  return requireType(ANY).decode(encodeFromJson(ANY, json, options)) as unknown as ProtoMessage;
}

/** proto3 JSON of a message in protobufjs form (as protobufjs decodes it) of the named type. */
export function toJson(typeName: string, message: ProtoMessage): JsonValue {
  const type = requireType(typeName);
  return decodeToJson(typeName, type.encode(type.fromObject(message)).finish());
}

/** The message of the named type in protobufjs form for proto3 JSON in either spelling; throws with the path. */
export function fromJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): ProtoMessage {
  const type = lookupType(typeName) ?? requireType(typeName);
  return type.decode(encodeFromJson(typeName, json, options)) as unknown as ProtoMessage;
}
