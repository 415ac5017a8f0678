// The dashboards proven on a real Prometheus: Debian's Prometheus server scrapes a running agent every
// second while real connections go through it (routed, accelerated, refused by routing, refused by the
// acceleration rules, one resource NACKed, spans exported), then every panel of
// deploy/grafana/kernmesh.json and the TCP panels and variables of Istio's Mesh, Service and Workload
// dashboards are evaluated through Prometheus's HTTP API: each returns data with the labels it uses.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { TYPE, type XdsResource } from '../src/xds/types.js';
import { runAgentServing, REPO_ROOT } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  headerRoute,
  httpListener,
  outbound,
  routeConfig,
  tcpListener,
  virtualHost,
} from './support/control-plane-istiod.js';
import { EchoSession, echoServer } from './support/echo.js';
import { ISTIO_DASHBOARDS, type IstioDashboard } from './support/istio-dashboards.js';
import { kernelTest } from './support/kernel.js';
import { OtlpReceiver } from './support/otlp.js';
import { PrometheusServer, type PromSample } from './support/prometheus.js';
import { eventually } from './support/wait.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

const NS = 'default';
const REVIEWS = `reviews.${NS}.svc.cluster.local`;
const RATINGS = `ratings.${NS}.svc.cluster.local`;
const WEB = `web.${NS}.svc.cluster.local`;
const REVIEWS_VIP = '127.100.90.1';
const RATINGS_VIP = '127.100.90.2';
const WEB_VIP = '127.100.90.5';
const PRODUCTPAGE_IP = '127.0.0.90';
const REVIEWS_IP = '127.0.0.91';
const DETAILS_IP = '127.0.0.92';
/** $__rate_interval: four scrapes at 1 s, enough for rate() and irate(). */
const RATE_INTERVAL = '4s';

const b64 = (ip: string): string => Buffer.from(ip.split('.').map(Number)).toString('base64');

function workload(
  name: string,
  ip: string,
  app: string,
  services: Record<string, [number, number][]> = {},
): XdsResource {
  return {
    typeUrl: TYPE.address,
    name: `Kubernetes//Pod/${NS}/${name}-0`,
    version: '',
    resource: {
      '@type': TYPE.address,
      workload: {
        uid: `Kubernetes//Pod/${NS}/${name}-0`,
        name: `${name}-0`,
        namespace: NS,
        addresses: [b64(ip)],
        service_account: `bookinfo-${app}`,
        workload_name: name,
        canonical_name: app,
        canonical_revision: 'v1',
        cluster_id: 'Kubernetes',
        trust_domain: 'cluster.local',
        services: Object.fromEntries(
          Object.entries(services).map(([k, ports]) => [
            k,
            { ports: ports.map(([sp, tp]) => ({ service_port: sp, target_port: tp })) },
          ]),
        ),
      },
    },
  };
}

function service(name: string, vip: string, port: number, targetPort: number): XdsResource {
  const host = `${name}.${NS}.svc.cluster.local`;
  return {
    typeUrl: TYPE.address,
    name: `${NS}/${host}`,
    version: '',
    resource: {
      '@type': TYPE.address,
      service: {
        name,
        namespace: NS,
        hostname: host,
        addresses: [{ network: '', address: b64(vip) }],
        ports: [{ service_port: port, target_port: targetPort }],
      },
    },
  };
}

/** Grafana's text of a series, which the variables' regexes are written against. */
function seriesText(s: PromSample): string {
  return `{${Object.entries(s.metric)
    .map(([k, v]) => `${k}="${v}"`)
    .join(', ')}} ${s.value[1]}`;
}

/** As Grafana's Prometheus data source: regex-escaped, then escaped again inside a PromQL string. */
const escapeRegex = (v: string): string => v.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/\\/g, '\\\\');

/** Replaces $name (longest names first, so $srcwl is not read as $srcw...) with each variable's text. */
function substitute(expr: string, values: Record<string, string>): string {
  let out = expr.replaceAll('$__rate_interval', RATE_INTERVAL);
  for (const name of Object.keys(values).sort((a, b) => b.length - a.length))
    out = out.replaceAll(`$${name}`, values[name]!);
  assert.ok(!/\$[a-z]/.test(out), `a variable left in ${out}`);
  return out;
}

/** The labels a panel reads: its `by (...)` groupings and its legend's {{label}}s. */
function labelsUsed(expr: string, legend = ''): string[] {
  const out = new Set<string>();
  for (const m of expr.matchAll(/\bby\s*\(([^)]*)\)/g))
    for (const l of m[1]!.split(',').map((x) => x.trim())) if (l && l !== 'le') out.add(l);
  for (const m of legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)) out.add(m[1]!);
  // label_join adds its target label from the others
  for (const m of expr.matchAll(/label_join\([\s\S]*?,\s*"(\w+)"/g)) out.add(m[1]!);
  return [...out];
}

/**
 * Evaluates a dashboard's variables as Grafana would with its defaults (or the picks), in order. A
 * variable with no value is left empty and listed: no panel evaluated with it may use it.
 */
async function variableValues(
  prom: PrometheusServer,
  d: IstioDashboard,
  picks: Record<string, string>,
): Promise<{ values: Record<string, string>; empty: string[] }> {
  const values: Record<string, string> = {};
  const empty: string[] = [];
  for (const v of d.variables) {
    if (v.custom) {
      values[v.name] = v.current === 'all' ? v.query.split(',').join('|') : v.current;
      continue;
    }
    const result = await prom.query(substitute(v.query, values));
    const re = v.regex ? new RegExp(v.regex.slice(1, v.regex.lastIndexOf('/'))) : undefined;
    const found = [
      ...new Set(
        result.map((s) => (re ? re.exec(seriesText(s))?.[1] : s.value[1])).filter((x): x is string => !!x),
      ),
    ].sort();
    const pick = picks[v.name];
    if (found.length === 0) {
      empty.push(v.name);
      values[v.name] = '';
    } else if (pick !== undefined) {
      assert.ok(found.includes(pick), `${d.file}: $${v.name} offers ${found.join(', ')}, not ${pick}`);
      values[v.name] = pick;
    } else if (v.current === 'all') values[v.name] = `(${found.map(escapeRegex).join('|')})`;
    else values[v.name] = found.includes(v.current) ? v.current : found[0]!;
  }
  return { values, empty };
}

interface GrafanaPanel {
  title: string;
  targets?: { expr: string; legendFormat?: string }[];
  panels?: GrafanaPanel[];
}

kernelTest(
  'every panel of the kernmesh dashboard and the TCP panels of Istio’s dashboards return data from a real Prometheus scraping the agent',
  async (_t, env) => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-dash-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    const receiver = await OtlpReceiver.start();
    env.defer(() => receiver.close());

    const reviewsCluster = outbound(REVIEWS, 9080);
    const ratingsCluster = outbound(RATINGS, 9080);
    const webCluster = outbound(WEB, 8095);
    // Acceleration keeps connections to details on the stack (refused by the rules).
    const rules = join(dir, 'accel.rules');
    writeFileSync(rules, `chain --ip ${DETAILS_IP}/32 -j RETURN\n`);
    cp.setResources(TYPE.cluster, [edsCluster(ratingsCluster), edsCluster(webCluster)]);
    cp.setResources(TYPE.endpoint, [assignment(ratingsCluster, []), assignment(webCluster, [])]);
    cp.setResources(TYPE.listener, [tcpListener(RATINGS_VIP, 9080, ratingsCluster), httpListener(8095)]);
    // L7 intent: refused (NACKed) with its reason, the rest applies.
    cp.setResources(TYPE.route, [
      routeConfig(8095, [virtualHost(WEB, WEB_VIP, 8095, [headerRoute(webCluster, 'web', 'x-user', 'a')])]),
    ]);
    cp.setResources(TYPE.address, []);

    const { admin } = await runAgentServing(env, [
      '--xds-address',
      cp.address,
      '--waypoints',
      '--accelerate',
      '--accel-rules',
      rules,
      '--cluster-id',
      'Kubernetes',
      '--pod-name',
      'kernmesh-node-a',
      '--control-socket',
      join(dir, 'control.sock'),
      '--trace-endpoint',
      receiver.url,
      '--trace-sampling',
      '1',
    ]);
    await eventually('/ready is 200', async () => (await getJson(admin, '/ready')).status === 200);

    // Servers in the served cgroup after the agent (acceleration learns listeners as they listen).
    const reviewsPort = await echoServer(env, env.cgroup, REVIEWS_IP);
    const detailsPort = await echoServer(env, env.cgroup, DETAILS_IP);
    cp.setResources(TYPE.cluster, [
      edsCluster(reviewsCluster),
      edsCluster(ratingsCluster),
      edsCluster(webCluster),
    ]);
    cp.setResources(TYPE.endpoint, [
      assignment(reviewsCluster, [{ address: REVIEWS_IP, port: reviewsPort }]),
      assignment(ratingsCluster, []),
      assignment(webCluster, []),
    ]);
    cp.setResources(TYPE.listener, [
      tcpListener(REVIEWS_VIP, 9080, reviewsCluster),
      tcpListener(RATINGS_VIP, 9080, ratingsCluster),
      httpListener(8095),
    ]);
    cp.setResources(TYPE.address, [
      workload('productpage-v1', PRODUCTPAGE_IP, 'productpage'),
      workload('reviews-v1', REVIEWS_IP, 'reviews', { [`${NS}/${REVIEWS}`]: [[9080, reviewsPort]] }),
      workload('details-v1', DETAILS_IP, 'details'),
      service('reviews', REVIEWS_VIP, 9080, reviewsPort),
      service('ratings', RATINGS_VIP, 9080, 9080),
    ]);
    await eventually(
      'reviews is programmed',
      async () =>
        (await getJson<unknown>(admin, '/debug/maps')).body !== undefined &&
        JSON.stringify((await getJson<unknown>(admin, '/debug/maps')).body).includes(`"${REVIEWS_VIP}"`),
    );

    const prom = await PrometheusServer.start(dir, [
      { job: 'kernmesh', address: admin, path: '/stats/prometheus' },
    ]);
    env.defer(() => prom.stop());

    // Traffic the panels show. Routed + accelerated: productpage → reviews (both ends served here).
    const routed = await EchoSession.open(env, env.cgroup, {
      host: REVIEWS_VIP,
      port: 9080,
      localAddress: PRODUCTPAGE_IP,
    });
    for (const n of [100, 5000]) await routed.send(Buffer.alloc(n, 1));
    await routed.close();
    // Local, kept on the stack by the rules.
    const onStack = await EchoSession.open(env, env.cgroup, {
      host: DETAILS_IP,
      port: detailsPort,
      localAddress: PRODUCTPAGE_IP,
    });
    await onStack.send(Buffer.alloc(10, 2));
    await onStack.close();
    // Refused by routing: ratings has no endpoint.
    await assert.rejects(
      EchoSession.open(env, env.cgroup, { host: RATINGS_VIP, port: 9080, localAddress: PRODUCTPAGE_IP }),
      /ECONNREFUSED/,
    );
    // Not here yet: connections denied by L4 authorization (see the todo at the end of this file).

    // Every metric a panel reads has reached Prometheus once these do.
    for (const ready of [
      'istio_tcp_sent_bytes_total{reporter="destination"}',
      'istio_tcp_sent_bytes_total{reporter="source"}',
      'kernmesh_accel_connections_refused_total > 0',
      'kernmesh_fallback_total{reason="no_endpoint"} > 0',
      'kernmesh_trace_spans_exported_total > 0',
      'kernmesh_xds_rejected_resources_total',
    ])
      await eventually(`Prometheus has ${ready}`, async () => (await prom.query(ready)).length > 0, {
        attempts: 200,
        intervalMs: 100,
      });
    // rate()/irate() need two scrapes inside the window after the last counter appeared.
    await eventually(
      'two scrapes of the last counter',
      async () =>
        (await prom.query(`count_over_time(kernmesh_trace_spans_exported_total[${RATE_INTERVAL}]) >= 2`))
          .length > 0,
      { attempts: 200, intervalMs: 100 },
    );

    // ---- deploy/grafana/kernmesh.json: every target of every panel, every variable ----
    const dashboard = JSON.parse(readFileSync(join(REPO_ROOT, 'deploy/grafana/kernmesh.json'), 'utf8')) as {
      panels: GrafanaPanel[];
      templating: { list: { name: string; type: string; query: string; allValue?: string }[] };
    };
    const instanceVar = dashboard.templating.list.find((v) => v.name === 'instance')!;
    const instances = await prom.query(/label_values\((\w+), instance\)/.exec(instanceVar.query)![1]!);
    assert.deepEqual(
      instances.map((s) => s.metric.instance),
      [admin],
      '$instance lists the agent',
    );
    const flat = (ps: GrafanaPanel[]): GrafanaPanel[] => ps.flatMap((p) => [p, ...flat(p.panels ?? [])]);
    const evaluated: string[] = [];
    for (const panel of flat(dashboard.panels))
      for (const t of panel.targets ?? []) {
        const expr = substitute(t.expr, { instance: instanceVar.allValue ?? '.*' });
        const result = await prom.query(expr);
        assert.ok(result.length > 0, `kernmesh panel "${panel.title}" returns nothing: ${expr}`);
        for (const label of labelsUsed(t.expr, t.legendFormat))
          for (const s of result)
            assert.ok(
              s.metric[label],
              `kernmesh panel "${panel.title}": a series without ${label}: ${seriesText(s)}`,
            );
        evaluated.push(panel.title);
      }
    assert.ok(evaluated.length >= 17, `${evaluated.length} targets evaluated`);

    // ---- Istio's dashboards: their TCP panels with the variables' defaults (reporter=destination) ----
    // The Service dashboard for reviews; the Workload dashboard for reviews-v1 (its server panels) and
    // for productpage-v1 (its client panels: reviews-v1 is nobody's client, productpage-v1 nobody's
    // server). kernmesh has no mTLS: panels selecting connection_security_policy="mutual_tls" are empty
    // by design; their "!=" twins (same panel, plaintext) show the traffic.
    const passes: { file: string; picks: Record<string, string>; panels: (expr: string) => boolean }[] = [
      { file: 'istio-mesh-dashboard.gen.json', picks: {}, panels: () => true },
      { file: 'istio-service-dashboard.json', picks: { service: REVIEWS }, panels: () => true },
      {
        file: 'istio-workload-dashboard.json',
        picks: { workload: 'reviews-v1' },
        panels: (e) => !e.includes('source_workload=~"$workload"'),
      },
      {
        file: 'istio-workload-dashboard.json',
        picks: { workload: 'productpage-v1' },
        panels: (e) => e.includes('source_workload=~"$workload"'),
      },
    ];
    let istioPanels = 0;
    for (const pass of passes) {
      const d = ISTIO_DASHBOARDS.find((x) => x.file === pass.file)!;
      const { values, empty } = await variableValues(prom, d, pass.picks);
      for (const p of d.panels.filter((x) => pass.panels(x.expr))) {
        const what = `${d.file} (${JSON.stringify(pass.picks)}) "${p.title}"`;
        for (const v of empty)
          assert.ok(!p.expr.includes(`$${v}`), `${what} uses $${v}, which lists nothing`);
        const expr = substitute(p.expr, values);
        const result = await prom.query(expr);
        istioPanels++;
        if (p.expr.includes('connection_security_policy="mutual_tls"')) {
          assert.equal(result.length, 0, `${what} (mutual_tls) shows data kernmesh cannot have`);
          continue;
        }
        assert.ok(result.length > 0, `${what} returns nothing: ${expr}`);
        const used = labelsUsed(p.expr);
        for (const s of result)
          for (const label of used)
            assert.ok(s.metric[label], `${what}: a series without ${label}: ${seriesText(s)}`);
        // the reviews connection is known end to end: no label of its series is unknown
        if (used.length)
          assert.ok(
            result.some((s) => used.every((l) => s.metric[l] !== 'unknown')),
            `${what}: every series has an unknown label: ${result.map(seriesText).join('; ')}`,
          );
      }
    }
    assert.equal(
      istioPanels,
      ISTIO_DASHBOARDS.reduce((n, d) => n + d.panels.length, 0),
      'every Istio TCP panel evaluated once',
    );
  },
);

// The denials are counted (kernmesh_authorization_denied_total, asserted through /stats/prometheus by
// test/authz-e2e.test.ts), but no dashboard panel shows them: one needs this test to run the agent with
// --kubernetes --authorization against the test API server, and docs/operating.md says so.
void test.todo(
  'dashboards: a panel for connections denied by L4 authorization, evaluated here under denied traffic',
);
