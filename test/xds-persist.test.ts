// issue 17: accepted resources kept across restarts (src/xds/persist.ts), without a kernel: one file
// per resource, bound to the pinned maps; restored into the per-type state, a Delta stream's first
// request lists them in initial_resource_versions and a SotW one carries the version.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { XdsStateStore } from '../src/xds/persist.js';
import { DeltaTypeState, SotwTypeState } from '../src/xds/state.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';

const cluster = (name: string, version: string): XdsResource => ({
  typeUrl: TYPE.cluster,
  name,
  version,
  resource: { name, type: 'EDS' },
});

void test('saved per resource, loaded back; removals delete; another binding starts empty', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'kernmesh-persist-')), 'agent');
  try {
    const store = new XdsStateStore(dir, 'maps 1');
    assert.equal(store.load().size, 0, 'nothing kept yet');
    store.save(TYPE.cluster, [cluster('a', 'v1'), cluster('b', 'v1')], [], 'sys1');
    store.save(TYPE.cluster, [cluster('a', 'v2')], ['b'], 'sys2');
    const back = new XdsStateStore(dir, 'maps 1').load().get(TYPE.cluster);
    assert.deepEqual(back, { version: 'sys2', resources: [cluster('a', 'v2')] });
    // a write costs a file per changed resource
    assert.equal(readdirSync(join(dir, 'envoy.config.cluster.v3.Cluster')).length, 2, 'a and type.json');
    // other maps (after kernmesh cleanup, the map is made anew): the files are dropped
    assert.equal(new XdsStateStore(dir, 'maps 2').load().size, 0);
    assert.ok(!existsSync(join(dir, 'envoy.config.cluster.v3.Cluster')));
  } finally {
    rmSync(join(dir, '..'), { recursive: true, force: true });
  }
});

void test('restored resources are held as accepted: Delta lists their versions, SotW carries the type version', () => {
  const delta = new DeltaTypeState(TYPE.endpoint);
  delta.restore([{ ...cluster('x', 'e1'), typeUrl: TYPE.endpoint }], 'sys');
  const first = delta.streamStarted();
  assert.deepEqual(first.initial_resource_versions, { x: 'e1' });
  assert.deepEqual(first.resource_names_subscribe, ['x'], 'a restored EDS name stays subscribed');
  assert.equal(delta.answered(), true);
  assert.equal(delta.resourceState('x')?.status, 'ACKED');
  // the same content sent again is no update
  const again = delta.handleResponse({
    system_version_info: 'sys2',
    nonce: '1',
    resources: [{ name: 'x', version: 'e1', resource: { name: 'x', type: 'EDS' } }],
    removed_resources: [],
  });
  assert.equal(again.changed, false);

  const sotw = new SotwTypeState(TYPE.cluster);
  sotw.restore([cluster('a', 'v7')], 'v7');
  assert.equal(sotw.streamStarted().version_info, 'v7');
  assert.deepEqual(
    sotw.snapshot().map((r) => r.name),
    ['a'],
  );
});
