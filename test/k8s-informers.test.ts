// The agent's informers against a server speaking Kubernetes' list/watch protocol: only this node's
// pods, events streamed from the listed resourceVersion, a re-list after 410 Gone (as an ERROR event
// and as an HTTP status), reconnection after the server fails or drops its streams, bookmarks.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { KubeConfig } from '@kubernetes/client-node';
import pino from 'pino';

import { ClusterWatch, nodeLocality, type Change } from '../src/k8s/informers.js';
import { KubeApiServer } from './support/k8s-api.js';
import { eventually } from './support/wait.js';

const log = pino({ level: 'silent' });

async function setup(t: { after(fn: () => Promise<void> | void): void }): Promise<{
  api: KubeApiServer;
  watch: ClusterWatch;
  seen: { what: string; change: Change; name: string; rv: string }[];
  kc: KubeConfig;
}> {
  const api = await new KubeApiServer().start();
  const dir = mkdtempSync(join(tmpdir(), 'km-k8s-'));
  const kc = new KubeConfig();
  kc.loadFromFile(api.writeKubeconfig(dir));
  const seen: { what: string; change: Change; name: string; rv: string }[] = [];
  const watch = new ClusterWatch(
    kc,
    'node-1',
    {
      pod: (p, change) =>
        seen.push({ what: 'pod', change, name: p.metadata!.name!, rv: p.metadata!.resourceVersion! }),
      namespace: (n, change) =>
        seen.push({ what: 'namespace', change, name: n.metadata!.name!, rv: n.metadata!.resourceVersion! }),
    },
    log,
    { backoff: { initialMs: 20, maxMs: 100 } },
  );
  t.after(async () => {
    await watch.stop();
    await api.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { api, watch, seen, kc };
}

const podLists = (api: KubeApiServer): number =>
  api.requests.filter((r) => r.startsWith('GET /api/v1/pods?') && !r.includes('watch=true')).length;

void test('lists and watches only the pods of its node, with the field selector, then follows events', async (t) => {
  const { api, watch, seen } = await setup(t);
  api.namespace('shop', { 'istio.io/dataplane-mode': 'kernmesh' });
  api.pod({ namespace: 'shop', name: 'a', nodeName: 'node-1' });
  api.pod({ namespace: 'shop', name: 'elsewhere', nodeName: 'node-2' });
  await watch.start();
  assert.ok(watch.synced());
  assert.deepEqual(
    watch.pods().map((p) => p.metadata?.name),
    ['a'],
  );
  assert.equal(watch.namespace('shop')?.metadata?.labels?.['istio.io/dataplane-mode'], 'kernmesh');
  await eventually('both watches open', () => api.watchers('pods') === 1 && api.watchers('namespaces') === 1);
  api.pod({ namespace: 'shop', name: 'b', nodeName: 'node-1' });
  api.pod({ namespace: 'shop', name: 'c', nodeName: 'node-2' });
  api.relabelPod('shop', 'a', { app: 'a' });
  api.deletePod('shop', 'b');
  await eventually('events of node-1 arrive', () => seen.filter((s) => s.what === 'pod').length === 4);
  assert.deepEqual(
    seen.filter((s) => s.what === 'pod').map((s) => `${s.change} ${s.name}`),
    ['add a', 'add b', 'update a', 'delete b'],
  );
  // every request reads (GET), and pods only through spec.nodeName of this node
  for (const r of api.requests) {
    assert.match(r, /^GET /);
    if (r.startsWith('GET /api/v1/pods')) assert.match(r, /fieldSelector=spec.nodeName%3Dnode-1/);
  }
  assert.ok(api.requests.some((r) => r.includes('watch=true') && r.includes('allowWatchBookmarks=true')));
});

for (const goneAs of ['410-event', '410-status'] as const) {
  void test(`re-lists after 410 Gone (${goneAs}) and reports what changed meanwhile`, async (t) => {
    const { api, watch, seen } = await setup(t);
    api.goneAs = goneAs;
    api.namespace('shop');
    api.pod({ namespace: 'shop', name: 'a', nodeName: 'node-1' });
    api.pod({ namespace: 'shop', name: 'b', nodeName: 'node-1' });
    await watch.start();
    await eventually('watching', () => api.watchers('pods') === 1);
    const lists = podLists(api);
    // while the watch is down: b goes, c comes, and the history is compacted past the agent's version
    api.dropWatches();
    api.deletePod('shop', 'b');
    api.pod({ namespace: 'shop', name: 'c', nodeName: 'node-1' });
    api.compact();
    // the list request's arrival alone is not the re-list: the cache changes when its answer is read
    const names = (): string =>
      watch
        .pods()
        .map((p) => p.metadata?.name)
        .sort()
        .join(',');
    await eventually('re-listed: the cache holds a and c', () => podLists(api) > lists && names() === 'a,c');
    const pods = seen.filter((s) => s.what === 'pod').map((s) => `${s.change} ${s.name}`);
    assert.ok(pods.includes('delete b') && pods.includes('add c'), pods.join(', '));
    await eventually('watching again', () => api.watchers('pods') === 1);
    api.pod({ namespace: 'shop', name: 'd', nodeName: 'node-1' });
    await eventually('events after the re-list arrive', () => watch.pods().length === 3);
  });
}

void test('reconnects after the API server fails, keeping its cache meanwhile', async (t) => {
  const { api, watch } = await setup(t);
  api.namespace('shop');
  api.pod({ namespace: 'shop', name: 'a', nodeName: 'node-1' });
  api.failNext(3); // the first list fails three times: start() waits through the backoff
  await watch.start();
  assert.equal(watch.pods().length, 1);
  await eventually('watching', () => api.watchers('pods') === 1);
  api.failNext(4);
  api.dropWatches();
  assert.equal(watch.pods().length, 1, 'the cache stays while disconnected');
  api.pod({ namespace: 'shop', name: 'b', nodeName: 'node-1' });
  await eventually('reconnected and caught up', () => watch.pods().length === 2);
});

void test('a bookmark moves the resourceVersion so a resumed watch needs no re-list', async (t) => {
  const { api, watch } = await setup(t);
  api.namespace('shop');
  api.pod({ namespace: 'shop', name: 'a', nodeName: 'node-1' });
  await watch.start();
  await eventually('watching', () => api.watchers('pods') === 1 && api.watchers('namespaces') === 1);
  // the pods watch is quiet while other objects move the global resourceVersion
  for (let i = 0; i < 5; i++) api.pod({ namespace: 'shop', name: `other-${i}`, nodeName: 'node-2' });
  const bookmarked = api.resourceVersion;
  assert.equal(api.bookmark(), 2, 'both watches asked for bookmarks');
  // the bookmark is read once a namespace change written after it has arrived
  api.namespace('shop', { seen: 'yes' });
  await eventually('bookmark read', () => watch.namespace('shop')?.metadata?.labels?.seen === 'yes');
  const lists = podLists(api);
  // history before the bookmark is gone: resuming from the listed version would be 410 Gone
  api.compact(bookmarked);
  api.dropWatches();
  await eventually('watching again', () => api.watchers('pods') === 1);
  api.pod({ namespace: 'shop', name: 'b', nodeName: 'node-1' });
  await eventually('events flow', () => watch.pods().length === 2);
  assert.equal(podLists(api), lists, 'resumed from the bookmark: no re-list');
});

void test("locality from the node's topology labels", async (t) => {
  const { api, kc } = await setup(t);
  api.node('node-1', {
    'topology.kubernetes.io/region': 'eu-west1',
    'topology.kubernetes.io/zone': 'eu-west1-b',
  });
  api.node('node-2', { 'topology.kubernetes.io/region': 'us' });
  api.node('node-3', {});
  assert.equal(await nodeLocality(kc, 'node-1'), 'eu-west1/eu-west1-b');
  assert.equal(await nodeLocality(kc, 'node-2'), 'us');
  assert.equal(await nodeLocality(kc, 'node-3'), undefined);
  await assert.rejects(nodeLocality(kc, 'node-9'), /404|not found/i);
});

void test('stopped while its lists are in flight, it opens no watch afterwards (an open watch kept a stopped agent from exiting)', async (t) => {
  const { api, watch } = await setup(t);
  api.namespace('shop');
  const lists = api.holdLists();
  const started = watch.start();
  await eventually('both lists asked', () => podLists(api) === 1 && api.requests.length === 2);
  await watch.stop();
  await started; // stop() releases the wait for sync
  lists.release();
  await watch.settled();
  assert.equal(
    api.requests.filter((r) => r.includes('watch=true')).length,
    0,
    `no watch after stop: ${api.requests.join(', ')}`,
  );
  assert.equal(api.watchers('pods') + api.watchers('namespaces'), 0);
});
