// Nothing in an input is dropped silently (issue 10, part 3): both proto3 JSON spellings, Envoy's v2
// API refused resource by resource, ztunnel dumps of every Istio layout, the outbound policy never
// described as more open than it is, and `kernmesh check`'s per-type counts adding up for every
// fixture and for a generated input of every layout.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { checkText, type CheckReport } from '../src/cli/check.js';
import { parseConfigFile } from '../src/xds/config-file.js';
import { V2_REFUSAL } from '../src/xds/decode.js';
import { TYPE, resourceKey, type JsonObject, type JsonValue } from '../src/xds/types.js';
import { fixturePath } from './support/fixtures.js';

const ADMIN = 'type.googleapis.com/envoy.admin.v3.';
const TLS = {
  name: 'envoy.transport_sockets.tls',
  typed_config: {
    '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
    sni: 'db.example.com',
  },
};
const tcpProxy = (cluster: string, name = 'envoy.filters.network.tcp_proxy'): JsonObject => ({
  name,
  typed_config: {
    '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
    stat_prefix: cluster,
    cluster,
  },
});
const staticCluster = (name: string, ip: string, extra: JsonObject = {}): JsonObject => ({
  '@type': TYPE.cluster,
  name,
  type: 'STATIC',
  lb_policy: 'LEAST_REQUEST',
  load_assignment: {
    cluster_name: name,
    endpoints: [
      { lb_endpoints: [{ endpoint: { address: { socket_address: { address: ip, port_value: 7001 } } } }] },
    ],
  },
  ...extra,
});
const tcpListener = (name: string, vip: string, cluster: string): JsonObject => ({
  '@type': TYPE.listener,
  name,
  address: { socket_address: { address: vip, port_value: 5000 } },
  filter_chains: [{ filters: [tcpProxy(cluster)] }],
  bind_to_port: false,
});
const virtualOutbound = (catchAll: string, filterName?: string): JsonObject => ({
  '@type': TYPE.listener,
  name: 'virtualOutbound',
  address: { socket_address: { address: '0.0.0.0', port_value: 15001 } },
  use_original_dst: true,
  filter_chains: [
    { filter_chain_match: { destination_port: 15001 }, filters: [tcpProxy('BlackHoleCluster')] },
    { name: 'catch-all', filters: [tcpProxy(catchAll, filterName)] },
  ],
});

/** A v3 config dump, snake_case, of every section kernmesh reads. */
function snakeDump(): JsonObject {
  return {
    configs: [
      {
        '@type': `${ADMIN}ClustersConfigDump`,
        version_info: 'c1',
        dynamic_active_clusters: [
          { version_info: 'c1', cluster: staticCluster('plain', '127.0.0.11') },
          // TLS-only: the kernel forwards plaintext only, so this one must be refused, never plaintext.
          { version_info: 'c1', cluster: staticCluster('tls', '127.0.0.12', { transport_socket: TLS }) },
          { version_info: 'c1', cluster: staticCluster('idle', '127.0.0.13') },
        ],
      },
      {
        '@type': `${ADMIN}EndpointsConfigDump`,
        dynamic_endpoint_configs: [
          {
            endpoint_config: {
              '@type': TYPE.endpoint,
              cluster_name: 'orphan',
              endpoints: [
                {
                  lb_endpoints: [
                    { endpoint: { address: { socket_address: { address: '127.0.0.14', port_value: 1 } } } },
                  ],
                },
              ],
            },
          },
        ],
      },
      {
        '@type': `${ADMIN}ListenersConfigDump`,
        dynamic_listeners: [
          {
            name: 'plain',
            active_state: { version_info: 'l1', listener: tcpListener('plain', '127.100.0.1', 'plain') },
          },
          {
            name: 'tls',
            active_state: { version_info: 'l1', listener: tcpListener('tls', '127.100.0.2', 'tls') },
          },
          { name: 'missing', active_state: { listener: tcpListener('missing', '127.100.0.3', 'nowhere') } },
          {
            name: 'virtualOutbound',
            active_state: { listener: virtualOutbound('BlackHoleCluster', 'envoy.tcp_proxy') },
          },
        ],
      },
      {
        '@type': `${ADMIN}RoutesConfigDump`,
        dynamic_route_configs: [
          {
            route_config: {
              '@type': TYPE.route,
              name: 'unused-route',
              virtual_hosts: [
                {
                  name: 'vh',
                  domains: ['*'],
                  routes: [{ match: { prefix: '/' }, route: { cluster: 'plain' } }],
                },
              ],
            },
          },
        ],
      },
      { '@type': `${ADMIN}SecretsConfigDump` },
    ],
  };
}

/** proto3 JSON's other spelling: every field name in lowerCamelCase (the generated input has no map keys with '_'). */
function camel(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(camel);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(
    Object.entries(v).map(([k, x]) => [
      k.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase()),
      camel(x),
    ]),
  );
}

function check(doc: JsonValue, file = 'input.json'): CheckReport {
  return checkText(file.endsWith('.yaml') ? toYaml(doc) : JSON.stringify(doc), file);
}

/** The counts add up: every resource of the input is in exactly one bucket. */
function assertCountsAddUp(report: CheckReport, where: string): void {
  for (const c of report.counts) {
    const sum = c.programmed + c.waiting.length + c.refused.length + c.notUsed.length;
    assert.equal(sum, c.held, `${where}: ${c.type}: ${c.held} held, ${sum} counted (${JSON.stringify(c)})`);
    for (const x of [...c.waiting, ...c.refused, ...c.notUsed])
      assert.ok(x.why.length > 0, `${where}: ${c.type} ${x.name} has a reason`);
  }
}

/** How many distinct resources of each type the file holds, read independently of check's counts. */
function heldInFile(text: string, file: string): Map<string, number> {
  const names = new Set<string>();
  const out = new Map<string, number>();
  for (const r of parseConfigFile(text, file).resources) {
    const k = resourceKey(r.typeUrl, r.name);
    if (names.has(k)) continue;
    names.add(k);
    out.set(r.typeUrl, (out.get(r.typeUrl) ?? 0) + 1);
  }
  return out;
}

const count = (r: CheckReport, type: string) => r.counts.find((c) => c.type === type);

void describe('kernmesh check counts every resource once, for every fixture', () => {
  for (const name of [
    'sidecar-listeners.configdump.yaml',
    'sidecar-endpoints.configdump.json',
    'gateway-route-and-dr-subset-cluster.configdump.json',
    'waypoint-full.configdump.json',
    'ztunnel-wds.dump.json',
  ]) {
    void it(name, () => {
      const path = fixturePath(name);
      const text = readFileSync(path, 'utf8');
      const report = checkText(text, path);
      assertCountsAddUp(report, name);
      const held = heldInFile(text, path);
      assert.deepEqual(
        new Map(report.counts.map((c) => [c.type, c.held])),
        new Map(
          [...held].map(([t, n]) => [
            (
              {
                [TYPE.cluster]: 'cluster',
                [TYPE.endpoint]: 'endpoint',
                [TYPE.listener]: 'listener',
                [TYPE.route]: 'route',
                [TYPE.address]: 'address',
              } as Record<string, string>
            )[t]!,
            n,
          ]),
        ),
        'held is what the file holds, per type',
      );
      assert.ok(report.counts.length > 0, 'the fixture holds resources');
    });
  }
});

void describe('both proto3 JSON spellings are read alike', () => {
  void it('a lowerCamelCase config dump gives the same report as its snake_case original', () => {
    const snake = check(snakeDump());
    const camelReport = check(camel(snakeDump()));
    assert.deepEqual(camelReport.counts, snake.counts);
    assert.deepEqual(camelReport.frontends, snake.frontends);
    assert.deepEqual(camelReport.clusters, snake.clusters);
    assert.deepEqual(camelReport.rejected, snake.rejected);
    assert.match(camelReport.layout, /lowerCamelCase/);
    assert.match(snake.layout, /snake_case/);
  });

  void it('camelCase fields inside a resource are read: TLS refused, LEAST_REQUEST and the endpoints kept', () => {
    const r = check(camel(snakeDump()));
    const plain = r.clusters.find((c) => c.name === 'plain');
    assert.equal(plain?.lbPolicy, 'least_request', 'lbPolicy: LEAST_REQUEST');
    assert.deepEqual(
      plain?.endpoints.map((e) => `${e.address}:${e.port}`),
      ['127.0.0.11:7001'],
      'loadAssignment',
    );
    const tls = r.rejected.find((x) => x.type === 'cluster' && x.name === 'tls');
    assert.match(
      tls?.reason ?? '',
      /transport_socket.*originates TLS/,
      'transportSocket: TLS is refused, never plaintext',
    );
    assert.deepEqual(
      r.frontends.map((f) => [f.address, f.cluster, f.pending ?? '']),
      [
        ['127.100.0.1', 'plain', ''],
        ['127.100.0.2', 'tls', 'cluster tls was refused'],
        ['127.100.0.3', 'nowhere', 'cluster nowhere is not among the accepted clusters'],
      ],
    );
  });

  void it('counts each resource in its bucket, with why', () => {
    const r = check(camel(snakeDump()));
    assertCountsAddUp(r, 'camelCase dump');
    const clusters = count(r, 'cluster')!;
    assert.equal(clusters.held, 3);
    assert.equal(clusters.programmed, 1);
    assert.deepEqual(
      clusters.refused.map((x) => x.name),
      ['tls'],
    );
    assert.deepEqual(
      clusters.notUsed.map((x) => x.name),
      ['idle'],
    );
    const listeners = count(r, 'listener')!;
    assert.equal(listeners.programmed, 1);
    assert.deepEqual(
      listeners.waiting.map((x) => [x.name, x.why]),
      [['missing', '127.100.0.3:5000: cluster nowhere is not among the accepted clusters']],
    );
    // The listener of the refused cluster keeps nothing to program, and says why.
    assert.deepEqual(listeners.notUsed.map((x) => x.name).sort(), ['tls', 'virtualOutbound']);
    assert.deepEqual(
      count(r, 'endpoint')!.notUsed.map((x) => x.name),
      ['orphan'],
    );
    assert.deepEqual(
      count(r, 'route')!.notUsed.map((x) => [x.name, x.why]),
      [['unused-route', 'not used by any outbound listener']],
    );
  });

  void it('a resources file, plain Anys or Delta-style wrappers, counts the same resources', () => {
    const all = (snakeDump().configs as JsonObject[]).flatMap((section) =>
      Object.values(section).flatMap((list) =>
        Array.isArray(list)
          ? (list as JsonObject[]).map(
              (e) =>
                (e.cluster ??
                  e.endpoint_config ??
                  e.route_config ??
                  (e.active_state as JsonObject | undefined)?.listener) as JsonObject,
            )
          : [],
      ),
    );
    const plain = check({ resources: all });
    const wrapped = check({ resources: all.map((r, i) => ({ name: `r${i}`, version: '1', resource: r })) });
    for (const [r, where] of [
      [plain, 'resources file'],
      [wrapped, 'Delta-style resources file'],
    ] as const) {
      assertCountsAddUp(r, where);
      assert.deepEqual(
        r.counts.map((c) => [c.type, c.held]),
        [
          ['cluster', 3],
          ['listener', 4],
          ['endpoint', 1],
          ['route', 1],
        ],
        where,
      );
    }
    assert.deepEqual(plain.counts, check(snakeDump()).counts, 'the same as the config dump it came from');
  });

  void it('YAML config dumps read the same as JSON', () => {
    assert.deepEqual(check(snakeDump(), 'input.yaml').counts, check(snakeDump()).counts);
  });
});

void describe("Envoy's v2 API is refused resource by resource, never read as v3", () => {
  const v2Dump: JsonObject = {
    configs: [
      {
        '@type': 'type.googleapis.com/envoy.admin.v2alpha.ClustersConfigDump',
        dynamic_active_clusters: [
          {
            cluster: {
              '@type': 'type.googleapis.com/envoy.api.v2.Cluster',
              name: 'db',
              type: 'STATIC',
              hosts: [{ socket_address: { address: '127.0.0.21', port_value: 5432 } }],
              tls_context: { sni: 'db' },
            },
          },
        ],
      },
      {
        '@type': 'type.googleapis.com/envoy.admin.v2alpha.ListenersConfigDump',
        dynamic_active_listeners: [
          { listener: { '@type': 'type.googleapis.com/envoy.api.v2.Listener', name: 'l1', address: {} } },
        ],
        dynamic_warming_listeners: [
          { listener: { '@type': 'type.googleapis.com/envoy.api.v2.Listener', name: 'l2', address: {} } },
        ],
      },
    ],
  };

  void it('a v2 config dump: every cluster and listener refused with one clear reason', () => {
    const r = check(v2Dump);
    assertCountsAddUp(r, 'v2 dump');
    assert.deepEqual(
      r.rejected.map((x) => [x.type, x.name, x.reason]),
      [
        ['cluster', 'db', V2_REFUSAL],
        ['listener', 'l1', V2_REFUSAL],
        ['listener', 'l2', V2_REFUSAL],
      ],
    );
    assert.deepEqual([r.clusters, r.frontends], [[], []], 'nothing is programmed as if it were v3');
    assert.deepEqual(
      r.counts.map((c) => [c.type, c.held, c.refused.length]),
      [
        ['cluster', 1, 1],
        ['listener', 2, 2],
      ],
    );
  });

  void it('a v2 resource in a resources file is refused the same way', () => {
    const r = check({
      resources: [
        { '@type': 'type.googleapis.com/envoy.api.v2.Cluster', name: 'old', type: 'STATIC' },
        staticCluster('new', '127.0.0.22'),
      ],
    });
    assert.deepEqual(
      r.rejected.map((x) => [x.name, x.reason]),
      [['old', V2_REFUSAL]],
    );
    assert.deepEqual(
      r.clusters.map((c) => c.name),
      ['new'],
    );
  });
});

void describe('ztunnel dumps of every Istio layout are read', () => {
  const services = {
    'default/web': {
      name: 'web',
      namespace: 'default',
      hostname: 'web.default.svc.cluster.local',
      vips: ['net1/127.100.0.2'],
      ports: { '80': 8080 },
      waypoint: { destination: '/127.0.0.50', port: 15008 },
    },
  };
  const workloads = {
    'net1/10.0.0.9': {
      workloadIps: ['10.0.0.9'],
      waypoint: { destination: '/127.0.0.50', port: 15008 },
      uid: 'Kubernetes//Pod/default/web-1',
      name: 'web-1',
      namespace: 'default',
    },
  };

  void it('before Istio 1.24: services and workloads as maps, waypoints as network/ip with port', () => {
    const r = check({ services, workloads });
    assertCountsAddUp(r, 'ztunnel maps');
    assert.match(r.layout, /maps, before Istio 1\.24/);
    const addresses = count(r, 'address')!;
    assert.equal(addresses.held, 2);
    assert.ok(
      r.status.some((s) => s.note.startsWith('workload default/web-1 has waypoint 127.0.0.50:15008')),
    );
  });

  void it('Istio 1.24 and later: lists, and waypoints as namespace/hostname with hboneMtlsPort', () => {
    const r = check({
      services: [
        {
          name: 'web',
          namespace: 'default',
          hostname: 'web.default.svc.cluster.local',
          vips: ['/127.100.0.2'],
          ports: { '80': 8080 },
          waypoint: { destination: 'default/waypoint.default.svc.cluster.local', hboneMtlsPort: 15008 },
        },
      ],
      workloads: [
        {
          uid: 'Kubernetes//Pod/default/web-1',
          workloadIps: ['10.0.0.9'],
          name: 'web-1',
          namespace: 'default',
        },
      ],
      policies: [],
    });
    assertCountsAddUp(r, 'ztunnel lists');
    assert.match(r.layout, /lists, Istio 1\.24 and later/);
    assert.equal(count(r, 'address')!.held, 2);
    assert.ok(r.status.some((s) => s.type === 'file' && s.note.includes('policies not used')));
  });

  void it('the same service waypoint reaches translate from either layout', () => {
    const fromMaps = parseConfigFile(JSON.stringify({ services, workloads: {} }), 'z.json').resources;
    const fromLists = parseConfigFile(
      JSON.stringify({ services: Object.values(services), workloads: [] }),
      'z.json',
    ).resources;
    assert.deepEqual(
      fromLists.map((r) => r.resource),
      fromMaps.map((r) => r.resource),
    );
  });
});

void describe('the outbound policy is never described as more open than it is', () => {
  void it('a BlackHoleCluster catch-all is REGISTRY_ONLY whatever the filter name spelling', () => {
    for (const name of ['envoy.filters.network.tcp_proxy', 'envoy.tcp_proxy']) {
      const r = check({ resources: [virtualOutbound('BlackHoleCluster', name)] });
      assert.equal(r.outboundPolicy, 'blackhole', name);
      assert.ok(r.status.some((s) => s.note.includes('REGISTRY_ONLY')));
    }
  });

  void it('a catch-all kernmesh cannot read is refused, never taken for ALLOW_ANY', () => {
    const r = check({ resources: [virtualOutbound('some-egress-gateway')] });
    assert.equal(r.outboundPolicy, null);
    assert.match(
      r.rejected[0]?.reason ?? '',
      /cannot tell the outbound traffic policy: the catch-all chain goes to some-egress-gateway/,
    );
    assert.ok(!r.status.some((s) => s.note.includes('ALLOW_ANY')));
  });
});
