// A push is analysed once (issue 11): the check on receipt analyses each resource of the response,
// translate() reuses that analysis for every later apply, and nothing translates the world to validate.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { analysesRun } from '../src/translate/analysis.js';
import { translate, validateAgainst } from '../src/translate/index.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';

function service(name: string, port: number): XdsResource[] {
  return [
    {
      typeUrl: TYPE.cluster,
      name,
      version: '1',
      resource: { '@type': TYPE.cluster, name, type: 'EDS', eds_cluster_config: { service_name: name } },
    },
    {
      typeUrl: TYPE.endpoint,
      name,
      version: '1',
      resource: {
        '@type': TYPE.endpoint,
        cluster_name: name,
        endpoints: [
          {
            lb_endpoints: [
              { endpoint: { address: { socket_address: { address: '127.0.0.2', port_value: port } } } },
            ],
          },
        ],
      },
    },
  ];
}

void test('a CDS push is analysed once, on receipt; the apply after it reuses every analysis', () => {
  const held = [...service('a', 80), ...service('b', 81)];
  const heldOf = (t: string) => held.filter((r) => r.typeUrl === t);
  // What the config state held was checked when it arrived, and translated once since.
  validateAgainst(TYPE.cluster, heldOf(TYPE.cluster), heldOf);
  validateAgainst(TYPE.endpoint, heldOf(TYPE.endpoint), heldOf);
  translate({ resources: held });

  const pushed: XdsResource = { ...held[0]!, resource: { ...held[0]!.resource, lb_policy: 'RANDOM' } };
  const before = analysesRun();
  const refusals = validateAgainst(TYPE.cluster, [pushed], heldOf);
  assert.deepEqual(refusals, []);
  assert.equal(
    analysesRun() - before,
    1,
    'on receipt: the changed cluster, once (its endpoints were analysed when they came)',
  );
  const applied = translate({ resources: [pushed, ...held.slice(1)] });
  assert.equal(analysesRun() - before, 1, 'the apply analyses nothing again');
  assert.equal(
    applied.clusters.find((c) => c.name === 'a')?.lbPolicy,
    'random',
    'and uses the pushed content',
  );
});
