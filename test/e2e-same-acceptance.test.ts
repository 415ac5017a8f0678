// Issue 10, part 2: one acceptance path for every config source. The same resources — the shared
// Istio fixtures, plus a RouteConfiguration holding a plain and a header-routed virtual host on one
// port — go to `kernmesh run` once through --xds-file and once through the test control plane (Delta
// ADS). Both must program the same maps, give every resource the same status and refuse the same
// things: the plain host routed, the header-routed one NACKed and left untouched.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { parseConfigFile } from '../src/xds/config-file.js';
import { resourceKey, TYPE, type JsonObject } from '../src/xds/types.js';
import { runAgentServing, runKernmesh, stopProcess } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  defaultRoute,
  edsCluster,
  getJson,
  headerRoute,
  httpListener,
  outbound,
  routeConfig,
  virtualHost,
} from './support/control-plane-istiod.js';
import { fixturePath } from './support/fixtures.js';
import { kernelTest, type KernelEnv } from './support/kernel.js';
import { startBackend, type Backend } from './support/net.js';
import { eventually } from './support/wait.js';

const PORT = 8093;
const WEB_VIP = '127.100.81.2';
const REVIEWS_VIP = '127.100.81.3';
const WEB_HOST = 'web.same.svc.cluster.local';
const REVIEWS_HOST = 'reviews.same.svc.cluster.local';
const WEB = outbound(WEB_HOST, PORT);
const REVIEWS = outbound(REVIEWS_HOST, PORT);
const REVIEWS_V2 = outbound(REVIEWS_HOST, PORT, 'v2');

interface DebugXds {
  xds: { types: { type_url: string; resources: { name: string; status: string; error?: string }[] }[] };
  translation_rejections: { typeUrl: string; name: string; reason: string }[];
}

interface DebugMaps {
  frontends: { address: string; port: number; protocol: string; service?: string }[];
  services: {
    name: string;
    value: { kind: string; lbPolicy: string };
    slots: { priority: number; backend?: string; weight: number }[];
  }[];
}

/** Every Envoy resource of the fixtures (first of a name wins), plus the test's own services. */
function inputs(backends: { web: Backend; reviews: Backend; reviewsV2: Backend }): JsonObject[] {
  const out = new Map<string, JsonObject>();
  for (const name of [
    'sidecar-listeners.configdump.yaml',
    'sidecar-endpoints.configdump.json',
    'gateway-route-and-dr-subset-cluster.configdump.json',
    'waypoint-full.configdump.json',
  ]) {
    const path = fixturePath(name);
    for (const r of parseConfigFile(readFileSync(path, 'utf8'), path).resources) {
      assert.ok(r.resource, `${name} ${r.name}: ${r.error ?? ''}`);
      const k = resourceKey(r.typeUrl, r.name);
      if (!out.has(k)) out.set(k, r.resource);
    }
  }
  const ep = (b: Backend) => ({ address: b.address, port: b.port });
  const ours = [
    edsCluster(WEB),
    edsCluster(REVIEWS),
    edsCluster(REVIEWS_V2),
    assignment(WEB, [ep(backends.web)]),
    assignment(REVIEWS, [ep(backends.reviews)]),
    assignment(REVIEWS_V2, [ep(backends.reviewsV2)]),
    httpListener(PORT),
    routeConfig(PORT, [
      virtualHost(WEB_HOST, WEB_VIP, PORT, [defaultRoute(WEB, WEB_HOST, PORT)]),
      virtualHost(REVIEWS_HOST, REVIEWS_VIP, PORT, [
        headerRoute(REVIEWS_V2, 'reviews', 'end-user', 'jason'),
        defaultRoute(REVIEWS, REVIEWS_HOST, PORT),
      ]),
    ]),
  ];
  return [...out.values(), ...ours];
}

interface Observed {
  maps: { frontends: string[]; services: string[] };
  statuses: Record<string, string>;
  refusals: string[];
  web: string | undefined;
  reviews: string | undefined;
}

/** What one agent programmed and reports, without what differs by nature (ids, versions, times). */
async function observe(
  env: KernelEnv,
  args: string[],
  pinSubdir: string,
  reviewsVip: Backend,
): Promise<Observed> {
  const { agent, admin, client } = await runAgentServing(env, args, pinSubdir);
  await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200, {
    attempts: 1200,
    intervalMs: 50,
  });
  const web = await client.connect({ host: WEB_VIP, port: PORT, readId: true });
  const reviews = await client.connect({ host: REVIEWS_VIP, port: PORT, readId: true });
  const maps = (await getJson<DebugMaps>(admin, '/debug/maps')).body;
  const xds = (await getJson<DebugXds>(admin, '/debug/xds')).body;
  assert.equal(await stopProcess(agent), 0);
  // SIGTERM leaves links and maps pinned on purpose: remove them before the other source runs.
  const cleanup = await runKernmesh([
    'cleanup',
    '--bpffs',
    join(env.pinDir, pinSubdir),
    '--cgroup',
    env.cgroup,
  ]);
  assert.equal(cleanup.code, 0, cleanup.stderr);
  const statuses: Record<string, string> = {};
  for (const t of xds.xds.types)
    for (const r of t.resources)
      statuses[`${t.type_url} ${r.name}`] = `${r.status}${r.error ? `: ${r.error}` : ''}`;
  return {
    maps: {
      frontends: maps.frontends
        .map((f) => `${f.address}:${f.port}/${f.protocol} → ${f.service ?? '?'}`)
        .sort(),
      services: maps.services
        .map(
          (s) =>
            `${s.name} ${s.value.kind} ${s.value.lbPolicy} [${s.slots.map((x) => `${x.backend ?? '?'} p${x.priority} w${x.weight}`).join(', ')}]`,
        )
        .sort(),
    },
    statuses,
    refusals: xds.translation_rejections.map((r) => `${r.typeUrl} ${r.name}: ${r.reason}`).sort(),
    web: web.backend,
    reviews:
      reviews.backend === reviewsVip.id ? 'not rewritten' : `rewritten to ${reviews.backend ?? reviews.err}`,
  };
}

kernelTest(
  'the same resources through a file and through ADS: the same maps, statuses and refusals',
  async (_t, env) => {
    const web = await startBackend('127.81.0.2');
    const reviews = await startBackend('127.81.0.3');
    const reviewsV2 = await startBackend('127.81.0.4');
    // A listener on the refused service's VIP itself: a connect that is not rewritten lands here.
    const reviewsVip = await startBackend(REVIEWS_VIP, { port: PORT });
    for (const b of [web, reviews, reviewsV2, reviewsVip]) env.defer(() => b.close());
    const resources = inputs({ web, reviews, reviewsV2 });

    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-same-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'resources.json');
    writeFileSync(file, JSON.stringify({ resources }));
    const fromFile = await observe(env, ['--xds-file', file], 'file', reviewsVip);

    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    for (const typeUrl of [TYPE.cluster, TYPE.endpoint, TYPE.listener, TYPE.route])
      cp.setResources(
        typeUrl,
        resources.filter((r) => r['@type'] === typeUrl),
      );
    const identity = ['--pod-name', 'same', '--pod-namespace', 'same', '--instance-ip', '10.1.2.3'];
    const fromAds = await observe(
      env,
      ['--xds-address', cp.address, '--xds-protocol', 'delta', ...identity],
      'ads',
      reviewsVip,
    );

    // The plain host is routed and the header-routed one NACKed and untouched, by either source.
    assert.equal(fromFile.web, web.id);
    assert.equal(fromFile.reviews, 'not rewritten');
    assert.match(
      fromFile.statuses[`${TYPE.route} ${PORT}`] ?? '',
      /^NACKED: virtual_hosts\[1\]\.routes\[0\]\.match\.headers: /,
    );
    assert.ok(
      fromFile.maps.frontends.includes(`${WEB_VIP}:${PORT}/tcp → ${WEB}`),
      fromFile.maps.frontends.join('\n'),
    );
    // The same in every respect.
    assert.deepEqual(fromAds.maps, fromFile.maps);
    assert.deepEqual(fromAds.statuses, fromFile.statuses);
    assert.deepEqual(fromAds.refusals, fromFile.refusals);
    assert.deepEqual([fromAds.web, fromAds.reviews], [fromFile.web, fromFile.reviews]);
    // istiod sees the partial NACK as ERROR with the same reason the file source gives.
    assert.equal(cp.proxyStatus().RouteConfiguration?.status, 'ERROR');
  },
);
