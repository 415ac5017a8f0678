// issue 17, without a kernel: what translate reads of outlier_detection, common_lb_config and the
// ClusterLoadAssignment policy (or refuses, naming the field), and Envoy's priority loads as plan.ts
// computes them for the table of health states the kernel test runs (test/lb-spread.test.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OUTLIER_DEFAULTS } from '../src/dataplane/model.js';
import { envoyPriorityLoad, localityShares } from '../src/dataplane/plan.js';
import { translate, validate } from '../src/translate/index.js';
import { TYPE, type JsonObject, type XdsResource } from '../src/xds/types.js';
import { assignment, edsCluster, outbound, tcpListener } from './support/control-plane-istiod.js';

const NAME = outbound('lb.test.svc.cluster.local', 80);

function res(body: JsonObject): XdsResource {
  const typeUrl = body['@type'] as string;
  const name = (body.name ?? body.cluster_name) as string;
  return { typeUrl, name, version: '1', resource: body };
}

function mesh(cluster: JsonObject, cla: JsonObject = {}): XdsResource[] {
  return [
    res({ ...edsCluster(NAME), ...cluster }),
    res({
      ...assignment(NAME, [
        { address: '10.0.0.1', port: 80 },
        { address: '10.0.0.2', port: 80 },
      ]),
      ...cla,
    }),
    res(tcpListener('127.100.0.1', 80, NAME)),
  ];
}

const reasons = (r: { rejected: { reason: string }[] }): string[] => r.rejected.map((x) => x.reason);

void describe('translate: outlier_detection', () => {
  void it('Envoy’s defaults for what is not set; Istio’s shape (success rate off) needs no note', () => {
    const r = translate({
      resources: mesh({ connect_timeout: '2s', outlier_detection: { enforcing_success_rate: 0 } }),
    });
    assert.deepEqual(r.rejected, []);
    const s = r.desired.services[0]!;
    assert.deepEqual(s.outlierDetection, OUTLIER_DEFAULTS);
    assert.equal(s.connectTimeoutMs, 2000);
    assert.deepEqual(
      r.notEnforced.filter((n) => n.field.startsWith('outlier_detection')),
      [],
    );
  });

  void it('reads every consecutive-failure field as istiod writes a DestinationRule’s outlierDetection', () => {
    const r = translate({
      resources: mesh({
        outlier_detection: {
          consecutive_5xx: 3,
          interval: '0.5s',
          base_ejection_time: '2s',
          max_ejection_percent: 40,
          enforcing_consecutive_5xx: 100,
          enforcing_success_rate: 0,
          consecutive_gateway_failure: 4,
          enforcing_consecutive_gateway_failure: 100,
          split_external_local_origin_errors: true,
          consecutive_local_origin_failure: 6,
          enforcing_consecutive_local_origin_failure: 50,
          enforcing_local_origin_success_rate: 0,
          max_ejection_time: '20s',
          max_ejection_time_jitter: '0.1s',
          always_eject_one_host: true,
        },
      }),
    });
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(r.desired.services[0]!.outlierDetection, {
      consecutive5xx: 3,
      consecutiveGatewayFailure: 4,
      consecutiveLocalOriginFailure: 6,
      enforcingConsecutive5xx: 100,
      enforcingConsecutiveGatewayFailure: 100,
      enforcingConsecutiveLocalOriginFailure: 50,
      splitExternalLocalOriginErrors: true,
      intervalMs: 500,
      baseEjectionTimeMs: 2000,
      maxEjectionTimeMs: 20000,
      maxEjectionTimeJitterMs: 100,
      maxEjectionPercent: 40,
      alwaysEjectOneHost: true,
    });
  });

  void it('max_ejection_time defaults to the larger of 300 s and base_ejection_time, and may not be below it', () => {
    const big = translate({ resources: mesh({ outlier_detection: { base_ejection_time: '400s' } }) });
    assert.equal(big.desired.services[0]!.outlierDetection?.maxEjectionTimeMs, 400_000);
    assert.deepEqual(
      reasons({
        rejected: validate(
          TYPE.cluster,
          mesh({ outlier_detection: { base_ejection_time: '10s', max_ejection_time: '5s' } }).slice(0, 1),
        ),
      }),
      [
        'outlier_detection.max_ejection_time: max_ejection_time cannot be smaller than base_ejection_time (Envoy refuses the cluster too)',
      ],
    );
    assert.match(
      validate(TYPE.cluster, mesh({ outlier_detection: { max_ejection_percent: 101 } }).slice(0, 1))[0]!
        .reason,
      /^outlier_detection\.max_ejection_percent: 101 is not a percentage$/,
    );
  });

  void it('the statistical detectors Envoy would run are listed as not enforced, with a note', () => {
    const r = translate({
      resources: mesh({ outlier_detection: { consecutive_5xx: 5, enforcing_failure_percentage: 10 } }),
    });
    assert.deepEqual(r.rejected, []);
    assert.deepEqual(
      r.notEnforced
        .map((n) => n.field)
        .filter((f) => f.startsWith('outlier_detection'))
        .sort(),
      ['outlier_detection.enforcing_failure_percentage', 'outlier_detection.enforcing_success_rate'],
    );
    assert.ok(r.status.some((s) => /success-rate ejection .* is not computed by the kernel/.test(s.note)));
  });
});

void describe('translate: priorities, panic and localities', () => {
  void it('healthy_panic_threshold truncated to 1%, fail_traffic_on_panic, overprovisioning_factor', () => {
    const r = translate({
      resources: mesh(
        {
          common_lb_config: {
            healthy_panic_threshold: { value: 33.9 },
            zone_aware_lb_config: { routing_enabled: { value: 0 }, fail_traffic_on_panic: true },
          },
        },
        { policy: { overprovisioning_factor: 100 } },
      ),
    });
    assert.deepEqual(r.rejected, []);
    const s = r.desired.services[0]!;
    assert.equal(s.panicThreshold, 33);
    assert.equal(s.failTrafficOnPanic, true);
    assert.equal(s.overprovisioningFactor, 100);
  });

  void it('zone-aware routing is refused naming the field; routing_enabled 0 is accepted', () => {
    for (const [zone, field] of [
      [{ routing_enabled: { value: 100 } }, 'routing_enabled'],
      [{ min_cluster_size: 3 }, 'min_cluster_size'],
    ] as const) {
      const rejected = validate(
        TYPE.cluster,
        mesh({ common_lb_config: { zone_aware_lb_config: zone } }).slice(0, 1),
      );
      assert.equal(rejected.length, 1);
      assert.match(
        rejected[0]!.reason,
        new RegExp(
          `^common_lb_config\\.zone_aware_lb_config\\.${field}: zone-aware routing .* no local cluster`,
        ),
      );
    }
  });

  void it('a ClusterLoadAssignment that weighs health by weight or drops traffic is refused with the path', () => {
    const cla = (policy: JsonObject) =>
      validate(TYPE.endpoint, [
        res({ ...assignment(NAME, [{ address: '10.0.0.1', port: 80 }]), policy }),
      ]).map((x) => x.reason);
    assert.deepEqual(cla({ weighted_priority_health: true }), [
      "policy.weighted_priority_health: the kernel computes a priority's health from host counts, not weights",
    ]);
    assert.match(
      cla({ drop_overloads: [{ category: 'x', drop_percentage: { numerator: 5 } }] })[0]!,
      /^policy\.drop_overloads: /,
    );
    assert.match(cla({ overprovisioning_factor: 0 })[0]!, /^policy\.overprovisioning_factor: /);
    assert.deepEqual(cla({ overprovisioning_factor: 140, weighted_priority_health: false }), []);
  });

  void it('close_connections_on_host_health_failure and close_connections_on_host_set_change are carried', () => {
    const r = translate({
      resources: mesh({
        close_connections_on_host_health_failure: true,
        common_lb_config: { close_connections_on_host_set_change: true },
      }),
    });
    assert.deepEqual(r.desired.services[0]!.closeConnections, {
      onHostHealthFailure: true,
      onHostSetChange: true,
    });
  });
});

void describe('plan: Envoy’s priority loads (LoadBalancerBase) and locality weights', () => {
  const ten = (healthy: number[], factor = 140, threshold = 50) =>
    envoyPriorityLoad(
      healthy.map(() => 10),
      healthy,
      factor,
      threshold,
    );
  void it('the worked examples of docs/translation.md', () => {
    // [healthy per priority of 10 hosts each] → load per priority, panic bits
    const table: [number[], number[], number, number?, number?][] = [
      [[10, 10], [100, 0], 0],
      [[7, 10], [98, 2], 0],
      [[5, 10], [70, 30], 0],
      [[2, 10], [28, 72], 0],
      [[3, 6], [42, 58], 0],
      // every level in panic: the load follows the host counts
      [[2, 2], [50, 50], 0b11111111],
      [[4, 1], [50, 50], 0b11111111],
      // P1 in panic but P0 is not: P0 takes everything among its healthy hosts
      [[6, 0], [100, 0], 0b11111110],
      [[9, 10], [90, 10], 0, 100],
      // panic off: nothing healthy anywhere puts everything on P0
      [[0, 0], [100, 0], 0, 140, 0],
      [[1, 0], [100, 0], 0, 140, 0],
    ];
    for (const [healthy, load, mask, factor, threshold] of table) {
      const got = ten(healthy, factor, threshold);
      assert.deepEqual(got.load.slice(0, 2), load, `healthy ${healthy.join('/')}`);
      assert.ok(got.load.slice(2).every((x) => x === 0));
      assert.equal(got.panicMask, mask, `panic with healthy ${healthy.join('/')}`);
    }
    // three levels: 42 + 28 + 30 with the remainder on the first with health
    assert.deepEqual(envoyPriorityLoad([10, 10, 10], [3, 2, 10], 140, 0).load.slice(0, 3), [42, 28, 30]);
  });

  void it('locality shares: weight × min(1, 1.4 × healthy / hosts), Envoy’s table for 1:2 localities', () => {
    // Envoy's documentation: X weight 1, Y weight 2 fully healthy; X's healthy share → X's traffic.
    // The documentation's percentages come from integer availability (its 69% row says 32); Envoy's
    // code computes it in floating point, as here: X gets a / (a + 2) with a = min(1, 1.4 × healthy)
    const rows: [number, number][] = [
      [100, 33],
      [70, 33],
      [69, 32],
      [50, 26],
      [25, 15],
      [0, 0],
    ];
    for (const [pct, documented] of rows) {
      const hosts = [
        ...Array.from({ length: 100 }, (_, i) => ({
          key: `x${i}`,
          weight: 1,
          healthy: i < pct,
          locality: 'x',
          localityWeight: 1,
        })),
        ...Array.from({ length: 100 }, (_, i) => ({
          key: `y${i}`,
          weight: 1,
          healthy: true,
          locality: 'y',
          localityWeight: 2,
        })),
      ];
      const shares = localityShares(hosts, 140)!;
      let x = 0;
      let total = 0;
      for (const [k, v] of shares) {
        total += v;
        if (k.startsWith('x')) x += v;
      }
      const a = Math.min(1, (1.4 * pct) / 100);
      assert.ok(Math.abs(x / total - a / (a + 2)) < 1e-12, `X ${pct}% healthy: ${x / total}`);
      assert.ok(
        Math.abs((100 * x) / total - documented) <= 1,
        `X ${pct}%: near the documented ${documented}%`,
      );
    }
    assert.equal(
      localityShares([{ key: 'a', weight: 1, healthy: true, locality: '', localityWeight: 0 }], 140),
      undefined,
      'no locality with weight: Envoy balances over the healthy hosts',
    );
  });
});
