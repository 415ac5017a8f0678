// The agent's configuration: one table of options, read from a YAML file, KERNMESH_* environment
// variables and flags (flags win over the environment, which wins over the file). Every value
// remembers where it came from, so an error names the flag, the variable or the file line.
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { DEFAULT_CAPACITY } from '../dataplane/maps.js';
import { LineCounter, isMap, isScalar, isSeq, parseDocument, type Node as YamlNode } from 'yaml';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export interface HostPort {
  host: string;
  port: number;
}

export interface Identity {
  podName: string;
  podNamespace: string;
  instanceIps: string[];
  serviceAccount: string;
  nodeName: string;
  clusterId: string;
  meshId: string;
  istioVersion: string;
  trustDomain: string;
  labels: Record<string, string>;
  /** region/zone/subzone, as ISTIO_LOCALITY writes it. */
  locality?: string;
  /** ISTIO_META_* environment variables, name without the prefix, as istiod expects them. */
  extraMetadata: Record<string, string>;
}

export interface AgentConfig {
  xdsAddress?: HostPort;
  xdsFile?: string;
  xdsProtocol: 'delta' | 'sotw';
  tls: boolean;
  rootCa: string;
  tokenFile?: string;
  serverName: string;
  identity: Identity;
  cgroups: string[];
  /** Serve the pods of this node that Kubernetes labels enroll (src/k8s/). */
  kubernetes: boolean;
  /** The kubelet's cgroup root (holds kubepods.slice or kubepods); discovered when absent. */
  kubeletCgroupRoot?: string;
  bpffs: string;
  admin: HostPort;
  /** The read-only probe and scrape listener (/ready, /stats/prometheus); off when undefined. */
  probes?: HostPort;
  waypoints: boolean;
  /** Enforce Istio's L4 AuthorizationPolicies on enrolled pods (workload API; src/authz/). */
  authorization: boolean;
  accelerate: boolean;
  accelRules?: string;
  /** 'stdout' or a file path; undefined when access logs are off. */
  accessLog?: string;
  logLevel: LogLevel;
  /** Per BPF map name: max_entries set before load. */
  mapSizes: Record<string, number>;
  /**
   * Connections to an endpoint EDS removed or marked DRAINING are closed this long after (by the
   * kernel); undefined: left open.
   */
  drainRemovedAfterMs?: number;
  /** Where accepted xDS resources are kept across restarts (a directory per --bpffs); undefined: not kept. */
  xdsStateDir?: string;
  /** Where the config file was, if any. */
  configFile?: string;
  /** The control socket (kernmesh accel, kernmesh capture); undefined with `--control-socket none`. */
  controlSocket?: string;
  /** Whether --control-socket was given: then a socket held by another agent refuses the start. */
  controlSocketExplicit: boolean;
  /** Connection spans over OTLP/HTTP, when --trace-endpoint is given. */
  traces?: { endpoint: string; sampling: number; queueSize: number };
}

/** A configuration problem, naming where the bad value came from. */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly source?: string,
  ) {
    super(source ? `${source}: ${message}` : message);
    this.name = 'ConfigError';
  }
}

type Kind = 'string' | 'bool' | 'int' | 'list' | 'map';

interface OptionSpec {
  /** Flag name without dashes; also the YAML key and, upper-cased, the KERNMESH_ variable. */
  name: string;
  kind: Kind;
  help: string;
  /** Value used when the flag is given without one (`--access-log`). */
  bare?: string;
  /** Downward-API or Istio environment variables read when nothing more specific is set. */
  fallbackEnv?: string[];
}

export const OPTIONS: OptionSpec[] = [
  { name: 'config', kind: 'string', help: 'YAML config file (keys are the flag names)' },
  { name: 'xds-address', kind: 'string', help: 'istiod address HOST:PORT (15010 plaintext, 15012 TLS)' },
  {
    name: 'xds-file',
    kind: 'string',
    help: 'read xDS resources from this file instead (re-applied on change)',
  },
  { name: 'xds-protocol', kind: 'string', help: 'delta (default) or sotw' },
  { name: 'tls', kind: 'bool', help: 'TLS to istiod (default: on when the port is 15012)' },
  { name: 'root-ca', kind: 'string', help: 'mesh root certificate to verify istiod with' },
  { name: 'token-file', kind: 'string', help: 'bearer token sent to istiod, re-read at each connect' },
  { name: 'server-name', kind: 'string', help: "istiod's TLS server name" },
  {
    name: 'cluster-id',
    kind: 'string',
    help: 'Istio cluster id (ClusterID header and CLUSTER_ID)',
    fallbackEnv: ['ISTIO_META_CLUSTER_ID'],
  },
  { name: 'pod-name', kind: 'string', help: "the agent's pod name", fallbackEnv: ['POD_NAME'] },
  { name: 'pod-namespace', kind: 'string', help: "the agent's namespace", fallbackEnv: ['POD_NAMESPACE'] },
  { name: 'instance-ip', kind: 'list', help: "the node's IPs (repeatable)", fallbackEnv: ['INSTANCE_IP'] },
  {
    name: 'service-account',
    kind: 'string',
    help: "the agent's service account",
    fallbackEnv: ['SERVICE_ACCOUNT'],
  },
  { name: 'node-name', kind: 'string', help: 'Kubernetes node name', fallbackEnv: ['NODE_NAME'] },
  { name: 'mesh-id', kind: 'string', help: 'mesh id', fallbackEnv: ['ISTIO_META_MESH_ID'] },
  { name: 'trust-domain', kind: 'string', help: 'SPIFFE trust domain', fallbackEnv: ['TRUST_DOMAIN'] },
  {
    name: 'istio-version',
    kind: 'string',
    help: 'ISTIO_VERSION reported to istiod',
    fallbackEnv: ['ISTIO_VERSION'],
  },
  {
    name: 'locality',
    kind: 'string',
    help: "the node's locality region/zone/subzone (EDS priorities)",
    fallbackEnv: ['ISTIO_LOCALITY'],
  },
  { name: 'label', kind: 'map', help: 'pod label KEY=VALUE (repeatable)' },
  { name: 'cgroup', kind: 'list', help: 'cgroup v2 directory whose processes are served (repeatable)' },
  {
    name: 'kubernetes',
    kind: 'bool',
    help: 'serve the pods of --node-name labelled istio.io/dataplane-mode=kernmesh (Kubernetes API)',
  },
  {
    name: 'kubelet-cgroup-root',
    kind: 'string',
    help: "cgroup v2 directory holding the kubelet's kubepods(.slice) (default: discovered)",
  },
  { name: 'bpffs', kind: 'string', help: 'bpffs directory for pinned maps and links' },
  {
    name: 'admin',
    kind: 'string',
    help: 'admin endpoint ADDR:PORT (keep it on localhost: it shows the config)',
  },
  {
    name: 'probes',
    kind: 'string',
    help: 'read-only listener ADDR:PORT serving only /ready, /healthz/ready and /stats/prometheus (off unless set)',
  },
  { name: 'waypoints', kind: 'bool', help: "send traffic to services' waypoints (workload API)" },
  {
    name: 'authorization',
    kind: 'bool',
    help: "enforce Istio's L4 AuthorizationPolicies inbound to enrolled pods (workload API; needs --kubernetes)",
  },
  { name: 'accelerate', kind: 'bool', help: 'same-node socket acceleration (sockops + sk_msg)' },
  { name: 'accel-rules', kind: 'string', help: 'acceleration rules file' },
  { name: 'access-log', kind: 'string', bare: 'stdout', help: 'connection access log: stdout or a file' },
  {
    name: 'control-socket',
    kind: 'string',
    help: 'unix socket for kernmesh accel/capture (root only), or none',
  },
  {
    name: 'trace-endpoint',
    kind: 'string',
    help: 'OTLP/HTTP traces URL: routed connections become spans',
  },
  { name: 'trace-sampling', kind: 'string', help: 'fraction of routed connections traced, 0-1 (0.01)' },
  { name: 'trace-queue', kind: 'int', help: 'spans waiting for export at most; more are dropped (2048)' },
  { name: 'log-level', kind: 'string', help: 'trace, debug, info, warn, error or fatal' },
  {
    name: 'map-size',
    kind: 'map',
    help: 'capacity NAME=N: frontends, services, backends, slots, maglev (repeatable)',
  },
  {
    name: 'xds-state-dir',
    kind: 'string',
    help: 'keep accepted xDS resources here across restarts, so a restart needs no full push (none: off)',
  },
  {
    name: 'drain-removed-after',
    kind: 'string',
    help: 'close connections to endpoints EDS removed or marked DRAINING this long after (e.g. 30s); off unless set',
  },
];

const byName = new Map(OPTIONS.map((o) => [o.name, o]));

export const DEFAULTS = {
  xdsProtocol: 'delta',
  rootCa: '/var/run/secrets/istio/root-cert.pem',
  serverName: 'istiod.istio-system.svc',
  clusterId: 'Kubernetes',
  bpffs: '/sys/fs/bpf/kernmesh',
  admin: '127.0.0.1:15000',
  logLevel: 'info',
  meshId: 'cluster.local',
  trustDomain: 'cluster.local',
  istioVersion: '1.24.0',
  controlSocket: '/run/kernmesh/control.sock',
  traceSampling: 0.01,
  traceQueue: 2048,
  xdsStateDir: '/run/kernmesh/xds',
} as const;

type RawValue = string | boolean | string[] | Record<string, string>;
interface Sourced {
  value: RawValue;
  source: string;
}
type Layer = Map<string, Sourced>;

export function envName(option: string): string {
  return `KERNMESH_${option.toUpperCase().replace(/-/g, '_')}`;
}

function parseBool(text: string, source: string): boolean {
  if (/^(true|1|yes|on)$/i.test(text)) return true;
  if (/^(false|0|no|off)$/i.test(text)) return false;
  throw new ConfigError(`"${text}" is not a boolean (true or false)`, source);
}

function parsePair(text: string, source: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new ConfigError(`"${text}" is not KEY=VALUE`, source);
  return [text.slice(0, i), text.slice(i + 1)];
}

/** Parses command-line flags (`--name value`, `--name=value`, `--flag`, `--no-flag`). */
export function parseFlags(argv: string[]): Layer {
  const layer: Layer = new Map();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument "${arg}" (flags start with --)`);
    let name = arg.slice(2);
    let value: string | undefined;
    const eq = name.indexOf('=');
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    let spec = byName.get(name);
    const source = `flag --${name}`;
    if (
      !spec &&
      name.startsWith('no-') &&
      byName.get(name.slice(3))?.kind === 'bool' &&
      value === undefined
    ) {
      spec = byName.get(name.slice(3))!;
      layer.set(spec.name, { value: false, source });
      continue;
    }
    if (!spec) throw new ConfigError(`unknown flag --${name} (see kernmesh run --help)`);
    if (spec.kind === 'bool') {
      layer.set(spec.name, { value: value === undefined ? true : parseBool(value, source), source });
      continue;
    }
    if (value === undefined) {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('--')) {
        value = next;
        i++;
      } else if (spec.bare !== undefined) {
        value = spec.bare;
      } else {
        throw new ConfigError('needs a value', source);
      }
    }
    if (spec.kind === 'list') {
      const prev = layer.get(spec.name)?.value as string[] | undefined;
      layer.set(spec.name, { value: [...(prev ?? []), value], source });
    } else if (spec.kind === 'map') {
      const prev = layer.get(spec.name)?.value as Record<string, string> | undefined;
      const [k, v] = parsePair(value, source);
      layer.set(spec.name, { value: { ...(prev ?? {}), [k]: v }, source });
    } else {
      layer.set(spec.name, { value, source });
    }
  }
  return layer;
}

/** Reads KERNMESH_* variables (lists comma-separated, maps as k=v,k=v). */
export function parseEnv(env: NodeJS.ProcessEnv): Layer {
  const layer: Layer = new Map();
  for (const spec of OPTIONS) {
    const name = envName(spec.name);
    const text = env[name];
    if (text === undefined || text === '') continue;
    const source = `environment ${name}`;
    layer.set(spec.name, { value: fromText(spec, text, source), source });
  }
  return layer;
}

function fromText(spec: OptionSpec, text: string, source: string): RawValue {
  switch (spec.kind) {
    case 'bool':
      return parseBool(text, source);
    case 'list':
      return text
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
    case 'map':
      return Object.fromEntries(
        text
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
          .map((p) => parsePair(p, source)),
      );
    default:
      return text;
  }
}

/** Reads the YAML config file; keys are the flag names. Errors carry the file and line. */
export function parseConfigFile(path: string): Layer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file: ${(e as Error).message}`, `config file ${path}`);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  const at = (node: YamlNode | null | undefined): string => {
    const offset = node?.range?.[0];
    return offset === undefined
      ? `config file ${path}`
      : `config file ${path} line ${lines.linePos(offset).line}`;
  };
  if (doc.errors.length) {
    const err = doc.errors[0]!;
    const line = err.linePos?.[0]?.line;
    throw new ConfigError(
      `not valid YAML: ${err.message.split('\n')[0]}`,
      `config file ${path}${line ? ` line ${line}` : ''}`,
    );
  }
  const layer: Layer = new Map();
  if (doc.contents === null) return layer;
  if (!isMap(doc.contents))
    throw new ConfigError('must be a mapping of option names to values', at(doc.contents));
  for (const pair of doc.contents.items) {
    const keyNode = pair.key as YamlNode;
    const key = isScalar(keyNode) ? String(keyNode.value) : '';
    const spec = byName.get(key);
    if (!spec || spec.name === 'config')
      throw new ConfigError(`unknown key "${key}" (keys are the flag names of kernmesh run)`, at(keyNode));
    const valueNode = pair.value as YamlNode | null;
    const source = `${at(valueNode ?? keyNode)} key ${key}`;
    layer.set(spec.name, { value: fromYaml(spec, valueNode, source), source });
  }
  return layer;
}

function fromYaml(spec: OptionSpec, node: YamlNode | null, source: string): RawValue {
  const scalarText = (n: unknown): string => {
    if (!isScalar(n) || n.value === null || typeof n.value === 'object')
      throw new ConfigError('expected a single value', source);
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion -- value is unknown to yaml's types
    return String(n.value as string | number | boolean);
  };
  switch (spec.kind) {
    case 'bool': {
      if (isScalar(node) && typeof node.value === 'boolean') return node.value;
      return parseBool(scalarText(node), source);
    }
    case 'list':
      if (isSeq(node)) return node.items.map(scalarText);
      return fromText(spec, scalarText(node), source);
    case 'map':
      if (isMap(node))
        return Object.fromEntries(node.items.map((p) => [scalarText(p.key), scalarText(p.value)]));
      throw new ConfigError('expected a mapping of names to values', source);
    default:
      return scalarText(node);
  }
}

/** HOST:PORT or [IPv6]:PORT; port 0 (any free port) only where anyPort says so. */
function parseHostPort(text: string, source: string, anyPort = false): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !((port > 0 || (anyPort && port === 0)) && port < 65536))
    throw new ConfigError(`"${text}" is not HOST:PORT`, source);
  return { host: (m[1] ?? m[2])!, port };
}

function readable(path: string, source: string, what: string): void {
  try {
    accessSync(path, constants.R_OK);
  } catch (e) {
    throw new ConfigError(
      `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
      source,
    );
  }
}

const LOG_LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

export interface LoadOptions {
  /** Check files and cgroups on disk (the run command does; unit tests of parsing may not). */
  checkFiles?: boolean;
  /** Require an xDS source (run does; status/maps do not). */
  requireSource?: boolean;
}

/**
 * Builds the configuration from flags, environment and the config file (named by --config or
 * KERNMESH_CONFIG), and validates it. Throws ConfigError naming the offending input.
 */
export function loadConfig(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
  opts: LoadOptions = {},
): AgentConfig {
  const { checkFiles = true, requireSource = true } = opts;
  const flags = parseFlags(argv);
  const envLayer = parseEnv(env);
  const configFile = (flags.get('config') ?? envLayer.get('config'))?.value as string | undefined;
  const fileLayer = configFile ? parseConfigFile(configFile) : new Map<string, Sourced>();

  const get = (name: string): Sourced | undefined => {
    const found = flags.get(name) ?? envLayer.get(name) ?? fileLayer.get(name);
    if (found) return found;
    for (const v of byName.get(name)?.fallbackEnv ?? []) {
      const text = env[v];
      if (text)
        return { value: fromText(byName.get(name)!, text, `environment ${v}`), source: `environment ${v}` };
    }
    return undefined;
  };
  const str = (name: string): string | undefined => get(name)?.value as string | undefined;
  const src = (name: string): string => get(name)?.source ?? `--${name}`;

  const xdsAddressText = str('xds-address');
  const xdsFile = str('xds-file');
  if (xdsAddressText && xdsFile)
    throw new ConfigError(
      `--xds-address and --xds-file are exclusive (the second is set by ${src('xds-file')})`,
      src('xds-address'),
    );
  if (requireSource && !xdsAddressText && !xdsFile)
    throw new ConfigError('no xDS source: give --xds-address HOST:PORT (istiod) or --xds-file PATH');
  const xdsAddress = xdsAddressText ? parseHostPort(xdsAddressText, src('xds-address')) : undefined;

  const xdsProtocol = str('xds-protocol') ?? DEFAULTS.xdsProtocol;
  if (xdsProtocol !== 'delta' && xdsProtocol !== 'sotw')
    throw new ConfigError(`"${xdsProtocol}" is not an xDS protocol (delta or sotw)`, src('xds-protocol'));

  const tls = (get('tls')?.value as boolean | undefined) ?? xdsAddress?.port === 15012;
  const rootCa = str('root-ca') ?? DEFAULTS.rootCa;
  const tokenFile = str('token-file');

  const logLevel = (str('log-level') ?? DEFAULTS.logLevel) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel))
    throw new ConfigError(`"${logLevel}" is not a log level (${LOG_LEVELS.join(', ')})`, src('log-level'));

  const admin = parseHostPort(str('admin') ?? DEFAULTS.admin, src('admin'), true);
  const probesText = str('probes');
  const probes = probesText !== undefined ? parseHostPort(probesText, src('probes'), true) : undefined;
  if (probes && probes.port !== 0 && probes.port === admin.port && probes.host === admin.host)
    throw new ConfigError("the probe listener cannot share the admin endpoint's address", src('probes'));

  const mapSizes: Record<string, number> = {};
  for (const [k, v] of Object.entries((get('map-size')?.value as Record<string, string> | undefined) ?? {})) {
    const n = Number(v);
    if (!(k in DEFAULT_CAPACITY))
      throw new ConfigError(
        `"${k}" is not a capacity name (${Object.keys(DEFAULT_CAPACITY).join(', ')})`,
        src('map-size'),
      );
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 31)
      throw new ConfigError(`map size for ${k} "${v}" is not a positive integer`, src('map-size'));
    mapSizes[k] = n;
  }

  const drainText = str('drain-removed-after');
  let drainRemovedAfterMs: number | undefined;
  if (drainText !== undefined) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(drainText);
    if (!m)
      throw new ConfigError(
        `"${drainText}" is not a duration (such as 500ms, 30s or 5m)`,
        src('drain-removed-after'),
      );
    drainRemovedAfterMs = Math.round(Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : 60_000));
  }

  const instanceIps = (get('instance-ip')?.value as string[] | undefined) ?? [];
  for (const ip of instanceIps)
    if (!isIP(ip)) throw new ConfigError(`"${ip}" is not an IP address`, src('instance-ip'));

  const cgroups = (get('cgroup')?.value as string[] | undefined) ?? [];
  const accelRules = str('accel-rules');
  const accelerate = (get('accelerate')?.value as boolean | undefined) ?? accelRules !== undefined;

  const controlText = str('control-socket');
  const controlSocket = controlText === 'none' ? undefined : (controlText ?? DEFAULTS.controlSocket);
  if (controlSocket !== undefined && !controlSocket.startsWith('/'))
    throw new ConfigError(`"${controlSocket}" is not an absolute path (or none)`, src('control-socket'));

  let traces: AgentConfig['traces'];
  const traceEndpoint = str('trace-endpoint');
  if (traceEndpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(traceEndpoint);
    } catch {
      /* reported below */
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:'))
      throw new ConfigError(`"${traceEndpoint}" is not an http(s) URL`, src('trace-endpoint'));
    const samplingText = str('trace-sampling');
    const sampling = samplingText === undefined ? DEFAULTS.traceSampling : Number(samplingText);
    if (!(sampling >= 0 && sampling <= 1))
      throw new ConfigError(`"${samplingText}" is not a fraction from 0 to 1`, src('trace-sampling'));
    const queueText = get('trace-queue')?.value as string | undefined;
    const queueSize = queueText === undefined ? DEFAULTS.traceQueue : Number(queueText);
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > 1 << 20)
      throw new ConfigError(`"${queueText}" is not a queue size (1 to 1048576)`, src('trace-queue'));
    traces = { endpoint: traceEndpoint, sampling, queueSize };
  } else if (get('trace-sampling') || get('trace-queue')) {
    throw new ConfigError(
      'tracing is off without --trace-endpoint',
      src(get('trace-sampling') ? 'trace-sampling' : 'trace-queue'),
    );
  }

  const extraMetadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(env))
    if (k.startsWith('ISTIO_META_') && v !== undefined) extraMetadata[k.slice(11)] = v;

  const kubernetes = (get('kubernetes')?.value as boolean | undefined) ?? false;
  const kubeletCgroupRoot = str('kubelet-cgroup-root');
  if (kubernetes && !str('node-name'))
    throw new ConfigError('--kubernetes needs the node whose pods it serves: --node-name or NODE_NAME');
  const authorization = (get('authorization')?.value as boolean | undefined) ?? false;
  // inbound authorization is per pod network namespace: without pods there is nothing to attach to
  if (authorization && !kubernetes)
    throw new ConfigError(
      '--authorization is enforced per enrolled pod: it needs --kubernetes',
      src('authorization'),
    );
  const podNamespace = str('pod-namespace') ?? 'default';
  const config: AgentConfig = {
    xdsAddress,
    xdsFile,
    xdsProtocol,
    tls,
    rootCa,
    tokenFile,
    serverName: str('server-name') ?? DEFAULTS.serverName,
    identity: {
      podName: str('pod-name') ?? `kernmesh-${process.env.HOSTNAME ?? 'node'}`,
      podNamespace,
      instanceIps,
      serviceAccount: str('service-account') ?? 'kernmesh',
      nodeName: str('node-name') ?? process.env.HOSTNAME ?? 'localhost',
      clusterId: str('cluster-id') ?? DEFAULTS.clusterId,
      meshId: str('mesh-id') ?? DEFAULTS.meshId,
      istioVersion: str('istio-version') ?? DEFAULTS.istioVersion,
      trustDomain: str('trust-domain') ?? DEFAULTS.trustDomain,
      locality: str('locality'),
      labels: (get('label')?.value as Record<string, string> | undefined) ?? {},
      extraMetadata,
    },
    cgroups,
    kubernetes,
    kubeletCgroupRoot,
    bpffs: str('bpffs') ?? DEFAULTS.bpffs,
    admin,
    ...(probes ? { probes } : {}),
    waypoints: (get('waypoints')?.value as boolean | undefined) ?? false,
    authorization,
    accelerate,
    accelRules,
    accessLog: str('access-log'),
    logLevel,
    mapSizes,
    configFile,
    controlSocket,
    controlSocketExplicit: controlText !== undefined,
    traces,
    ...(drainRemovedAfterMs !== undefined ? { drainRemovedAfterMs } : {}),
    ...((str('xds-state-dir') ?? DEFAULTS.xdsStateDir) !== 'none'
      ? { xdsStateDir: str('xds-state-dir') ?? DEFAULTS.xdsStateDir }
      : {}),
  };

  if (checkFiles) {
    if (xdsFile) readable(xdsFile, src('xds-file'), 'xDS file');
    if (tls && xdsAddress) readable(rootCa, src('root-ca'), 'root certificate');
    if (tokenFile) readable(tokenFile, src('token-file'), 'token file');
    if (accelRules) readable(accelRules, src('accel-rules'), 'acceleration rules');
    if (requireSource && cgroups.length === 0 && !kubernetes)
      throw new ConfigError(
        'no cgroup to serve: give --cgroup PATH (a cgroup v2 directory) at least once, or --kubernetes',
      );
    for (const [cg, from] of [
      ...cgroups.map((c) => [c, 'cgroup']),
      ...(kubeletCgroupRoot ? [[kubeletCgroupRoot, 'kubelet-cgroup-root']] : []),
    ] as [string, string][]) {
      let isDir = false;
      try {
        isDir = statSync(cg).isDirectory() && statSync(join(cg, 'cgroup.procs')).isFile();
      } catch {
        /* reported below */
      }
      if (!isDir) throw new ConfigError(`${cg} is not a cgroup v2 directory`, src(from));
    }
  }
  return config;
}

/** The help text of `kernmesh run`, generated from the option table. */
export function optionsHelp(): string {
  return OPTIONS.map((o) => {
    const arg = o.kind === 'bool' ? '' : o.kind === 'map' ? ' K=V' : ' VALUE';
    return `  --${(o.name + arg).padEnd(26)} ${o.help}  [${envName(o.name)}]`;
  }).join('\n');
}
