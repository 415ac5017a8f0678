// The enroller's decisions against what a previous agent left pinned, through its kernel port (the
// kernel tests in k8s-agent.test.ts run the same code on real links): nothing is touched before the
// first full list; then enrolled pods keep their links, pods unenrolled or deleted while the agent
// was away lose them, and the operator's --cgroup links are never touched. Also the --kubernetes flags.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { V1Namespace, V1Pod } from '@kubernetes/client-node';
import pino from 'pino';

import { loadConfig } from '../src/config/config.js';
import { Enroller, type PodKernel } from '../src/k8s/enroller.js';

const MODE = 'istio.io/dataplane-mode';
const ROUTE = ['km_connect4', 'km_connect6', 'km_getpeername4', 'km_getpeername6', 'km_sockops'];

/** Pinned links by cgroup id, as AgentKernel keeps them in the pin directory; records every call. */
class PinnedLinks implements PodKernel {
  readonly pins = new Map<number, string[]>();
  readonly calls: string[] = [];
  enrollCgroup(cgroup: string): void {
    this.calls.push(`enroll ${cgroup}`);
    this.pins.set(statSync(cgroup).ino, [...ROUTE]);
  }
  unenrollCgroup(id: number): void {
    this.calls.push(`unenroll ${id}`);
    this.pins.set(id, ['km_getpeername4', 'km_getpeername6', 'km_sockops']);
  }
  forgetCgroup(id: number): void {
    this.calls.push(`forget ${id}`);
    this.pins.delete(id);
  }
  pinnedCgroups(): Map<number, string[]> {
    return new Map(this.pins);
  }
}

function pod(name: string, uid: string, labels: Record<string, string> = {}): V1Pod {
  return {
    metadata: { name, namespace: 'shop', uid, labels },
    spec: { containers: [{ name: 'app' }] },
    status: { phase: 'Running', qosClass: 'BestEffort' },
  };
}

void test('a restarted agent changes nothing before the first list, then reconciles the pinned links with the API', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'km-enroller-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cgroup = (uid: string): string => {
    const p = join(root, 'kubepods', 'besteffort', `pod${uid}`);
    mkdirSync(p, { recursive: true });
    writeFileSync(join(p, 'cgroup.procs'), '');
    return p;
  };
  const uids = {
    stays: '11111111-0000-4000-8000-000000000001',
    unlabelledMeanwhile: '11111111-0000-4000-8000-000000000002',
    deletedMeanwhile: '11111111-0000-4000-8000-000000000003',
    newMeanwhile: '11111111-0000-4000-8000-000000000004',
  };
  const cg = Object.fromEntries(Object.entries(uids).map(([k, u]) => [k, cgroup(u)])) as Record<
    keyof typeof uids,
    string
  >;
  const operator = join(root, 'operator');
  mkdirSync(operator);
  const kernel = new PinnedLinks();
  // what the previous agent left: three enrolled pods and the operator's --cgroup
  for (const c of [cg.stays, cg.unlabelledMeanwhile, cg.deletedMeanwhile, operator])
    kernel.pins.set(statSync(c).ino, [...ROUTE]);

  const pods = [
    pod('stays', uids.stays, { [MODE]: 'kernmesh' }),
    pod('unlabelled', uids.unlabelledMeanwhile),
    pod('new', uids.newMeanwhile, { [MODE]: 'kernmesh' }),
  ];
  const namespaces: Record<string, V1Namespace> = { shop: { metadata: { name: 'shop', labels: {} } } };
  const enroller = new Enroller({
    kernel,
    view: { pods: () => pods, namespace: (n) => namespaces[n] },
    cgroupRoot: root,
    self: { name: 'kernmesh-x', namespace: 'kernmesh-system' },
    log: pino({ level: 'silent' }),
    keep: [statSync(operator).ino],
  });
  t.after(() => enroller.stop());

  // events before the first full list change nothing, whatever they say
  enroller.onPod(pods[1]!, 'update', Date.now());
  enroller.onPod(pod('deleted', uids.deletedMeanwhile), 'delete', Date.now());
  enroller.onNamespace(namespaces.shop!, 'update', Date.now());
  assert.deepEqual(kernel.calls, []);
  assert.equal(enroller.isSynced(), false);

  enroller.sync();
  const id = (c: string): number => statSync(c).ino;
  assert.deepEqual(
    kernel.calls.sort(),
    [
      `enroll ${cg.newMeanwhile}`,
      `enroll ${cg.stays}`, // updated in place (attachOrUpdate): never detached
      `forget ${id(cg.deletedMeanwhile)}`,
      `unenroll ${id(cg.unlabelledMeanwhile)}`,
    ].sort(),
  );
  assert.deepEqual(kernel.pins.get(id(operator)), ROUTE, "the operator's --cgroup links stay");
  assert.deepEqual(
    enroller
      .view()
      .map((v) => `${v.pod} ${v.enrolled}`)
      .sort(),
    ['shop/new true', 'shop/stays true', 'shop/unlabelled false'],
  );

  // a pod that goes: every link of its cgroup removed, the parked ones too
  kernel.calls.length = 0;
  enroller.onPod(pods[1]!, 'delete', Date.now());
  assert.deepEqual(kernel.calls, [`forget ${id(cg.unlabelledMeanwhile)}`]);
});

void test('--kubernetes needs the node name; --kubelet-cgroup-root must be a cgroup directory', () => {
  assert.throws(
    () => loadConfig(['--xds-address', 'istiod:15010', '--kubernetes'], {}, { checkFiles: true }),
    /--kubernetes needs the node whose pods it serves: --node-name or NODE_NAME/,
  );
  const c = loadConfig(
    ['--xds-address', 'istiod:15010', '--kubernetes'],
    { NODE_NAME: 'node-1' },
    { checkFiles: true },
  );
  assert.equal(c.kubernetes, true);
  assert.equal(c.identity.nodeName, 'node-1');
  assert.deepEqual(c.cgroups, []);
  assert.throws(
    () =>
      loadConfig(
        [
          '--xds-address',
          'istiod:15010',
          '--kubernetes',
          '--node-name',
          'n',
          '--kubelet-cgroup-root',
          '/etc',
        ],
        {},
        {
          checkFiles: true,
        },
      ),
    /flag --kubelet-cgroup-root: \/etc is not a cgroup v2 directory/,
  );
  assert.throws(
    () => loadConfig(['--xds-address', 'istiod:15010'], {}, { checkFiles: true }),
    /no cgroup to serve: .* or --kubernetes/,
  );
});

void test('--authorization needs --kubernetes (it is enforced per enrolled pod), and is off by default', () => {
  assert.throws(
    () => loadConfig(['--xds-address', 'istiod:15010', '--cgroup', '/x', '--authorization'], {}),
    /flag --authorization: --authorization is enforced per enrolled pod: it needs --kubernetes/,
  );
  const on = loadConfig(
    ['--xds-address', 'istiod:15010', '--kubernetes', '--node-name', 'n', '--authorization'],
    {},
  );
  assert.equal(on.authorization, true);
  const off = loadConfig(['--xds-address', 'istiod:15010', '--kubernetes', '--node-name', 'n'], {});
  assert.equal(off.authorization, false);
});
