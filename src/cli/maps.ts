// `kernmesh maps`: the routing state read straight from the pinned maps, so it works while the
// agent is down (what the kernel does now, not what the agent believes it wrote).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap } from '../../native/index.js';
import { DEFAULTS } from '../config/config.js';
import {
  backendCodec,
  frontendCodec,
  frontendKeyCodec,
  serviceCodec,
  serviceNameCodec,
  slotCodec,
  slotKeyCodec,
} from '../dataplane/codec.js';
import { ROUTE_MAPS, type RouteMaps } from '../dataplane/maps.js';
import { RouteWriter } from '../dataplane/writer.js';
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

/** Opens every routing map pinned under dir and decodes it; the maps are closed afterwards. */
export function readPinned(dir: string): PinnedState {
  const opened: BpfMap[] = [];
  try {
    const maps = Object.fromEntries(
      ROUTE_MAPS.map((n) => {
        const path = join(dir, n);
        let m: BpfMap;
        try {
          m = BpfMap.openPinned(path, n);
        } catch (e) {
          throw new Error(`open pinned map ${path}: ${(e as Error).message}`, { cause: e });
        }
        opened.push(m);
        return [n, m];
      }),
    ) as unknown as Record<(typeof ROUTE_MAPS)[number], BpfMap>;
    const names = new Map<number, string>();
    for (const [k, v] of maps.km_svc_names.entries())
      names.set(k.readUInt32LE(0), serviceNameCodec.decode(v).name);
    const backends = maps.km_backends
      .entries()
      .map(([k, v]) => {
        const b = backendCodec.decode(v);
        return { id: k.readUInt32LE(0), backend: hostPort(b.address, b.port) };
      })
      .sort((a, b) => a.id - b.id);
    const backendById = new Map(backends.map((b) => [b.id, b.backend]));
    const slots = maps.km_slots
      .entries()
      .map(([k, v]) => ({ key: slotKeyCodec.decode(k), value: slotCodec.decode(v) }));
    const services = maps.km_services
      .entries()
      .map(([k, v]) => {
        const id = k.readUInt32LE(0);
        const s = serviceCodec.decode(v);
        const live = slots
          .filter((x) => x.key.serviceId === id && x.key.generation === s.generation)
          .sort((a, b) => a.key.priority - b.key.priority || a.key.index - b.key.index);
        return {
          id,
          name: names.get(id) ?? `#${id}`,
          kind: s.kind,
          lbPolicy: s.lbPolicy,
          maxConnections: s.maxConnections,
          endpoints: live.map(
            (x) =>
              `${backendById.get(x.value.backendId) ?? `#${x.value.backendId}`} p${x.key.priority} w${x.value.weight}`,
          ),
        };
      })
      .sort((a, b) => a.id - b.id);
    const frontends = maps.km_frontends.entries().map(([k, v]) => {
      const f = frontendKeyCodec.decode(k);
      const id = frontendCodec.decode(v).serviceId;
      return { frontend: `${hostPort(f.address, f.port)}/${f.protocol}`, service: names.get(id) ?? `#${id}` };
    });
    const counters = RouteWriter.recover(maps as unknown as RouteMaps)
      .counters()
      .map((c) => ({
        service: c.service || '(no service)',
        counters: Object.fromEntries(
          Object.entries(c.counters)
            .filter(([, n]) => n > 0n)
            .map(([r, n]) => [r, n.toString()]),
        ),
      }))
      .filter((c) => Object.keys(c.counters).length > 0);
    const counted = new Set(['hash', 'lru_hash']);
    return {
      frontends: frontends.sort((a, b) => a.frontend.localeCompare(b.frontend)),
      services,
      backends,
      counters,
      maps: opened.map((m) => ({
        name: m.name,
        type: m.type,
        entries: counted.has(m.type) ? m.keys().length : null,
        capacity: m.maxEntries,
      })),
    };
  } finally {
    for (const m of opened) m.close();
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
