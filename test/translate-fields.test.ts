// One test per row of the accepted / ignored / not enforced / refused table: each field is put,
// with its example value, into a minimal resource that is otherwise accepted, and the outcome is
// checked through translate(). A second test checks docs/translation.md lists every row the same way.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  CHAIN_MATCH_FIELDS,
  CLA_FIELDS,
  CLUSTER_FIELDS,
  FILTER_CHAIN_FIELDS,
  HCM_FIELDS,
  HTTP_FILTERS,
  LISTENER_FIELDS,
  NETWORK_FILTERS,
  ROUTE_ACTION_FIELDS,
  ROUTE_CONFIG_FIELDS,
  ROUTE_FIELDS,
  ROUTE_MATCH_FIELDS,
  TCP_PROXY_FIELDS,
  VHOST_FIELDS,
  type FieldTable,
} from '../src/translate/fields.js';
import { translate } from '../src/translate/index.js';
import { TYPE, type JsonObject, type JsonValue, type XdsResource } from '../src/xds/types.js';

// The field examples in src/translate/fields.ts name their cluster "x": the same one here.
const CLUSTER = 'x';
const tcpProxy = (extra: JsonObject = {}): JsonObject => ({
  name: 'envoy.filters.network.tcp_proxy',
  typed_config: {
    '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
    cluster: CLUSTER,
    ...extra,
  },
});
const router = { name: 'envoy.filters.http.router', typed_config: { '@type': 'x/Router' } };

function wrap(typeUrl: string, name: string, body: JsonObject): XdsResource {
  return { typeUrl, name, version: '1', resource: { '@type': typeUrl, ...body } };
}
function tcpListener(chain: JsonObject = { filters: [tcpProxy()] }, extra: JsonObject = {}): XdsResource {
  return wrap(TYPE.listener, 'l', {
    name: 'l',
    address: { socket_address: { address: '127.100.0.1', port_value: 80 } },
    filter_chains: [chain],
    bind_to_port: false,
    ...extra,
  });
}
function httpListener(hcm: JsonObject = {}, filters: JsonObject[] = [router]): XdsResource {
  return tcpListener({
    filters: [
      {
        name: 'envoy.filters.network.http_connection_manager',
        typed_config: {
          '@type': 'x/HttpConnectionManager',
          rds: { route_config_name: '80' },
          http_filters: filters,
          ...hcm,
        },
      },
    ],
  });
}
function routeConfig(vhost: JsonObject = {}, extra: JsonObject = {}): XdsResource {
  return wrap(TYPE.route, '80', {
    name: '80',
    virtual_hosts: [
      {
        name: 'v',
        domains: ['127.100.0.1'],
        routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTER } }],
        ...vhost,
      },
    ],
    ...extra,
  });
}

interface Row {
  table: string;
  rules: FieldTable;
  /** The resources with the field set, and the path the field has inside its resource. */
  build: (field: string, example: JsonValue) => { resources: XdsResource[]; path: string; typeUrl: string };
}

const ROWS: Row[] = [
  {
    table: 'Cluster',
    rules: CLUSTER_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.cluster,
      path: f,
      resources: [
        wrap(TYPE.cluster, 'c', {
          name: 'c',
          type: 'EDS',
          eds_cluster_config: { service_name: 'c' },
          [f]: v,
        }),
      ],
    }),
  },
  {
    table: 'ClusterLoadAssignment',
    rules: CLA_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.endpoint,
      path: f,
      resources: [wrap(TYPE.endpoint, 'c', { cluster_name: 'c', endpoints: [], [f]: v })],
    }),
  },
  {
    table: 'Listener',
    rules: LISTENER_FIELDS,
    build: (f, v) => ({ typeUrl: TYPE.listener, path: f, resources: [tcpListener(undefined, { [f]: v })] }),
  },
  {
    table: 'Filter chain',
    rules: FILTER_CHAIN_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: `filter_chains[0].${f}`,
      resources: [tcpListener({ filters: [tcpProxy()], [f]: v })],
    }),
  },
  {
    table: 'Filter chain match',
    rules: CHAIN_MATCH_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: `filter_chains[0].filter_chain_match.${f}`,
      resources: [tcpListener({ filters: [tcpProxy()], filter_chain_match: { [f]: v } })],
    }),
  },
  {
    table: 'TCP proxy',
    rules: TCP_PROXY_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: `filter_chains[0].filters[0].typed_config.${f}`,
      resources: [tcpListener({ filters: [tcpProxy({ [f]: v })] })],
    }),
  },
  {
    table: 'Network filters',
    rules: NETWORK_FILTERS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: 'filter_chains[0].filters[0]',
      resources: [tcpListener({ filters: [{ name: f, typed_config: v }, tcpProxy()] })],
    }),
  },
  {
    table: 'HTTP connection manager',
    rules: HCM_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: `filter_chains[0].filters[0].typed_config.${f}`,
      resources: [httpListener({ [f]: v })],
    }),
  },
  {
    table: 'HTTP filters',
    rules: HTTP_FILTERS,
    build: (f, v) => ({
      typeUrl: TYPE.listener,
      path: 'filter_chains[0].filters[0].typed_config.http_filters[0]',
      resources: [httpListener({}, [{ name: f, typed_config: v }, router])],
    }),
  },
  {
    table: 'Route configuration',
    rules: ROUTE_CONFIG_FIELDS,
    build: (f, v) => ({ typeUrl: TYPE.route, path: f, resources: [routeConfig({}, { [f]: v })] }),
  },
  {
    table: 'Virtual host',
    rules: VHOST_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.route,
      path: `virtual_hosts[0].${f}`,
      resources: [routeConfig({ [f]: v })],
    }),
  },
  {
    table: 'Route',
    rules: ROUTE_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.route,
      path: `virtual_hosts[0].routes[0].${f}`,
      resources: [routeConfig({ routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTER }, [f]: v }] })],
    }),
  },
  {
    table: 'Route match',
    rules: ROUTE_MATCH_FIELDS,
    // The field narrows the first route, which leads elsewhere than the catch-all route after it.
    build: (f, v) => {
      const specifiers = [
        'prefix',
        'path',
        'safe_regex',
        'path_separated_prefix',
        'connect_matcher',
        'path_match_policy',
      ];
      const match = specifiers.includes(f) ? { [f]: v } : { prefix: '/', [f]: v };
      return {
        typeUrl: TYPE.route,
        path: `virtual_hosts[0].routes[0].match.${f}`,
        resources: [
          routeConfig({
            routes: [
              { match, route: { cluster: 'outbound|80|v2|web.default.svc.cluster.local' } },
              { match: { prefix: '/' }, route: { cluster: CLUSTER } },
            ],
          }),
        ],
      };
    },
  },
  {
    table: 'Route action',
    rules: ROUTE_ACTION_FIELDS,
    build: (f, v) => ({
      typeUrl: TYPE.route,
      path: `virtual_hosts[0].routes[0].route.${f}`,
      resources: [routeConfig({ routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTER, [f]: v } }] })],
    }),
  },
];

void describe('every row of the field table, with a minimal resource', () => {
  for (const row of ROWS) {
    for (const [field, rule] of Object.entries(row.rules)) {
      void it(`${row.table} ${field}: ${rule.disposition}`, () => {
        const { resources, path, typeUrl } = row.build(field, rule.example);
        const r = translate({ resources });
        const refusedHere = r.rejected.filter(
          (x) => x.typeUrl === typeUrl && x.reason.startsWith(`${path}:`),
        );
        const listed = r.notEnforced.some((n) => n.typeUrl === typeUrl && n.field === path);
        switch (rule.disposition) {
          case 'refused':
            assert.equal(
              refusedHere.length,
              1,
              `expected a refusal at ${path}, got ${JSON.stringify(r.rejected)}`,
            );
            break;
          case 'not enforced':
            assert.deepEqual(r.rejected, []);
            assert.ok(listed, `expected ${path} in notEnforced, got ${JSON.stringify(r.notEnforced)}`);
            break;
          case 'ignored':
          case 'accepted':
            assert.deepEqual(r.rejected, []);
            assert.ok(!listed, `${path} must not be listed as not enforced`);
            break;
        }
      });
    }
  }

  void it('an unknown field is accepted and listed as not enforced', () => {
    const r = translate({
      resources: [wrap(TYPE.cluster, 'c', { name: 'c', type: 'STATIC', some_future_field: true })],
    });
    assert.deepEqual(r.rejected, []);
    assert.ok(r.notEnforced.some((n) => n.field === 'some_future_field'));
  });

  void it('an unknown HTTP filter is refused: it may act on requests', () => {
    const r = translate({
      resources: [httpListener({}, [{ name: 'acme.rewrite', typed_config: {} }, router])],
    });
    assert.match(
      r.rejected[0]?.reason ?? '',
      /http_filters\[0\]: HTTP filter acme\.rewrite is not one kernmesh knows/,
    );
  });

  void it('fault injection configured on a route is refused, an empty per-filter config is not', () => {
    const fault = routeConfig({
      routes: [
        {
          match: { prefix: '/' },
          route: { cluster: CLUSTER },
          typed_per_filter_config: {
            'envoy.filters.http.fault': { '@type': 'x/HTTPFault', abort: { http_status: 503 } },
          },
        },
      ],
    });
    assert.match(
      translate({ resources: [fault] }).rejected[0]?.reason ?? '',
      /^virtual_hosts\[0\]\.routes\[0\]\.typed_per_filter_config\.envoy\.filters\.http\.fault: fault injection is L7/,
    );
    const empty = routeConfig({
      routes: [
        {
          match: { prefix: '/' },
          route: { cluster: CLUSTER },
          typed_per_filter_config: { 'envoy.filters.http.fault': { '@type': 'x' } },
        },
      ],
    });
    assert.deepEqual(translate({ resources: [empty] }).rejected, []);
  });

  void it('header hashing is refused, source-address hashing accepted', () => {
    const rc = (h: JsonObject) =>
      routeConfig({ routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTER, hash_policy: [h] } }] });
    assert.match(
      translate({ resources: [rc({ header: { header_name: 'x-user' } })] }).rejected[0]?.reason ?? '',
      /^virtual_hosts\[0\]\.routes\[0\]\.route\.hash_policy\[0\]\.header: header hashing is L7/,
    );
    assert.deepEqual(
      translate({ resources: [rc({ connection_properties: { source_ip: true } })] }).rejected,
      [],
    );
  });
});

void describe('docs/translation.md', () => {
  void it('lists every row of the table with the same disposition', () => {
    const doc = readFileSync(new URL('../docs/translation.md', import.meta.url), 'utf8');
    const missing: string[] = [];
    for (const row of ROWS) {
      const start = doc.indexOf(`### ${row.table}\n`);
      assert.ok(start >= 0, `section "### ${row.table}" missing`);
      const end = doc.indexOf('\n### ', start + 1);
      const section = doc.slice(start, end < 0 ? undefined : end);
      for (const [field, rule] of Object.entries(row.rules)) {
        if (!section.includes(`| \`${field}\` | ${rule.disposition} |`))
          missing.push(`${row.table}: ${field} (${rule.disposition})`);
      }
    }
    assert.deepEqual(missing, []);
  });
});
