// proto3 JSON mapping checked against real istiod/Envoy config dumps: every resource Any in them
// (fromJson → encode → decode → toJson) must come back exactly as it was, Istio-private types included.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  anyFromJson,
  decodeToJson,
  encodeFromJson,
  fromJson,
  normalizeJson,
  toJson,
} from '../src/xds/proto-json.js';
import { lookupType } from '../src/xds/protos.js';
import type { JsonObject, JsonValue } from '../src/xds/types.js';
import { readFixture } from './support/fixtures.js';

const DUMPS = [
  'sidecar-listeners.configdump.yaml',
  'sidecar-endpoints.configdump.json',
  'gateway-route-and-dr-subset-cluster.configdump.json',
  'waypoint-full.configdump.json',
];

const RESOURCE_TYPES = new Set([
  'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  'type.googleapis.com/envoy.config.listener.v3.Listener',
  'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
]);

function collectAnys(v: JsonValue, out: JsonObject[]): JsonObject[] {
  if (Array.isArray(v)) for (const x of v) collectAnys(x, out);
  else if (v && typeof v === 'object') {
    if (typeof v['@type'] === 'string' && RESOURCE_TYPES.has(v['@type'])) out.push(v);
    for (const x of Object.values(v)) collectAnys(x, out);
  }
  return out;
}

function withoutEmptyArrays(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(withoutEmptyArrays);
  if (v && typeof v === 'object') {
    const out: JsonObject = {};
    for (const [k, x] of Object.entries(v))
      if (!(Array.isArray(x) && x.length === 0)) out[k] = withoutEmptyArrays(x);
    return out;
  }
  return v;
}

function roundTripAny(json: JsonObject): JsonValue {
  const any = anyFromJson(json);
  const bytes = lookupType('google.protobuf.Any')!.encode(any).finish();
  return decodeToJson('google.protobuf.Any', bytes);
}

for (const file of DUMPS) {
  void test(`every resource in ${file} round-trips through protobuf bytes unchanged`, () => {
    const resources = collectAnys(readFixture(file), []);
    assert.ok(resources.length > 0, 'fixture holds resources');
    for (const r of resources)
      assert.deepStrictEqual(
        roundTripAny(r),
        r,
        `resource ${JSON.stringify(r['name'] ?? r['cluster_name'])}`,
      );
  });

  void test(`the whole config dump ${file} round-trips as envoy.admin.v3.ConfigDump`, () => {
    const dump = readFixture(file);
    const bytes = encodeFromJson('envoy.admin.v3.ConfigDump', dump);
    // proto3 JSON has no empty repeated fields; one fixture was trimmed by hand and kept `[]`.
    assert.deepStrictEqual(decodeToJson('envoy.admin.v3.ConfigDump', bytes), withoutEmptyArrays(dump));
  });
}

void test("Istio's private filter configs in the fixtures decode with the messages declared in proto/", () => {
  for (const t of [
    'stats.PluginConfig',
    'envoy.tcp.metadataexchange.config.MetadataExchange',
    'istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig',
    'istio.workload.Address',
  ])
    assert.ok(lookupType(`type.googleapis.com/${t}`), t);
});

void test('an unknown Any arriving as bytes is kept as base64 and re-encoded byte for byte', () => {
  const payload = Buffer.from([0x0a, 0x03, 0x61, 0x62, 0x63, 0x10, 0x96, 0x01]);
  const any = { type_url: 'type.googleapis.com/istio.private.Filter', value: payload };
  const json = toJson('google.protobuf.Any', any);
  assert.deepStrictEqual(json, { '@type': any.type_url, '@bytes': payload.toString('base64') });
  const back = anyFromJson(json) as { type_url: string; value: Uint8Array };
  assert.equal(back.type_url, any.type_url);
  assert.deepStrictEqual(Buffer.from(back.value), payload);
});

void test('an unknown Any with fields cannot be encoded and says which type and where', () => {
  assert.throws(
    () =>
      fromJson('envoy.config.listener.v3.Filter', {
        name: 'x',
        typed_config: { '@type': 'type.googleapis.com/no.Such', a: 1 },
      }),
    /typed_config: unknown Any type type.googleapis.com\/no.Such carries fields/,
  );
});

void test('well-known types print as Envoy prints them', () => {
  const cluster = {
    '@type': 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
    name: 'outbound|80||a.default.svc.cluster.local',
    type: 'EDS',
    connect_timeout: '10.500s',
    per_connection_buffer_limit_bytes: 32768,
    lb_policy: 'LEAST_REQUEST',
    metadata: {
      filter_metadata: { istio: { config: '/apis/x', n: 1.5, ok: true, nothing: null, list: [1, 'a'] } },
    },
    max_requests_per_connection: 7,
    common_lb_config: { healthy_panic_threshold: { value: 0.5 } },
    dns_refresh_rate: '0.000001s',
    outlier_detection: { consecutive_5xx: 3, interval: '1s' },
  };
  const json = normalizeJson('google.protobuf.Any', cluster) as JsonObject;
  assert.deepStrictEqual(json, cluster);
});

void test('lowerCamelCase input is accepted and printed back in snake_case; defaults are left out', () => {
  const json = normalizeJson('envoy.config.endpoint.v3.ClusterLoadAssignment', {
    clusterName: 'c',
    endpoints: [
      {
        lbEndpoints: [
          {
            endpoint: { address: { socketAddress: { address: '127.0.0.2', portValue: '8080' } } },
            loadBalancingWeight: 3,
          },
        ],
        priority: 0,
      },
    ],
  });
  assert.deepStrictEqual(json, {
    cluster_name: 'c',
    endpoints: [
      {
        lb_endpoints: [
          {
            endpoint: { address: { socket_address: { address: '127.0.0.2', port_value: 8080 } } },
            load_balancing_weight: 3,
          },
        ],
      },
    ],
  });
});

void test('64-bit integers print as strings, timestamps as RFC 3339, floats as the float they were', () => {
  const ts = normalizeJson('google.protobuf.Timestamp', '2023-06-20T09:07:41.865Z');
  assert.equal(ts, '2023-06-20T09:07:41.865Z');
  const u64 = normalizeJson('google.protobuf.UInt64Value', 18446744073709551615n.toString());
  assert.equal(u64, '18446744073709551615');
  const f = normalizeJson('google.protobuf.FloatValue', 0.1);
  assert.equal(f, 0.1);
  const mask = normalizeJson('google.protobuf.FieldMask', 'fooBar,baz');
  assert.equal(mask, 'fooBar,baz');
});

void test('a bad value names its path', () => {
  // The path is ours; the reason is @bufbuild/protobuf's.
  assert.throws(
    () => fromJson('envoy.config.cluster.v3.Cluster', { name: 'c', connect_timeout: '10 seconds' }),
    /^Error: connect_timeout: cannot decode message google\.protobuf\.Duration from JSON: "10 seconds"/,
  );
  assert.throws(
    () => fromJson('envoy.config.cluster.v3.Cluster', { lb_policy: 'FASTEST' }),
    /^Error: lb_policy: cannot decode enum envoy\.config\.cluster\.v3\.Cluster\.LbPolicy from JSON: "FASTEST"/,
  );
  assert.throws(
    () => fromJson('envoy.config.cluster.v3.Cluster', { nmae: 'c' }),
    /^Error: nmae: .*key "nmae" is unknown/,
  );
  // Deep inside a resource, lists and Anys included.
  assert.throws(
    () =>
      fromJson('envoy.config.cluster.v3.Cluster', {
        name: 'c',
        loadAssignment: {
          endpoints: [
            { lb_endpoints: [{}, { endpoint: { address: { socket_address: { port_value: 'x' } } } }] },
          ],
        },
      }),
    /^Error: loadAssignment\.endpoints\[0\]\.lb_endpoints\[1\]\.endpoint\.address\.socket_address\.port_value: /,
  );
  assert.throws(
    () =>
      fromJson('envoy.config.listener.v3.Filter', {
        name: 'x',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
          idle_timeout: 'soon',
        },
      }),
    /^Error: typed_config\.idle_timeout: /,
  );
});
