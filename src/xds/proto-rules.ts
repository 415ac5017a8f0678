// Envoy's API rules as its protos declare them, checked on the proto3 JSON of a decoded resource:
// protoc-gen-validate's `(validate.rules)` on fields and `(validate.required)` on oneofs, read from
// the descriptors protobufjs already loads (never a hand-copied list), plus what Envoy checks of every
// message in code (MessageUtil::validateDurationFields: no negative or out-of-range Duration).
// Every violation comes back as `path: reason`, so one NACK names everything wrong.
import protobuf from 'protobufjs';
import { lookupType } from './protos.js';
import type { JsonObject, JsonValue } from './types.js';

type Rules = { [k: string]: unknown };

interface FieldCheck {
  field: protobuf.Field;
  rules?: Rules;
  /** Member of a oneof, or proto3 optional: rules apply only when set. */
  presenceOnly: boolean;
  /** The enum a value of the field (or of its map values) is, when it is one. */
  enumType?: protobuf.Enum;
  /** The message a value of the field (or of its map values) is, when it is one. */
  messageType?: protobuf.Type;
}

interface TypeChecks {
  fields: FieldCheck[];
  requiredOneofs: { name: string; members: string[] }[];
  disabled: boolean;
}

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
const DURATION = '.google.protobuf.Duration';
const ANY = '.google.protobuf.Any';
/** Well-known types whose JSON is not an object of fields: never walked into. */
const OPAQUE = new Set([
  '.google.protobuf.Struct',
  '.google.protobuf.Value',
  '.google.protobuf.ListValue',
  '.google.protobuf.Timestamp',
  '.google.protobuf.FieldMask',
  '.google.protobuf.Empty',
  DURATION,
  ANY,
  ...Object.keys(WRAPPERS),
]);
/** Envoy's bound on a Duration's seconds (DurationUtil: about 10,000 years). */
const MAX_DURATION_SECONDS = 315_576_000_000n;

function optionOf(parsed: unknown, key: string): unknown {
  if (!Array.isArray(parsed)) return undefined;
  let out: unknown;
  for (const o of parsed as Record<string, unknown>[]) {
    const v = o[key];
    if (v === undefined) continue;
    out =
      typeof v === 'object' && v !== null && typeof out === 'object' && out !== null ? { ...out, ...v } : v;
  }
  return out;
}

const checksCache = new Map<protobuf.Type, TypeChecks>();

function checksOf(t: protobuf.Type): TypeChecks {
  let c = checksCache.get(t);
  if (c) return c;
  const parsedOf = (o: protobuf.ReflectionObject): unknown =>
    (o as { parsedOptions?: unknown }).parsedOptions;
  c = {
    disabled:
      optionOf(parsedOf(t), '(validate.disabled)') === true ||
      optionOf(parsedOf(t), '(validate.ignored)') === true,
    fields: t.fieldsArray.map((f) => {
      f.resolve();
      const rt = f.resolvedType;
      const rules = optionOf(parsedOf(f), '(validate.rules)') as Rules | undefined;
      return {
        field: f,
        ...(rules ? { rules } : {}),
        presenceOnly: f.partOf !== null || f.options?.['proto3_optional'] === true,
        ...(rt instanceof protobuf.Enum ? { enumType: rt } : {}),
        ...(rt instanceof protobuf.Type ? { messageType: rt } : {}),
      };
    }),
    requiredOneofs: t.oneofsArray
      .filter((o) => optionOf(parsedOf(o), '(validate.required)') === true)
      .map((o) => ({ name: o.name, members: o.fieldsArray.map((f) => f.name) })),
  };
  checksCache.set(t, c);
  return c;
}

class Collector {
  readonly out: string[] = [];
  constructor(private readonly limit: number) {}
  add(path: string, reason: string): void {
    if (this.out.length < this.limit) this.out.push(`${path || '(resource)'}: ${reason}`);
  }
  full(): boolean {
    return this.out.length >= this.limit;
  }
}

/**
 * The violations of a resource (proto3 JSON with `@type`, proto field names) against the rules its
 * type declares, each `path: reason`; at most `limit` of them. Empty when it keeps every rule.
 */
export function declaredRuleViolations(typeName: string, json: JsonObject, limit = 20): string[] {
  const t = lookupType(typeName);
  if (!t) return [];
  const c = new Collector(limit);
  checkMessage(t, json, '', c);
  return c.out;
}

function join(base: string, name: string): string {
  return base ? `${base}.${name}` : name;
}

function checkMessage(t: protobuf.Type, json: JsonObject, path: string, c: Collector): void {
  const checks = checksOf(t);
  for (const o of checks.requiredOneofs)
    if (!o.members.some((m) => json[m] !== undefined && json[m] !== null))
      c.add(join(path, o.name), `one of ${o.members.join(', ')} is required`);
  for (const fc of checks.fields) {
    if (c.full()) return;
    const v = json[fc.field.name];
    const p = join(path, fc.field.name);
    const set = v !== undefined && v !== null;
    if (checks.disabled) {
      if (set) walkValue(fc, v, p, c, undefined);
      continue;
    }
    const rules = fc.rules;
    if (fc.field.map) {
      const entries = set && typeof v === 'object' && !Array.isArray(v) ? Object.entries(v) : [];
      if (rules?.['map']) checkMap(fc, rules['map'] as Rules, entries, p, c);
      for (const [k, x] of entries) walkValue(fc, x, `${p}["${k}"]`, c, undefined);
      continue;
    }
    if (fc.field.repeated) {
      const items = Array.isArray(v) ? v : [];
      const rep = rules?.['repeated'] as Rules | undefined;
      if (rep) checkRepeated(rep, items, p, c);
      const itemRules = rep?.['items'] as Rules | undefined;
      items.forEach((x, i) => walkValue(fc, x, `${p}[${i}]`, c, itemRules));
      continue;
    }
    if (!set && fc.presenceOnly) continue;
    walkValue(fc, set ? v : undefined, p, c, rules);
  }
}

/** One value of a field (an element for repeated fields), with the rules that apply to it. */
function walkValue(
  fc: FieldCheck,
  v: JsonValue | undefined,
  path: string,
  c: Collector,
  rules: Rules | undefined,
): void {
  const f = fc.field;
  const typeName = fc.messageType ? fc.messageType.fullName : undefined;
  if (fc.messageType && typeName) {
    const msgRules = rules?.['message'] as Rules | undefined;
    if (v === undefined || v === null) {
      const required =
        msgRules?.['required'] === true ||
        (rules?.['duration'] as Rules | undefined)?.['required'] === true ||
        (rules?.['any'] as Rules | undefined)?.['required'] === true;
      if (required) c.add(path, 'value is required');
      return;
    }
    if (typeName === DURATION) return checkDuration(v, path, rules?.['duration'] as Rules | undefined, c);
    const wrapped = WRAPPERS[typeName];
    if (wrapped) {
      const inner = typeof v === 'object' && v !== null && !Array.isArray(v) && 'value' in v ? v.value : v;
      if (rules?.[wrapped]) checkScalar(wrapped, inner, path, rules[wrapped] as Rules, c, undefined);
      return;
    }
    if (typeName === ANY) return checkAny(v, path, rules?.['any'] as Rules | undefined, c);
    if (OPAQUE.has(typeName)) return;
    if (msgRules?.['skip'] === true) return;
    if (typeof v === 'object' && !Array.isArray(v)) checkMessage(fc.messageType, v, path, c);
    return;
  }
  if (!rules) return;
  const kind = fc.enumType ? 'enum' : f.type;
  const r = rules[kind] as Rules | undefined;
  if (r) checkScalar(kind, v, path, r, c, fc.enumType);
}

function checkAny(v: JsonValue, path: string, rules: Rules | undefined, c: Collector): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return;
  const url = typeof v['@type'] === 'string' ? v['@type'] : '';
  if (rules) {
    const inList = rules['in'] as string[] | undefined;
    const notIn = rules['not_in'] as string[] | undefined;
    if (inList && !inList.includes(url)) c.add(path, `type ${url} is not one of ${inList.join(', ')}`);
    if (notIn?.includes(url)) c.add(path, `type ${url} is not allowed`);
  }
  // The typed config of a type we know is checked as Envoy checks an extension's config.
  const t = url ? lookupType(url) : undefined;
  if (!t || OPAQUE.has(t.fullName) || 'value' in v) return;
  checkMessage(t, v, path, c);
}

/** A proto3 JSON Duration in nanoseconds, or undefined when it is not one. */
function durationNanos(v: JsonValue): bigint | undefined {
  if (typeof v !== 'string') return undefined;
  const m = /^(-?)(\d+)(?:\.(\d{1,9}))?s$/.exec(v);
  if (!m) return undefined;
  const ns = BigInt(m[2] ?? '0') * 1_000_000_000n + BigInt((m[3] ?? '').padEnd(9, '0') || '0');
  return m[1] === '-' ? -ns : ns;
}

function ruleDurationNanos(r: unknown): bigint {
  const o = (r ?? {}) as { seconds?: number | string; nanos?: number };
  return BigInt(o.seconds ?? 0) * 1_000_000_000n + BigInt(o.nanos ?? 0);
}

function formatNanos(ns: bigint): string {
  const neg = ns < 0n;
  const a = neg ? -ns : ns;
  const s = a / 1_000_000_000n;
  const frac = (a % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${s}${frac ? `.${frac}` : ''}s`;
}

function checkDuration(v: JsonValue, path: string, rules: Rules | undefined, c: Collector): void {
  const ns = durationNanos(v);
  if (ns === undefined) return; // the JSON mapping already refused what is not a Duration
  // Envoy refuses negative and out-of-range durations everywhere, whatever the field declares.
  if (ns < 0n) return c.add(path, `duration ${formatNanos(ns)} is negative`);
  if (ns / 1_000_000_000n > MAX_DURATION_SECONDS)
    return c.add(path, `duration ${formatNanos(ns)} is too large`);
  if (!rules) return;
  const bound = (k: string): bigint | undefined => (k in rules ? ruleDurationNanos(rules[k]) : undefined);
  const [gt, gte, lt, lte] = [bound('gt'), bound('gte'), bound('lt'), bound('lte')];
  const constant = bound('const');
  if (constant !== undefined && ns !== constant) c.add(path, `duration must be ${formatNanos(constant)}`);
  rangeCheck(ns, { gt, gte, lt, lte }, (x) => formatNanos(x as bigint), path, 'duration', c);
}

type Bound = number | bigint | undefined;

function rangeCheck(
  x: number | bigint,
  b: { gt?: Bound; gte?: Bound; lt?: Bound; lte?: Bound },
  fmt: (v: number | bigint) => string,
  path: string,
  what: string,
  c: Collector,
): void {
  const lower =
    b.gt !== undefined
      ? { v: b.gt, ok: x > b.gt, op: '>' }
      : b.gte !== undefined
        ? { v: b.gte, ok: x >= b.gte, op: '>=' }
        : undefined;
  const upper =
    b.lt !== undefined
      ? { v: b.lt, ok: x < b.lt, op: '<' }
      : b.lte !== undefined
        ? { v: b.lte, ok: x <= b.lte, op: '<=' }
        : undefined;
  if (lower && upper && upper.v < lower.v) {
    // protoc-gen-validate's exclusive range: the value must lie outside (upper, lower).
    if (!lower.ok && !upper.ok)
      c.add(path, `${what} ${fmt(x)} must be ${upper.op} ${fmt(upper.v)} or ${lower.op} ${fmt(lower.v)}`);
    return;
  }
  if (lower && !lower.ok) c.add(path, `${what} ${fmt(x)} must be ${lower.op} ${fmt(lower.v)}`);
  if (upper && !upper.ok) c.add(path, `${what} ${fmt(x)} must be ${upper.op} ${fmt(upper.v)}`);
}

const HEADER_NAME = /^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$/;
// Control characters, built from code points so the source holds none.
const HEADER_VALUE_STRICT = new RegExp(
  `^[^${String.fromCharCode(0)}-${String.fromCharCode(8)}${String.fromCharCode(10)}-${String.fromCharCode(31)}${String.fromCharCode(127)}]*$`,
);
const HEADER_LOOSE = new RegExp(
  `^[^${String.fromCharCode(0)}${String.fromCharCode(10)}${String.fromCharCode(13)}]*$`,
);

function checkScalar(
  kind: string,
  raw: JsonValue | undefined,
  path: string,
  r: Rules,
  c: Collector,
  enumType: protobuf.Enum | undefined,
): void {
  if (kind === 'enum') {
    if (!enumType) return;
    const n = typeof raw === 'string' ? enumType.values[raw] : typeof raw === 'number' ? raw : 0;
    if (n === undefined) return;
    if (r['defined_only'] === true && !Object.values(enumType.values).includes(n))
      c.add(path, `${String(n)} is not a defined value of ${enumType.name}`);
    const inList = r['in'] as number[] | number | undefined;
    const notIn = r['not_in'] as number[] | number | undefined;
    const list = (x: number[] | number | undefined): number[] =>
      x === undefined ? [] : Array.isArray(x) ? x : [x];
    if (inList !== undefined && !list(inList).includes(n))
      c.add(path, `${enumType.valuesById[n] ?? n} is not allowed`);
    if (list(notIn).includes(n)) c.add(path, `${enumType.valuesById[n] ?? n} is not allowed`);
    return;
  }
  if (kind === 'string') {
    const s = typeof raw === 'string' ? raw : '';
    if (r['ignore_empty'] === true && s === '') return;
    const runes = [...s].length;
    const bytes = Buffer.byteLength(s);
    const n = (k: string): number | undefined => (r[k] === undefined ? undefined : Number(r[k]));
    const show = s.length > 40 ? `${JSON.stringify(s.slice(0, 40))}…` : JSON.stringify(s);
    if (n('len') !== undefined && runes !== n('len')) c.add(path, `${show} must be ${n('len')} characters`);
    if (n('min_len') !== undefined && runes < n('min_len')!)
      c.add(path, s === '' ? 'value is required' : `${show} must be at least ${n('min_len')} characters`);
    if (n('max_len') !== undefined && runes > n('max_len')!)
      c.add(path, `value of ${runes} characters must be at most ${n('max_len')}`);
    if (n('min_bytes') !== undefined && bytes < n('min_bytes')!)
      c.add(path, s === '' ? 'value is required' : `${show} must be at least ${n('min_bytes')} bytes`);
    if (n('max_bytes') !== undefined && bytes > n('max_bytes')!)
      c.add(path, `value of ${bytes} bytes must be at most ${n('max_bytes')}`);
    if (typeof r['prefix'] === 'string' && !s.startsWith(r['prefix']))
      c.add(path, `${show} must start with ${r['prefix']}`);
    if (typeof r['suffix'] === 'string' && !s.endsWith(r['suffix']))
      c.add(path, `${show} must end with ${r['suffix']}`);
    if (typeof r['contains'] === 'string' && !s.includes(r['contains']))
      c.add(path, `${show} must contain ${r['contains']}`);
    if (Array.isArray(r['in']) && !(r['in'] as string[]).includes(s))
      c.add(path, `${show} is not one of ${(r['in'] as string[]).join(', ')}`);
    if (Array.isArray(r['not_in']) && (r['not_in'] as string[]).includes(s))
      c.add(path, `${show} is not allowed`);
    if (typeof r['pattern'] === 'string') {
      const re = patternOf(r['pattern']);
      if (re && !re.test(s)) c.add(path, `${show} does not match ${r['pattern']}`);
    }
    const wk = r['well_known_regex'];
    if (wk === 'HTTP_HEADER_NAME' || wk === 1) {
      if (!(r['strict'] === false ? HEADER_LOOSE : HEADER_NAME).test(s))
        c.add(path, `${show} is not a valid HTTP header name`);
    } else if (wk === 'HTTP_HEADER_VALUE' || wk === 2) {
      if (!(r['strict'] === false ? HEADER_LOOSE : HEADER_VALUE_STRICT).test(s))
        c.add(path, `${show} is not a valid HTTP header value`);
    }
    return;
  }
  if (kind === 'bytes') {
    const len = typeof raw === 'string' ? Buffer.from(raw, 'base64').length : 0;
    const n = (k: string): number | undefined => (r[k] === undefined ? undefined : Number(r[k]));
    if (n('min_len') !== undefined && len < n('min_len')!)
      c.add(path, `must be at least ${n('min_len')} bytes`);
    if (n('max_len') !== undefined && len > n('max_len')!)
      c.add(path, `${len} bytes must be at most ${n('max_len')}`);
    return;
  }
  if (kind === 'bool') {
    if (typeof r['const'] === 'boolean' && (raw ?? false) !== r['const'])
      c.add(path, `must be ${String(r['const'])}`);
    return;
  }
  // Numbers: proto3 JSON writes 64-bit integers as strings and floats may be "NaN"/"Infinity".
  const x =
    raw === undefined ? 0 : typeof raw === 'string' ? Number(raw) : typeof raw === 'number' ? raw : NaN;
  if (Number.isNaN(x)) return;
  const b = (k: string): number | undefined => (r[k] === undefined ? undefined : Number(r[k]));
  if (b('const') !== undefined && x !== b('const')) c.add(path, `${x} must be ${b('const')}`);
  if (Array.isArray(r['in']) && !(r['in'] as number[]).map(Number).includes(x))
    c.add(path, `${x} is not allowed`);
  if (Array.isArray(r['not_in']) && (r['not_in'] as number[]).map(Number).includes(x))
    c.add(path, `${x} is not allowed`);
  rangeCheck(x, { gt: b('gt'), gte: b('gte'), lt: b('lt'), lte: b('lte') }, String, path, 'value', c);
}

const patterns = new Map<string, RegExp | null>();

/** PGV patterns are RE2; the ones Envoy's protos use are valid JavaScript regular expressions too. */
function patternOf(p: string): RegExp | null {
  let re = patterns.get(p);
  if (re === undefined) {
    try {
      re = new RegExp(p, 'u');
    } catch {
      re = null;
    }
    patterns.set(p, re);
  }
  return re;
}

function checkRepeated(r: Rules, items: JsonValue[], path: string, c: Collector): void {
  if (r['ignore_empty'] === true && items.length === 0) return;
  const min = r['min_items'] === undefined ? undefined : Number(r['min_items']);
  const max = r['max_items'] === undefined ? undefined : Number(r['max_items']);
  if (min !== undefined && items.length < min)
    c.add(
      path,
      items.length === 0
        ? `at least ${min} item(s) required`
        : `${items.length} item(s), at least ${min} required`,
    );
  if (max !== undefined && items.length > max) c.add(path, `${items.length} items, at most ${max} allowed`);
  if (r['unique'] === true) {
    const seen = new Set(items.map((i) => JSON.stringify(i)));
    if (seen.size !== items.length) c.add(path, 'items must be unique');
  }
}

function checkMap(
  fc: FieldCheck,
  r: Rules,
  entries: [string, JsonValue][],
  path: string,
  c: Collector,
): void {
  const min = r['min_pairs'] === undefined ? undefined : Number(r['min_pairs']);
  const max = r['max_pairs'] === undefined ? undefined : Number(r['max_pairs']);
  if (min !== undefined && entries.length < min)
    c.add(path, `at least ${min} entr${min === 1 ? 'y' : 'ies'} required`);
  if (max !== undefined && entries.length > max)
    c.add(path, `${entries.length} entries, at most ${max} allowed`);
  const keyRules = (r['keys'] as Rules | undefined)?.['string'] as Rules | undefined;
  const valueRules = r['values'] as Rules | undefined;
  for (const [k, v] of entries) {
    if (keyRules) checkScalar('string', k, `${path}["${k}"]`, keyRules, c, undefined);
    if (valueRules && !fc.messageType) {
      const kind = fc.enumType ? 'enum' : fc.field.type;
      const vr = valueRules[kind] as Rules | undefined;
      if (vr) checkScalar(kind, v, `${path}["${k}"]`, vr, c, fc.enumType);
    }
  }
}
