// An enrolled pod named as Istio's labels name it (src/k8s/workload.ts): the same workload name,
// canonical service and revision, and SPIFFE identity istiod publishes for the pod.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { V1Pod } from '@kubernetes/client-node';

import { podWorkload, workloadName } from '../src/k8s/workload.js';

const pod = (over: Partial<NonNullable<V1Pod['metadata']>>, sa?: string): V1Pod => ({
  metadata: { name: 'p', namespace: 'shop', ...over },
  ...(sa ? { spec: { containers: [], serviceAccountName: sa } } : {}),
});

void test('the workload is the Deployment of a ReplicaSet, the CronJob of a Job, else the owner, else the pod', () => {
  const rs = {
    apiVersion: 'apps/v1',
    kind: 'ReplicaSet',
    name: 'reviews-v1-7d4f8b9c6',
    uid: 'u',
    controller: true,
  };
  assert.equal(
    workloadName(
      pod({
        name: 'reviews-v1-7d4f8b9c6-x2k4p',
        labels: { 'pod-template-hash': '7d4f8b9c6' },
        ownerReferences: [rs],
      }),
    ),
    'reviews-v1',
  );
  const job = { apiVersion: 'batch/v1', kind: 'Job', name: 'backup-28930540', uid: 'u', controller: true };
  assert.equal(workloadName(pod({ ownerReferences: [job] })), 'backup');
  const sts = { apiVersion: 'apps/v1', kind: 'StatefulSet', name: 'db', uid: 'u', controller: true };
  assert.equal(workloadName(pod({ name: 'db-0', ownerReferences: [sts] })), 'db');
  assert.equal(workloadName(pod({ name: 'bare' })), 'bare');
});

void test('canonical service and revision from Istio labels, else app labels, else the workload and latest', () => {
  const istio = podWorkload(
    pod(
      {
        labels: {
          'service.istio.io/canonical-name': 'ratings',
          'service.istio.io/canonical-revision': 'v2',
          app: 'x',
        },
      },
      'bookinfo-ratings',
    ),
    'example.org',
  );
  assert.deepEqual(istio, {
    workload: 'p',
    namespace: 'shop',
    name: 'p',
    canonicalService: 'ratings',
    canonicalRevision: 'v2',
    principal: 'spiffe://example.org/ns/shop/sa/bookinfo-ratings',
  });
  const app = podWorkload(pod({ labels: { app: 'web', version: 'v3' } }), 'cluster.local');
  assert.deepEqual(
    [app.canonicalService, app.canonicalRevision, app.principal],
    ['web', 'v3', 'spiffe://cluster.local/ns/shop/sa/default'],
  );
  const bare = podWorkload(pod({}), 'cluster.local');
  assert.deepEqual([bare.canonicalService, bare.canonicalRevision], ['p', 'latest']);
});
