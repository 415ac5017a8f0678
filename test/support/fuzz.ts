// Seeded generators of bad xDS input for the fuzz tests: a PRNG, mutations of resources as JSON
// (random fields given random values) and as bytes (truncated, flipped, garbage, wrong type URL),
// and the classes of input that are wrong by construction, whose refusal the tests can require.
import { encodeFromJson } from '../../src/xds/proto-json.js';
import { TYPE, type JsonObject, type JsonValue } from '../../src/xds/types.js';

/** mulberry32: small, fast, and the same sequence for the same seed on every machine. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Random = () => number;

export function pick<T>(r: Random, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

export interface RawAny {
  type_url: string;
  value: Uint8Array;
}

/** One fuzz case: what is served under a name, and whether its refusal is certain. */
export interface FuzzCase {
  name: string;
  typeUrl: string;
  /** How it was made, for the report and the replay file. */
  mutation: string;
  any: RawAny;
  /** The JSON form when the case has one (the file source reads JSON). */
  json?: JsonObject;
  /** Wrong by construction: must be NACKed (and refused by the file source). */
  mustRefuse: boolean;
}

export function encode(typeUrl: string, json: JsonObject): Uint8Array {
  const { '@type': _t, ...fields } = json;
  return encodeFromJson(typeUrl, fields);
}

const VALUES: JsonValue[] = [
  -1,
  0,
  1,
  70000,
  4294967296,
  -2147483649,
  '',
  'x',
  'not-an-ip',
  '999.1.1.1',
  '-5s',
  '1e400',
  'NaN',
  true,
  null,
  {},
  [],
  [{}],
  'é\u0000\uffff',
  99,
];

/** Every path to a value inside a JSON object. */
function paths(
  v: JsonValue,
  base: (string | number)[] = [],
  out: (string | number)[][] = [],
): (string | number)[][] {
  if (Array.isArray(v)) v.forEach((x, i) => (out.push([...base, i]), paths(x, [...base, i], out)));
  else if (v && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) {
      if (k === '@type' && base.length === 0) continue;
      out.push([...base, k]);
      paths(x, [...base, k], out);
    }
  return out;
}

function setAt(root: JsonObject, path: (string | number)[], value: JsonValue | undefined): JsonObject {
  const copy = structuredClone(root);
  let o: JsonValue = copy;
  for (const k of path.slice(0, -1)) o = (o as Record<string | number, JsonValue>)[k]!;
  const last = path[path.length - 1]!;
  if (value === undefined) {
    if (Array.isArray(o)) o.splice(Number(last), 1);
    else delete (o as JsonObject)[last];
  } else (o as Record<string | number, JsonValue>)[last] = value;
  return copy;
}

/** A random field of the resource set to a random value, or removed; undefined when it cannot be encoded. */
export function mutateField(r: Random, json: JsonObject): { json: JsonObject; what: string } | undefined {
  const ps = paths(json);
  if (ps.length === 0) return undefined;
  const p = pick(r, ps);
  const remove = r() < 0.15;
  const value = remove ? undefined : pick(r, VALUES);
  const mutated = setAt(json, p, value);
  return { json: mutated, what: `${p.join('.')} ${remove ? 'removed' : `= ${JSON.stringify(value)}`}` };
}

export function mutateBytes(r: Random, bytes: Uint8Array): { bytes: Uint8Array; what: string } {
  const b = Buffer.from(bytes);
  switch (Math.floor(r() * 3)) {
    case 0: {
      const at = Math.floor(r() * Math.max(1, b.length - 1));
      return { bytes: b.subarray(0, at), what: `truncated at ${at} of ${b.length}` };
    }
    case 1: {
      const n = 1 + Math.floor(r() * 4);
      for (let i = 0; i < n; i++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      return { bytes: b, what: `${n} byte(s) overwritten` };
    }
    default: {
      const junk = Buffer.from(Array.from({ length: 1 + Math.floor(r() * 16) }, () => Math.floor(r() * 256)));
      return { bytes: Buffer.concat([b, junk]), what: `${junk.length} random byte(s) appended` };
    }
  }
}

/** Bytes that are never a message: a field tag whose length runs past the end. */
export function garbage(r: Random): Uint8Array {
  const body = Array.from({ length: 4 + Math.floor(r() * 60) }, () => Math.floor(r() * 256));
  return Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, ...body]);
}

/** Envoy's enum fields of each type declared `defined_only`, for an unknown number. */
const ENUM_FIELDS: Record<string, string[]> = {
  [TYPE.cluster]: ['lb_policy', 'type', 'dns_lookup_family'],
  [TYPE.listener]: [],
  [TYPE.endpoint]: [],
};

/**
 * A mutation that is wrong by construction for the type (the resource must be refused), as JSON
 * when it has a JSON form.
 */
export function certainlyBad(
  r: Random,
  typeUrl: string,
  base: JsonObject,
): { json?: JsonObject; any?: RawAny; what: string } {
  const kinds = ['garbage', 'truncated', 'wrong-type', 'enum', 'port', 'address', 'duration'];
  const kind = pick(r, kinds);
  switch (kind) {
    case 'garbage':
      return { any: { type_url: typeUrl, value: garbage(r) }, what: 'garbage bytes' };
    case 'truncated': {
      const b = encode(typeUrl, base);
      // Cut inside the first length-delimited field so the message cannot end well.
      return {
        any: { type_url: typeUrl, value: b.subarray(0, Math.max(2, Math.min(6, b.length - 1))) },
        what: 'truncated bytes',
      };
    }
    case 'wrong-type': {
      const other = pick(
        r,
        [TYPE.cluster, TYPE.listener, TYPE.endpoint, TYPE.route].filter((t) => t !== typeUrl),
      );
      return { any: { type_url: other, value: encode(typeUrl, base) }, what: `under type URL ${other}` };
    }
    case 'enum': {
      const fields = ENUM_FIELDS[typeUrl] ?? [];
      if (fields.length > 0) {
        const f = pick(r, fields);
        return { json: { ...base, [f]: 77 }, what: `${f} = 77 (unknown enum number)` };
      }
      return { json: portAt(base, typeUrl, 70000), what: 'port 70000' };
    }
    case 'port':
      return { json: portAt(base, typeUrl, 65536 + Math.floor(r() * 1_000_000)), what: 'port > 65535' };
    case 'address':
      return {
        json: addressAt(base, typeUrl, pick(r, ['', '300.1.2.3', 'not an ip', '::g'])),
        what: 'invalid address',
      };
    default:
      return {
        json: {
          ...base,
          ...(typeUrl === TYPE.cluster
            ? { connect_timeout: '-3s' }
            : typeUrl === TYPE.listener
              ? { listener_filters_timeout: '-1s' }
              : {}),
          ...(typeUrl === TYPE.endpoint ? portAt(base, typeUrl, 0x7fffffff) : {}),
        },
        what: 'negative duration (or port 2^31-1)',
      };
  }
}

function portAt(base: JsonObject, typeUrl: string, port: number): JsonObject {
  const copy = structuredClone(base);
  if (typeUrl === TYPE.cluster) {
    copy['type'] = 'STATIC';
    delete copy['eds_cluster_config'];
    copy['load_assignment'] = {
      cluster_name: typeof copy['name'] === 'string' ? copy['name'] : '',
      endpoints: [
        {
          lb_endpoints: [
            { endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port } } } },
          ],
        },
      ],
    };
    return copy;
  }
  const sa = socketAddress(copy, typeUrl);
  sa['port_value'] = port;
  return copy;
}

function addressAt(base: JsonObject, typeUrl: string, address: string): JsonObject {
  if (typeUrl === TYPE.cluster) {
    const copy = portAt(base, typeUrl, 80);
    copy['type'] = 'STATIC';
    const la = copy['load_assignment'] as JsonObject;
    (
      (
        (
          ((la['endpoints'] as JsonObject[])[0]!['lb_endpoints'] as JsonObject[])[0]![
            'endpoint'
          ] as JsonObject
        )['address'] as JsonObject
      )['socket_address'] as JsonObject
    )['address'] = address;
    return copy;
  }
  const copy = structuredClone(base);
  socketAddress(copy, typeUrl)['address'] = address;
  return copy;
}

/** The socket address a listener listens on or a CLA's first endpoint has, made when absent. */
function socketAddress(copy: JsonObject, typeUrl: string): JsonObject {
  if (typeUrl === TYPE.listener) {
    delete copy['internal_listener'];
    const sa = { address: '127.100.93.1', port_value: 80 };
    const address = (copy['address'] as JsonObject | undefined) ?? {};
    copy['address'] = {
      socket_address: { ...sa, ...((address['socket_address'] as JsonObject | undefined) ?? {}) },
    };
    return copy['address']['socket_address'] as JsonObject;
  }
  const sa: JsonObject = { address: '127.93.0.1', port_value: 80 };
  copy['endpoints'] = [{ lb_endpoints: [{ endpoint: { address: { socket_address: sa } } }] }];
  return sa;
}

/** A Struct nested `depth` levels deep, for metadata. */
export function deepStruct(depth: number): JsonObject {
  let v: JsonObject = { leaf: 1 };
  for (let i = 0; i < depth; i++) v = { [`l${i}`]: v };
  return v;
}
