// The one set of typed readers over proto3 JSON resources (snake_case, defaults left out, 64-bit
// integers possibly strings). Every reader of a resource or dump uses these, so an absent field
// reads the same everywhere: `undefined`, never '' or 0 (callers choose their default with `??`).
import type { JsonObject, JsonValue } from './types.js';

export function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function obj(v: JsonValue | undefined): JsonObject | undefined {
  return isObject(v) ? v : undefined;
}

export function arr(v: JsonValue | undefined): JsonValue[] {
  return Array.isArray(v) ? v : [];
}

export function objs(v: JsonValue | undefined): JsonObject[] {
  return arr(v).filter(isObject);
}

/** A string field; an empty string is proto3's default, so it reads as absent too. */
export function str(v: JsonValue | undefined): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** proto3 JSON prints uint64/int64 as strings and wrappers (UInt32Value) sometimes as `{value}`. */
export function num(v: JsonValue | undefined): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v)) return Number(v);
  if (isObject(v) && 'value' in v) return num(v.value);
  return undefined;
}

export function bool(v: JsonValue | undefined): boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (isObject(v) && typeof v.value === 'boolean') return v.value;
  return undefined;
}

/** A proto3 JSON Duration ("10s", "0.250s") in milliseconds. */
export function durationMs(v: JsonValue | undefined): number | undefined {
  const s = str(v);
  if (s === undefined) return undefined;
  const m = /^(-?\d+(?:\.\d+)?)s$/.exec(s);
  return m?.[1] === undefined ? undefined : Math.round(Number(m[1]) * 1000);
}

/** True when a message field is present with content (an empty object `{}` counts as present). */
export function present(v: JsonValue | undefined): boolean {
  if (v === undefined || v === null) return false;
  if (Array.isArray(v)) return v.length > 0;
  return true;
}

/** The Istio object that produced a resource or route, when istiod recorded it in the metadata. */
export function istioConfig(o: JsonObject | undefined): string | undefined {
  const istio = obj(obj(obj(o?.metadata)?.filter_metadata)?.istio);
  return str(istio?.config);
}

/** `/apis/networking.istio.io/v1alpha3/namespaces/default/virtual-service/bookinfo` → `VirtualService default/bookinfo`. */
export function describeIstioConfig(path: string): string {
  const m = /\/namespaces\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(path);
  if (!m) return path;
  const kind = (m[2] ?? '')
    .split('-')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');
  return `${kind} ${m[1]}/${m[3]}`;
}

/** The type name of an Any (`type.googleapis.com/envoy...TcpProxy` → `envoy...TcpProxy`). */
export function anyType(v: JsonValue | undefined): string | undefined {
  const t = str(obj(v)?.['@type']);
  return t?.slice(t.lastIndexOf('/') + 1);
}
