// The file source (--xds-file, and what `kernmesh check` reads): the file behaves as a control plane
// that has exactly its resources. Each read answers the subscriptions of a ConfigState as Delta
// responses (every resource of a wildcard type, the subscribed names of the others, and the names
// the file does not have as removed), so the file goes through the same per-resource acceptance,
// cross-type refusals, warming and CSDS statuses as ADS. A file that cannot be read or parsed keeps
// the previous config.
import { createHash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import { systemClock, type Clock } from './backoff.js';
import { parseConfigFile, type ConfigFileContents, type FileResource } from './config-file.js';
import { ConfigState, type Subscriber } from './config-state.js';
import type { ResourceLimits } from './limits.js';
import { RESOURCE_TYPES, resourceType } from './resource-types/index.js';
import type { DecodedResource, Validator } from './state.js';

export interface FileSourceOptions {
  validate?: Validator;
  /** What one resource may hold (the kernel's capacity). */
  limits?: ResourceLimits;
  logger: Logger;
  clock?: Clock;
}

export interface FileSourceStatus {
  file: string;
  /** The file's content hash, the version of every type read from it. */
  version: string;
  layout: string;
  reads: number;
  last_error: { at: string; message: string } | null;
}

export class XdsFileSource implements Subscriber {
  readonly config: ConfigState;
  readonly path: string;
  private readonly logger: Logger;
  private contents = new Map<string, Map<string, FileResource>>();
  /** Per type, what the last answer handed to the config state (the base of the next Delta). */
  private readonly sent = new Map<string, Map<string, FileResource>>();
  private readonly dirty = new Set<string>();
  private notes: string[] = [];
  private layout = '';
  private version = '';
  private nonce = 0;
  private reads = 0;
  private lastError: { at: string; message: string } | undefined;
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;

  constructor(path: string, opts: FileSourceOptions) {
    this.path = resolve(path);
    this.logger = opts.logger;
    const clock = opts.clock ?? systemClock;
    this.config = new ConfigState({
      types: RESOURCE_TYPES,
      protocol: 'delta',
      ...(opts.validate ? { validate: opts.validate } : {}),
      ...(opts.limits ? { limits: opts.limits } : {}),
      clock,
      now: () => new Date(clock.now()),
      logger: opts.logger,
    });
    this.config.setSubscriber(this);
  }

  /** Reads the file once (a failure here is thrown: nothing has been applied), then watches it. */
  start(): void {
    this.config.start();
    this.readFile(true);
    // Watch the directory: editors and ConfigMap mounts replace the file instead of writing into it.
    this.watcher = watch(dirname(this.path), (_event, file) => {
      if (file !== null && file !== basename(this.path) && !file.startsWith('..')) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.readFile(false), 100);
    });
  }

  stop(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
    this.config.stop();
  }

  connected(): boolean {
    return true;
  }

  /** Applies a file's text as if it had been read from the path (check, tests). Throws on an unusable file. */
  load(text: string): void {
    const contents = parseConfigFile(text, this.path);
    this.apply(contents, createHash('sha256').update(text).digest('hex').slice(0, 12));
  }

  status(): FileSourceStatus {
    return {
      file: this.path,
      version: this.version,
      layout: this.layout,
      reads: this.reads,
      last_error: this.lastError ?? null,
    };
  }

  /** What the file holds that nothing subscribed to (a ClusterLoadAssignment no cluster names...). */
  unused(): FileResource[] {
    const out: FileResource[] = [];
    for (const [typeUrl, byName] of this.contents) {
      const state = this.config.states.get(typeUrl);
      if (!state || state.wildcard) continue;
      const wanted = new Set(state.subscription());
      for (const r of byName.values()) if (!wanted.has(r.name)) out.push(r);
    }
    return out;
  }

  /** Every resource the file holds, decoded or refused, in file order. */
  all(): FileResource[] {
    return [...this.contents.values()].flatMap((m) => [...m.values()]);
  }

  /** The reader's remarks: sections not used, entries skipped, names given twice. */
  fileNotes(): string[] {
    return this.notes;
  }

  subscribe(typeUrl: string, names: string[]): boolean {
    const state = this.config.states.get(typeUrl);
    if (!state) return false;
    const { changed } = state.setSubscription(names);
    const sent = this.sent.get(typeUrl);
    if (sent) for (const n of [...sent.keys()]) if (!names.includes(n)) sent.delete(n);
    // The file answers the new names once the current answer is settled (never re-entrantly).
    this.dirty.add(typeUrl);
    return changed;
  }

  private readFile(first: boolean): void {
    const at = new Date().toISOString();
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (e) {
      const message = `cannot read xDS file ${this.path}: ${(e as Error).message}`;
      if (first) throw new Error(message, { cause: e });
      this.lastError = { at, message };
      this.logger.error({ err: e }, `${message}; the previous config stays`);
      return;
    }
    const version = createHash('sha256').update(text).digest('hex').slice(0, 12);
    if (!first && version === this.version) return;
    let contents: ConfigFileContents;
    try {
      contents = parseConfigFile(text, this.path);
    } catch (e) {
      const message = `xDS file ${this.path}: ${(e as Error).message}`;
      if (first) throw new Error(message, { cause: e });
      this.lastError = { at, message };
      this.logger.error({ err: e }, `${message}; the previous config stays`);
      return;
    }
    this.apply(contents, version);
    const refused = contents.resources.filter((r) => r.error !== undefined).length;
    this.logger.info(
      { file: this.path, version, layout: contents.layout, resources: contents.resources.length, refused },
      'xDS file read',
    );
  }

  private apply(contents: ConfigFileContents, version: string): void {
    this.reads++;
    this.version = version;
    this.layout = contents.layout;
    this.lastError = undefined;
    this.notes = [...contents.notes];
    const next = new Map<string, Map<string, FileResource>>();
    for (const r of contents.resources) {
      const byName = next.get(r.typeUrl) ?? new Map<string, FileResource>();
      next.set(r.typeUrl, byName);
      if (byName.has(r.name)) {
        this.notes.push(
          `${r.at}: ${resourceType(r.typeUrl)?.noun ?? r.typeUrl} ${r.name} given twice: the first one is used`,
        );
        continue;
      }
      byName.set(r.name, r);
    }
    this.contents = next;
    for (const t of RESOURCE_TYPES) this.dirty.add(t.typeUrl);
    this.drain();
  }

  /** Answers every type whose subscription or content changed, in subscription order, until settled. */
  private drain(): void {
    for (;;) {
      const t = RESOURCE_TYPES.find((x) => this.dirty.has(x.typeUrl));
      if (!t) return;
      this.dirty.delete(t.typeUrl);
      this.answer(t.typeUrl);
    }
  }

  private answer(typeUrl: string): void {
    const state = this.config.states.get(typeUrl);
    if (!state) return;
    const have = this.contents.get(typeUrl) ?? new Map<string, FileResource>();
    const sent = this.sent.get(typeUrl) ?? new Map<string, FileResource>();
    this.sent.set(typeUrl, sent);
    const wanted = state.wildcard ? [...have.keys()] : state.subscription();
    const resources: DecodedResource[] = [];
    const absent: string[] = [];
    for (const name of wanted) {
      const r = have.get(name);
      if (!r) {
        absent.push(name);
        continue;
      }
      if (sent.get(name) === r) continue; // unchanged since the last answer
      sent.set(name, r);
      resources.push({
        name,
        version: r.version || this.version,
        ...(r.resource ? { resource: r.resource } : { error: r.error ?? 'empty resource' }),
      });
    }
    // Gone from the file (wildcard: deleted), or never in it (subscribed: DOES_NOT_EXIST).
    const removed = [...sent.keys()].filter((n) => !have.has(n));
    for (const n of removed) sent.delete(n);
    if (resources.length === 0 && removed.length === 0 && state.answered() && absent.length === 0) return;
    const outcome = this.config.handleDelta(typeUrl, {
      system_version_info: this.version,
      nonce: String(++this.nonce),
      resources,
      removed_resources: [...new Set([...removed, ...absent])].sort(),
    });
    if (!outcome) return;
    this.config.settle(typeUrl, outcome);
    if (absent.length > 0) this.config.doNotExist(typeUrl, absent);
  }
}
