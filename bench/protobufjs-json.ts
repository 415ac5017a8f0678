// The proto3 JSON mapping kernmesh used before adopting @bufbuild/protobuf (a walker over protobufjs
// reflection), kept only so bench/proto-json.ts can compare the two paths. Nothing in src/ uses it.
import protobuf from 'protobufjs';
import { lookupType, requireType } from '../src/xds/protos.js';
import type { JsonObject, JsonValue } from '../src/xds/types.js';

/** The message as protobufjs encodes and decodes it (keepCase field names). */
export type ProtoMessage = { [field: string]: unknown };

export const OPAQUE_BYTES_KEY = '@bytes';

export interface FromJsonOptions {
  /** Skip fields this build's protos do not declare (a config dump from a newer Envoy) instead of failing. */
  ignoreUnknownFields?: boolean;
}

class JsonMappingError extends Error {}

function fail(path: string, message: string): never {
  throw new JsonMappingError(`${path || '<root>'}: ${message}`);
}

const INT64_TYPES = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const INT32_TYPES = new Set(['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32']);

const WRAPPERS: Record<string, string> = {
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
};

/** Well-known types whose JSON is not an object of fields: inside an Any they go under "value". */
function hasSpecialJson(fullName: string): boolean {
  return (
    fullName in WRAPPERS ||
    fullName === '.google.protobuf.Duration' ||
    fullName === '.google.protobuf.Timestamp' ||
    fullName === '.google.protobuf.Struct' ||
    fullName === '.google.protobuf.Value' ||
    fullName === '.google.protobuf.ListValue' ||
    fullName === '.google.protobuf.FieldMask' ||
    fullName === '.google.protobuf.Any'
  );
}

// ---------------------------------------------------------------- message → JSON

/** proto3 JSON of a decoded message of the named type (full name or type URL). */
export function toJson(typeName: string, message: ProtoMessage): JsonValue {
  return messageToJson(requireType(typeName), message, '');
}

/** Decodes protobuf bytes of the named type straight to proto3 JSON. */
export function decodeToJson(typeName: string, bytes: Uint8Array): JsonValue {
  const type = requireType(typeName);
  return messageToJson(type, type.decode(bytes) as unknown as ProtoMessage, '');
}

function messageToJson(type: protobuf.Type, msg: ProtoMessage, path: string): JsonValue {
  const name = type.fullName;
  if (name in WRAPPERS)
    return scalarToJson(WRAPPERS[name] ?? 'string', msg['value'] ?? defaultOf(WRAPPERS[name]));
  switch (name) {
    case '.google.protobuf.Any':
      return anyToJson(msg, path);
    case '.google.protobuf.Duration':
      return durationToJson(msg);
    case '.google.protobuf.Timestamp':
      return timestampToJson(msg);
    case '.google.protobuf.Struct':
      return structToJson(msg);
    case '.google.protobuf.Value':
      return valueToJson(msg);
    case '.google.protobuf.ListValue':
      return ((msg['values'] as ProtoMessage[] | undefined) ?? []).map(valueToJson);
    case '.google.protobuf.FieldMask':
      return ((msg['paths'] as string[] | undefined) ?? []).map(snakeToCamel).join(',');
  }
  const out: JsonObject = {};
  for (const field of type.fieldsArray) {
    const value = msg[field.name];
    if (value === undefined || value === null) continue;
    const fpath = path ? `${path}.${field.name}` : field.name;
    if (field.map) {
      const entries = Object.entries(value as Record<string, unknown>);
      if (entries.length === 0) continue;
      const obj: JsonObject = {};
      for (const [k, v] of entries) obj[k] = fieldValueToJson(field, v, `${fpath}["${k}"]`);
      out[field.name] = obj;
    } else if (field.repeated) {
      const arr = value as unknown[];
      if (arr.length === 0) continue;
      out[field.name] = arr.map((v, i) => fieldValueToJson(field, v, `${fpath}[${i}]`));
    } else if (field.resolvedType instanceof protobuf.Type) {
      out[field.name] = fieldValueToJson(field, value, fpath);
    } else {
      // Scalars: proto3 leaves defaults out, except where presence is tracked (oneof, optional).
      const tracked = field.partOf !== null && Object.prototype.hasOwnProperty.call(msg, field.name);
      if (!tracked && isDefaultScalar(field, value)) continue;
      out[field.name] = fieldValueToJson(field, value, fpath);
    }
  }
  return out;
}

function fieldValueToJson(field: protobuf.Field, value: unknown, path: string): JsonValue {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return messageToJson(rt, value as ProtoMessage, path);
  if (rt instanceof protobuf.Enum) {
    if (rt.fullName === '.google.protobuf.NullValue') return null;
    const n = Number(value);
    return rt.valuesById[n] ?? n;
  }
  return scalarToJson(field.type, value);
}

function isDefaultScalar(field: protobuf.Field, value: unknown): boolean {
  if (field.resolvedType instanceof protobuf.Enum) return Number(value) === 0;
  if (field.type === 'bytes') return (value as Uint8Array).length === 0;
  if (field.type === 'string') return value === '';
  if (field.type === 'bool') return value === false;
  if (INT64_TYPES.has(field.type)) return int64String(value) === '0';
  return value === 0;
}

function defaultOf(type: string | undefined): unknown {
  if (type === 'string') return '';
  if (type === 'bool') return false;
  if (type === 'bytes') return new Uint8Array();
  return 0;
}

function scalarToJson(type: string, value: unknown): JsonValue {
  if (INT64_TYPES.has(type)) return int64String(value);
  switch (type) {
    case 'double':
      return numberToJson(value as number);
    case 'float':
      return numberToJson(shortestFloat32(value as number));
    case 'bytes':
      return Buffer.from(value as Uint8Array).toString('base64');
    case 'bool':
      return Boolean(value);
    case 'string':
      return String(value);
    default:
      return Number(value);
  }
}

// protobufjs hands 64-bit integers back as Long objects (or numbers when long.js is absent).
function int64String(v: unknown): string {
  if (v === undefined || v === null) return '0';
  if (typeof v === 'object') return (v as { toString(): string }).toString();
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'bigint') return String(v);
  return '0';
}

function numberToJson(n: number): JsonValue {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return 'Infinity';
  if (n === -Infinity) return '-Infinity';
  return n;
}

// A float decodes to the nearest double (0.1f → 0.10000000149011612); print it as the float it was.
function shortestFloat32(x: number): number {
  if (!Number.isFinite(x) || Number.isInteger(x)) return x;
  for (let p = 1; p <= 9; p++) {
    const candidate = Number(x.toPrecision(p));
    if (Math.fround(candidate) === x) return candidate;
  }
  return x;
}

function anyToJson(msg: ProtoMessage, path: string): JsonValue {
  const typeUrl = typeof msg['type_url'] === 'string' ? msg['type_url'] : '';
  const bytes = (msg['value'] as Uint8Array | undefined) ?? new Uint8Array();
  const type = typeUrl ? lookupType(typeUrl) : undefined;
  if (!type) {
    const opaque: JsonObject = { '@type': typeUrl };
    if (bytes.length > 0) opaque[OPAQUE_BYTES_KEY] = Buffer.from(bytes).toString('base64');
    return opaque;
  }
  let inner: ProtoMessage;
  try {
    inner = type.decode(bytes) as unknown as ProtoMessage;
  } catch (err) {
    fail(path, `cannot decode Any of type ${typeUrl}: ${(err as Error).message}`);
  }
  const json = messageToJson(type, inner, path);
  if (hasSpecialJson(type.fullName)) return { '@type': typeUrl, value: json };
  return { '@type': typeUrl, ...(json as JsonObject) };
}

function durationToJson(msg: ProtoMessage): string {
  const seconds = BigInt(int64String(msg['seconds']));
  const nanos = Number(msg['nanos'] ?? 0);
  const negative = seconds < 0n || nanos < 0;
  const abs = (seconds < 0n ? -seconds : seconds).toString();
  return `${negative ? '-' : ''}${abs}${fraction(Math.abs(nanos))}s`;
}

function fraction(nanos: number): string {
  if (nanos === 0) return '';
  const digits = String(nanos).padStart(9, '0');
  if (nanos % 1_000_000 === 0) return `.${digits.slice(0, 3)}`;
  if (nanos % 1_000 === 0) return `.${digits.slice(0, 6)}`;
  return `.${digits}`;
}

function timestampToJson(msg: ProtoMessage): string {
  const seconds = Number(int64String(msg['seconds']));
  const nanos = Number(msg['nanos'] ?? 0);
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  return `${base}${fraction(nanos)}Z`;
}

function structToJson(msg: ProtoMessage): JsonObject {
  const out: JsonObject = {};
  for (const [k, v] of Object.entries((msg['fields'] as Record<string, ProtoMessage> | undefined) ?? {})) {
    out[k] = valueToJson(v);
  }
  return out;
}

// protobufjs declares google.protobuf.Value itself, with lowerCamelCase field names.
function valueToJson(msg: ProtoMessage): JsonValue {
  const own = (k: string): boolean => Object.prototype.hasOwnProperty.call(msg, k) && msg[k] != null;
  if (own('numberValue')) return numberToJson(msg['numberValue'] as number);
  if (own('stringValue')) return msg['stringValue'] as string;
  if (own('boolValue')) return msg['boolValue'] as boolean;
  if (own('structValue')) return structToJson(msg['structValue'] as ProtoMessage);
  if (own('listValue'))
    return (
      ((msg['listValue'] as ProtoMessage)['values'] as ProtoMessage[] | undefined)?.map(valueToJson) ?? []
    );
  return null;
}

// ---------------------------------------------------------------- JSON → message

/** The message of the named type for proto3 JSON in snake_case or lowerCamelCase; throws with the path. */
export function fromJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): ProtoMessage {
  const type = requireType(typeName);
  return jsonToMessage(type, json, '', options);
}

/** Encodes proto3 JSON of the named type to protobuf bytes. */
export function encodeFromJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): Uint8Array {
  const type = requireType(typeName);
  return type.encode(jsonToMessage(type, json, '', options)).finish();
}

/** An `{"@type": ...}` JSON object as a google.protobuf.Any message (type_url + encoded bytes). */
export function anyFromJson(json: JsonValue, options: FromJsonOptions = {}): ProtoMessage {
  return jsonToAny(json, '', options);
}

/** Canonical proto3 JSON of a JSON resource: accepts either name style, returns snake_case, defaults left out. */
export function normalizeJson(typeName: string, json: JsonValue, options: FromJsonOptions = {}): JsonValue {
  return toJson(typeName, fromJson(typeName, json, options));
}

const fieldIndex = new WeakMap<protobuf.Type, Map<string, protobuf.Field>>();

function fieldsByJsonName(type: protobuf.Type): Map<string, protobuf.Field> {
  let m = fieldIndex.get(type);
  if (!m) {
    m = new Map();
    for (const f of type.fieldsArray) {
      m.set(f.name, f);
      m.set(snakeToCamel(f.name), f);
      const jsonName: unknown = f.options?.['json_name'];
      if (typeof jsonName === 'string') m.set(jsonName, f);
    }
    fieldIndex.set(type, m);
  }
  return m;
}

function jsonToMessage(
  type: protobuf.Type,
  json: JsonValue,
  path: string,
  opts: FromJsonOptions,
): ProtoMessage {
  const name = type.fullName;
  const wrapped = WRAPPERS[name];
  if (wrapped) return { value: jsonToScalar(wrapped, json, path) };
  switch (name) {
    case '.google.protobuf.Any':
      return jsonToAny(json, path, opts);
    case '.google.protobuf.Duration':
      return jsonToDuration(json, path);
    case '.google.protobuf.Timestamp':
      return jsonToTimestamp(json, path);
    case '.google.protobuf.Struct':
      if (!isObject(json)) fail(path, 'expected a JSON object for google.protobuf.Struct');
      return jsonToStruct(json);
    case '.google.protobuf.Value':
      return jsonToValue(json);
    case '.google.protobuf.ListValue':
      if (!Array.isArray(json)) fail(path, 'expected a JSON array for google.protobuf.ListValue');
      return { values: json.map(jsonToValue) };
    case '.google.protobuf.FieldMask':
      if (typeof json !== 'string') fail(path, 'expected a string for google.protobuf.FieldMask');
      return { paths: json === '' ? [] : json.split(',').map(camelToSnake) };
  }
  if (!isObject(json)) fail(path, `expected a JSON object for ${name.slice(1)}`);
  const fields = fieldsByJsonName(type);
  const out: ProtoMessage = {};
  for (const [key, value] of Object.entries(json)) {
    const fpath = path ? `${path}.${key}` : key;
    const field = fields.get(key);
    if (!field) {
      if (opts.ignoreUnknownFields) continue;
      fail(fpath, `unknown field of ${name.slice(1)}`);
    }
    if (value === null && field.resolvedType?.fullName !== '.google.protobuf.Value') continue;
    if (field.map) {
      if (!isObject(value)) fail(fpath, 'expected a JSON object for a map');
      const m: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) m[k] = jsonToFieldValue(field, v, `${fpath}["${k}"]`, opts);
      out[field.name] = m;
    } else if (field.repeated) {
      if (!Array.isArray(value)) fail(fpath, 'expected a JSON array');
      out[field.name] = value.map((v, i) => jsonToFieldValue(field, v, `${fpath}[${i}]`, opts));
    } else {
      out[field.name] = jsonToFieldValue(field, value, fpath, opts);
    }
  }
  return out;
}

function jsonToFieldValue(
  field: protobuf.Field,
  value: JsonValue,
  path: string,
  opts: FromJsonOptions,
): unknown {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return jsonToMessage(rt, value, path, opts);
  if (rt instanceof protobuf.Enum) {
    if (rt.fullName === '.google.protobuf.NullValue') return 0;
    if (typeof value === 'number' && Number.isInteger(value)) return value;
    if (typeof value === 'string' && value in rt.values) return rt.values[value];
    fail(path, `${JSON.stringify(value)} is not a value of enum ${rt.fullName.slice(1)}`);
  }
  return jsonToScalar(field.type, value, path);
}

function jsonToScalar(type: string, value: JsonValue, path: string): unknown {
  if (INT64_TYPES.has(type)) {
    if (
      (typeof value === 'number' && Number.isInteger(value)) ||
      (typeof value === 'string' && /^-?\d+$/.test(value))
    )
      return String(value);
    fail(path, `expected a 64-bit integer, got ${JSON.stringify(value)}`);
  }
  if (INT32_TYPES.has(type)) {
    const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
    if (typeof n === 'number' && Number.isInteger(n)) return n;
    fail(path, `expected a 32-bit integer, got ${JSON.stringify(value)}`);
  }
  switch (type) {
    case 'double':
    case 'float':
      if (typeof value === 'number') return value;
      if (value === 'NaN') return NaN;
      if (value === 'Infinity') return Infinity;
      if (value === '-Infinity') return -Infinity;
      if (typeof value === 'string' && value.trim() !== '' && !Number.isNaN(Number(value)))
        return Number(value);
      return fail(path, `expected a number, got ${JSON.stringify(value)}`);
    case 'bool':
      if (typeof value === 'boolean') return value;
      return fail(path, `expected true or false, got ${JSON.stringify(value)}`);
    case 'string':
      if (typeof value === 'string') return value;
      return fail(path, `expected a string, got ${JSON.stringify(value)}`);
    case 'bytes':
      if (typeof value === 'string')
        return Buffer.from(value.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
      return fail(path, `expected base64 bytes, got ${JSON.stringify(value)}`);
  }
  return fail(path, `unsupported scalar type ${type}`);
}

function jsonToAny(json: JsonValue, path: string, opts: FromJsonOptions): ProtoMessage {
  if (!isObject(json)) fail(path, 'expected a JSON object with "@type" for google.protobuf.Any');
  const typeUrl = json['@type'];
  if (typeof typeUrl !== 'string') fail(path, 'Any without "@type"');
  const type = lookupType(typeUrl);
  const rest: JsonObject = { ...json };
  delete rest['@type'];
  if (!type) {
    const opaque = rest[OPAQUE_BYTES_KEY];
    delete rest[OPAQUE_BYTES_KEY];
    if (Object.keys(rest).length > 0)
      fail(path, `unknown Any type ${typeUrl} carries fields; without its schema it cannot be encoded`);
    const value = typeof opaque === 'string' ? Buffer.from(opaque, 'base64') : new Uint8Array();
    return { type_url: typeUrl, value };
  }
  const inner = hasSpecialJson(type.fullName) ? (rest['value'] ?? null) : rest;
  const msg = jsonToMessage(type, inner, path, opts);
  return { type_url: typeUrl, value: type.encode(msg).finish() };
}

function jsonToDuration(json: JsonValue, path: string): ProtoMessage {
  const m = typeof json === 'string' ? /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(json) : null;
  if (!m) fail(path, `expected a duration like "1.5s", got ${JSON.stringify(json)}`);
  const sign = m[1] ? -1 : 1;
  const nanos = m[3] ? Number(m[3].padEnd(9, '0')) : 0;
  const seconds = m[1] ? `-${m[2]}` : (m[2] ?? '0');
  return { seconds: seconds === '-0' ? '0' : seconds, nanos: sign * nanos };
}

function jsonToTimestamp(json: JsonValue, path: string): ProtoMessage {
  const m =
    typeof json === 'string'
      ? /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/.exec(json)
      : null;
  if (!m) fail(path, `expected an RFC 3339 timestamp, got ${JSON.stringify(json)}`);
  const ms = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(ms)) fail(path, `invalid timestamp ${JSON.stringify(json)}`);
  return { seconds: String(Math.floor(ms / 1000)), nanos: m[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

function jsonToStruct(json: JsonObject): ProtoMessage {
  const fields: Record<string, ProtoMessage> = {};
  for (const [k, v] of Object.entries(json)) fields[k] = jsonToValue(v);
  return { fields };
}

function jsonToValue(json: JsonValue): ProtoMessage {
  if (json === null) return { nullValue: 0 };
  if (typeof json === 'number') return { numberValue: json };
  if (typeof json === 'string') return { stringValue: json };
  if (typeof json === 'boolean') return { boolValue: json };
  if (Array.isArray(json)) return { listValue: { values: json.map(jsonToValue) } };
  return { structValue: jsonToStruct(json) };
}

function isObject(v: JsonValue): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function snakeToCamel(s: string): string {
  return s.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

function camelToSnake(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export { JsonMappingError };
