// Assembles a running agent from its configuration: the config source (istiod or a file), translate,
// the kernel (routing, telemetry, acceleration) and the admin endpoint. Used by `kernmesh run`, the
// demo and the end-to-end tests, so all three run the same code.
import { readFileSync, statSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join, resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import type { AgentConfig } from '../config/config.js';
import { startControl } from '../control/agent.js';
import type { ControlServer } from '../control/server.js';
import { ConnectionTracer } from '../telemetry/traces.js';
import { DEFAULT_CAPACITY } from '../dataplane/maps.js';
import { translate, validateAgainst, type TranslateResult } from '../translate/index.js';
import { XdsClient } from '../xds/client.js';
import { parseConfigFile } from '../xds/config-file.js';
import { XdsStateStore } from '../xds/persist.js';
import { XdsFileSource } from '../xds/file-source.js';
import { buildNodeIdentity, type NodeIdentity } from '../xds/identity.js';
import { Agent } from './agent.js';
import { DnsRefresher } from './dns.js';
import { KubernetesNode } from '../k8s/index.js';
import { AgentKernel, capacityFrom } from './kernel.js';
import { AgentMetrics } from './metrics.js';
import type { Translate } from './stage-interfaces.js';
import { XdsSource } from './xds-source.js';
import type { ConfigState } from '../xds/config-state.js';
import { TYPE } from '../xds/types.js';

export interface RunningAgent {
  agent: Agent;
  admin: AdminServer;
  kernel: AgentKernel;
  node: NodeIdentity;
  /** The control socket (kernmesh accel, kernmesh capture), when it listens. */
  control: ControlServer | undefined;
  /** The last translation's operator views (clusters, frontends, notes), for the demo and status. */
  lastTranslation(): TranslateResult | undefined;
  /** Stops the source and the admin endpoint and closes fds; pinned maps and links stay. */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Where connection access-log lines go (--access-log). */
  accessLog?: NodeJS.WritableStream;
}

/** The node's first non-loopback address, for node.id when no --instance-ip is given. */
function defaultInstanceIp(): string | undefined {
  for (const list of Object.values(networkInterfaces()))
    for (const a of list ?? []) if (!a.internal && a.family === 'IPv4') return a.address;
  return undefined;
}

export function nodeIdentity(config: AgentConfig): NodeIdentity {
  const id = config.identity;
  const ips = id.instanceIps.length ? id.instanceIps : [defaultInstanceIp() ?? '127.0.0.1'];
  const [region, zone, subZone] = (id.locality ?? '').split('/');
  return buildNodeIdentity({
    podName: id.podName,
    namespace: id.podNamespace,
    instanceIps: ips,
    serviceAccount: id.serviceAccount,
    nodeName: id.nodeName,
    clusterId: id.clusterId,
    meshId: id.meshId,
    istioVersion: id.istioVersion,
    labels: id.labels,
    ...(id.locality
      ? { locality: { region: region || undefined, zone: zone || undefined, subZone: subZone || undefined } }
      : {}),
  });
}

/**
 * The kept xDS state of this pin directory: one directory per --bpffs under the state dir, bound to
 * the pinned routing map (its bpffs inode changes when the maps are made anew, after a cleanup).
 */
function xdsStateStore(root: string, bpffs: string): XdsStateStore {
  const dir = join(
    root,
    resolve(bpffs)
      .replace(/^\/+/, '')
      .replace(/[^A-Za-z0-9._-]+/g, '_'),
  );
  return new XdsStateStore(
    dir,
    `${resolve(bpffs)} km_services inode ${statSync(join(bpffs, 'km_services')).ino}`,
  );
}

export async function startAgent(
  config: AgentConfig,
  log: Logger,
  opts: StartOptions = {},
): Promise<RunningAgent> {
  // On Kubernetes the node's topology labels give the locality of every pod the agent serves.
  const k8s = config.kubernetes
    ? await KubernetesNode.connect(config, log.child({ stage: 'k8s' }))
    : undefined;
  const node = nodeIdentity(k8s?.withLocality(config) ?? config);
  // A file that cannot be read or parsed stops the start before anything touches the kernel.
  if (config.xdsFile) {
    try {
      parseConfigFile(readFileSync(config.xdsFile, 'utf8'), config.xdsFile);
    } catch (e) {
      throw new Error(`--xds-file ${config.xdsFile}: ${(e as Error).message}`, { cause: e });
    }
  }

  const metrics = new AgentMetrics();
  const accessLog = opts.accessLog ? pino({ base: { log: 'access' } }, opts.accessLog) : undefined;
  const tracer = config.traces
    ? new ConnectionTracer(
        {
          ...config.traces,
          resource: {
            'service.instance.id': `${config.identity.podName}.${config.identity.podNamespace}`,
            'k8s.node.name': config.identity.nodeName,
          },
        },
        metrics.registry,
        log.child({ stage: 'traces' }),
      )
    : undefined;
  const kernel = AgentKernel.open(config, log, {
    registry: metrics.registry,
    ...(accessLog ? { accessLog } : {}),
    clusterId: config.identity.clusterId,
    ...(tracer ? { tracer } : {}),
  });

  // Either source hands its responses to the same check on receipt (translate/'s validateAgainst,
  // against what the source holds) and the same per-resource state.
  const xdsLog = log.child({ stage: 'xds' });
  // A resource holding more endpoints than the backend map can ever take is refused unread.
  const limits = {
    endpointsPerResource: (capacityFrom(config.mapSizes).backends ?? DEFAULT_CAPACITY.backends) - 1,
  };
  let source: XdsSource;
  let state: ConfigState;
  if (config.xdsFile) {
    const file = new XdsFileSource(config.xdsFile, { validate: validateAgainst, limits, logger: xdsLog });
    source = new XdsSource({ kind: 'file', file }, resolve(config.xdsFile), node, xdsLog);
    state = file.config;
  } else {
    const address = `${config.xdsAddress!.host}:${config.xdsAddress!.port}`;
    const client = new XdsClient({
      address,
      protocol: config.xdsProtocol,
      ...(config.tls ? { tls: { rootCaFile: config.rootCa, serverName: config.serverName } } : {}),
      ...(config.tokenFile ? { tokenFile: config.tokenFile } : {}),
      clusterId: config.identity.clusterId,
      node,
      waypoints: config.waypoints,
      authorization: config.authorization,
      validate: validateAgainst,
      limits,
      logger: xdsLog,
      ...(config.xdsStateDir ? { store: xdsStateStore(config.xdsStateDir, config.bpffs) } : {}),
    });
    source = new XdsSource({ kind: 'istiod', client }, address, node, xdsLog);
    state = client.config;
  }
  // Istio's labels per connection: who is behind each address (workload API, when subscribed).
  state.on('update', (u) => {
    if (u.typeUrl === TYPE.address) kernel.telemetry.workloads.update([...u.resources]);
  });

  let last: TranslateResult | undefined;
  // DNS answers arrive after the agent exists; the callback reaches it through this holder.
  const holder: { agent?: Agent } = {};
  const dnsLog = log.child({ stage: 'dns' });
  const dns = new DnsRefresher({
    onChange: (answers) => {
      dnsLog.info({ answers: Object.fromEntries(answers) }, 'DNS answers changed');
      holder.agent?.reapply();
    },
    onError: (host, err) =>
      dnsLog.warn({ host, err }, 'DNS lookup failed; the cluster keeps its last addresses'),
  });
  const translateFn: Translate = (resources, waypoints, previous, refused) => {
    last = translate({
      resources,
      waypoints,
      dns: dns.current(),
      ...(previous ? { previous } : {}),
      ...(refused ? { refusedBySource: refused } : {}),
    });
    dns.update(last.dnsQueries);
    return {
      state: last.desired,
      rejections: last.rejected,
      notes: last.status,
      notEnforced: last.notEnforced,
    };
  };

  const agent = new Agent({
    source,
    translate: translateFn,
    kernel,
    log,
    metrics,
    commandLine: {
      xds: source.target,
      cgroups: config.cgroups,
      bpffs: config.bpffs,
      ...(config.configFile ? { config_file: config.configFile } : {}),
    },
  });

  holder.agent = agent;

  let admin: AdminServer;
  let probes: AdminServer | undefined;
  try {
    admin = await startAdminServer(agent, { host: config.admin.host, port: config.admin.port, log });
  } catch (e) {
    await kernel.close();
    throw e;
  }
  if (config.probes) {
    try {
      probes = await startAdminServer(agent, {
        host: config.probes.host,
        port: config.probes.port,
        log,
        routes: 'probes',
      });
    } catch (e) {
      await admin.close();
      await kernel.close();
      throw e;
    }
  }
  try {
    await agent.start();
  } catch (e) {
    await probes?.close();
    await admin.close();
    await kernel.close();
    throw e;
  }
  k8s?.start(config, kernel);
  // Istio's labels per connection: the pod enrolled behind the socket's cgroup.
  if (k8s) kernel.telemetry.workloads.enrolled = k8s;
  let control: ControlServer | undefined;
  if (config.controlSocket) {
    try {
      control = await startControl({
        path: config.controlSocket,
        required: config.controlSocketExplicit,
        accel: kernel.accel,
        desired: () => agent.desiredState(),
        workloads: kernel.telemetry.workloads,
        onApplied: kernel.onApplied,
        log,
      });
    } catch (e) {
      await agent.stop();
      await admin.close();
      throw e;
    }
  }
  if (config.kubernetes && !config.authorization)
    log.warn(
      'L4 authorization is off: AuthorizationPolicies of enrolled pods are not enforced (--authorization enforces them)',
    );
  metrics.xdsConnected.set(source.connected() ? 1 : 0);
  log.info(
    {
      node: node.id,
      xds: `${source.kind} ${source.target}`,
      attached: kernel.attachments().map((a) => `${a.program} ${a.attachType} ${a.cgroup} (${a.via})`),
      bpffs: config.bpffs,
      admin: `http://${admin.address}`,
      ...(control ? { control: control.path } : {}),
      ...(probes ? { probes: `http://${probes.address}` } : {}),
    },
    `kernmesh started: ${agent.attachmentsSummary()}; admin on http://${admin.address}${probes ? `, probes on http://${probes.address}` : ''}`,
  );
  return {
    agent,
    admin,
    kernel,
    node,
    control,
    lastTranslation: () => last,
    stop: async () => {
      dns.close();
      await k8s?.stop();
      await control?.close();
      await agent.stop();
      await probes?.close();
      await admin.close();
    },
  };
}
