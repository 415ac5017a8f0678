// Which pods kernmesh serves, as a table (labels, sidecars, hostNetwork, opt-out, the agent itself),
// and where the kubelet puts a pod's cgroup for both cgroup drivers and every QoS class.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { V1Namespace, V1Pod } from '@kubernetes/client-node';

import {
  cgroup2Mounts,
  discoverKubeletRoot,
  findPodCgroup,
  podCgroupCandidates,
} from '../src/k8s/cgroups.js';
import { decide } from '../src/k8s/enrollment.js';

const self = { name: 'kernmesh-abcde', namespace: 'kernmesh-system' };
const MODE = 'istio.io/dataplane-mode';

function pod(p: {
  name?: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  hostNetwork?: boolean;
  containers?: string[];
  initContainers?: string[];
  phase?: string;
}): V1Pod {
  return {
    metadata: {
      name: p.name ?? 'web-1',
      namespace: p.namespace ?? 'shop',
      labels: p.labels ?? {},
      annotations: p.annotations ?? {},
    },
    spec: {
      hostNetwork: p.hostNetwork ?? false,
      containers: (p.containers ?? ['app']).map((name) => ({ name })),
      ...(p.initContainers ? { initContainers: p.initContainers.map((name) => ({ name })) } : {}),
    },
    status: { phase: p.phase ?? 'Running' },
  };
}
const ns = (labels: Record<string, string> = {}, name = 'shop'): V1Namespace => ({
  metadata: { name, labels },
});

const rows: [string, V1Pod, V1Namespace | undefined, boolean, RegExp][] = [
  ['namespace label', pod({}), ns({ [MODE]: 'kernmesh' }), true, /namespace label/],
  ['pod label', pod({ labels: { [MODE]: 'kernmesh' } }), ns(), true, /pod label/],
  ['pod label, namespace unknown yet', pod({ labels: { [MODE]: 'kernmesh' } }), undefined, true, /pod label/],
  ['no label', pod({}), ns(), false, /not labelled/],
  ['namespace not listed', pod({}), undefined, false, /namespace not known/],
  [
    'pod opts out of a kernmesh namespace',
    pod({ labels: { [MODE]: 'none' } }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /opted out/,
  ],
  [
    'pod asks for ambient in a kernmesh namespace',
    pod({ labels: { [MODE]: 'ambient' } }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /another data plane/,
  ],
  [
    'pod asks for kernmesh in an ambient namespace',
    pod({ labels: { [MODE]: 'kernmesh' } }),
    ns({ [MODE]: 'ambient' }),
    false,
    /ztunnel/,
  ],
  ['namespace ambient', pod({}), ns({ [MODE]: 'ambient' }), false, /ambient/],
  [
    'sidecar-injected (annotation)',
    pod({
      labels: { [MODE]: 'kernmesh' },
      annotations: { 'sidecar.istio.io/status': '{"containers":["istio-proxy"]}' },
    }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /sidecar/,
  ],
  [
    'istio-proxy container',
    pod({ containers: ['app', 'istio-proxy'] }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /istio-proxy/,
  ],
  [
    'istio-proxy native sidecar',
    pod({ initContainers: ['istio-proxy'] }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /istio-proxy/,
  ],
  [
    'captured by ztunnel',
    pod({ annotations: { 'ambient.istio.io/redirection': 'enabled' } }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /ztunnel/,
  ],
  [
    'hostNetwork',
    pod({ hostNetwork: true, labels: { [MODE]: 'kernmesh' } }),
    ns({ [MODE]: 'kernmesh' }),
    false,
    /hostNetwork/,
  ],
  [
    "the agent's own pod",
    pod({ name: self.name, namespace: self.namespace, labels: { [MODE]: 'kernmesh' } }),
    ns({ [MODE]: 'kernmesh' }, self.namespace),
    false,
    /own pod/,
  ],
  ['completed pod', pod({ phase: 'Succeeded' }), ns({ [MODE]: 'kernmesh' }), false, /Succeeded/],
];

for (const [what, p, n, enroll, reason] of rows)
  void test(`enrollment: ${what} → ${enroll ? 'enrolled' : 'not enrolled'}`, () => {
    const d = decide(p, n, self);
    assert.equal(d.enroll, enroll, d.reason);
    assert.match(d.reason, reason);
  });

const UID = '0c4a9a1e-5b7d-4f55-9d2b-8a0c3c1e2f33';

void test('pod cgroup candidates cover both drivers and every QoS class, the pod’s own class first', () => {
  const c = podCgroupCandidates('/r', UID, 'Burstable');
  assert.deepEqual(c.slice(0, 2), [
    '/r/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c4a9a1e_5b7d_4f55_9d2b_8a0c3c1e2f33.slice',
    `/r/kubepods/burstable/pod${UID}`,
  ]);
  assert.ok(c.includes('/r/kubepods.slice/kubepods-pod0c4a9a1e_5b7d_4f55_9d2b_8a0c3c1e2f33.slice'));
  assert.ok(c.includes(`/r/kubepods/pod${UID}`));
  assert.ok(c.includes(`/r/kubepods/besteffort/pod${UID}`));
  assert.equal(c.length, 6);
  assert.throws(() => podCgroupCandidates('/r', '../../etc'), /not a Kubernetes uid/);
});

void test('finds the pod cgroup on disk whichever driver made it, and the kubelet root from the mounts', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'km-cg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const make = (p: string): string => {
    mkdirSync(p, { recursive: true });
    writeFileSync(join(p, 'cgroup.procs'), '');
    return p;
  };
  const systemd = join(dir, 'systemd');
  const cgroupfs = join(dir, 'cgroupfs');
  make(join(systemd, 'kubepods.slice'));
  const guaranteed = make(
    join(systemd, 'kubepods.slice', 'kubepods-pod0c4a9a1e_5b7d_4f55_9d2b_8a0c3c1e2f33.slice'),
  );
  make(join(cgroupfs, 'kubepods'));
  const besteffort = make(join(cgroupfs, 'kubepods', 'besteffort', `pod${UID}`));
  // qosClass missing or wrong: still found
  assert.equal(findPodCgroup(systemd, UID), guaranteed);
  assert.equal(findPodCgroup(systemd, UID, 'BestEffort'), guaranteed);
  assert.equal(findPodCgroup(cgroupfs, UID, 'Guaranteed'), besteffort);
  assert.equal(findPodCgroup(cgroupfs, '11111111-2222-3333-4444-555555555555'), undefined);
  const mounts = `cgroup2 ${join(dir, 'none')} cgroup2 rw 0 0\ncgroup2 ${cgroupfs} cgroup2 rw 0 0\nproc /proc proc rw 0 0\n`;
  assert.deepEqual(cgroup2Mounts(mounts), [join(dir, 'none'), cgroupfs]);
  assert.equal(discoverKubeletRoot(mounts), cgroupfs);
  assert.throws(
    () => discoverKubeletRoot(`cgroup2 ${join(dir, 'none')} cgroup2 rw 0 0\n`),
    /--kubelet-cgroup-root/,
  );
});
