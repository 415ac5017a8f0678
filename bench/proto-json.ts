// Evaluation of @bufbuild/protobuf as kernmesh's proto3 JSON mapping (issue 11), against today's path
// (protobufjs decoding + src/xds/proto-json.ts's walker over its reflection):
//   node --import tsx bench/proto-json.ts [services=10000] [runs=5]
// 1. Conformance on the shared Istio fixtures: every resource decoded from protobuf bytes to proto3
//    JSON by both, compared (object key order aside); and the lowerCamelCase JSON @bufbuild/protobuf
//    writes read back by today's path to the same JSON.
// 2. Speed on a push of N services as istiod sends it (CDS: one EDS cluster per service, with
//    istiod's transport socket matches, circuit breakers and metadata; EDS: three endpoints each):
//    the response decoded to proto3 JSON resource by resource, as the xDS client does on receipt;
//    and the same N clusters read from a config dump's JSON (both spellings accepted).
// Prints a table of medians (CPU time; the paths take turns within each run) with the machine it ran on.
import { fromBinary, fromJson, toJson, type DescMessage } from '@bufbuild/protobuf';
import { readFileSync } from 'node:fs';
import { parseConfigFile } from '../src/xds/config-file.js';
import * as adopted from '../src/xds/proto-json.js';
import { anyFromJson, decodeToJson, encodeFromJson, normalizeJson } from './protobufjs-json.js';
import { requireType } from '../src/xds/protos.js';
import { TYPE, type JsonObject, type JsonValue } from '../src/xds/types.js';
import { bufbuildRegistry } from '../src/xds/descriptors.js';
import { machine, median } from './common.js';

const services = Number(process.argv[2] ?? 10_000);
const runs = Number(process.argv[3] ?? 5);
const FIXTURES = new URL('../../shared/fixtures/istio/', import.meta.url).pathname;

/** JSON with object keys sorted, so that two mappings compare by content, not key order. */
export function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );
}

function cluster(i: number): JsonObject {
  const name = `outbound|80||svc-${i}.bench.svc.cluster.local`;
  return {
    '@type': TYPE.cluster,
    name,
    type: 'EDS',
    eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' }, service_name: name },
    connect_timeout: '10s',
    lb_policy: 'LEAST_REQUEST',
    circuit_breakers: {
      thresholds: [
        { max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295 },
      ],
    },
    common_lb_config: { locality_weighted_lb_config: {} },
    metadata: {
      filter_metadata: {
        istio: {
          services: [{ host: `svc-${i}.bench.svc.cluster.local`, name: `svc-${i}`, namespace: 'bench' }],
        },
      },
    },
    transport_socket_matches: [
      {
        name: 'tlsMode-istio',
        match: { tlsMode: 'istio' },
        transport_socket: {
          name: 'envoy.transport_sockets.tls',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
            common_tls_context: { alpn_protocols: ['istio-peer-exchange', 'istio'] },
            sni: `outbound_.80_._.svc-${i}.bench.svc.cluster.local`,
          },
        },
      },
      {
        name: 'tlsMode-disabled',
        match: {},
        transport_socket: { name: 'envoy.transport_sockets.raw_buffer' },
      },
    ],
  };
}

function assignment(i: number): JsonObject {
  return {
    '@type': TYPE.endpoint,
    cluster_name: `outbound|80||svc-${i}.bench.svc.cluster.local`,
    endpoints: [
      {
        locality: { region: 'r1', zone: 'z1' },
        lb_endpoints: [0, 1, 2].map((k) => ({
          endpoint: {
            address: { socket_address: { address: `10.${k}.${i >> 8}.${i & 255}`, port_value: 8080 } },
          },
          health_status: 'HEALTHY',
          metadata: { filter_metadata: { istio: { workload: `svc-${i}-${k};bench;svc;v1;Kubernetes` } } },
          load_balancing_weight: 1,
        })),
        load_balancing_weight: 3,
      },
    ],
  };
}

/** A SotW DiscoveryResponse carrying the resources, as bytes on the wire. */
function response(typeUrl: string, resources: JsonObject[]): Uint8Array {
  const type = requireType('envoy.service.discovery.v3.DiscoveryResponse');
  return type
    .encode({
      version_info: 'v1',
      type_url: typeUrl,
      nonce: '1',
      resources: resources.map((r) => anyFromJson(r)),
    })
    .finish();
}

/** CPU time (user + system) of fn in ms: on a shared machine, less disturbed by other work than wall time. */
function time(fn: () => void): number {
  const t0 = process.cpuUsage();
  fn();
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / 1000;
}

function conformance(): { resources: number; sameJson: number; camelRoundTrip: number } {
  const reg = bufbuildRegistry();
  let resources = 0;
  let sameJson = 0;
  let camelRoundTrip = 0;
  for (const f of [
    'sidecar-listeners.configdump.yaml',
    'sidecar-endpoints.configdump.json',
    'gateway-route-and-dr-subset-cluster.configdump.json',
    'waypoint-full.configdump.json',
  ]) {
    const path = FIXTURES + f;
    for (const r of parseConfigFile(readFileSync(path, 'utf8'), path).resources) {
      if (!r.resource) continue;
      resources++;
      const { '@type': _type, ...fields } = r.resource;
      const bytes = encodeFromJson(r.typeUrl, fields);
      const desc = reg.getMessage(r.typeUrl.slice(r.typeUrl.lastIndexOf('/') + 1))!;
      const theirs = toJson(desc, fromBinary(desc, bytes), { registry: reg, useProtoFieldName: true });
      const ours = decodeToJson(r.typeUrl, bytes);
      if (canonical(theirs) === canonical(ours)) sameJson++;
      const camel: JsonValue = toJson(desc, fromBinary(desc, bytes), { registry: reg });
      if (canonical(normalizeJson(r.typeUrl, camel)) === canonical(ours)) camelRoundTrip++;
    }
  }
  return { resources, sameJson, camelRoundTrip };
}

interface DecodedAny {
  typeUrl: string;
  value: Uint8Array;
}

function main(): void {
  const reg = bufbuildRegistry();
  const c = conformance();
  const clusters = Array.from({ length: services }, (_, i) => cluster(i));
  const assignments = Array.from({ length: services }, (_, i) => assignment(i));
  const cds = response(TYPE.cluster, clusters);
  const eds = response(TYPE.endpoint, assignments);
  const clusterDesc0 = reg.getMessage('envoy.config.cluster.v3.Cluster')!;
  const camelDump = clusters.map((x) => {
    const { '@type': _t, ...fields } = x;
    return toJson(clusterDesc0, fromJson(clusterDesc0, fields as never, { registry: reg }), {
      registry: reg,
    }) as JsonObject;
  });

  const discovery = reg.getMessage('envoy.service.discovery.v3.DiscoveryResponse')!;
  const descs = new Map<string, DescMessage>();
  const descOf = (url: string) => {
    let d = descs.get(url);
    if (!d) descs.set(url, (d = reg.getMessage(url.slice(url.lastIndexOf('/') + 1))!));
    return d;
  };
  const envelope = (bytes: Uint8Array) =>
    (
      requireType('envoy.service.discovery.v3.DiscoveryResponse').decode(bytes) as unknown as {
        resources: { type_url: string; value: Uint8Array }[];
      }
    ).resources;
  const protobufjsDecode = (bytes: Uint8Array) => {
    for (const any of envelope(bytes)) decodeToJson(any.type_url, any.value);
  };
  // What src/xds/connection.ts + decode.ts do now: protobufjs for the envelope, the adopted mapping per resource.
  const adoptedDecode = (bytes: Uint8Array) => {
    for (const any of envelope(bytes)) adopted.decodeToJson(any.type_url, any.value);
  };
  const bufbuildDecode = (bytes: Uint8Array) => {
    const resp = fromBinary(discovery, bytes) as unknown as { resources: DecodedAny[] };
    for (const any of resp.resources) {
      const d = descOf(any.typeUrl);
      toJson(d, fromBinary(d, any.value), { registry: reg, useProtoFieldName: true });
    }
  };
  const clusterDesc = descOf(TYPE.cluster);
  const rows: [string, number[], number[], number[]][] = [
    ['protobufjs + our own walker (before)', [], [], []],
    ['@bufbuild/protobuf alone', [], [], []],
    ['src/xds/proto-json.ts (adopted)', [], [], []],
  ];
  for (let i = 0; i < runs + 1; i++) {
    const keep = i > 0; // the first round warms both up
    const t = [
      time(() => protobufjsDecode(cds)),
      time(() => protobufjsDecode(eds)),
      time(() => {
        for (const x of camelDump) normalizeJson(TYPE.cluster, x);
      }),
      time(() => bufbuildDecode(cds)),
      time(() => bufbuildDecode(eds)),
      time(() => {
        for (const x of camelDump)
          toJson(clusterDesc, fromJson(clusterDesc, x as never, { registry: reg }), {
            registry: reg,
            useProtoFieldName: true,
          });
      }),
      time(() => adoptedDecode(cds)),
      time(() => adoptedDecode(eds)),
      time(() => {
        for (const x of camelDump) adopted.normalizeJson(TYPE.cluster, x);
      }),
    ];
    if (!keep) continue;
    rows[0]![1].push(t[0]!);
    rows[0]![2].push(t[1]!);
    rows[0]![3].push(t[2]!);
    rows[1]![1].push(t[3]!);
    rows[1]![2].push(t[4]!);
    rows[1]![3].push(t[5]!);
    rows[2]![1].push(t[6]!);
    rows[2]![2].push(t[7]!);
    rows[2]![3].push(t[8]!);
  }
  const mb = (b: Uint8Array) => (b.length / 1024 / 1024).toFixed(1);
  console.log(`proto3 JSON mapping: ${services} services, median CPU time of ${runs} interleaved runs (ms)`);
  console.log(`machine: ${machine()}`);
  console.log(
    `conformance on the Istio fixtures: ${c.sameJson}/${c.resources} resources decode to the same JSON; ` +
      `${c.camelRoundTrip}/${c.resources} read back from @bufbuild/protobuf's lowerCamelCase JSON to the same JSON`,
  );
  console.log('');
  console.log(
    `| path | CDS push decode (${mb(cds)} MiB) | EDS push decode (${mb(eds)} MiB) | ${services} camelCase clusters from a dump |`,
  );
  console.log('| --- | ---: | ---: | ---: |');
  for (const [name, a, b, d] of rows)
    console.log(`| ${name} | ${median(a).toFixed(0)} | ${median(b).toFixed(0)} | ${median(d).toFixed(0)} |`);
}

main();
