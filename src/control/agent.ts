// The control socket of a running agent: acceleration (status, on/off, rules) and capture, wired to
// the agent's kernel side, with --service and --pod resolved from what the agent programmed and knows.
import type { Logger } from 'pino';

import { CaptureManager, parseCaptureFilter, type CaptureTargets } from '../accel/capture.js';
import { accelStatus, loadAccelRules, RulesRefused } from '../accel/control.js';
import type { Accelerator } from '../accel/accel.js';
import type { DesiredState } from '../dataplane/model.js';
import { serviceIdentity } from '../telemetry/metrics.js';
import type { WorkloadIndex } from '../telemetry/workloads.js';
import { startControlServer, type ControlHandlers, type ControlServer } from './server.js';

export interface ControlDeps {
  path: string;
  /** Refuse to start when the socket is taken (the operator named it) rather than run without it. */
  required: boolean;
  accel: Accelerator | undefined;
  /** What the agent programmed last. */
  desired: () => DesiredState;
  workloads: WorkloadIndex;
  /** Hook run after each apply. */
  onApplied: (() => void)[];
  log: Logger;
}

/** --service: a kernel service name, a host (reviews.default.svc.cluster.local) or its first labels. */
export function serviceTargets(desired: () => DesiredState): CaptureTargets['service'] {
  return (name) => {
    const matches = desired().services.filter((s) => {
      const host = serviceIdentity(s.name)?.host;
      return s.name === name || host === name || (host !== undefined && host.startsWith(`${name}.`));
    });
    const hosts = [...new Set(matches.map((s) => serviceIdentity(s.name)?.host ?? s.name))];
    if (hosts.length === 0) throw new Error(`--service ${name}: no programmed service has that name or host`);
    if (hosts.length > 1) throw new Error(`--service ${name}: ambiguous, it names ${hosts.join(', ')}`);
    const endpoints = new Map<string, { address: string; port: number }>();
    for (const s of matches) {
      for (const e of s.endpoints)
        endpoints.set(`${e.address}|${e.port}`, { address: e.address, port: e.port });
      if (s.waypoint) endpoints.set(`${s.waypoint.address}|${s.waypoint.port}`, { ...s.waypoint });
    }
    return { name: hosts[0]!, endpoints: [...endpoints.values()] };
  };
}

function accelOf(accel: Accelerator | undefined): Accelerator {
  if (!accel) throw new Error('acceleration is not loaded: start the agent with --accelerate');
  return accel;
}

export async function startControl(deps: ControlDeps): Promise<ControlServer | undefined> {
  const { accel, log } = deps;
  const capture = accel
    ? new CaptureManager(
        accel,
        {
          service: serviceTargets(deps.desired),
          pod: (name) => {
            const p = deps.workloads.pod(name);
            if (!p)
              throw new Error(
                `--pod ${name}: not a pod the agent knows (it learns pods from the workload API, --waypoints, and on Kubernetes from the node's pods)`,
              );
            return { name: `${p.namespace}/${p.name ?? name}`, addresses: p.addresses };
          },
        },
        log.child({ stage: 'capture' }),
      )
    : undefined;
  if (capture) deps.onApplied.push(() => capture.refresh());
  const handlers: ControlHandlers = {
    request: (m) => {
      switch (m.op) {
        case 'accel.status':
          return { accel: accelStatus(accelOf(accel)) };
        case 'accel.set': {
          if (typeof m.enabled !== 'boolean') throw new Error('accel.set: enabled must be true or false');
          accelOf(accel).setEnabled(m.enabled);
          return { accel: accelStatus(accelOf(accel)) };
        }
        case 'accel.rules': {
          if (typeof m.text !== 'string') throw new Error('accel.rules: text must be the rules file');
          const source = typeof m.source === 'string' && m.source ? m.source : 'control socket';
          try {
            return { accel: loadAccelRules(accelOf(accel), m.text, source) };
          } catch (e) {
            if (e instanceof RulesRefused)
              log.warn({ source, errors: e.errors }, 'acceleration rules refused');
            throw e;
          }
        }
        default:
          throw new Error(`unknown request ${JSON.stringify(m.op)}`);
      }
    },
    capture: (m, sink) => {
      if (!capture) throw new Error('capture needs acceleration: start the agent with --accelerate');
      return capture.start(
        parseCaptureFilter(m),
        (raw) => sink.record(raw),
        (summary) => sink.end(summary),
      );
    },
  };
  try {
    const server = await startControlServer(deps.path, handlers, log.child({ stage: 'control' }));
    log.info({ control: deps.path }, 'control socket listening (kernmesh accel, kernmesh capture)');
    return {
      path: server.path,
      close: async () => {
        capture?.close();
        await server.close();
      },
    };
  } catch (e) {
    capture?.close();
    if (deps.required) throw e;
    log.error(
      { err: e },
      'running without a control socket: kernmesh accel and capture cannot reach this agent',
    );
    return undefined;
  }
}
