// issue 10: Envoy's LEAST_REQUEST settings from CDS to the kernel's service value, without a kernel:
// active_request_bias read (or refused with its path), the rest listed as not enforced, and the
// plan's one slot per endpoint with a weighted-mode bit per priority group. The kernel's draws are
// checked in test/route-distribution.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { LR_BIAS_ONE, serviceCodec } from '../src/dataplane/codec.js';
import { memoryMaps } from './support/memory-maps.js';
import type { Endpoint, Service } from '../src/dataplane/model.js';
import { planService } from '../src/dataplane/plan.js';
import { RouteWriter } from '../src/dataplane/writer.js';
import { translate, validate } from '../src/translate/index.js';
import { TYPE, type JsonObject, type XdsResource } from '../src/xds/types.js';
import { assignment, edsCluster, outbound, tcpListener } from './support/control-plane-istiod.js';

const NAME = outbound('lr.test.svc.cluster.local', 80);

function res(body: JsonObject): XdsResource {
  const typeUrl = body['@type'] as string;
  const name = (body.name ?? body.cluster_name) as string;
  return { typeUrl, name, version: '1', resource: body };
}

/** A LEAST_REQUEST cluster (or another policy) with `extra` merged in, its endpoints and listener. */
function mesh(extra: JsonObject, lbPolicy = 'LEAST_REQUEST'): XdsResource[] {
  return [
    res({ ...edsCluster(NAME, lbPolicy), ...extra }),
    res(
      assignment(NAME, [
        { address: '10.0.0.1', port: 80, weight: 1 },
        { address: '10.0.0.2', port: 80, weight: 3 },
      ]),
    ),
    res(tcpListener('127.100.0.1', 80, NAME)),
  ];
}

const bias = (defaultValue: JsonValueLike, runtimeKey?: string): JsonObject => ({
  least_request_lb_config: {
    active_request_bias: {
      ...(defaultValue !== undefined ? { default_value: defaultValue } : {}),
      ...(runtimeKey ? { runtime_key: runtimeKey } : {}),
    },
  },
});
type JsonValueLike = number | string | undefined;

/** The not-enforced fields of the load-balancing settings (istiod's shapes carry others). */
const lbNotEnforced = (r: { notEnforced: { field: string }[] }): string[] =>
  r.notEnforced.map((n) => n.field).filter((f) => /^(least_request_lb_config|load_balancing_policy)/.test(f));

function typedLeastRequest(config: JsonObject): JsonObject {
  return {
    load_balancing_policy: {
      policies: [
        {
          typed_extension_config: {
            name: 'envoy.load_balancing_policies.least_request',
            typed_config: {
              '@type':
                'type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest',
              ...config,
            },
          },
        },
      ],
    },
  };
}

void describe('translate: LEAST_REQUEST settings', () => {
  void it('carries active_request_bias 0 and 1; absent means Envoy’s default, 1', () => {
    const plain = translate({ resources: mesh({}) });
    assert.equal(plain.desired.services[0]?.lbPolicy, 'least_request');
    assert.equal(plain.desired.services[0]?.activeRequestBias, undefined);
    assert.deepEqual(lbNotEnforced(plain), []);
    for (const value of [0, 1, '1', 0.0]) {
      const r = translate({ resources: mesh(bias(value)) });
      assert.deepEqual(r.rejected, []);
      assert.equal(r.desired.services[0]?.activeRequestBias, Number(value), String(value));
      assert.deepEqual(lbNotEnforced(r), []);
    }
    // a RuntimeDouble without default_value is proto3's 0.0
    assert.equal(translate({ resources: mesh(bias(undefined)) }).desired.services[0]?.activeRequestBias, 0);
  });

  void it('refuses a bias the kernel cannot compute, naming the path', () => {
    for (const value of [0.5, 2, 'Infinity']) {
      const rejected = validate(TYPE.cluster, mesh(bias(value)).slice(0, 1));
      assert.equal(rejected.length, 1, String(value));
      assert.match(
        rejected[0]!.reason,
        /^least_request_lb_config\.active_request_bias: \S+: the kernel computes weight \/ \(active \+ 1\)\^bias only for bias 0\.0 and 1\.0$/,
      );
    }
    const typed = validate(TYPE.cluster, [
      res({ ...edsCluster(NAME), ...typedLeastRequest({ active_request_bias: { default_value: 1.5 } }) }),
    ]);
    assert.match(
      typed[0]?.reason ?? '',
      /^load_balancing_policy\.policies\[0\]\.typed_extension_config\.typed_config\.active_request_bias: 1\.5: /,
    );
  });

  void it('takes a negative or NaN bias as 1.0, as Envoy does, and says so', () => {
    for (const value of [-1, 'NaN']) {
      const r = translate({ resources: mesh(bias(value)) });
      assert.deepEqual(r.rejected, []);
      assert.equal(r.desired.services[0]?.activeRequestBias, 1);
      assert.ok(
        r.status.some((s) => /active_request_bias: .* is not >= 0; 1\.0 applies, as in Envoy/.test(s.note)),
        JSON.stringify(r.status),
      );
    }
  });

  void it('lists what the kernel does not do as not enforced: a runtime key, choice_count other than 2, slow start', () => {
    const r = translate({
      resources: mesh({
        least_request_lb_config: {
          choice_count: 3,
          active_request_bias: { default_value: 1, runtime_key: 'upstream.lr_bias' },
          slow_start_config: { slow_start_window: '30s' },
        },
      }),
    });
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(lbNotEnforced(r).sort(), [
      'least_request_lb_config.active_request_bias.runtime_key',
      'least_request_lb_config.choice_count',
      'least_request_lb_config.slow_start_config',
    ]);
    const two = translate({ resources: mesh({ least_request_lb_config: { choice_count: 2 } }) });
    assert.deepEqual(lbNotEnforced(two), []);
  });

  void it('reads the typed LeastRequest extension the same way', () => {
    // as istiod writes it: the typed policy and no lb_policy
    const { lb_policy: _, ...cluster } = edsCluster(NAME);
    const r = translate({
      resources: [
        res({
          ...cluster,
          ...typedLeastRequest({ active_request_bias: { default_value: 0 }, selection_method: 'FULL_SCAN' }),
        }),
        ...mesh({}).slice(1),
      ],
    });
    assert.deepEqual(r.rejected, []);
    assert.equal(r.desired.services[0]?.lbPolicy, 'least_request');
    assert.equal(r.desired.services[0]?.activeRequestBias, 0);
    assert.deepEqual(lbNotEnforced(r), [
      'load_balancing_policy.policies[0].typed_extension_config.typed_config.selection_method',
    ]);
  });

  void it('notes least_request_lb_config on another policy, which Envoy does not read either', () => {
    const r = translate({ resources: mesh(bias(0), 'ROUND_ROBIN') });
    assert.equal(r.desired.services[0]?.lbPolicy, 'round_robin');
    assert.equal(r.desired.services[0]?.activeRequestBias, undefined);
    assert.ok(
      r.status.some(
        (s) => s.note === 'least_request_lb_config: unused with lb_policy ROUND_ROBIN, as in Envoy',
      ),
    );
  });
});

const ep = (i: number, weight: number, priority = 0): Endpoint => ({
  address: `10.0.0.${i}`,
  port: 80,
  weight,
  priority,
  health: 'healthy',
});
const lr = (endpoints: Endpoint[], extra: Partial<Service> = {}): Service => ({
  name: 'lr',
  kind: 'endpoints',
  lbPolicy: 'least_request',
  endpoints,
  ...extra,
});

void describe('plan: least_request in the kernel', () => {
  void it('one slot per endpoint; unequal weights set the group’s weighted-mode bit', () => {
    const p = planService(lr([ep(1, 1), ep(2, 3), ep(3, 2, 1), ep(4, 2, 1)]));
    assert.deepEqual(
      p.slots.map((s) => [s.priority, s.backend, s.weight]),
      [
        [0, '10.0.0.1|80', 1],
        [0, '10.0.0.2|80', 3],
        [1, '10.0.0.3|80', 1],
        [1, '10.0.0.4|80', 1],
      ],
    );
    assert.deepEqual(p.value.slotCount.slice(0, 2), [2, 2]);
    assert.equal(p.value.lrWeighted, 0b01, 'group 0 weighted, group 1 equal (P2C)');
    assert.equal(p.value.activeRequestBias, 1);
    assert.equal(serviceCodec.encode({ ...p.value, generation: 0 }).readUInt32LE(48), LR_BIAS_ONE);
    // other policies keep weight-expanded slots
    assert.equal(planService({ ...lr([ep(1, 1), ep(2, 3)]), lbPolicy: 'random' }).slots.length, 4);
  });

  void it('carries bias 0, refuses what the kernel cannot compute', () => {
    assert.equal(planService(lr([ep(1, 1)], { activeRequestBias: 0 })).value.activeRequestBias, 0);
    assert.throws(() => planService(lr([ep(1, 1)], { activeRequestBias: 0.5 })), /active_request_bias 0.5/);
  });

  void it('refuses a weighted group larger than the kernel scans; equal weights have no such limit', () => {
    const many = (w: (i: number) => number): Endpoint[] =>
      Array.from({ length: 1025 }, (_, i) => ({ ...ep(1, w(i)), address: `10.1.${i >> 8}.${i & 255}` }));
    const opts = { maxSlotsPerPriority: 4096, maxMaglevSize: 65521 };
    assert.throws(
      () => planService(lr(many((i) => 1 + (i % 2))), opts),
      /priority 0: 1025 endpoints with unequal weights exceed least_request's 1024/,
    );
    assert.equal(planService(lr(many(() => 1)), opts).value.slotCount[0], 1025);
  });

  void it('a restarted writer rebuilds the bias and weights from the maps and re-applies nothing', () => {
    const maps = memoryMaps();
    const state = {
      services: [lr([ep(1, 1), ep(2, 3)], { activeRequestBias: 0 })],
      frontends: [{ address: '127.100.0.1', port: 80, protocol: 'tcp' as const, service: 'lr' }],
    };
    assert.deepEqual(RouteWriter.recover(maps).apply(state).refused, []);
    const again = RouteWriter.recover(maps);
    const live = again.live();
    assert.equal(live.services[0]?.activeRequestBias, 0);
    assert.deepEqual(
      live.services[0]?.endpoints.map((e) => e.weight),
      [1, 3],
    );
    assert.deepEqual(again.apply(live).ops, []);
    assert.deepEqual(again.apply(state).ops, []);
  });
});
