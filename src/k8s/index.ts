// The agent on a Kubernetes node: the node's locality for the xDS identity, then the informers feeding
// the enroller, which attaches the kernel's programs to enrolled pods' cgroups.
import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';

import type { AgentConfig } from '../config/config.js';
import { discoverKubeletRoot } from './cgroups.js';
import { Enroller, type PodKernel } from './enroller.js';
import { ClusterWatch, kubeConfig, nodeLocality } from './informers.js';
import { Backoff } from '../xds/backoff.js';
import type { WorkloadIdentity } from '../telemetry/workloads.js';
import { podWorkload } from './workload.js';

export { decide, DATAPLANE_MODE } from './enrollment.js';
export type { EnrollmentView } from './enroller.js';

export class KubernetesNode {
  private watch?: ClusterWatch;
  private enroller?: Enroller;
  private trustDomain = 'cluster.local';

  private constructor(
    private readonly kc: KubeConfig,
    readonly cgroupRoot: string,
    readonly locality: string | undefined,
    private readonly log: Logger,
  ) {}

  /** Finds the API (in-cluster or KUBECONFIG), the kubelet's cgroup root and the node's locality. */
  static async connect(config: AgentConfig, log: Logger): Promise<KubernetesNode> {
    const kc = kubeConfig();
    const cgroupRoot = config.kubeletCgroupRoot ?? discoverKubeletRoot();
    const nodeName = config.identity.nodeName;
    let locality = config.identity.locality;
    // Without it EDS priorities would be wrong for every pod of the node: wait for the API rather
    // than start without it (pinned state carries traffic meanwhile); a node that does not exist fails.
    const backoff = new Backoff();
    while (locality === undefined) {
      try {
        locality = (await nodeLocality(kc, nodeName)) ?? '';
      } catch (e) {
        const why = `read node ${nodeName}'s topology labels from ${kc.getCurrentCluster()?.server}: ${(e as Error).message.split('\n')[0]}`;
        if ((e as { code?: number }).code === 404)
          throw new Error(`${why} (is --node-name right?)`, { cause: e });
        const retryInMs = backoff.next();
        log.warn({ retryInMs }, `${why} (--locality skips this)`);
        await sleep(retryInMs);
      }
    }
    locality ||= undefined;
    log.info(
      { node: nodeName, cgroupRoot, locality, api: kc.getCurrentCluster()?.server },
      'Kubernetes node',
    );
    return new KubernetesNode(kc, cgroupRoot, locality, log);
  }

  withLocality(config: AgentConfig): AgentConfig {
    return this.locality === undefined
      ? config
      : { ...config, identity: { ...config.identity, locality: this.locality } };
  }

  /** Starts the informers; enrollment decisions begin once pods and namespaces are both listed. */
  start(
    config: AgentConfig,
    kernel: PodKernel & { notReady?: () => string[] | undefined; authorization?: { notReady(): string[] } },
  ): void {
    this.trustDomain = config.identity.trustDomain;
    const enroller = new Enroller({
      kernel,
      view: { pods: () => this.watch?.pods() ?? [], namespace: (n) => this.watch?.namespace(n) },
      cgroupRoot: this.cgroupRoot,
      self: { name: config.identity.podName, namespace: config.identity.podNamespace },
      log: this.log,
      keep: config.cgroups.map((c) => statSync(c).ino),
    });
    this.enroller = enroller;
    this.watch = new ClusterWatch(
      this.kc,
      config.identity.nodeName,
      {
        pod: (p, c, at) => enroller.onPod(p, c, at),
        namespace: (n, c, at) => enroller.onNamespace(n, c, at),
      },
      this.log,
    );
    // an enrolled pod whose inbound cannot be judged (--authorization) keeps the agent not ready
    kernel.notReady = () =>
      enroller.isSynced()
        ? (kernel.authorization?.notReady() ?? [])
        : ['pods and namespaces not yet listed from the Kubernetes API'];
    this.watch.start().then(
      () => {
        if (!this.watch?.synced()) return; // stopped before the first list
        enroller.sync();
        this.log.info({ pods: enroller.view().filter((p) => p.enrolled).length }, 'enrollment synced');
      },
      (e: unknown) => this.log.error({ err: e }, 'Kubernetes informers did not start'),
    );
  }

  /** The pod enrolled behind a cgroup, as Istio's labels name it (telemetry's CgroupWorkloads). */
  byCgroup(cgroupId: bigint): WorkloadIdentity | undefined {
    const uid = this.enroller?.podOfCgroup(Number(cgroupId));
    const pod = uid === undefined ? undefined : this.watch?.pods().find((p) => p.metadata?.uid === uid);
    return pod ? podWorkload(pod, this.trustDomain) : undefined;
  }

  /** A pod of this node by name or namespace/name, with its addresses (kernmesh capture --pod). */
  pod(name: string): (WorkloadIdentity & { addresses: string[] }) | undefined {
    const pod = this.watch
      ?.pods()
      .find((p) => p.metadata?.name === name || `${p.metadata?.namespace}/${p.metadata?.name}` === name);
    if (!pod) return undefined;
    const addresses = (pod.status?.podIPs ?? []).map((a) => a.ip).filter((a): a is string => !!a);
    return { ...podWorkload(pod, this.trustDomain), addresses };
  }

  enrollment(): ReturnType<Enroller['view']> {
    return this.enroller?.view() ?? [];
  }

  async stop(): Promise<void> {
    this.enroller?.stop();
    await this.watch?.stop();
  }
}
