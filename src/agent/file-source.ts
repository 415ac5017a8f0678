// The file source (--xds-file): xDS resources read from a config dump or a resources file and
// re-read when the file changes. A file that cannot be read or parsed keeps the previous config.
import { createHash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { JsonObject, Rejection, ServiceWaypoint, XdsResource } from '../xds/types.js';
import type { ConfigSource, SourceUpdate } from './ports.js';

/** Parses the file's text into resources and the ones refused while reading (bad resources). */
export type FileReader = (
  path: string,
  text: string,
  version: string,
) => {
  resources: XdsResource[];
  rejections: (Rejection & { failed?: JsonObject })[];
  waypoints: ServiceWaypoint[];
  notes: string[];
};

interface ResourceDebug {
  name: string;
  version: string;
  status: 'ACKED' | 'NACKED';
  error?: string;
}

export class FileSource implements ConfigSource {
  readonly kind = 'file' as const;
  readonly target: string;
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private resources: XdsResource[] = [];
  private refused: (Rejection & { failed?: JsonObject; at: string })[] = [];
  private version = '';
  private lastError?: { at: string; message: string };
  private reads = 0;

  constructor(
    path: string,
    private readonly reader: FileReader,
    private readonly node_: JsonObject,
    private readonly log: Logger,
  ) {
    this.target = resolve(path);
  }

  /** Reads the file once (a failure here stops the start), then watches it. */
  async start(onUpdate: (u: SourceUpdate) => void): Promise<void> {
    await Promise.resolve();
    this.read(onUpdate, true);
    // Watch the directory: editors and ConfigMap mounts replace the file instead of writing into it.
    this.watcher = watch(dirname(this.target), (_event, file) => {
      if (file !== null && file !== basename(this.target) && !file.startsWith('..')) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.read(onUpdate, false), 100);
    });
  }

  private read(onUpdate: (u: SourceUpdate) => void, first: boolean): void {
    const receivedAt = process.hrtime.bigint();
    const at = new Date().toISOString();
    let text: string;
    try {
      text = readFileSync(this.target, 'utf8');
    } catch (e) {
      const message = `cannot read xDS file ${this.target}: ${(e as Error).message}`;
      if (first) throw new Error(message, { cause: e });
      this.lastError = { at, message };
      this.log.error({ err: e }, `${message}; the previous config stays`);
      return;
    }
    const version = createHash('sha256').update(text).digest('hex').slice(0, 12);
    if (!first && version === this.version) return;
    let parsed;
    try {
      parsed = this.reader(this.target, text, version);
    } catch (e) {
      const message = `xDS file ${this.target}: ${(e as Error).message}`;
      if (first) throw new Error(message, { cause: e });
      this.lastError = { at, message };
      this.log.error({ err: e }, `${message}; the previous config stays`);
      return;
    }
    this.reads++;
    const before = new Map(this.resources.map((r) => [`${r.typeUrl} ${r.name}`, r.version]));
    this.version = version;
    this.resources = parsed.resources.map((r) => ({ ...r, lastUpdated: r.lastUpdated ?? at }));
    this.refused = parsed.rejections.map((r) => ({ ...r, at }));
    this.lastError = undefined;
    const changed = new Set<string>();
    for (const r of this.resources)
      if (before.get(`${r.typeUrl} ${r.name}`) !== r.version) changed.add(r.typeUrl);
    for (const k of before.keys())
      if (!this.resources.some((r) => `${r.typeUrl} ${r.name}` === k)) changed.add(k.split(' ')[0]!);
    for (const r of this.refused)
      this.log.warn({ resource: r.name, type: r.typeUrl, reason: r.reason }, 'resource in xDS file refused');
    this.log.info(
      { file: this.target, version, resources: this.resources.length, refused: this.refused.length },
      'xDS file read',
    );
    onUpdate({
      resources: this.resources,
      waypoints: parsed.waypoints,
      changedTypes: [...changed],
      receivedAt,
    });
  }

  async stop(): Promise<void> {
    await Promise.resolve();
    clearTimeout(this.timer);
    this.watcher?.close();
  }

  connected(): boolean {
    return true;
  }

  versions(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const r of this.resources) out[r.typeUrl] = this.version;
    return out;
  }

  node(): JsonObject {
    return this.node_;
  }

  rejections(): (Rejection & { failed?: JsonObject; at?: string })[] {
    return this.refused;
  }

  debug(): unknown {
    const types: Record<string, { version: string; resources: ResourceDebug[] }> = {};
    for (const r of this.resources) {
      const t = (types[r.typeUrl] ??= { version: this.version, resources: [] });
      t.resources.push({ name: r.name, version: r.version, status: 'ACKED' });
    }
    for (const r of this.refused) {
      const t = (types[r.typeUrl] ??= { version: this.version, resources: [] });
      t.resources.push({ name: r.name, version: this.version, status: 'NACKED', error: r.reason });
    }
    return {
      file: this.target,
      version: this.version,
      reads: this.reads,
      last_error: this.lastError ?? null,
      types: Object.entries(types).map(([typeUrl, t]) => ({
        type_url: typeUrl,
        version: t.version,
        resources: t.resources.sort((a, b) => a.name.localeCompare(b.name)),
      })),
    };
  }
}
