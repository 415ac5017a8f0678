// Resolves the hostnames of STRICT_DNS / LOGICAL_DNS clusters on their refresh rate. This is the
// I/O half of DNS clusters: translate() lists what to resolve (dnsQueries) and takes the answers
// back as input, so it stays pure. A failed lookup keeps the last answer, as Envoy keeps its hosts.
import { lookup as osLookup } from 'node:dns/promises';
import type { DnsQuery } from '../translate/index.js';

export type Lookup = (hostname: string) => Promise<string[]>;

export interface DnsRefresherOptions {
  /** Called with the full answer set whenever any hostname's addresses change. */
  onChange: (answers: ReadonlyMap<string, readonly string[]>) => void;
  /** Called when a lookup fails (the last answer is kept). */
  onError?: (hostname: string, err: Error) => void;
  /** Defaults to the node's resolver (getaddrinfo: /etc/hosts, then DNS). */
  lookup?: Lookup;
}

const systemLookup: Lookup = async (hostname) =>
  (await osLookup(hostname, { all: true, verbatim: true })).map((a) => a.address);

interface Entry {
  query: DnsQuery;
  timer?: NodeJS.Timeout;
  inFlight?: Promise<void>;
}

export class DnsRefresher {
  private readonly entries = new Map<string, Entry>();
  private readonly answers = new Map<string, readonly string[]>();
  private readonly lookup: Lookup;
  private closed = false;

  constructor(private readonly options: DnsRefresherOptions) {
    this.lookup = options.lookup ?? systemLookup;
  }

  /** The hostnames to keep resolved: new ones are looked up at once, gone ones are forgotten. */
  update(queries: readonly DnsQuery[]): void {
    const wanted = new Map(queries.map((q) => [q.hostname, q]));
    let dropped = false;
    for (const [host, entry] of this.entries) {
      if (wanted.has(host)) continue;
      clearTimeout(entry.timer);
      this.entries.delete(host);
      dropped = this.answers.delete(host) || dropped;
    }
    for (const q of wanted.values()) {
      const entry = this.entries.get(q.hostname);
      if (entry) {
        entry.query = q;
        continue;
      }
      const fresh: Entry = { query: q };
      this.entries.set(q.hostname, fresh);
      void this.refresh(fresh);
    }
    if (dropped) this.options.onChange(this.current());
  }

  current(): ReadonlyMap<string, readonly string[]> {
    return new Map(this.answers);
  }

  /** Resolves every hostname now; resolves when all lookups are done (for tests and start-up). */
  async refreshAll(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => this.refresh(e)));
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) clearTimeout(e.timer);
    this.entries.clear();
  }

  private refresh(entry: Entry): Promise<void> {
    entry.inFlight ??= this.resolve(entry).finally(() => {
      entry.inFlight = undefined;
    });
    return entry.inFlight;
  }

  private async resolve(entry: Entry): Promise<void> {
    const host = entry.query.hostname;
    clearTimeout(entry.timer);
    try {
      const addresses = [...new Set(await this.lookup(host))];
      if (this.closed || this.entries.get(host) !== entry) return;
      const before = this.answers.get(host);
      if (!before || before.length !== addresses.length || before.some((a, i) => a !== addresses[i])) {
        this.answers.set(host, addresses);
        this.options.onChange(this.current());
      }
    } catch (err) {
      this.options.onError?.(host, new Error(`resolve ${host}: ${(err as Error).message}`, { cause: err }));
    }
    if (this.closed || this.entries.get(host) !== entry) return;
    // A zero or tiny dns_refresh_rate must not turn into a lookup loop.
    entry.timer = setTimeout(() => void this.refresh(entry), Math.max(entry.query.refreshMs, 1000));
    entry.timer.unref();
  }
}
