// Bad input over the wire (issue 14): every resource that cannot be decoded, or that breaks a rule
// Envoy's protos declare or Envoy's code enforces, is NACKed with its path and reason over a real
// gRPC stream, SotW and Delta, while the good resources of the same response are applied.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validateAgainst } from '../src/translate/validate.js';
import { encodeFromJson } from '../src/xds/proto-json.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';
import { TestControlPlane } from './support/control-plane.js';
import { makeClient } from './support/xds-client.js';

const edsCluster = (name: string): JsonObject => ({
  '@type': TYPE.cluster,
  name,
  type: 'EDS',
  eds_cluster_config: { eds_config: { ads: {} }, service_name: name },
});
const cla = (name: string, extra: JsonObject = {}): JsonObject => ({
  '@type': TYPE.endpoint,
  cluster_name: name,
  endpoints: [
    {
      lb_endpoints: [
        { endpoint: { address: { socket_address: { address: '127.0.0.10', port_value: 80 } } } },
      ],
      ...extra,
    },
  ],
});
const listener = (name: string, extra: JsonObject = {}): JsonObject => ({
  '@type': TYPE.listener,
  name,
  address: { socket_address: { address: '127.100.0.1', port_value: 80 } },
  filter_chains: [
    {
      filters: [
        {
          name: 'envoy.filters.network.tcp_proxy',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
            stat_prefix: 'x',
            cluster: 'good',
          },
        },
      ],
    },
  ],
  ...extra,
});

/** Protobuf bytes of a resource given as JSON with "@type". */
function enc(typeUrl: string, json: JsonObject): Uint8Array {
  const { '@type': _t, ...fields } = json;
  return encodeFromJson(typeUrl, fields);
}

/** Raw bytes of a resource whose name has one byte that is not UTF-8. */
function nonUtf8(typeUrl: string, json: JsonObject, marker: string): { type_url: string; value: Uint8Array } {
  const bytes = Buffer.from(enc(typeUrl, json));
  const at = bytes.indexOf(marker);
  assert.ok(at >= 0);
  bytes[at + marker.length - 1] = 0xff;
  return { type_url: typeUrl, value: bytes };
}

const EDS_GARBAGE = [
  {
    what: 'garbage bytes',
    any: { type_url: TYPE.endpoint, value: Buffer.from('\x0a\xff\xff\xff\xff\x0fnot a message') },
  },
  {
    what: 'a Cluster under the EDS type URL',
    any: { type_url: TYPE.cluster, value: enc(TYPE.cluster, edsCluster('bad')) },
  },
  {
    what: 'truncated bytes',
    any: { type_url: TYPE.endpoint, value: enc(TYPE.endpoint, cla('bad')).subarray(0, 20) },
  },
];

for (const protocol of ['sotw', 'delta'] as const) {
  void describe(`bad input over ${protocol} ADS`, () => {
    for (const g of EDS_GARBAGE) {
      void it(`an EDS resource that is ${g.what} is NACKed and the good one beside it applied`, async () => {
        const cp = await TestControlPlane.start();
        const client = makeClient(cp, { protocol, validate: validateAgainst });
        try {
          cp.setResources(TYPE.cluster, [edsCluster('good'), edsCluster('bad')]);
          cp.setResources(TYPE.endpoint, [cla('good'), { name: 'bad', any: g.any }]);
          client.start();
          const nack = await cp.waitForNack(TYPE.endpoint, { timeoutMs: 10_000 });
          const message = nackMessage(nack.json);
          // Delta names the resource; SotW can only give its index in the response.
          assert.match(message, protocol === 'delta' ? /^bad: / : /^(bad|resources\[1\]): /);
          assert.doesNotMatch(message, /good/);
          const acks = cp.requests.filter((r) => r.typeUrl === TYPE.endpoint && r.kind === 'ack');
          assert.equal(acks.length, 0, 'the response holding it was never ACKed');
          const eds = client.status().types.find((t) => t.typeUrl === TYPE.endpoint);
          assert.equal(eds?.status, 'NACKED');
          assert.equal(eds?.resources.find((r) => r.name === 'good')?.status, 'ACKED');
          assert.ok(client.accepted(TYPE.endpoint).some((r) => r.name === 'good'));
          console.log(`# ${protocol} EDS ${g.what}: NACK "${message}"`);
        } finally {
          client.stop();
          await cp.stop();
        }
      });
    }

    void it("what Envoy's protos declare and its code refuses is NACKed with the path, the rest applied", async () => {
      const cp = await TestControlPlane.start();
      const client = makeClient(cp, { protocol, validate: validateAgainst });
      const badClusters: [
        JsonObject | { name: string; any: { type_url: string; value: Uint8Array } },
        RegExp,
      ][] = [
        [
          { ...edsCluster('lb99'), lb_policy: 99 },
          /^lb99: lb_policy: 99 is not a defined value of LbPolicy$/m,
        ],
        [
          { ...edsCluster('type42'), type: 42 },
          /^type42: type: 42 is not a defined value of DiscoveryType$/m,
        ],
        [
          { ...edsCluster('dns7'), dns_lookup_family: 7 },
          /^dns7: dns_lookup_family: 7 is not a defined value of DnsLookupFamily$/m,
        ],
        [
          {
            ...edsCluster('cbprio'),
            circuit_breakers: { thresholds: [{ priority: 5, max_connections: 1 }] },
          },
          /^cbprio: circuit_breakers\.thresholds\[0\]\.priority: 5 is not a defined value of RoutingPriority$/m,
        ],
        [
          { ...edsCluster('maglev'), lb_policy: 'MAGLEV', maglev_lb_config: { table_size: 65536 } },
          /^maglev: maglev_lb_config\.table_size: Maglev table size 65536 is not a prime number$/m,
        ],
        [
          { ...edsCluster('negtimeout'), connect_timeout: '-1s' },
          /^negtimeout: connect_timeout: duration -1s is negative$/m,
        ],
        [
          { '@type': TYPE.cluster, name: 'noeds', type: 'EDS' },
          /^noeds: eds_cluster_config: an EDS cluster needs eds_cluster_config$/m,
        ],
        [
          {
            name: 'noname',
            any: { type_url: TYPE.cluster, value: enc(TYPE.cluster, { name: '', type: 'STATIC' }) },
          },
          /^(noname: name: value is required|resources\[\d+\]: resource has no name)$/m,
        ],
        [
          {
            name: protocol === 'delta' ? 'utf8' : 'ignored',
            any: nonUtf8(TYPE.cluster, { ...edsCluster('utf8-x'), name: 'utf8-x' }, 'utf8-x'),
          },
          /^(utf8|resources\[\d+\]): name: not valid UTF-8$/m,
        ],
      ];
      const badListeners: [JsonObject, RegExp][] = [
        [
          (() => {
            const { address: _a, ...l } = listener('noaddr');
            return l;
          })(),
          /^noaddr: address: a listener needs an address \(or internal_listener\)$/m,
        ],
        [
          { ...listener('nochains'), filter_chains: [] },
          /^nochains: filter_chains: a listener needs at least one filter chain/m,
        ],
        [
          listener('port70000', {
            address: { socket_address: { address: '127.100.0.2', port_value: 70000 } },
          }),
          /^port70000: address\.socket_address\.port_value: value 70000 must be <= 65535$/m,
        ],
      ];
      const badClas: [JsonObject, RegExp][] = [
        [
          cla('zeroweight', { load_balancing_weight: 0 }),
          /^zeroweight: endpoints\[0\]\.load_balancing_weight: value 0 must be >= 1$/m,
        ],
        [
          {
            ...cla('port70000'),
            endpoints: [
              {
                lb_endpoints: [
                  { endpoint: { address: { socket_address: { address: '127.0.0.10', port_value: 70000 } } } },
                ],
              },
            ],
          },
          /^port70000: endpoints\[0\]\.lb_endpoints\[0\]\.endpoint\.address\.socket_address\.port_value: value 70000 must be <= 65535$/m,
        ],
      ];
      try {
        cp.setResources(TYPE.cluster, [
          edsCluster('good'),
          edsCluster('zeroweight'),
          edsCluster('port70000'),
          ...badClusters.map(([r]) => r),
        ]);
        cp.setResources(TYPE.listener, [listener('good'), ...badListeners.map(([r]) => r)]);
        cp.setResources(TYPE.endpoint, [cla('good'), ...badClas.map(([r]) => r)]);
        client.start();
        const seen: Record<string, number> = {};
        for (const [typeUrl, cases] of [
          [TYPE.cluster, badClusters],
          [TYPE.listener, badListeners],
          [TYPE.endpoint, badClas],
        ] as const) {
          const nack = await cp.waitForNack(typeUrl, { timeoutMs: 10_000 });
          const message = nackMessage(nack.json);
          for (const [, re] of cases) assert.match(message, re);
          assert.doesNotMatch(message, /^good:/m);
          assert.doesNotMatch(message, /RangeError|out of range of|ERR_/);
          assert.ok(
            client.accepted(typeUrl).some((r) => r.name === 'good'),
            `${typeUrl}: the good resource is applied`,
          );
          seen[typeUrl.slice(typeUrl.lastIndexOf('.') + 1)] = message.split('\n').length;
        }
        console.log(`# ${protocol}: refusal lines per NACK ${JSON.stringify(seen)}`);
      } finally {
        client.stop();
        await cp.stop();
      }
    });
  });
}

function nackMessage(request: JsonObject): string {
  const m = (request['error_detail'] as JsonObject | undefined)?.['message'];
  return typeof m === 'string' ? m : '';
}

void it('a ClusterLoadAssignment larger than the backend map is refused unread, by name, over SotW', async () => {
  const cp = await TestControlPlane.start();
  const client = makeClient(cp, {
    protocol: 'sotw',
    validate: validateAgainst,
    limits: { endpointsPerResource: 65_535 },
  });
  try {
    const lbEndpoints = Array.from({ length: 100_000 }, (_, i) => ({
      endpoint: {
        address: {
          socket_address: { address: `127.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port_value: 80 },
        },
      },
    }));
    cp.setResources(TYPE.cluster, [edsCluster('good'), edsCluster('huge')]);
    cp.setResources(TYPE.endpoint, [
      cla('good'),
      { ...cla('huge'), endpoints: [{ lb_endpoints: lbEndpoints }] },
    ]);
    const started = process.hrtime.bigint();
    client.start();
    const nack = await cp.waitForNack(TYPE.endpoint, { timeoutMs: 30_000 });
    const message = nackMessage(nack.json);
    assert.equal(
      message,
      'huge: endpoints: 100000 endpoints, more than the 65535 backends the kernel can hold (--map-size backends); refused unread',
    );
    assert.ok(client.accepted(TYPE.endpoint).some((r) => r.name === 'good'));
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(
      `# 100,000-endpoint CLA (${cp.responses.at(-1)?.bytes ?? 0} bytes) refused: "${message}" (${ms.toFixed(0)} ms, not a bound)`,
    );
  } finally {
    client.stop();
    await cp.stop();
  }
});
