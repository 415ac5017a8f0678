// deploy/kubernetes rendered offline with Debian's kubectl (kustomize), every object validated against
// Kubernetes' OpenAPI schemas (kubernetes-models' validators, Kubernetes 1.33; unknown fields against
// client-node's models, generated from the same OpenAPI), and the manifest checked against what
// docs/kubernetes.md says: capabilities, mounts, RBAC, probes, the config the agent reads. A kernel
// test then runs the agent with exactly the manifest's capabilities and nothing else.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';

import { loadConfig } from '../src/config/config.js';
import { PROBE_ROUTES } from '../src/admin/server.js';
import { REPO_ROOT, adminAddress, stopProcess, type KernmeshProcess } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  outbound,
  passthroughCluster,
  tcpListener,
} from './support/control-plane-istiod.js';
import { KubeApiServer } from './support/k8s-api.js';
import { SimNode } from './support/k8s-node.js';
import { kernelTest } from './support/kernel.js';
import { startBackend } from './support/net.js';
import { eventually } from './support/wait.js';
import { TYPE } from '../src/xds/types.js';
import { createInterface } from 'node:readline';

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } } & Record<
  string,
  unknown
>;

/** Debian's kubectl: installed, or unpacked under .tools/ by scripts/setup.sh when another package owns /usr/bin/kubectl. */
function kubectl(): string {
  const unpacked = join(REPO_ROOT, '.tools/kubernetes-client/usr/bin/kubectl');
  if (existsSync(unpacked)) return unpacked;
  const owner = execFileSync('dpkg-query', ['-S', '/usr/bin/kubectl'], { encoding: 'utf8' }).split(':')[0];
  assert.equal(owner, 'kubernetes-client', "Debian's kubernetes-client is missing: run scripts/setup.sh");
  return '/usr/bin/kubectl';
}

function render(dir: string): Obj[] {
  const out = execFileSync(kubectl(), ['kustomize', join(REPO_ROOT, dir)], { encoding: 'utf8' });
  return parseAllDocuments(out).map((d) => d.toJS() as Obj);
}

/** kubernetes-models' validator for the object's group/version/kind (compiled from Kubernetes' OpenAPI). */
async function validateSchema(o: Obj): Promise<void> {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
  const mod = `kubernetes-models/${group ? `${group}/` : ''}${version}/${o.kind}`;
  const Model = ((await import(mod)) as Record<string, new (x: unknown) => { validate(): void }>)[o.kind]!;
  new Model(o).validate();
}

/** Fields the OpenAPI does not define (a typo the schema's open objects would let through). */
function unknownFields(value: unknown, type: string, path: string): string[] {
  if (value === null || value === undefined) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array) return (value as unknown[]).flatMap((v, i) => unknownFields(v, array[1]!, `${path}[${i}]`));
  const model = (
    k8s as unknown as Record<string, { getAttributeTypeMap?: () => { baseName: string; type: string }[] }>
  )[type];
  if (!model?.getAttributeTypeMap) return []; // scalars, maps, IntOrString, quantities
  const attrs = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) =>
    attrs.has(k) ? unknownFields(v, attrs.get(k)!, `${path}.${k}`) : [`${path}.${k}`],
  );
}

function section(doc: string, heading: string): string {
  const start = doc.indexOf(`\n## ${heading}`);
  assert.ok(start >= 0, `docs/kubernetes.md has a "${heading}" section`);
  const end = doc.indexOf('\n## ', start + 1);
  return doc.slice(start, end < 0 ? undefined : end);
}

const docs = (): string => readFileSync(join(REPO_ROOT, 'docs/kubernetes.md'), 'utf8');
const byKind = (objs: Obj[], kind: string): Obj => objs.find((o) => o.kind === kind)!;

interface PodSpecLike {
  serviceAccountName: string;
  containers: {
    name: string;
    args: string[];
    env: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
    ports: { containerPort: number }[];
    readinessProbe: { httpGet: { path: string; port: number } };
    livenessProbe: { httpGet: { path: string; port: number } };
    resources: { requests?: Record<string, string>; limits?: Record<string, string> };
    securityContext: { capabilities: { add: string[]; drop: string[] }; privileged?: boolean };
    volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
  }[];
  volumes: ({ name: string } & Record<string, unknown>)[];
  tolerations: unknown[];
}
function agentPod(objs: Obj[]): PodSpecLike {
  return (byKind(objs, 'DaemonSet').spec as { template: { spec: PodSpecLike } }).template.spec;
}

void test('the kustomizations render offline and every object is valid for Kubernetes 1.33, with no unknown field', async () => {
  for (const dir of [
    'deploy/kubernetes/base',
    'deploy/kubernetes/authorization',
    'deploy/kubernetes/cleanup',
  ]) {
    const objs = render(dir);
    assert.ok(objs.length > 0, dir);
    for (const o of objs) {
      await assert.doesNotReject(validateSchema(o), `${dir}: ${o.kind}/${o.metadata.name}`);
      const typeName = `${o.apiVersion.split('/').pop()!.toUpperCase().slice(0, 1)}${o.apiVersion.split('/').pop()!.slice(1)}${o.kind}`;
      assert.deepEqual(
        unknownFields(o, typeName, `${o.kind}/${o.metadata.name}`),
        [],
        `${dir}: fields unknown to Kubernetes`,
      );
    }
  }
  assert.deepEqual(
    render('deploy/kubernetes/base')
      .map((o) => o.kind)
      .sort(),
    ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Namespace', 'ServiceAccount'],
  );
});

void test('the schema check catches what it should (a bad manifest fails)', async () => {
  const ds = structuredClone(byKind(render('deploy/kubernetes/base'), 'DaemonSet'));
  (
    ds.spec as { template: { spec: { containers: { ports: unknown[] }[] } } }
  ).template.spec.containers[0]!.ports = [{ containerPort: 'fifteen-thousand' }];
  await assert.rejects(validateSchema(ds));
  const typo = structuredClone(byKind(render('deploy/kubernetes/base'), 'DaemonSet'));
  (typo.spec as { template: { spec: Record<string, unknown> } }).template.spec.tolerration = [];
  assert.deepEqual(unknownFields(typo, 'V1DaemonSet', 'ds'), ['ds.spec.template.spec.tolerration']);
});

void test('capabilities and mounts in the DaemonSet are exactly those docs/kubernetes.md names and explains', () => {
  const objs = render('deploy/kubernetes/base');
  const pod = agentPod(objs);
  const c = pod.containers[0]!;
  const documentedCaps = [...section(docs(), 'Capabilities').matchAll(/^\| `CAP_(\w+)` \|/gm)].map(
    (m) => m[1],
  );
  assert.deepEqual([...c.securityContext.capabilities.add].sort(), [...documentedCaps].sort());
  assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
  assert.ok(!c.securityContext.privileged);
  assert.ok(!c.securityContext.capabilities.add.includes('SYS_ADMIN'), 'CAP_SYS_ADMIN is not needed');
  // | `volume` | source | `mount path` | why |
  const documented = [...section(docs(), 'Mounts').matchAll(/^\| `([\w-]+)` \| (.+?) \| `([^`]+)` \|/gm)].map(
    (m) => ({
      name: m[1]!,
      source: m[2]!,
      mountPath: m[3]!,
    }),
  );
  const actual = c.volumeMounts.map((m) => {
    const v = pod.volumes.find((x) => x.name === m.name)! as Record<string, unknown>;
    const hostPath = (v.hostPath as { path?: string } | undefined)?.path;
    const configMap = (v.configMap as { name?: string } | undefined)?.name;
    const token = (v.projected as { sources: { serviceAccountToken?: { audience: string } }[] } | undefined)
      ?.sources[0]?.serviceAccountToken?.audience;
    const source = hostPath
      ? `hostPath \`${hostPath}\``
      : configMap
        ? `ConfigMap \`${configMap}\``
        : token
          ? `projected token, audience \`${token}\``
          : 'emptyDir';
    return { name: m.name, source, mountPath: m.mountPath };
  });
  assert.deepEqual(
    actual.sort((a, b) => a.name.localeCompare(b.name)),
    documented.sort((a, b) => a.name.localeCompare(b.name)),
  );
});

void test('the authorization overlay adds exactly what docs/kubernetes.md says --authorization needs, and turns it on', () => {
  const base = agentPod(render('deploy/kubernetes/base'));
  const pod = agentPod(render('deploy/kubernetes/authorization')) as PodSpecLike & { hostPID?: boolean };
  const c = pod.containers[0]!;
  // the "L4 authorization" table names each addition: `hostPID: true` and the capabilities
  const needs = section(docs(), 'L4 authorization');
  const extraCaps = [...needs.matchAll(/^\| `CAP_(\w+)` \|/gm)].map((m) => m[1]!);
  assert.ok(needs.includes('| `hostPID: true` |'));
  assert.equal(pod.hostPID, true);
  assert.deepEqual(
    [...c.securityContext.capabilities.add].sort(),
    [...base.containers[0]!.securityContext.capabilities.add, ...extraCaps].sort(),
  );
  assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
  assert.ok(!c.securityContext.privileged);
  // the rest of the pod is the base's: only the flag and the privileges above differ
  assert.deepEqual(c.volumeMounts, base.containers[0]!.volumeMounts);
  const flag = c.env.filter((e) => !base.containers[0]!.env.some((b) => b.name === e.name));
  assert.deepEqual(flag, [{ name: 'KERNMESH_AUTHORIZATION', value: 'true' }]);
  const cm = byKind(render('deploy/kubernetes/authorization'), 'ConfigMap') as Obj & {
    data: Record<string, string>;
  };
  const dir = mkdtempSync(join(tmpdir(), 'km-cm-'));
  try {
    writeFileSync(join(dir, 'config.yaml'), cm.data['config.yaml']!);
    const config = loadConfig(
      ['--config', join(dir, 'config.yaml')],
      {
        POD_NAME: 'kernmesh-x',
        POD_NAMESPACE: 'kernmesh-system',
        NODE_NAME: 'node-1',
        INSTANCE_IP: '10.0.0.9',
        // the container's literal values, as the kubelet sets them
        ...Object.fromEntries(c.env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value])),
      },
      { checkFiles: false },
    );
    assert.equal(config.authorization, true);
    assert.equal(config.kubernetes, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('RBAC is read-only on pods, namespaces and one node; the agent has the identity, probes and config it needs', () => {
  const objs = render('deploy/kubernetes/base');
  const role = byKind(objs, 'ClusterRole') as Obj & {
    rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
  };
  assert.deepEqual(role.rules, [
    { apiGroups: [''], resources: ['pods', 'namespaces'], verbs: ['get', 'list', 'watch'] },
    { apiGroups: [''], resources: ['nodes'], verbs: ['get'] },
  ]);
  const binding = byKind(objs, 'ClusterRoleBinding') as Obj & {
    subjects: { name: string; namespace: string }[];
  };
  const pod = agentPod(objs);
  assert.deepEqual(binding.subjects, [
    { kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: 'kernmesh-system' },
  ]);
  const c = pod.containers[0]!;
  const env = Object.fromEntries(c.env.map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
  assert.deepEqual(env, {
    POD_NAME: 'metadata.name',
    POD_NAMESPACE: 'metadata.namespace',
    NODE_NAME: 'spec.nodeName',
    INSTANCE_IP: 'status.podIP',
    SERVICE_ACCOUNT: 'spec.serviceAccountName',
  });
  assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
  const ds = byKind(objs, 'DaemonSet') as Obj & {
    spec: { updateStrategy: unknown; template: { metadata: { annotations: Record<string, string> } } };
  };
  assert.deepEqual(ds.spec.updateStrategy, {
    type: 'RollingUpdate',
    rollingUpdate: { maxUnavailable: 1, maxSurge: 0 },
  });
  assert.ok(c.resources.requests?.cpu && c.resources.requests.memory && c.resources.limits?.memory);

  // the config file the agent reads: valid for `kernmesh run`, its paths inside the pod's mounts
  const cm = byKind(objs, 'ConfigMap') as Obj & { data: Record<string, string> };
  assert.deepEqual(c.args, ['run', '--config', '/etc/kernmesh/config.yaml']);
  const dir = mkdtempSync(join(tmpdir(), 'km-cm-'));
  try {
    writeFileSync(join(dir, 'config.yaml'), cm.data['config.yaml']!);
    const config = loadConfig(
      ['--config', join(dir, 'config.yaml')],
      {
        POD_NAME: 'kernmesh-x',
        POD_NAMESPACE: 'kernmesh-system',
        NODE_NAME: 'node-1',
        INSTANCE_IP: '10.0.0.9',
      },
      { checkFiles: false },
    );
    assert.equal(config.kubernetes, true);
    assert.equal(config.tls, true);
    const mountOf = (p: string): string | undefined =>
      c.volumeMounts.find((m) => p === m.mountPath || p.startsWith(`${m.mountPath}/`))?.name;
    assert.equal(mountOf(config.tokenFile!), 'istio-token');
    assert.equal(mountOf(config.rootCa), 'istiod-ca-cert');
    assert.equal(mountOf(config.bpffs), 'bpffs');
    assert.equal(mountOf('/etc/kernmesh/config.yaml'), 'config');
    // the root filesystem is read-only: the control socket needs a writable mount of its own
    assert.equal(mountOf(config.controlSocket!), 'run');
    // The admin endpoint (the whole config) stays on the pod's loopback; the kubelet and Prometheus
    // reach only the read-only probe listener, on the routes it serves.
    assert.equal(config.admin.host, '127.0.0.1');
    assert.equal(config.probes?.host, '0.0.0.0');
    const port = config.probes.port;
    assert.notEqual(port, config.admin.port);
    assert.deepEqual(
      [
        c.ports.map((p) => p.containerPort),
        c.readinessProbe.httpGet.port,
        c.livenessProbe.httpGet.port,
        Number(ds.spec.template.metadata.annotations['prometheus.io/port']),
      ],
      [[port], port, port, port],
    );
    for (const path of [
      c.readinessProbe.httpGet.path,
      c.livenessProbe.httpGet.path,
      ds.spec.template.metadata.annotations['prometheus.io/path'],
    ])
      assert.ok(PROBE_ROUTES.includes(path ?? ''), `${path} is served by the probe listener`);
    assert.equal(c.readinessProbe.httpGet.path, '/healthz/ready');
    assert.equal(ds.spec.template.metadata.annotations['prometheus.io/path'], '/stats/prometheus');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('the agent enrolls and routes a pod with only the DaemonSet’s capabilities', async (t, env) => {
  const caps = agentPod(render('deploy/kubernetes/base')).containers[0]!.securityContext.capabilities.add.map(
    (c) => c.toLowerCase(),
  );
  const api = await new KubeApiServer().start();
  env.defer(() => api.close());
  const dir = mkdtempSync(join(tmpdir(), 'km-kube-'));
  env.defer(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = api.writeKubeconfig(dir);
  api.namespace('shop', { 'istio.io/dataplane-mode': 'kernmesh' });
  api.node('node-1');
  const cp = await TestControlPlane.start();
  env.defer(() => cp.stop());
  const backend = await startBackend('127.94.0.1');
  env.defer(() => backend.close());
  const VIP = '127.100.94.1';
  const cluster = outbound('caps.shop.svc.cluster.local', 8084);
  cp.setResources(TYPE.cluster, [passthroughCluster, edsCluster(cluster)]);
  cp.setResources(TYPE.endpoint, [assignment(cluster, [{ address: backend.address, port: backend.port }])]);
  cp.setResources(TYPE.listener, [tcpListener(VIP, 8084, cluster)]);
  const node = new SimNode(env, 'node-1', 'systemd', api);
  const pod = node.addPod({ namespace: 'shop', name: 'web' });

  // root, as in the DaemonSet, with a bounding set of the manifest's capabilities only
  const child = spawn(
    'setpriv',
    [
      '--bounding-set',
      `-all,${caps.map((c) => `+${c}`).join(',')}`,
      '--inh-caps',
      '-all',
      process.execPath,
      '--import',
      'tsx',
      join(REPO_ROOT, 'src/cli/main.ts'),
      'run',
      '--kubernetes',
      '--node-name',
      'node-1',
      '--kubelet-cgroup-root',
      node.kubeletRoot,
      '--xds-address',
      cp.address,
      '--bpffs',
      node.pinDir,
      '--admin',
      '127.0.0.1:0',
      '--probes',
      '127.0.0.1:0',
    ],
    { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KUBECONFIG: kubeconfig } },
  ) as KernmeshProcess;
  env.defer(async () => void (await stopProcess(child, 'SIGKILL')));
  child.lines = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stderrText = () => stderr;
  createInterface({ input: child.stdout! }).on('line', (l) => {
    try {
      child.lines.push(JSON.parse(l) as never);
    } catch {
      child.lines.push({ text: l });
    }
  });
  const admin = await adminAddress(child);
  await eventually('/ready', async () => (await getJson(admin, '/ready')).status === 200);
  // The probe listener answers the manifest's probes and scrape path, and shows no config.
  const started = child.lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith('kernmesh started'));
  const probes = (typeof started?.probes === 'string' ? started.probes : '').replace('http://', '');
  for (const path of ['/healthz/ready', '/healthz', '/stats/prometheus'])
    assert.equal((await fetch(`http://${probes}${path}`)).status, 200, `probes ${path}`);
  for (const path of ['/config_dump', '/debug/xds', '/clusters', '/server_info'])
    assert.equal((await fetch(`http://${probes}${path}`)).status, 404, `probes ${path}`);
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const bounding = BigInt(`0x${/^CapBnd:\s+([0-9a-f]+)/m.exec(status)![1]}`);
  // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39
  assert.equal(
    bounding,
    (1n << 12n) | (1n << 38n) | (1n << 39n),
    'the agent ran with those three capabilities only',
  );
  const r = await pod.client.connect({ host: VIP, port: 8084, readId: true });
  assert.equal(r.backend, backend.id, `routed: ${r.err ?? ''}`);
  t.diagnostic(
    `agent with ${caps.join(', ')}: enrolled and routed; BPF stats without CAP_SYS_ADMIN: ${child.lines.some((l) => typeof l.msg === 'string' && l.msg.includes('statistics unavailable')) ? 'off (as documented)' : 'on'}`,
  );
  assert.equal(await stopProcess(child), 0);
});
