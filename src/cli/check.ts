// `kernmesh check FILE [--output json]`: what kernmesh would program from a config dump or a
// resources file, and what it would refuse. Exit 0: nothing refused; 1: something refused; 2: unusable input.
import { translate, validate } from '../translate/index.js';
import type { TranslateResult } from '../translate/index.js';
import { readXdsFile, type XdsFileContents } from '../xds/file.js';
import { TYPE, type Rejection, type XdsResource } from '../xds/types.js';

const USAGE = `usage: kernmesh check FILE [--output text|json]

Reads an Envoy admin config_dump (JSON or YAML), a {"resources": [...]} file of xDS resources, or a
ztunnel config dump, and prints the frontends and clusters kernmesh would program, what it would
refuse (as the NACK would say), and what it accepts without enforcing.
Exit status: 0 nothing refused, 1 something refused, 2 the file cannot be used.
`;

const SHORT_TYPES: Record<string, string> = {
  [TYPE.cluster]: 'cluster',
  [TYPE.endpoint]: 'endpoint',
  [TYPE.listener]: 'listener',
  [TYPE.route]: 'route',
  [TYPE.address]: 'address',
};

export interface CheckReport {
  frontends: {
    address: string;
    port: number;
    protocol: string;
    cluster: string;
    source: string;
    pending?: string;
  }[];
  clusters: {
    name: string;
    type: string | null;
    lbPolicy: string | null;
    kind: string;
    maxConnections?: number;
    endpoints: {
      address: string;
      port: number;
      priority: number;
      weight: number;
      health: string;
      locality: { region?: string; zone?: string; subZone?: string } | null;
    }[];
    waypoint: { address: string; port: number } | null;
    pending?: string;
  }[];
  rejected: { type: string; name: string; reason: string }[];
  notEnforced: { type: string; name: string; field: string }[];
  status: { type: string; name: string; note: string }[];
  outboundPolicy: string | null;
  dns: { hostname: string; family: string; refreshMs: number; clusters: string[] }[];
}

export async function runCheck(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  let output: 'text' | 'json' = 'text';
  const files: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--help' || a === '-h') {
      out.write(USAGE);
      return 0;
    }
    const inline = /^--output=(.*)$/.exec(a);
    const value = inline ? inline[1] : a === '--output' || a === '-o' ? argv[++i] : undefined;
    if (inline || a === '--output' || a === '-o') {
      if (value !== 'json' && value !== 'text')
        return usageError(out, `--output must be text or json, not "${value ?? ''}"`);
      output = value;
    } else if (a.startsWith('-')) {
      return usageError(out, `unknown flag ${a}`);
    } else {
      files.push(a);
    }
  }
  const file = files[0];
  if (!file || files.length > 1) return usageError(out, 'exactly one FILE is needed');

  let contents: XdsFileContents;
  try {
    contents = await readXdsFile(file);
  } catch (err) {
    process.stderr.write(`kernmesh check: ${(err as Error).message}\n`);
    return 2;
  }
  const report = buildCheckReport(contents);
  out.write(output === 'json' ? `${JSON.stringify(report, null, 2)}\n` : renderText(file, report));
  return report.rejected.length === 0 ? 0 : 1;
}

function usageError(out: NodeJS.WritableStream, message: string): number {
  process.stderr.write(`kernmesh check: ${message}\n`);
  out.write(USAGE);
  return 2;
}

/** What `check` reports: per-type validation (the NACKs) plus translation of everything at once. */
export function buildCheckReport(contents: XdsFileContents): CheckReport {
  const result = translate({ resources: contents.resources, waypoints: contents.waypoints });
  const rejected = mergeRejections(validateAll(contents.resources), result.rejected);
  const report = toReport(result, rejected);
  for (const note of contents.notes) report.status.push({ type: 'file', name: '', note });
  return report;
}

function validateAll(resources: XdsResource[]): Rejection[] {
  const byType = new Map<string, XdsResource[]>();
  for (const r of resources) byType.set(r.typeUrl, [...(byType.get(r.typeUrl) ?? []), r]);
  return [...byType].flatMap(([typeUrl, list]) => validate(typeUrl, list));
}

/** translate() repeats validate()'s findings; keep each reason once. */
function mergeRejections(a: Rejection[], b: Rejection[]): Rejection[] {
  const seen = new Set<string>();
  const out: Rejection[] = [];
  for (const r of [...a, ...b]) {
    const key = `${r.typeUrl}\u0000${r.name}\u0000${r.reason}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(r);
  }
  return out;
}

function toReport(result: TranslateResult, rejected: Rejection[]): CheckReport {
  const short = (t: string) => SHORT_TYPES[t] ?? t;
  return {
    frontends: result.frontends.map((f) => ({
      address: f.address,
      port: f.port,
      protocol: f.protocol,
      cluster: f.cluster,
      source: f.source,
      ...(f.pending ? { pending: f.pending } : {}),
    })),
    clusters: result.clusters.map((c) => ({
      name: c.name,
      type: c.type,
      lbPolicy: c.lbPolicy,
      kind: c.kind,
      ...(c.maxConnections !== undefined ? { maxConnections: c.maxConnections } : {}),
      endpoints: c.endpoints.map((e) => ({
        address: e.address,
        port: e.port,
        priority: e.priority,
        weight: e.weight,
        health: e.health,
        locality: e.locality ?? null,
      })),
      waypoint: c.waypoint,
      ...(c.pending ? { pending: c.pending } : {}),
    })),
    rejected: rejected.map((r) => ({ type: short(r.typeUrl), name: r.name, reason: r.reason })),
    notEnforced: result.notEnforced.map((n) => ({ type: short(n.typeUrl), name: n.name, field: n.field })),
    status: result.status.map((s) => ({ type: short(s.typeUrl), name: s.name, note: s.note })),
    outboundPolicy: result.outboundPolicy ?? null,
    dns: result.dnsQueries.map((q) => ({
      hostname: q.hostname,
      family: q.family,
      refreshMs: q.refreshMs,
      clusters: q.clusters,
    })),
  };
}

function renderText(file: string, r: CheckReport): string {
  const lines: string[] = [`kernmesh check ${file}`, ''];
  const programmed = r.frontends.filter((f) => !f.pending);
  lines.push(`Frontends: ${programmed.length} programmed, ${r.frontends.length - programmed.length} not yet`);
  for (const f of r.frontends) {
    const dest = f.cluster || '(no cluster yet)';
    lines.push(
      `  ${f.address}:${f.port}/${f.protocol} → ${dest}${f.pending ? `   [not programmed: ${f.pending}]` : ''}`,
    );
  }
  lines.push('', `Clusters: ${r.clusters.length}`);
  for (const c of r.clusters) {
    const cap = c.maxConnections !== undefined ? ` max_connections=${c.maxConnections}` : '';
    const wp = c.waypoint ? ` waypoint=${c.waypoint.address}:${c.waypoint.port}` : '';
    lines.push(`  ${c.name}  ${c.type ?? '-'} ${c.lbPolicy ?? '-'} ${c.kind}${cap}${wp}`);
    if (c.pending) lines.push(`    not programmed: ${c.pending}`);
    for (const e of c.endpoints) {
      const loc = e.locality
        ? ` ${[e.locality.region, e.locality.zone, e.locality.subZone].filter(Boolean).join('/')}`
        : '';
      lines.push(`    ${e.address}:${e.port} priority=${e.priority} weight=${e.weight} ${e.health}${loc}`);
    }
  }
  lines.push('', `Refused: ${r.rejected.length}`);
  for (const x of r.rejected) lines.push(`  ${x.type} ${x.name}: ${x.reason}`);
  const counts = new Map<string, number>();
  for (const n of r.notEnforced) {
    const field = n.field.replace(/\[\d+\]/g, '[]');
    const key = `${n.type} ${field}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  lines.push('', `Accepted but not enforced: ${r.notEnforced.length} (by field)`);
  for (const [k, n] of [...counts].sort()) lines.push(`  ${k}${n > 1 ? ` ×${n}` : ''}`);
  if (r.outboundPolicy) lines.push('', `Outbound traffic to unknown destinations: ${r.outboundPolicy}`);
  if (r.dns.length > 0) {
    lines.push('', 'DNS names to resolve:');
    for (const d of r.dns)
      lines.push(`  ${d.hostname} (${d.family}, every ${d.refreshMs} ms) for ${d.clusters.join(', ')}`);
  }
  lines.push('', 'Status:');
  for (const s of r.status) lines.push(`  ${s.type}${s.name ? ` ${s.name}` : ''}: ${s.note}`);
  return lines.join('\n') + '\n';
}
