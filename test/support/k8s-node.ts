// A simulated Kubernetes node for kernel tests: a kubelet cgroup root made of real cgroups (systemd or
// cgroupfs driver layout) inside the test's own cgroup, pods as pod cgroups holding a container
// cgroup with a real client process, and `kernmesh run --kubernetes` serving the node.
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

import type { JsonObject } from '../../src/xds/types.js';
import { adminAddress, startKernmesh, stopProcess, type KernmeshProcess } from './cli.js';
import type { ApiEvent, KubeApiServer, PodSpec } from './k8s-api.js';
import { removeCgroup, type KernelEnv } from './kernel.js';
import { Client } from './net.js';
import { eventually } from './wait.js';

export type Driver = 'systemd' | 'cgroupfs';

export interface SimPod {
  spec: PodSpec & { uid: string };
  /** The pod cgroup (the kubelet's) and the container cgroup the process runs in. */
  cgroup: string;
  container: string;
  client: Client;
  /** The API's ADDED event, when addPod told the API. */
  added?: ApiEvent;
}

export class SimNode {
  readonly kubeletRoot: string;
  readonly pinDir: string;
  agent?: KernmeshProcess;
  admin?: string;

  constructor(
    private readonly env: KernelEnv,
    readonly name: string,
    readonly driver: Driver,
    private readonly api: KubeApiServer,
    readonly netns?: string,
  ) {
    // a cgroup the test created stands for the node's cgroup2 mount root
    this.kubeletRoot = env.newCgroup(`node-${name}`);
    mkdirSync(join(this.kubeletRoot, driver === 'systemd' ? 'kubepods.slice' : 'kubepods'));
    this.pinDir = join(env.pinDir, name);
    // runs after the pods' clients have exited (cleanup is last-in, first-out)
    env.defer(() => removeTree(this.kubeletRoot));
  }

  /** Where the kubelet of this driver puts a pod of this QoS class. */
  podCgroupPath(uid: string, qos: NonNullable<PodSpec['qosClass']>): string {
    const u = uid.replace(/-/g, '_');
    if (this.driver === 'systemd') {
      const base = join(this.kubeletRoot, 'kubepods.slice');
      if (qos === 'Guaranteed') return join(base, `kubepods-pod${u}.slice`);
      const q = qos.toLowerCase();
      return join(base, `kubepods-${q}.slice`, `kubepods-${q}-pod${u}.slice`);
    }
    const base = join(this.kubeletRoot, 'kubepods');
    return qos === 'Guaranteed' ? join(base, `pod${uid}`) : join(base, qos.toLowerCase(), `pod${uid}`);
  }

  /** Makes the pod's cgroups and starts its process (the kubelet's part), without telling the API. */
  startPod(p: Omit<PodSpec, 'nodeName'>): SimPod {
    const spec = {
      ...p,
      nodeName: this.name,
      uid: p.uid ?? randomUUID(),
      qosClass: p.qosClass ?? 'BestEffort',
    };
    const cgroup = this.podCgroupPath(spec.uid, spec.qosClass);
    const container = join(
      cgroup,
      this.driver === 'systemd' ? `cri-containerd-${spec.name}.scope` : spec.name,
    );
    mkdirSync(container, { recursive: true });
    const client = new Client(container, this.netns);
    this.env.defer(() => client.exit());
    return { spec, cgroup, container, client };
  }

  /** startPod, then the API learns of it (an ADDED event on this node's watch). */
  addPod(p: Omit<PodSpec, 'nodeName'>): SimPod {
    const pod = this.startPod(p);
    return { ...pod, added: this.api.pod(pod.spec) };
  }

  async startAgent(xdsAddress: string, extra: string[] = []): Promise<KernmeshProcess> {
    const agent = startKernmesh([
      'run',
      '--kubernetes',
      '--node-name',
      this.name,
      '--kubelet-cgroup-root',
      this.kubeletRoot,
      '--xds-address',
      xdsAddress,
      '--bpffs',
      this.pinDir,
      '--admin',
      '127.0.0.1:0',
      '--pod-name',
      `kernmesh-${this.name}`,
      '--pod-namespace',
      'kernmesh-system',
      '--instance-ip',
      '10.0.0.1',
      ...extra,
    ]);
    this.env.defer(async () => void (await stopProcess(agent, 'SIGKILL')));
    this.agent = agent;
    this.admin = await adminAddress(agent);
    return agent;
  }

  /** The log line the agent wrote for this pod with this message (waits for it). */
  async logFor(pod: SimPod, msg: string, after = 0): Promise<JsonObject> {
    let line: JsonObject | undefined;
    await eventually(`${this.name}: "${msg}" for ${pod.spec.name}`, () => {
      line = this.agent!.lines.slice(after).find((l) => l.msg === msg && l.uid === pod.spec.uid);
      return line !== undefined;
    });
    return line!;
  }

  /** The kernel's time for the pin of a pod's connect4 link: when routing took effect for it. */
  routingPinnedAt(pod: SimPod): number | undefined {
    try {
      return statSync(join(this.pinDir, `link_${statSync(pod.cgroup).ino}_km_connect4`)).ctimeMs;
    } catch {
      return undefined;
    }
  }

  /** Programs pinned for the pod's cgroup. */
  pinned(pod: SimPod): string[] {
    const ino = statSync(pod.cgroup).ino;
    return readPins(this.pinDir)
      .filter((f) => f.startsWith(`link_${ino}_`))
      .map((f) => f.slice(`link_${ino}_`.length))
      .sort();
  }
}

function readPins(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Removes a cgroup's descendants deepest first (killing what still runs there), keeping the root. */
function removeTree(root: string): void {
  for (const e of readdirSync(root, { withFileTypes: true }))
    if (e.isDirectory()) {
      removeTree(join(root, e.name));
      removeCgroup(join(root, e.name));
    }
}
