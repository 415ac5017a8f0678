// The acceleration counters of the kernel (per-CPU, summed at scrape time) as Prometheus counters.
import { Counter, type Registry } from 'prom-client';

import type { AccelCounters } from './accel.js';
import type { AccelCounterName } from './codec.js';

const HELP: Record<AccelCounterName, [string, string]> = {
  socketsInserted: [
    'kernmesh_accel_sockets_inserted_total',
    'Local sockets put in the sockhash (two per connection).',
  ],
  messagesRedirected: [
    'kernmesh_accel_messages_redirected_total',
    'Messages handed straight to the peer socket.',
  ],
  redirectFailures: [
    'kernmesh_accel_redirect_failures_total',
    'Redirects that failed (peer gone or not inserted); the message took the TCP/IP stack.',
  ],
  bytesRedirected: ['kernmesh_accel_redirected_bytes_total', 'Bytes handed straight to the peer socket.'],
  socketsRefused: [
    'kernmesh_accel_connections_refused_total',
    'Local connections the rules kept on the stack.',
  ],
  insertFailures: [
    'kernmesh_accel_insert_failures_total',
    'Sockets the kernel would not put in the sockhash.',
  ],
  messagesFallback: [
    'kernmesh_accel_messages_fallback_total',
    'Messages of inserted sockets sent through the stack (acceleration off, or after a fallback).',
  ],
};

/** Registers one counter per kernel counter, read from `read()` at each scrape. */
export function registerAccelMetrics(registry: Registry, read: () => AccelCounters): void {
  let snapshot: AccelCounters | undefined;
  let taken = 0;
  // One map read per scrape, not one per counter.
  const current = (): AccelCounters => {
    const now = Date.now();
    if (!snapshot || now - taken > 100) {
      snapshot = read();
      taken = now;
    }
    return snapshot;
  };
  for (const [key, [name, help]] of Object.entries(HELP) as [AccelCounterName, [string, string]][]) {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(Number(current()[key]));
      },
    });
  }
}
