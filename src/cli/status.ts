// `kernmesh status`: a running agent's state, read from its admin endpoint: readiness, xDS sync per
// type, programmed services, attach points and the last errors. --json prints the raw views.
import { typeLabel } from '../agent/metrics.js';
import { DEFAULTS } from '../config/config.js';
import { parseViewFlags, table } from './view.js';

const HELP = `usage: kernmesh status [--admin ADDR:PORT] [--json]

Reads the admin endpoint of a running agent (default ${DEFAULTS.admin}, or KERNMESH_ADMIN).
`;

interface TypeView {
  type_url: string;
  version?: string;
  nonce?: string;
  last_nack?: string | null;
  resources: { name: string; status: string; version?: string; error?: string }[];
}

interface DebugXds {
  source?: { kind: string; target: string; connected: boolean };
  xds?: { types?: TypeView[]; last_error?: { message: string } | null };
  translation_rejections?: { typeUrl: string; name: string; reason: string }[];
  last_apply?: { at: string; seconds: number; services: number; frontends: number; error?: string } | null;
}

interface DebugMaps {
  frontends?: { address: string; port: number; protocol: string; service?: string }[];
  services?: {
    name: string;
    value: { kind: string; lbPolicy: string };
    slots: unknown[];
    activeConnections: number;
  }[];
}

interface DebugBpf {
  pin_dir?: string;
  attachments?: { program: string; attachType: string; cgroup: string; via: string }[];
  programs?: { name: string; runTimeNs: string; runCount: string }[];
}

async function get(base: string, path: string): Promise<{ status: number; text: string }> {
  let r: Response;
  try {
    r = await fetch(`${base}${path}`);
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message;
    throw new Error(`no agent answers at ${base} (${cause}); is kernmesh run up, with --admin there?`);
  }
  return { status: r.status, text: await r.text() };
}

export function renderStatus(v: {
  admin: string;
  ready: { status: number; text: string };
  serverInfo: { version?: string; uptime_current_epoch?: string };
  xds: DebugXds;
  bpf: DebugBpf;
  maps?: DebugMaps;
}): string {
  const out: string[] = [];
  const readyLine =
    v.ready.status === 200
      ? 'READY'
      : `NOT READY (${v.ready.text.split('\n').slice(1).join(' ').replace(/- /g, '').trim()})`;
  out.push(
    `kernmesh at ${v.admin}: ${readyLine}, ${v.serverInfo.version ?? ''}, up ${v.serverInfo.uptime_current_epoch ?? '?'}`,
  );
  const s = v.xds.source;
  if (s) out.push(`xDS source: ${s.kind} ${s.target} (${s.connected ? 'connected' : 'DISCONNECTED'})`);
  const types = v.xds.xds?.types ?? [];
  const translated = v.xds.translation_rejections ?? [];
  out.push('');
  out.push(
    table([
      ['TYPE', 'VERSION', 'RESOURCES', 'ACKED', 'NACKED', 'LAST NACK'],
      ...types.map((t) => {
        const nacked =
          t.resources.filter((r) => r.status === 'NACKED').length +
          translated.filter((r) => r.typeUrl === t.type_url).length;
        return [
          typeLabel(t.type_url).toUpperCase(),
          t.version ?? '',
          String(t.resources.length),
          String(t.resources.filter((r) => r.status === 'ACKED').length),
          String(nacked),
          (t.last_nack ?? '').slice(0, 60),
        ];
      }),
    ]).trimEnd(),
  );
  const la = v.xds.last_apply;
  if (la)
    out.push(
      `\nlast apply ${la.at}: ${la.error ? `FAILED: ${la.error}` : `${la.services} services, ${la.frontends} frontends in ${(la.seconds * 1000).toFixed(1)} ms`}`,
    );
  if (v.maps?.frontends?.length) {
    const byName = new Map((v.maps.services ?? []).map((x) => [x.name, x]));
    out.push('\nservices');
    out.push(
      table([
        ['FRONTEND', 'SERVICE', 'KIND', 'POLICY', 'ENDPOINTS', 'ACTIVE'],
        ...v.maps.frontends.map((f) => {
          const svc = byName.get(f.service ?? '');
          const host = f.address.includes(':') ? `[${f.address}]` : f.address;
          return [
            `${host}:${f.port}/${f.protocol}`,
            f.service ?? '?',
            svc?.value.kind ?? '?',
            svc?.value.lbPolicy ?? '?',
            String(svc?.slots.length ?? 0),
            String(svc?.activeConnections ?? 0),
          ];
        }),
      ]).trimEnd(),
    );
  }
  out.push('\nattach points' + (v.bpf.pin_dir ? ` (pinned under ${v.bpf.pin_dir})` : ''));
  out.push(
    table([
      ['PROGRAM', 'ATTACH TYPE', 'CGROUP', 'VIA'],
      ...(v.bpf.attachments ?? []).map((a) => [a.program, a.attachType, a.cgroup, a.via]),
    ]).trimEnd(),
  );
  const errors = [
    ...types.flatMap((t) =>
      t.resources.filter((r) => r.error).map((r) => `${typeLabel(t.type_url)} ${r.name}: ${r.error}`),
    ),
    ...translated.map((r) => `${typeLabel(r.typeUrl)} ${r.name}: ${r.reason}`),
    ...(v.xds.xds?.last_error ? [v.xds.xds.last_error.message] : []),
  ];
  out.push(`\nlast errors${errors.length ? '' : ': none'}`);
  for (const e of errors) out.push(`- ${e}`);
  return out.join('\n') + '\n';
}

export async function runStatus(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const flags = parseViewFlags(argv, '--admin', process.env.KERNMESH_ADMIN ?? DEFAULTS.admin);
  if ('help' in flags) {
    out.write(HELP);
    return 0;
  }
  if ('unknown' in flags) {
    process.stderr.write(`kernmesh status: unknown flag ${flags.unknown}\n${HELP}`);
    return 2;
  }
  const { value: admin, json } = flags;
  const base = `http://${admin}`;
  try {
    const [ready, serverInfo, xds, bpf, maps] = await Promise.all([
      get(base, '/ready'),
      get(base, '/server_info'),
      get(base, '/debug/xds'),
      get(base, '/debug/bpf'),
      get(base, '/debug/maps'),
    ]);
    const view = {
      admin,
      ready,
      serverInfo: JSON.parse(serverInfo.text) as { version?: string; uptime_current_epoch?: string },
      xds: JSON.parse(xds.text) as DebugXds,
      bpf: JSON.parse(bpf.text) as DebugBpf,
      maps: maps.status === 200 ? (JSON.parse(maps.text) as DebugMaps) : undefined,
    };
    if (json)
      out.write(
        JSON.stringify(
          {
            ready: ready.status === 200,
            server_info: view.serverInfo,
            xds: view.xds,
            bpf: view.bpf,
            maps: view.maps ?? null,
          },
          null,
          2,
        ) + '\n',
      );
    else out.write(renderStatus(view));
    return ready.status === 200 ? 0 : 1;
  } catch (e) {
    process.stderr.write(`kernmesh status: ${(e as Error).message}\n`);
    return 1;
  }
}
