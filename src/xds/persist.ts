// What the agent accepted, kept across its restarts (issue 17): each accepted resource with the
// version it was accepted under, one file per resource, so a restarted agent tells the control plane
// what it holds (Delta's initial_resource_versions, SotW's version_info) and istiod sends only what
// changed while it was away. The files are bound to the pinned maps they describe: bpffs takes no
// regular files, so they live in a directory of their own, and a `binding` (the pinned routing map's
// identity) says whether they still match the kernel; after `kernmesh cleanup` or a reboot they do
// not, and are dropped. A write costs what the update changed: one file per resource upserted or removed.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { JsonObject, XdsResource } from './types.js';

/** A type's saved state: its accepted resources and (SotW) the version they were accepted under. */
export interface SavedType {
  resources: XdsResource[];
  version?: string;
}

interface Meta {
  binding: string;
}

const fileOf = (name: string): string =>
  `${createHash('sha256').update(name).digest('hex').slice(0, 40)}.json`;
/** A type URL as a directory name: its message name (envoy.config.cluster.v3.Cluster). */
const dirOf = (typeUrl: string): string => typeUrl.slice(typeUrl.lastIndexOf('/') + 1);

function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

export class XdsStateStore {
  /**
   * `dir`: this agent's directory (one per pin directory); `binding`: the identity of the pinned
   * maps now (a directory written for other maps is emptied before use).
   */
  constructor(
    readonly dir: string,
    private readonly binding: string,
  ) {}

  /** The saved state by type URL, or an empty map when there is none or it belongs to other maps. */
  load(): Map<string, SavedType> {
    const out = new Map<string, SavedType>();
    let meta: Meta | undefined;
    try {
      meta = JSON.parse(readFileSync(join(this.dir, 'meta.json'), 'utf8')) as Meta;
    } catch {
      meta = undefined;
    }
    if (meta?.binding !== this.binding) {
      this.reset();
      return out;
    }
    for (const entry of readdirSync(this.dir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const typeDir = join(this.dir, entry.name);
      const saved: SavedType = { resources: [] };
      let typeUrl: string | undefined;
      for (const f of readdirSync(typeDir)) {
        if (!f.endsWith('.json')) continue;
        try {
          const x = JSON.parse(readFileSync(join(typeDir, f), 'utf8')) as {
            typeUrl?: string;
            version?: string;
            name?: string;
            resource?: JsonObject;
            lastUpdated?: string;
          };
          if (f === 'type.json') {
            if (typeof x.version === 'string') saved.version = x.version;
            if (x.typeUrl) typeUrl = x.typeUrl;
            continue;
          }
          if (!x.typeUrl || !x.name || !x.resource || typeof x.version !== 'string') continue;
          saved.resources.push({
            typeUrl: x.typeUrl,
            name: x.name,
            version: x.version,
            resource: x.resource,
            ...(x.lastUpdated ? { lastUpdated: x.lastUpdated } : {}),
          });
        } catch {
          /* a file cut short by a crash: that resource is simply not restored */
        }
      }
      typeUrl ??= saved.resources[0]?.typeUrl;
      if (typeUrl) out.set(typeUrl, saved);
    }
    return out;
  }

  /** Records what one response changed: resources accepted (new or changed) and names removed. */
  save(typeUrl: string, upserted: readonly XdsResource[], removed: readonly string[], version: string): void {
    const typeDir = join(this.dir, dirOf(typeUrl));
    mkdirSync(typeDir, { recursive: true });
    for (const r of upserted) writeAtomic(join(typeDir, fileOf(r.name)), JSON.stringify(r));
    for (const n of removed) rmSync(join(typeDir, fileOf(n)), { force: true });
    writeAtomic(join(typeDir, 'type.json'), JSON.stringify({ typeUrl, version }));
  }

  /** Empties the directory and binds it to the maps now. */
  reset(): void {
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    writeAtomic(join(this.dir, 'meta.json'), JSON.stringify({ binding: this.binding } satisfies Meta));
  }
}
