// `kernmesh capture` in the agent: turns a filter into the kernel's capture config (services and pods
// resolved to addresses and ports), streams the records of km_capture_ring to one client, and ends
// with what was captured and what was lost, by cause. One capture at a time.
import type { Logger } from 'pino';

import { RingBuffer } from '../../native/index.js';
import type { Accelerator, CaptureCounters, CaptureEndpoint } from './accel.js';
import { MAX_SNAPLEN } from './codec.js';
import { parseCidr, type AccelCidr } from './rules.js';

/** What a capture asks for; every filter given must hold (as tcpdump's `and`). */
export interface CaptureFilter {
  service?: string;
  pod?: string;
  port?: number;
  ip?: AccelCidr;
  snaplen: number;
  /** Stop after this many messages; none: until the client stops. */
  count?: number;
  maxMessagesPerSecond: number;
  maxBytesPerSecond: number;
}

export const CAPTURE_DEFAULTS = {
  snaplen: MAX_SNAPLEN,
  maxMessagesPerSecond: 10_000,
  maxBytesPerSecond: 8 << 20,
};

/** Where --service and --pod are looked up (the agent's programmed services and known workloads). */
export interface CaptureTargets {
  /** A service by host, short name or kernel service name, with its endpoints; throws when unknown. */
  service(name: string): { name: string; endpoints: { address: string; port: number }[] };
  /** A pod by name or namespace/name, with its addresses; throws when unknown. */
  pod(name: string): { name: string; addresses: string[] };
}

function positive(v: unknown, what: string, max: number): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new Error(`${what} "${JSON.stringify(v)}": expected 1-${max}`);
  return n;
}

/** Checks a capture request from the control socket; the message names the field at fault. */
export function parseCaptureFilter(m: Record<string, unknown>): CaptureFilter {
  const str = (k: string): string | undefined => {
    const v = m[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' || !v) throw new Error(`--${k}: expected a name`);
    return v;
  };
  const f: CaptureFilter = {
    snaplen: positive(m.snaplen, '--snaplen', MAX_SNAPLEN) ?? CAPTURE_DEFAULTS.snaplen,
    maxMessagesPerSecond:
      positive(m.maxMessagesPerSecond, '--max-rate', 1_000_000) ?? CAPTURE_DEFAULTS.maxMessagesPerSecond,
    maxBytesPerSecond:
      positive(m.maxBytesPerSecond, '--max-bytes', 1 << 30) ?? CAPTURE_DEFAULTS.maxBytesPerSecond,
  };
  const service = str('service');
  const pod = str('pod');
  const port = positive(m.port, '--port', 65535);
  const count = positive(m.count, '--count', 2 ** 31);
  if (service) f.service = service;
  if (pod) f.pod = pod;
  if (port) f.port = port;
  if (count) f.count = count;
  const ip = str('ip');
  if (ip) {
    const cidr = parseCidr(ip);
    if (typeof cidr === 'string') throw new Error(`--ip: ${cidr}`);
    f.ip = cidr;
  }
  return f;
}

/** The filter in tcpdump's words, for the first reply and the logs. */
export function describeFilter(f: CaptureFilter): string {
  const parts: string[] = [];
  if (f.service) parts.push(`service ${f.service}`);
  if (f.pod) parts.push(`pod ${f.pod}`);
  if (f.port) parts.push(`port ${f.port}`);
  if (f.ip) parts.push(`net ${f.ip.address}/${f.ip.prefixLength}`);
  return parts.length ? parts.join(' and ') : 'every accelerated connection';
}

interface Session {
  filter: CaptureFilter;
  ring: RingBuffer;
  before: CaptureCounters;
  delivered: number;
  beyondCount: number;
  end(): void;
}

export class CaptureManager {
  private session: Session | undefined;

  constructor(
    private readonly accel: Accelerator,
    private readonly targets: CaptureTargets,
    private readonly log?: Logger,
  ) {
    // A capture left on by an agent that died keeps filling a ring nobody reads: turn it off.
    if (accel.captureEnabled()) {
      accel.stopCapture();
      log?.warn('a capture left on by a previous run was turned off');
    }
  }

  private endpoints(f: CaptureFilter): { endpoints: CaptureEndpoint[]; resolved: Record<string, unknown> } {
    const endpoints: CaptureEndpoint[] = [];
    const resolved: Record<string, unknown> = {};
    if (f.service) {
      const s = this.targets.service(f.service);
      resolved.service = s;
      for (const e of s.endpoints) endpoints.push({ address: e.address, port: e.port, service: true });
    }
    if (f.pod) {
      const p = this.targets.pod(f.pod);
      resolved.pod = p;
      for (const a of p.addresses) endpoints.push({ address: a, port: 0, pod: true });
    }
    return { endpoints, resolved };
  }

  running(): boolean {
    return this.session !== undefined;
  }

  /**
   * Starts the one capture; records go to onRecord as the kernel wrote them, the summary to onEnd.
   * Throws when a capture already runs or a filter names nothing known.
   */
  start(
    filter: CaptureFilter,
    onRecord: (raw: Buffer) => void,
    onEnd: (summary: Record<string, unknown>) => void,
  ): { started: Record<string, unknown>; stop(): void } {
    if (this.session) throw new Error('a capture is already running; one at a time');
    const { endpoints, resolved } = this.endpoints(filter);
    const before = this.accel.captureCounters();
    const deliver = (raw: Buffer): void => {
      const s = this.session;
      if (!s) return;
      if (filter.count !== undefined && s.delivered >= filter.count) {
        s.beyondCount++;
        return;
      }
      s.delivered++;
      onRecord(raw);
      if (filter.count !== undefined && s.delivered >= filter.count) setImmediate(() => s.end());
    };
    const ring = new RingBuffer(this.accel.object.map('km_capture_ring'), deliver);
    let ended = false;
    const session: Session = {
      filter,
      ring,
      before,
      delivered: 0,
      beyondCount: 0,
      end: () => {
        if (ended) return;
        ended = true;
        this.accel.stopCapture();
        ring.consume(); // what the kernel wrote before it stopped
        ring.close();
        const after = this.accel.captureCounters();
        const d = (k: keyof CaptureCounters): number => Number(after[k] - before[k]);
        const summary = {
          captured: d('messages'),
          captured_bytes: d('bytes'),
          delivered: session.delivered,
          beyond_count: session.beyondCount,
          lost: { rate: d('lostRate'), bytes: d('lostBytes'), ring: d('lostRing'), pull: d('lostPull') },
        };
        this.session = undefined;
        this.log?.info({ ...summary }, 'capture ended');
        onEnd(summary);
      },
    };
    this.session = session;
    this.accel.startCapture(
      {
        snaplen: filter.snaplen,
        maxMessagesPerSecond: filter.maxMessagesPerSecond,
        maxBytesPerSecond: filter.maxBytesPerSecond,
        ...(filter.port ? { port: filter.port } : {}),
        ...(filter.ip ? { ip: filter.ip } : {}),
        service: filter.service !== undefined,
        pod: filter.pod !== undefined,
      },
      endpoints,
    );
    this.log?.info({ filter: describeFilter(filter), endpoints: endpoints.length }, 'capture started');
    // The records' clock is CLOCK_MONOTONIC; the client converts with this pair.
    const monotonicNs = process.hrtime.bigint();
    const unixNs = BigInt(Date.now()) * 1_000_000n;
    return {
      started: {
        filter: describeFilter(filter),
        snaplen: filter.snaplen,
        caps: {
          messages_per_second: filter.maxMessagesPerSecond,
          bytes_per_second: filter.maxBytesPerSecond,
        },
        resolved,
        clock: { monotonic_ns: monotonicNs.toString(), unix_ns: unixNs.toString() },
      },
      stop: () => session.end(),
    };
  }

  /** Re-resolves --service and --pod after the agent programmed a new config (endpoints moved). */
  refresh(): void {
    const s = this.session;
    if (!s || (!s.filter.service && !s.filter.pod)) return;
    try {
      this.accel.setCaptureEndpoints(this.endpoints(s.filter).endpoints);
    } catch (e) {
      this.log?.warn({ err: e }, 'capture filter no longer resolves; its last addresses stay');
    }
  }

  close(): void {
    this.session?.end();
  }
}
