// Envoy's xDS API and Istio's workload API as protobufjs reflection, loaded once per process.
// Envoy's .proto trees come from @grpc/grpc-js-xds (never copied here); Istio's messages from proto/.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const require = createRequire(import.meta.url);

function packageDir(name: string): string {
  // Walk up from the package's entry point: some packages do not export package.json.
  let dir = dirname(require.resolve(name));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the package directory of ${name}`);
    dir = up;
  }
  return dir;
}

function ourProtoDir(): string {
  // src/xds/ under tsx, dist/src/xds/ when built: look upwards for the repository's proto/.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'proto', 'istio', 'workload', 'workload.proto');
    if (existsSync(candidate)) return join(dir, 'proto');
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the proto/ directory of kernmesh');
    dir = up;
  }
}

function listProtos(dir: string, top = dir): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...listProtos(p, top));
    else if (name.endsWith('.proto')) out.push(p.slice(top.length + 1));
  }
  return out;
}

let loaded: protobuf.Root | undefined;

/** The root holding every Envoy v3, xds/udpa and Istio message we know, loaded on first use. */
export function protoRoot(): protobuf.Root {
  if (loaded) return loaded;
  const deps = join(packageDir('@grpc/grpc-js-xds'), 'deps');
  const protobufjsDir = packageDir('protobufjs');
  const ours = ourProtoDir();
  const roots = [
    ours,
    ...['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(deps, d)),
  ];

  const locate = (file: string): string | undefined => {
    if (file.startsWith('google/protobuf/')) {
      // protobufjs embeds the well-known types; descriptor.proto ships as a file beside them.
      const p = join(protobufjsDir, file);
      return existsSync(p) ? p : file;
    }
    for (const r of roots) {
      const p = join(r, file);
      if (existsSync(p)) return p;
    }
    return undefined;
  };

  // The deps tree carries only part of Envoy's deprecated v2 API: keep the files whose imports all exist.
  const usable = new Map<string, boolean>();
  const isUsable = (file: string): boolean => {
    const known = usable.get(file);
    if (known !== undefined) return known;
    usable.set(file, true);
    const path = locate(file);
    let ok = path !== undefined;
    if (ok && path !== undefined && path !== file) {
      const text = readFileSync(path, 'utf8');
      for (const m of text.matchAll(/^import\s+(?:public\s+|weak\s+)?"([^"]+)"/gm)) {
        if (!isUsable(m[1] ?? '')) {
          ok = false;
          break;
        }
      }
    }
    usable.set(file, ok);
    return ok;
  };

  const files = [
    ...listProtos(join(deps, 'envoy-api')).filter((f) => f.startsWith('envoy/')),
    ...listProtos(join(deps, 'xds')),
    ...listProtos(ours),
    'google/protobuf/field_mask.proto',
    'google/protobuf/empty.proto',
  ].filter(isUsable);

  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => locate(target) ?? target;
  try {
    root.loadSync(files, { keepCase: true });
    root.resolveAll();
  } catch (err) {
    throw new Error(`load xDS protos from ${deps}: ${(err as Error).message}`, { cause: err });
  }
  loaded = root;
  return root;
}

const typeCache = new Map<string, protobuf.Type | null>();

/** The message type named by a full name or a type URL, or undefined when we do not know it. */
export function lookupType(nameOrUrl: string): protobuf.Type | undefined {
  const name = nameOrUrl.slice(nameOrUrl.lastIndexOf('/') + 1);
  let t = typeCache.get(name);
  if (t === undefined) {
    const found = protoRoot().lookup('.' + name);
    t = found instanceof protobuf.Type ? found : null;
    typeCache.set(name, t);
  }
  return t ?? undefined;
}

/** Like lookupType, for types the caller cannot work without. */
export function requireType(nameOrUrl: string): protobuf.Type {
  const t = lookupType(nameOrUrl);
  if (!t) throw new Error(`unknown protobuf type ${nameOrUrl}`);
  return t;
}

export const TYPE_URL_PREFIX = 'type.googleapis.com/';
