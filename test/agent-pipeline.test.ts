// The agent's apply pipeline in isolation (no kernel: this is a unit test of the ordering logic; the
// end-to-end tests in agent.test.ts run it against the real kernel). Updates arriving while one is
// being programmed are merged, a failed apply keeps the previous state and says why.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { Agent } from '../src/agent/agent.js';
import type { ConfigSource, Kernel, SourceUpdate } from '../src/agent/stage-interfaces.js';
import type { DesiredState } from '../src/dataplane/model.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';

function fixture() {
  let push: (u: SourceUpdate) => void = () => undefined;
  // The source's accepted config, which the agent reads when it applies.
  let current: XdsResource[] = [];
  const source: ConfigSource = {
    kind: 'file',
    target: '/test/resources.yaml',
    start: (onUpdate) => {
      push = onUpdate;
      return Promise.resolve();
    },
    stop: () => Promise.resolve(),
    connected: () => true,
    versions: () => ({}),
    debug: () => ({ types: [] }),
    node: () => ({ id: 'sidecar~10.0.0.1~test.ns~ns.svc.cluster.local' }),
    rejections: () => [],
    resources: () => current,
    waypoints: () => [],
    waitingFor: () => [],
  };
  const applied: DesiredState[] = [];
  let gate: Promise<void> = Promise.resolve();
  let failNext: Error | undefined;
  const kernel: Kernel = {
    pinDir: '/sys/fs/bpf/test',
    attachments: () => [
      { program: 'km_connect4', attachType: 'cgroup_inet4_connect', cgroup: '/cg', via: 'bpf_link' },
    ],
    apply: async (state) => {
      await gate;
      if (failNext) {
        const e = failNext;
        failNext = undefined;
        throw e;
      }
      applied.push(state);
    },
    gauges: { maps: () => [], fallbacks: () => ({}), programs: () => [] },
    debugMaps: () => ({}),
    debugBpf: () => ({}),
    close: () => Promise.resolve(),
  };
  // translate: one service per cluster resource, named after it.
  const agent = new Agent({
    source,
    kernel,
    log: pino({ level: 'silent' }),
    translate: (resources) => ({
      state: {
        services: resources.map((r) => ({
          name: r.name,
          kind: 'passthrough',
          lbPolicy: 'random',
          endpoints: [],
        })),
        frontends: [],
      },
      rejections: resources
        .filter((r) => r.name.startsWith('bad'))
        .map((r) => ({ typeUrl: r.typeUrl, name: r.name, reason: 'bad name' })),
    }),
  });
  const update = (...names: string[]): SourceUpdate => {
    current = names.map((name): XdsResource => ({
      typeUrl: TYPE.cluster,
      name,
      version: '1',
      resource: { name },
    }));
    return {
      changes: [{ typeUrl: TYPE.cluster, upserted: names.length, removed: 0 }],
      receivedAt: process.hrtime.bigint(),
    };
  };
  return {
    agent,
    applied,
    push: (u: SourceUpdate) => push(u),
    update,
    hold: () => {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return release;
    },
    failNext: (e: Error) => (failNext = e),
  };
}

void test('updates arriving during an apply are merged: the newest snapshot is programmed next', async () => {
  const f = fixture();
  await f.agent.start();
  const release = f.hold();
  f.push(f.update('a'));
  await Promise.resolve();
  f.push(f.update('a', 'b'));
  f.push(f.update('a', 'b', 'c'));
  release();
  await f.agent.settled();
  assert.deepEqual(
    f.applied.map((s) => s.services.map((x) => x.name)),
    [['a'], ['a', 'b', 'c']],
  );
  assert.deepEqual(f.agent.readiness(), { ready: true, reasons: [] });
});

void test('a failed apply keeps the previous state, is counted, and the next update applies', async () => {
  const f = fixture();
  await f.agent.start();
  f.failNext(new Error('E2BIG: km_frontends is full'));
  f.push(f.update('a'));
  await f.agent.settled();
  const r = f.agent.readiness();
  assert.equal(r.ready, false);
  assert.match(r.reasons.join(), /first config not applied: program kernel: E2BIG: km_frontends is full/);
  assert.match((await f.agent.renderMetrics()).body, /kernmesh_apply_errors_total 1/);
  f.push(f.update('a', 'bad-one'));
  await f.agent.settled();
  assert.equal(f.agent.readiness().ready, true);
  assert.deepEqual(
    f.agent.resourceStatus().map((s) => [s.name, s.status]),
    [
      ['a', 'ACKED'],
      ['bad-one', 'NACKED'],
    ],
  );
  const metrics = (await f.agent.renderMetrics()).body;
  assert.match(metrics, /kernmesh_xds_rejected_resources_total\{type="cds"\} 1/);
  assert.match(metrics, /kernmesh_apply_duration_seconds_count 1/);
});
