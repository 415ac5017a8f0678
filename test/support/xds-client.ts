// An XdsClient as the xDS tests drive it: one fixed sidecar identity, no logs, no jitter.
import { pino } from 'pino';

import { XdsClient, type XdsClientOptions } from '../../src/xds/client.js';
import type { ConnectionStatus } from '../../src/xds/connection.js';
import { buildNodeIdentity } from '../../src/xds/identity.js';

export const silentLogger = pino({ level: 'silent' });
export const testNode = buildNodeIdentity({
  podName: 'sleep-1',
  namespace: 'demo',
  instanceIps: ['10.1.2.3'],
  env: {},
});

/** A client of the control plane at `cp.address`; random() fixed so backoff waits are exact. */
export function makeClient(cp: { address: string }, extra: Partial<XdsClientOptions> = {}): XdsClient {
  return new XdsClient({
    address: cp.address,
    node: testNode,
    logger: silentLogger,
    random: () => 0.5,
    ...extra,
  });
}

/** Resolves with the first connection status that satisfies pred (register before causing it). */
export function connectionState(
  client: XdsClient,
  pred: (s: ConnectionStatus) => boolean,
): Promise<ConnectionStatus> {
  return new Promise((resolve) => {
    const on = (s: ConnectionStatus): void => {
      if (!pred(s)) return;
      client.off('connection', on);
      resolve(s);
    };
    client.on('connection', on);
  });
}

export function nextState(client: XdsClient, state: ConnectionStatus['state']): Promise<ConnectionStatus> {
  return connectionState(client, (s) => s.state === state);
}
