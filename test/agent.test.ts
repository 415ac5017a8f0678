// `kernmesh run` end to end on the real kernel: the agent runs as its own process (the CLI), programs
// the test's cgroup, and a client in that cgroup connects to VIPs. Nothing is stubbed: the xDS file
// goes through xds/, translate/, dataplane/ and native/ into the maps the kernel routes with.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  adminAddress,
  adminGet,
  runAgentServing,
  runKernmesh,
  startKernmesh,
  stopProcess,
} from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import { tcpListener } from './support/control-plane-istiod.js';
import { kernelTest } from './support/kernel.js';
import { assertPromtoolAccepts } from './support/prometheus.js';
import { eventually } from './support/wait.js';
import { startBackend, type Backend } from './support/net.js';
import { encodeFromJson } from '../src/xds/proto-json.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';

const cluster = (name: string, lb = 'ROUND_ROBIN', extra: JsonObject = {}): JsonObject => ({
  '@type': TYPE.cluster,
  name,
  type: 'EDS',
  eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' }, service_name: name },
  connect_timeout: '1s',
  lb_policy: lb,
  ...extra,
});

const assignment = (name: string, backends: Backend[]): JsonObject => ({
  '@type': TYPE.endpoint,
  cluster_name: name,
  endpoints: [
    {
      lb_endpoints: backends.map((b) => ({
        endpoint: { address: { socket_address: { address: b.address, port_value: b.port } } },
        health_status: 'HEALTHY',
      })),
    },
  ],
});

const VIP = '127.100.78.1';
const BAD_VIP = '127.100.78.2';
const VIP_PORT = 8078;
const GOOD = 'outbound|8078||echo.test.svc.cluster.local';
const BAD = 'outbound|8078||broken.test.svc.cluster.local';

const DNS_VIP = '127.100.78.3';
const DNS = 'outbound|8078||localhost.test.svc.cluster.local';

/** A STRICT_DNS cluster: the agent resolves `localhost` for translate and programs the answer. */
const dnsCluster = (port: number): JsonObject => ({
  '@type': TYPE.cluster,
  name: DNS,
  type: 'STRICT_DNS',
  connect_timeout: '1s',
  lb_policy: 'ROUND_ROBIN',
  dns_lookup_family: 'V4_ONLY',
  load_assignment: {
    cluster_name: DNS,
    endpoints: [
      {
        lb_endpoints: [
          { endpoint: { address: { socket_address: { address: 'localhost', port_value: port } } } },
        ],
      },
    ],
  },
});

function resourcesFile(backends: Backend[], dnsPort: number): string {
  return JSON.stringify({
    resources: [
      dnsCluster(dnsPort),
      tcpListener(DNS_VIP, VIP_PORT, DNS, {}),
      cluster(GOOD),
      assignment(GOOD, backends),
      tcpListener(VIP, VIP_PORT, GOOD, {}),
      // A misspelt field: refused like a NACK, the rest of the file still applies.
      cluster(BAD, 'ROUND_ROBIN', { connect_timout: '1s' }),
      tcpListener(BAD_VIP, VIP_PORT, BAD, {}),
    ],
  });
}

kernelTest(
  'kernmesh run --xds-file programs the kernel; admin views; a bad resource is refused; SIGTERM keeps routing; cleanup removes it',
  async (_t, env) => {
    const dir = mkdtempSync(join(tmpdir(), 'kernmesh-agent-'));
    env.defer(() => rmSync(dir, { recursive: true, force: true }));
    const b1 = await startBackend('127.78.0.1');
    const b2 = await startBackend('127.78.0.2');
    env.defer(() => b1.close());
    env.defer(() => b2.close());
    const file = join(dir, 'resources.json');
    const b3 = await startBackend('127.0.0.1');
    env.defer(() => b3.close());
    writeFileSync(file, resourcesFile([b1, b2], b3.port));
    const bpffs = join(env.pinDir, 'agent');

    const { agent, admin, client } = await runAgentServing(env, [
      '--xds-file',
      file,
      '--log-level',
      'debug',
      '--access-log',
      join(dir, 'access.log'),
    ]);

    await eventually('/ready is 200', async () => (await adminGet(admin, '/ready')).status === 200);
    // Ready means programmed: the very next connects are routed.
    const landed = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await client.connect({ host: VIP, port: VIP_PORT, readId: true });
      assert.ok(r.ok, `connect to ${VIP}:${VIP_PORT}: ${r.err}`);
      assert.equal(r.peer, `${VIP}|${VIP_PORT}`, 'getpeername shows the VIP');
      landed.add(r.backend!);
    }
    assert.deepEqual([...landed].sort(), [b1.id, b2.id].sort(), 'round robin reaches both endpoints');
    const refused = await client.connect({ host: BAD_VIP, port: VIP_PORT, readId: true });
    assert.equal(
      refused.ok,
      false,
      'the VIP of the refused cluster is not rewritten (nothing listens there)',
    );

    await eventually('the STRICT_DNS cluster routes once localhost is resolved', async () => {
      const r = await client.connect({ host: DNS_VIP, port: VIP_PORT, readId: true });
      return r.backend === b3.id;
    });

    // --access-log: one JSON line per closed connection, with the VIP asked for and where it went.
    await eventually('the access log has the routed connections', () => {
      const lines = existsSync(join(dir, 'access.log'))
        ? readFileSync(join(dir, 'access.log'), 'utf8').split('\n').filter(Boolean)
        : [];
      return lines.some((l) => {
        const e = JSON.parse(l) as { original_destination?: string; destination?: string };
        return (
          e.original_destination === `${VIP}:${VIP_PORT}` && e.destination === `${b1.address}:${b1.port}`
        );
      });
    });

    // /debug/xds names the refused resource and why.
    const debug = JSON.parse((await adminGet(admin, '/debug/xds')).text) as {
      xds: { types: { type_url: string; resources: { name: string; status: string; error?: string }[] }[] };
    };
    const cds = debug.xds.types.find((t) => t.type_url === TYPE.cluster)!;
    const bad = cds.resources.find((r) => r.name === BAD)!;
    assert.equal(bad.status, 'NACKED');
    assert.match(bad.error!, /connect_timout/);
    assert.equal(cds.resources.find((r) => r.name === GOOD)!.status, 'ACKED');

    // /config_dump is envoy.admin.v3.ConfigDump; clusters with versions; include_eds adds endpoints.
    const dump = JSON.parse((await adminGet(admin, '/config_dump')).text) as JsonObject;
    encodeFromJson('envoy.admin.v3.ConfigDump', dump);
    const configs = dump.configs as JsonObject[];
    const clusters = configs.find(
      (c) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.ClustersConfigDump',
    )!;
    const active = clusters.dynamic_active_clusters as JsonObject[];
    const good = active.find((c) => (c.cluster as JsonObject | undefined)?.name === GOOD)!;
    assert.ok(typeof good.version_info === 'string' && good.version_info.length > 0);
    const badEntry = active.find((c) => c.client_status === 'NACKED');
    assert.ok(badEntry, 'the refused cluster shows with its error_state');
    const details = (badEntry.error_state as JsonObject).details as string;
    assert.ok(details.startsWith(`${BAD}: `) && details.includes('connect_timout'), details);
    assert.equal(
      configs.some((c) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.EndpointsConfigDump'),
      false,
    );
    const withEds = JSON.parse((await adminGet(admin, '/config_dump?include_eds')).text) as JsonObject;
    encodeFromJson('envoy.admin.v3.ConfigDump', withEds);
    const eds = (withEds.configs as JsonObject[]).find(
      (c) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.EndpointsConfigDump',
    )!;
    assert.deepEqual(
      (eds.dynamic_endpoint_configs as JsonObject[]).map(
        (e) => (e.endpoint_config as JsonObject).cluster_name,
      ),
      [GOOD],
    );
    const clustersJson = JSON.parse((await adminGet(admin, '/clusters?format=json')).text) as JsonObject;
    encodeFromJson('envoy.admin.v3.Clusters', clustersJson);
    const hosts = (
      (clustersJson.cluster_statuses as JsonObject[]).find((c) => c.name === GOOD)!
        .host_statuses as JsonObject[]
    ).map((h) => ((h.address as JsonObject).socket_address as JsonObject).address);
    assert.deepEqual(hosts.sort(), ['127.78.0.1', '127.78.0.2']);

    // Metrics: promtool accepts them; the apply histogram and kernel counters are there.
    const stats = (await adminGet(admin, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    assert.match(stats, /kernmesh_apply_duration_seconds_count [1-9]/);
    assert.match(stats, /kernmesh_fallback_total\{reason="routed"\} [1-9]/);
    assert.match(stats, /kernmesh_xds_rejected_resources_total\{type="cds"\} 1/);
    const maps = JSON.parse((await adminGet(admin, '/debug/maps')).text) as {
      frontends: { address: string; service?: string }[];
    };
    assert.ok(maps.frontends.some((f) => f.address === VIP && f.service === GOOD));
    const bpf = JSON.parse((await adminGet(admin, '/debug/bpf')).text) as {
      attachments: { program: string; cgroup: string }[];
      programs: { name: string }[];
    };
    assert.ok(bpf.attachments.some((a) => a.program === 'km_connect4' && a.cgroup === env.cgroup));
    assert.ok(bpf.programs.some((p) => p.name === 'km_connect4'));

    // The file changes: the agent re-applies it (only b2 left).
    writeFileSync(file, resourcesFile([b2], b3.port));
    await eventually('connects land only on b2 after the file changed', async () => {
      const rs = await Promise.all(
        [0, 1, 2].map(() => client.connect({ host: VIP, port: VIP_PORT, readId: true })),
      );
      return rs.every((r) => r.backend === b2.id);
    });

    // SIGTERM: the agent exits and leaves the programming in the kernel.
    assert.equal(await stopProcess(agent), 0);
    assert.match(
      agent.lines.map((l) => String(l.msg as string)).join('\n'),
      /stopped: programs stay attached/,
    );
    for (let i = 0; i < 3; i++) {
      const r = await client.connect({ host: VIP, port: VIP_PORT, readId: true });
      assert.equal(r.backend, b2.id, 'routing survives the agent');
    }

    // A restarted agent takes over what is pinned (no flush, no second attachment) and stays routable.
    const again = startKernmesh([
      'run',
      '--xds-file',
      file,
      '--cgroup',
      env.cgroup,
      '--bpffs',
      bpffs,
      '--admin',
      '127.0.0.1:0',
    ]);
    env.defer(async () => void (await stopProcess(again, 'SIGKILL')));
    const admin2 = await adminAddress(again);
    await eventually(
      'the restarted agent is ready',
      async () => (await adminGet(admin2, '/ready')).status === 200,
    );
    const bpf2 = JSON.parse((await adminGet(admin2, '/debug/bpf')).text) as {
      attachments: { program: string; via: string }[];
    };
    assert.equal(bpf2.attachments.find((a) => a.program === 'km_connect4')?.via, 'existing bpf_link');
    for (let i = 0; i < 3; i++)
      assert.equal((await client.connect({ host: VIP, port: VIP_PORT, readId: true })).backend, b2.id);
    assert.equal(await stopProcess(again), 0);

    // kernmesh maps reads the pinned maps with the agent down.
    const mapsOut = await runKernmesh(['maps', '--bpffs', bpffs]);
    assert.equal(mapsOut.code, 0, mapsOut.stderr);
    assert.match(
      mapsOut.stdout,
      new RegExp(`${VIP.replace(/\./g, '\\.')}:${VIP_PORT}/tcp\\s+${GOOD.replace(/\|/g, '\\|')}`),
    );
    assert.match(mapsOut.stdout, /127\.78\.0\.2:/);

    // kernmesh cleanup detaches and unpins: the VIP is no longer rewritten.
    const cleanup = await runKernmesh(['cleanup', '--bpffs', bpffs]);
    assert.equal(cleanup.code, 0, cleanup.stderr);
    assert.equal(existsSync(bpffs), false);
    const after = await client.connect({ host: VIP, port: VIP_PORT, readId: true });
    assert.equal(after.ok, false, 'after cleanup the connect goes to the VIP itself, where nothing listens');
  },
);

kernelTest(
  'kernmesh run against an xDS control plane: /ready only once programmed, an L7 route NACKed, routing follows pushes',
  async (_t, env) => {
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    // istiod not answering yet: the agent connects and waits.
    cp.respond = false;
    const b1 = await startBackend('127.78.1.1');
    const b2 = await startBackend('127.78.1.2');
    env.defer(() => b1.close());
    env.defer(() => b2.close());
    const vip = '127.100.78.11';

    const { agent, admin, client } = await runAgentServing(env, [
      '--xds-address',
      cp.address,
      '--xds-protocol',
      'delta',
      '--pod-name',
      'kernmesh-test',
      '--pod-namespace',
      'istio-system',
      '--instance-ip',
      '10.1.2.3',
      '--accelerate',
    ]);

    // Connected, nothing sent yet: not ready, and the reason says so.
    await eventually('the agent opens its ADS stream', async () =>
      Promise.resolve(cp.lastStream() !== undefined),
    );
    const node = cp.lastStream()!.node!;
    assert.equal(node.id, 'sidecar~10.1.2.3~kernmesh-test.istio-system~istio-system.svc.cluster.local');
    assert.deepEqual((node.metadata as JsonObject).PROXY_CONFIG, {});
    const ready = await adminGet(admin, '/ready');
    assert.equal(ready.status, 503);
    assert.match(ready.text, /waiting for the first config|not connected/);

    // istiod answers with no clusters and no listeners (a node without services yet): an empty
    // answer is an answer, over Delta too, so the agent is ready with nothing to route.
    cp.resume();
    await eventually(
      '/ready is 200 on empty CDS and LDS',
      async () => (await adminGet(admin, '/ready')).status === 200,
    );

    // Clusters and endpoints first: applied, but no listener routes the VIP yet.
    cp.setResources(TYPE.cluster, [cluster(GOOD)]);
    cp.setResources(TYPE.endpoint, [assignment(GOOD, [b1])]);
    await cp.waitForAck(TYPE.endpoint, { nonce: cp.lastNonce(TYPE.endpoint) });
    await eventually('CDS and EDS applied', async () => {
      const x = JSON.parse((await adminGet(admin, '/debug/xds')).text) as { applied_updates: number };
      return x.applied_updates > 1;
    });
    assert.equal(
      (await client.connect({ host: vip, port: VIP_PORT, readId: true })).ok,
      false,
      'no listener yet: the VIP is not rewritten (nothing listens there)',
    );

    // The listener arrives: the VIP routes once the LDS push is applied.
    cp.setResources(TYPE.listener, [tcpListener(vip, VIP_PORT, GOOD, {})]);
    await eventually(
      'the listener routes the VIP',
      async () => (await client.connect({ host: vip, port: VIP_PORT, readId: true })).backend === b1.id,
    );
    assert.equal((await adminGet(admin, '/ready')).status, 200);

    // An EDS push moves the traffic.
    cp.setResources(TYPE.endpoint, [assignment(GOOD, [b2])]);
    await eventually(
      'connects follow the EDS push',
      async () => (await client.connect({ host: vip, port: VIP_PORT, readId: true })).backend === b2.id,
    );

    // A route with header matching is L7: NACKed to the control plane, shown in /debug/xds.
    const httpListener: JsonObject = {
      '@type': TYPE.listener,
      name: '0.0.0.0_8079',
      address: { socket_address: { address: '0.0.0.0', port_value: 8079 } },
      traffic_direction: 'OUTBOUND',
      bind_to_port: false,
      filter_chains: [
        {
          filters: [
            {
              name: 'envoy.filters.network.http_connection_manager',
              typed_config: {
                '@type':
                  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
                stat_prefix: 'outbound_0.0.0.0_8079',
                rds: { config_source: { ads: {}, resource_api_version: 'V3' }, route_config_name: '8079' },
                http_filters: [
                  {
                    name: 'envoy.filters.http.router',
                    typed_config: {
                      '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
                    },
                  },
                ],
              },
            },
          ],
        },
      ],
    };
    const l7Route: JsonObject = {
      '@type': TYPE.route,
      name: '8079',
      virtual_hosts: [
        {
          name: 'echo:8079',
          domains: ['127.100.78.12', '127.100.78.12:8079'],
          routes: [
            {
              match: { prefix: '/', headers: [{ name: 'x-canary', string_match: { exact: 'true' } }] },
              route: { cluster: BAD },
            },
            { match: { prefix: '/' }, route: { cluster: GOOD } },
          ],
        },
      ],
    };
    cp.setResources(TYPE.listener, [tcpListener(vip, VIP_PORT, GOOD, {}), httpListener]);
    cp.setResources(TYPE.route, [l7Route]);
    const nack = await cp.waitForNack(TYPE.route);
    assert.match(JSON.stringify(nack.json), /header/);
    await eventually('/debug/xds shows the route NACKED', async () => {
      const x = JSON.parse((await adminGet(admin, '/debug/xds')).text) as {
        xds: { types: { type_url: string; resources: { name: string; status: string; error?: string }[] }[] };
      };
      const r = x.xds.types.find((t) => t.type_url === TYPE.route)?.resources.find((n) => n.name === '8079');
      return r?.status === 'NACKED' && /header/.test(r.error ?? '');
    });
    // The rest keeps working.
    assert.equal((await client.connect({ host: vip, port: VIP_PORT, readId: true })).backend, b2.id);

    const status = await runKernmesh(['status', '--admin', admin]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /READY/);
    assert.match(status.stdout, /RDS\s+\S+\s+1\s+0\s+1/);
    assert.match(status.stdout, /km_connect4\s+cgroup_inet4_connect/);
    assert.match(status.stdout, /km_accel_sockops\s+cgroup_sock_ops/);
    assert.match(
      status.stdout,
      new RegExp(
        `${vip.replace(/\./g, '\\.')}:${VIP_PORT}/tcp\\s+${GOOD.replace(/\|/g, '\\|')}\\s+endpoints\\s+round_robin\\s+1`,
      ),
    );
    const stats = (await adminGet(admin, '/stats/prometheus')).text;
    assertPromtoolAccepts(stats);
    assert.match(stats, /kernmesh_xds_connected 1/);
    assert.match(stats, /kernmesh_xds_rejected_resources_total\{type="rds"\} 1/);
    assert.match(stats, /kernmesh_accel_sockets_inserted_total/);

    assert.equal(await stopProcess(agent), 0);
  },
);
