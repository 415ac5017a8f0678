// What the admin endpoint never prints: fields Envoy's protos mark `(udpa.annotations.sensitive)`
// (private keys, secrets, tokens in transport sockets and SDS) are replaced by "[redacted]", as
// Envoy's own config_dump does. The marks are read from the descriptors, never listed by hand.
import protobuf from 'protobufjs';
import { lookupType } from '../xds/protos.js';
import type { JsonObject, JsonValue } from '../xds/types.js';

export const REDACTED = '[redacted]';

const sensitiveCache = new Map<protobuf.Type, Set<string>>();

function sensitiveFields(t: protobuf.Type): Set<string> {
  let s = sensitiveCache.get(t);
  if (!s) {
    s = new Set(
      t.fieldsArray
        .filter((f) =>
          ((f as { parsedOptions?: Record<string, unknown>[] }).parsedOptions ?? []).some(
            (o) => o['(udpa.annotations.sensitive)'] === true,
          ),
        )
        .map((f) => f.name),
    );
    sensitiveCache.set(t, s);
  }
  return s;
}

/** A copy of a resource (proto3 JSON with "@type") with every sensitive field redacted. */
export function redactSensitive(json: JsonObject): JsonObject {
  const t = typeof json['@type'] === 'string' ? lookupType(json['@type']) : undefined;
  return t ? (redactMessage(t, json) as JsonObject) : json;
}

function redactMessage(t: protobuf.Type, json: JsonObject): JsonValue {
  const sensitive = sensitiveFields(t);
  let out: JsonObject | undefined;
  for (const [k, v] of Object.entries(json)) {
    let next: JsonValue = v;
    if (sensitive.has(k)) next = REDACTED;
    else {
      const f = t.fields[k];
      f?.resolve();
      const rt = f?.resolvedType;
      if (rt instanceof protobuf.Type && f?.map && v && typeof v === 'object' && !Array.isArray(v)) {
        const entries = Object.entries(v).map(([mk, mv]) => [mk, redactValue(rt, mv)] as const);
        if (entries.some(([mk, mv]) => mv !== v[mk])) next = Object.fromEntries(entries);
      } else if (rt instanceof protobuf.Type) next = redactValue(rt, v);
    }
    if (next !== v) (out ??= { ...json })[k] = next;
  }
  return out ?? json;
}

function redactValue(t: protobuf.Type, v: JsonValue): JsonValue {
  if (Array.isArray(v)) {
    const mapped = v.map((x) => redactValue(t, x));
    return mapped.some((x, i) => x !== v[i]) ? mapped : v;
  }
  if (!v || typeof v !== 'object') return v;
  if (t.fullName === '.google.protobuf.Any') return redactSensitive(v);
  if (t.fullName.startsWith('.google.protobuf.')) return v;
  return redactMessage(t, v);
}
