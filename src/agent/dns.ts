// Resolves the hostnames of STRICT_DNS/LOGICAL_DNS clusters for translate/ (which does no I/O):
// translate lists what it needs, this resolves it in the background and asks for a re-apply when an
// answer changes. Each hostname is refreshed at its cluster's dns_refresh_rate.
import { lookup } from 'node:dns/promises';
import type { Logger } from 'pino';
import type { DnsQuery } from '../translate/index.js';

export class DnsCache {
  private readonly answers = new Map<string, readonly string[]>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private stopped = false;

  constructor(
    private readonly onChange: () => void,
    private readonly log: Logger,
  ) {}

  /** What translate reads: hostname → addresses (absent until the first answer). */
  get map(): ReadonlyMap<string, readonly string[]> {
    return this.answers;
  }

  /** Starts resolving hostnames not seen before; hostnames no longer asked for are dropped. */
  want(queries: DnsQuery[]): void {
    const wanted = new Set(queries.map((q) => q.hostname));
    for (const [host, timer] of this.timers)
      if (!wanted.has(host)) {
        clearTimeout(timer);
        this.timers.delete(host);
        this.answers.delete(host);
      }
    for (const q of queries) if (!this.timers.has(q.hostname)) this.resolve(q);
  }

  private resolve(q: DnsQuery): void {
    if (this.stopped) return;
    // A placeholder timer marks the hostname as in flight so want() does not start it twice.
    this.timers.set(
      q.hostname,
      setTimeout(() => undefined, 0),
    );
    lookup(q.hostname, { all: true, verbatim: true })
      .then((res) => res.map((r) => r.address).sort())
      .catch((e: unknown) => {
        this.log.warn(
          { host: q.hostname, err: e },
          'DNS lookup failed; the cluster keeps its last addresses',
        );
        return undefined;
      })
      .then(
        (addrs) => {
          if (this.stopped || !this.timers.has(q.hostname)) return;
          const before = this.answers.get(q.hostname);
          if (addrs && addrs.join(',') !== before?.join(',')) {
            this.answers.set(q.hostname, addrs);
            this.log.info({ host: q.hostname, addresses: addrs, clusters: q.clusters }, 'DNS answer changed');
            this.onChange();
          }
          const t = setTimeout(() => this.resolve(q), Math.max(q.refreshMs, 1000));
          t.unref();
          this.timers.set(q.hostname, t);
        },
        () => undefined,
      );
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
