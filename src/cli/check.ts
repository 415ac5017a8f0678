// `kernmesh check FILE [--output json]`: what kernmesh would program from a config dump, a resources
// file or a ztunnel dump, and what it would refuse. The file goes through the agent's own file source
// (the same acceptance as istiod's pushes), then translate. Per type, every resource of the input is
// counted once: programmed, waiting (why), refused (why) or not used (why), and the numbers add up.
// Exit 0: nothing refused; 1: something refused; 2: unusable input.
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { translate, validateAgainst } from '../translate/index.js';
import type { TranslateResult } from '../translate/index.js';
import type { FileResource } from '../xds/config-file.js';
import { XdsFileSource } from '../xds/file-source.js';
import { readAddresses } from '../xds/waypoints.js';
import { table } from './view.js';
import { RESOURCE_TYPES, resourceType } from '../xds/resource-types/index.js';
import { TYPE, rejectionKey, resourceKey, type Rejection, type XdsResource } from '../xds/types.js';

const USAGE = `usage: kernmesh check FILE [--output text|json]

Reads an Envoy admin config_dump (JSON or YAML, either proto3 JSON spelling), a {"resources": [...]}
file of xDS resources, or a ztunnel config dump, and prints the frontends and clusters kernmesh would
program, what it would refuse (as the NACK would say), what it accepts without enforcing, and per
resource type how many resources were programmed, are waiting, were refused or are not used.
Exit status: 0 nothing refused, 1 something refused, 2 the file cannot be used.
`;

const SHORT_TYPES: Record<string, string> = Object.fromEntries(
  RESOURCE_TYPES.map((t) => [t.typeUrl, t.noun]),
);

/** One resource type's resources, each counted once. */
export interface TypeCount {
  type: string;
  label: string;
  held: number;
  programmed: number;
  waiting: { name: string; why: string }[];
  refused: { name: string; why: string }[];
  notUsed: { name: string; why: string }[];
}

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
  /** The file's layout as read ("Envoy config_dump (lowerCamelCase)", "ztunnel config dump (lists...)"). */
  layout: string;
  /** Per resource type: every resource of the input counted once; the numbers add up to `held`. */
  counts: TypeCount[];
}

export async function runCheck(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  await Promise.resolve();
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

  let report: CheckReport;
  try {
    report = checkText(readFileSync(file, 'utf8'), file);
  } catch (err) {
    process.stderr.write(`kernmesh check: ${file}: ${(err as Error).message.replace(`${file}: `, '')}\n`);
    return 2;
  }
  out.write(output === 'json' ? `${JSON.stringify(report, null, 2)}\n` : renderText(file, report));
  return report.rejected.length === 0 ? 0 : 1;
}

function usageError(out: NodeJS.WritableStream, message: string): number {
  process.stderr.write(`kernmesh check: ${message}\n`);
  out.write(USAGE);
  return 2;
}

/** Reads a file's text through the agent's file source and translates what it accepted. Throws when unusable. */
export function checkText(text: string, file: string): CheckReport {
  const source = new XdsFileSource(file, {
    validate: validateAgainst,
    logger: pino({ level: 'silent' }),
  });
  try {
    source.load(text);
    return buildCheckReport(source);
  } finally {
    source.stop();
  }
}

/** The accepted config (plus what nothing subscribed to, analysed for the operator) through translate. */
export function buildCheckReport(source: XdsFileSource): CheckReport {
  const config = source.config;
  const unused = source.unused();
  const accepted = RESOURCE_TYPES.filter((t) => t.configDump).flatMap((t) => config.snapshot(t.typeUrl));
  const extra: XdsResource[] = unused
    .filter((r) => r.resource && resourceType(r.typeUrl)?.configDump)
    .map((r) => ({ typeUrl: r.typeUrl, name: r.name, version: r.version, resource: r.resource! }));
  const unusedRefusals: Rejection[] = unused
    .filter((r) => r.error !== undefined)
    .map((r) => ({ typeUrl: r.typeUrl, name: r.name, reason: r.error! }));
  // As the agent does: what the source refused is refused for translate too (not merely unknown).
  const result = translate({
    resources: [...accepted, ...extra],
    waypoints: config.waypoints(),
    refusedBySource: [...config.rejections(), ...unusedRefusals],
  });
  const rejected = mergeRejections([...config.rejections(), ...unusedRefusals], result.rejected);
  const report = toReport(result, rejected);
  for (const note of source.fileNotes()) report.status.push({ type: 'file', name: '', note });
  const addresses = readAddresses(config.snapshot(TYPE.address));
  for (const n of addresses.notes) report.status.push({ type: 'address', name: n.name, note: n.note });
  report.layout = source.status().layout;
  report.counts = countByType(source, result, rejected, addresses.notes);
  return report;
}

/** Every resource of the file, deduplicated as the file source reads it (first of a name wins). */
function fileResources(source: XdsFileSource): FileResource[] {
  const seen = new Set<string>();
  const out: FileResource[] = [];
  for (const r of source.all()) {
    const k = resourceKey(r.typeUrl, r.name);
    if (seen.has(k)) continue;
    seen.add(k);
    out.push(r);
  }
  return out;
}

function countByType(
  source: XdsFileSource,
  result: TranslateResult,
  rejected: Rejection[],
  addressNotes: { name: string; note: string }[],
): TypeCount[] {
  const refusedWhole = new Map<string, string[]>();
  for (const r of rejected) {
    if (r.partial) continue;
    const k = resourceKey(r.typeUrl, r.name);
    refusedWhole.set(k, [...(refusedWhole.get(k) ?? []), r.reason]);
  }
  const uses = new Map(result.uses.map((u) => [resourceKey(u.typeUrl, u.name), u]));
  const notes = new Map<string, string>();
  for (const n of [...result.status, ...addressNotes.map((a) => ({ ...a, typeUrl: TYPE.address }))]) {
    const k = resourceKey(n.typeUrl, n.name);
    if (!notes.has(k)) notes.set(k, n.note);
  }
  const unused = new Set(source.unused().map((r) => resourceKey(r.typeUrl, r.name)));
  const counts = new Map<string, TypeCount>();
  for (const t of RESOURCE_TYPES)
    counts.set(t.typeUrl, {
      type: t.noun,
      label: t.label,
      held: 0,
      programmed: 0,
      waiting: [],
      refused: [],
      notUsed: [],
    });
  for (const r of fileResources(source)) {
    const c = counts.get(r.typeUrl);
    if (!c) continue;
    c.held++;
    const k = resourceKey(r.typeUrl, r.name);
    const refusal = refusedWhole.get(k);
    const use = uses.get(k);
    if (refusal) c.refused.push({ name: r.name, why: refusal.join('; ') });
    else if (use?.use === 'programmed') c.programmed++;
    else if (use?.use === 'waiting') c.waiting.push({ name: r.name, why: use.why ?? '' });
    else {
      const why =
        notes.get(k) ??
        (r.typeUrl === TYPE.authorization
          ? 'inbound L4 authorization: enforced on enrolled pods by `kernmesh run --kubernetes --authorization`'
          : undefined) ??
        (unused.has(k)
          ? `nothing in the input names this ${resourceType(r.typeUrl)?.noun ?? 'resource'}`
          : 'no programmed frontend uses it');
      c.notUsed.push({ name: r.name, why });
    }
  }
  return [...counts.values()].filter((c) => c.held > 0);
}

/** The source's refusals and translate's, each reason once. */
function mergeRejections(a: Rejection[], b: Rejection[]): Rejection[] {
  const seen = new Set<string>();
  const out: Rejection[] = [];
  for (const r of [...a, ...b]) {
    const key = rejectionKey(r);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ typeUrl: r.typeUrl, name: r.name, reason: r.reason, ...(r.partial ? { partial: true } : {}) });
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
    layout: '',
    counts: [],
  };
}

function renderText(file: string, r: CheckReport): string {
  const lines: string[] = [`kernmesh check ${file}`, `Read as: ${r.layout}`, ''];
  lines.push(
    table([
      ['TYPE', 'HELD', 'PROGRAMMED', 'WAITING', 'REFUSED', 'NOT USED'],
      ...r.counts.map((c) => [
        `${c.type} (${c.label})`,
        String(c.held),
        String(c.programmed),
        String(c.waiting.length),
        String(c.refused.length),
        String(c.notUsed.length),
      ]),
    ]).trimEnd(),
  );
  for (const c of r.counts) {
    for (const w of c.waiting) lines.push(`  ${c.type} ${w.name}: waiting: ${w.why}`);
    for (const n of c.notUsed) lines.push(`  ${c.type} ${n.name}: not used: ${n.why}`);
  }
  lines.push('');
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
