// `kernmesh maps`: the routing state read straight from the pinned maps, so it works while the
// agent is down (what the kernel does now, not what the agent believes it wrote).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS } from '../config/config.js';
import { mapUsage, openPinnedRouteMaps, RouteMapReader } from '../dataplane/reader.js';
import { parseViewFlags, table } from './view.js';

const HELP = `usage: kernmesh maps [--bpffs DIR] [--json]

Decodes the routing maps pinned under DIR (default ${DEFAULTS.bpffs}, or KERNMESH_BPFFS):
frontends, services with their live endpoint slots, backends, counters and capacity used.
`;

export interface PinnedState {
  frontends: { frontend: string; service: string }[];
  services: {
    id: number;
    name: string;
    kind: string;
    lbPolicy: string;
    endpoints: string[];
    maxConnections: number;
  }[];
  backends: { id: number; backend: string }[];
  counters: { service: string; counters: Record<string, string> }[];
  maps: { name: string; type: string; entries: number | null; capacity: number }[];
}

const hostPort = (address: string, port: number) =>
  `${address.includes(':') ? `[${address}]` : address}:${port}`;

/** Opens every routing map pinned under dir and decodes it (dataplane's reader); the maps are closed afterwards. */
export function readPinned(dir: string): PinnedState {
  const pinned = openPinnedRouteMaps(dir);
  try {
    const actual = new RouteMapReader(pinned.maps).actual(dir, mapUsage(pinned.opened));
    const nameOf = (id: number, name?: string): string => name || `#${id}`;
    const names = new Map(actual.services.map((s) => [s.id, s.name]));
    return {
      frontends: actual.frontends
        .map((f) => ({
          frontend: `${hostPort(f.address, f.port)}/${f.protocol}`,
          service: nameOf(f.serviceId, f.service),
        }))
        .sort((a, b) => a.frontend.localeCompare(b.frontend)),
      services: actual.services.map((s) => ({
        id: s.id,
        name: nameOf(s.id, names.get(s.id)),
        kind: s.value.kind,
        lbPolicy: s.value.lbPolicy,
        maxConnections: s.value.maxConnections,
        endpoints: s.slots.map((x) => `${x.backend ?? `#${x.backendId}`} p${x.priority} w${x.weight}`),
      })),
      backends: actual.backends.map((b) => ({ id: b.id, backend: hostPort(b.address, b.port) })),
      counters: actual.counters
        .map((c) => ({
          service: c.service || '(no service)',
          counters: Object.fromEntries(
            Object.entries(c.counters)
              .filter(([, n]) => n > 0n)
              .map(([r, n]) => [r, n.toString()]),
          ),
        }))
        .filter((c) => Object.keys(c.counters).length > 0),
      maps: actual.maps.map((m) => ({
        name: m.name,
        type: m.type,
        entries: m.entries ?? null,
        capacity: m.maxEntries,
      })),
    };
  } finally {
    pinned.close();
  }
}

export function renderPinned(s: PinnedState): string {
  const byName = new Map(s.services.map((x) => [x.name, x]));
  let out = 'frontends\n';
  out += table([
    ['FRONTEND', 'SERVICE', 'KIND', 'POLICY', 'ENDPOINTS'],
    ...s.frontends.map((f) => {
      const svc = byName.get(f.service);
      return [f.frontend, f.service, svc?.kind ?? '?', svc?.lbPolicy ?? '?', svc?.endpoints.join(', ') ?? ''];
    }),
  ]);
  out += '\ncounters\n';
  out += table([
    ['SERVICE', 'COUNTS'],
    ...s.counters.map((c) => [
      c.service,
      Object.entries(c.counters)
        .map(([r, n]) => `${r}=${n}`)
        .join(' '),
    ]),
  ]);
  out += '\nmaps\n';
  out += table([
    ['MAP', 'TYPE', 'ENTRIES', 'CAPACITY'],
    ...s.maps.map((m) => [m.name, m.type, m.entries === null ? '-' : String(m.entries), String(m.capacity)]),
  ]);
  return out;
}

export async function runMaps(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  await Promise.resolve();
  const flags = parseViewFlags(argv, '--bpffs', process.env.KERNMESH_BPFFS ?? DEFAULTS.bpffs);
  if ('help' in flags) {
    out.write(HELP);
    return 0;
  }
  if ('unknown' in flags) {
    process.stderr.write(`kernmesh maps: unknown flag ${flags.unknown}\n${HELP}`);
    return 2;
  }
  const { value: bpffs, json } = flags;
  const dir = bpffs;
  if (!existsSync(join(dir, 'km_frontends'))) {
    process.stderr.write(
      `kernmesh maps: no routing maps pinned at ${dir} (has kernmesh run with --bpffs ${bpffs}?)\n`,
    );
    return 1;
  }
  try {
    const state = readPinned(dir);
    out.write(json ? JSON.stringify(state, null, 2) + '\n' : renderPinned(state));
    return 0;
  } catch (e) {
    process.stderr.write(`kernmesh maps: ${(e as Error).message}\n`);
    return 1;
  }
}
