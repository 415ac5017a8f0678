// translate(): accepted xDS resources of every type (+ waypoints, + resolved DNS names) in, the
// desired kernel model and everything an operator needs to know about it out. Pure: no I/O, no clock.
import { isIP } from 'node:net';
import {
  DEFAULT_OVERPROVISIONING,
  type DesiredState,
  type Endpoint,
  type Frontend,
  type LbPolicy,
  type Service,
  type Waypoint,
} from '../dataplane/model.js';
import { localityWeights } from '../dataplane/plan.js';
import { canonicalAddress } from '../net/address.js';
import { TYPE, resourceKey, type ServiceWaypoint, type XdsResource } from '../xds/types.js';
import { analysed } from './analysis.js';
import { CLUSTER_ANALYSER, type ParsedCluster, checkEndpoints } from './cluster.js';
import { ENDPOINT_ANALYSER, type ParsedEndpoint, analyseAssignment } from './endpoints.js';
import { LISTENER_ANALYSER, type ListenerResult, isPassthrough } from './listener.js';
import { ROUTE_ANALYSER, type Destination, type RouteConfigResult, destinationName } from './route.js';
import { analyserOf } from './validate.js';
import {
  type ClusterView,
  type DnsQuery,
  Findings,
  type FrontendView,
  type OutboundPolicy,
  type ResourceFindings,
  type ResourceUse,
  type TranslateInput,
  type TranslateResult,
} from './types.js';

/** Weighted flattening scales each member's share to this many units per unit of member weight. */
const SHARE_SCALE = 100;

interface ClusterState {
  parsed: ParsedCluster;
  view: ClusterView;
  /** Set when the cluster cannot be programmed (yet): waiting for EDS/DNS, or refused on its endpoints. */
  pending?: string;
  /** Kernel endpoints with their own weights (the dataplane weighs localities, plan.ts). */
  endpoints: Endpoint[];
  /** The ClusterLoadAssignment's policy.overprovisioning_factor, when set. */
  overprovisioningFactor?: number;
}

interface FrontendEntry {
  address: string;
  port: number;
  rank: number;
  source: string;
  listener: string;
  /** The RouteConfiguration (RDS) the destination comes from. */
  route?: string;
  destination?: Destination;
  pending?: string;
  /** The pending reason is a refusal (not a wait): the last accepted entries stay. */
  refused?: boolean;
}

/** What each resource became in this translation (programmed wins over waiting). */
class Uses {
  private readonly byKey = new Map<string, ResourceUse>();
  programmed(typeUrl: string, name: string | undefined): void {
    if (name) this.byKey.set(resourceKey(typeUrl, name), { typeUrl, name, use: 'programmed' });
  }
  waiting(typeUrl: string, name: string | undefined, why: string): void {
    if (!name) return;
    const k = resourceKey(typeUrl, name);
    if (!this.byKey.has(k)) this.byKey.set(k, { typeUrl, name, use: 'waiting', why });
  }
  list(): ResourceUse[] {
    return [...this.byKey.values()];
  }
}

export function translate(input: TranslateInput): TranslateResult {
  const findings = new Findings();
  const uses = new Uses();
  const byType = groupByType(input.resources, findings);

  const claByName = new Map<string, XdsResource>();
  for (const r of byType.get(TYPE.endpoint) ?? []) claByName.set(r.name, r);

  const dnsQueries = new Map<string, DnsQuery>();
  const clusters = new Map<string, ClusterState>();
  const usedClas = new Set<string>();
  const refusedClusters = new Set<string>();
  for (const r of byType.get(TYPE.cluster) ?? []) {
    const a = analysed(CLUSTER_ANALYSER, r.name, r.resource);
    const res = findings.continueWith(a.findings, TYPE.cluster, r.name);
    const parsed = a.parsed;
    if (parsed?.edsName) usedClas.add(parsed.edsName);
    const state =
      parsed && !res.refused
        ? buildCluster(parsed, claByName, input.dns, dnsQueries, findings, res)
        : undefined;
    if (state?.pending && !res.refused) uses.waiting(TYPE.cluster, state.parsed.name, state.pending);
    if (!state || res.refused) {
      refusedClusters.add(parsed?.name ?? r.name);
      continue;
    }
    clusters.set(state.parsed.name, state);
  }

  for (const r of input.refusedBySource ?? [])
    if (r.typeUrl === TYPE.cluster && !clusters.has(r.name)) refusedClusters.add(r.name);

  const routes = new Map<string, RouteConfigResult>();
  for (const r of byType.get(TYPE.route) ?? []) {
    const a = analysed(ROUTE_ANALYSER, r.name, r.resource);
    findings.merge(a.findings);
    routes.set(r.name, a.parsed);
  }

  let outboundPolicy: OutboundPolicy | undefined;
  const entries: FrontendEntry[] = [];
  const referencedRoutes = new Set<string>();
  for (const r of byType.get(TYPE.listener) ?? []) {
    const a = analysed(LISTENER_ANALYSER, r.name, r.resource);
    const res = findings.continueWith(a.findings, TYPE.listener, r.name);
    const lr = a.parsed;
    if (res.refused) continue;
    if (lr.outboundPolicy) outboundPolicy = lr.outboundPolicy;
    entries.push(...listenerEntries(lr, routes, referencedRoutes, res, uses));
  }
  for (const [name] of routes) {
    if (!referencedRoutes.has(name)) {
      findings.forResource(TYPE.route, name).note('not used by any outbound listener');
    }
  }

  const chosen = chooseFrontends(entries, findings);
  const waypointFor = waypointIndex(input.waypoints ?? [], clusters, chosen);
  const model = buildModel(
    chosen,
    { clusters, refusedClusters, previous: input.previous },
    waypointFor,
    findings,
    uses,
  );

  const views = [...clusters.values()].map((c) => c.view);
  for (const [name, cla] of claByName) {
    if (usedClas.has(name) || clusters.has(name)) continue;
    // EDS without CDS (an endpoints-only dump): shown so the operator sees them, never programmed.
    const a = analysed(ENDPOINT_ANALYSER, name, cla.resource);
    const res = findings.continueWith(a.findings, TYPE.endpoint, name);
    const parsed = a.parsed;
    for (const s of parsed.skipped) res.note(`${s}: not reachable by a connect() rewrite, skipped`);
    for (const e of parsed.endpoints) {
      if (e.internal) {
        res.note(
          `${e.path}: ${e.internal.endpointId} is reached through internal listener ${e.internal.listener} (HBONE)`,
        );
      }
    }
    views.push({
      name,
      type: null,
      lbPolicy: null,
      kind: 'endpoints',
      endpoints: parsed.endpoints.flatMap((e) => toKernelEndpoints(e, e.weight)),
      waypoint: null,
      pending: 'no cluster in the input uses this ClusterLoadAssignment',
    });
  }
  for (const v of views) {
    const wp = model.clusterWaypoints.get(v.name);
    if (wp) v.waypoint = wp;
  }

  const result: TranslateResult = {
    desired: model.desired,
    rejected: findings.rejected,
    notEnforced: findings.notEnforced,
    status: findings.status,
    clusters: views.sort((a, b) => cmp(a.name, b.name)),
    frontends: model.views,
    dnsQueries: [...dnsQueries.values()],
    uses: uses.list(),
  };
  if (outboundPolicy) result.outboundPolicy = outboundPolicy;
  return result;
}

function groupByType(resources: XdsResource[], findings: Findings): Map<string, XdsResource[]> {
  const out = new Map<string, XdsResource[]>();
  const seen = new Set<string>();
  for (const r of resources) {
    if (!analyserOf(r.typeUrl)) {
      if (r.typeUrl !== TYPE.address) {
        findings.forResource(r.typeUrl, r.name).note('resource type not used on the outbound kernel path');
      }
      continue;
    }
    const key = `${r.typeUrl}\u0000${r.name}`;
    if (seen.has(key)) {
      findings.forResource(r.typeUrl, r.name).note('given twice: the first one is used');
      continue;
    }
    seen.add(key);
    const list = out.get(r.typeUrl) ?? [];
    list.push(r);
    out.set(r.typeUrl, list);
  }
  return out;
}

function buildCluster(
  parsed: ParsedCluster,
  clas: Map<string, XdsResource>,
  dns: ReadonlyMap<string, readonly string[]> | undefined,
  dnsQueries: Map<string, DnsQuery>,
  findings: Findings,
  res: ResourceFindings,
): ClusterState {
  const view: ClusterView = {
    name: parsed.name,
    type: parsed.type,
    lbPolicy: parsed.lbPolicy,
    kind: parsed.kind,
    endpoints: [],
    waypoint: null,
  };
  if (parsed.maxConnections !== undefined) view.maxConnections = parsed.maxConnections;
  const state: ClusterState = { parsed, view, endpoints: [] };
  const setPending = (why: string) => {
    state.pending = why;
    view.pending = why;
  };
  if (parsed.kind !== 'endpoints') return state;

  let eps: ParsedEndpoint[] = [];
  if (parsed.edsName !== undefined) {
    const cla = clas.get(parsed.edsName);
    if (!cla) {
      setPending(`waiting for its ClusterLoadAssignment "${parsed.edsName}" (EDS)`);
      return state;
    }
    const a = analysed(ENDPOINT_ANALYSER, parsed.edsName, cla.resource);
    const claRes = findings.continueWith(a.findings, TYPE.endpoint, parsed.edsName);
    if (claRes.refused) {
      setPending(`its ClusterLoadAssignment "${parsed.edsName}" was refused`);
      return state;
    }
    eps = a.parsed.endpoints;
    if (a.parsed.overprovisioningFactor !== undefined)
      state.overprovisioningFactor = a.parsed.overprovisioningFactor;
    for (const s of a.parsed.skipped) claRes.note(`${s}: not reachable by a connect() rewrite, skipped`);
  } else if (parsed.loadAssignment) {
    const a = analyseAssignment(parsed.loadAssignment, res, 'load_assignment', parsed.dns !== undefined);
    eps = a.endpoints;
    if (a.overprovisioningFactor !== undefined) state.overprovisioningFactor = a.overprovisioningFactor;
    for (const s of a.skipped) res.note(`${s}: not reachable by a connect() rewrite, skipped`);
  }

  if (parsed.dns) eps = resolveDns(parsed, eps, dns, dnsQueries, setPending);

  checkEndpoints(parsed, eps, res);

  view.endpoints = eps.flatMap((e) => toKernelEndpoints(e, e.weight));
  state.endpoints = eps.flatMap((e) => toKernelEndpoints(e, e.weight));
  return state;
}

function resolveDns(
  parsed: ParsedCluster,
  eps: ParsedEndpoint[],
  dns: ReadonlyMap<string, readonly string[]> | undefined,
  queries: Map<string, DnsQuery>,
  setPending: (why: string) => void,
): ParsedEndpoint[] {
  const out: ParsedEndpoint[] = [];
  const waiting: string[] = [];
  const spec = parsed.dns;
  if (!spec) return eps;
  for (const e of eps) {
    if (isIP(e.address)) {
      out.push(e);
      continue;
    }
    const q = queries.get(e.address) ?? { hostname: e.address, ...spec, clusters: [] };
    // One query serves every cluster naming the host; the most frequent refresh wins.
    q.refreshMs = Math.min(q.refreshMs, spec.refreshMs);
    if (!q.clusters.includes(parsed.name)) q.clusters.push(parsed.name);
    queries.set(e.address, q);
    // AUTO and V4_PREFERRED keep both families: the kernel cannot send an IPv4 connect to an IPv6
    // address, so each VIP later takes the addresses of its own family.
    let addrs = (dns?.get(e.address) ?? []).filter((a) => familyAllowed(spec.family, a));
    // LOGICAL_DNS connects to the first address only (the first of each family here).
    if (parsed.type === 'LOGICAL_DNS') {
      addrs = [addrs.find((a) => isIP(a) === 4), addrs.find((a) => isIP(a) === 6)].filter(
        (a): a is string => a !== undefined,
      );
    }
    if (addrs.length === 0) waiting.push(e.address);
    for (const a of addrs) out.push({ ...e, address: a });
  }
  if (waiting.length > 0) setPending(`waiting for DNS resolution of ${waiting.join(', ')}`);
  return out;
}

function familyAllowed(family: DnsQuery['family'], address: string): boolean {
  const f = isIP(address);
  if (family === 'v4') return f === 4;
  if (family === 'v6') return f === 6;
  return f !== 0;
}

function sumBy<T extends { weight: number }>(
  items: T[],
  key: (x: T) => string | number,
): Map<string | number, number> {
  const totals = new Map<string | number, number>();
  for (const x of items) totals.set(key(x), (totals.get(key(x)) ?? 0) + x.weight);
  return totals;
}

function toKernelEndpoints(e: ParsedEndpoint, weight: number): Endpoint[] {
  const base = {
    weight,
    priority: e.priority,
    health: e.health,
    ...(e.locality ? { locality: e.locality } : {}),
    ...(e.localityWeight > 0 ? { localityWeight: e.localityWeight } : {}),
  };
  return [{ address: e.address, port: e.port }, ...e.additional].map((a) => ({ ...a, ...base }));
}

function listenerEntries(
  lr: ListenerResult,
  routes: Map<string, RouteConfigResult>,
  referenced: Set<string>,
  res: ResourceFindings,
  uses: Uses,
): FrontendEntry[] {
  const out: FrontendEntry[] = [];
  for (const c of lr.candidates) {
    const where = c.address === '*' ? `port ${c.port}` : `${c.address}:${c.port}`;
    const base: { port: number; rank: number; listener: string; route?: string } = {
      port: c.port,
      rank: c.rank,
      listener: lr.name,
    };
    if (c.target.kind === 'tcp') {
      const d = c.target.destination;
      if (c.address !== '*') {
        out.push({ ...base, address: c.address, source: `${lr.name} ${c.path}`, destination: d });
      } else if (
        d.kind === 'cluster' &&
        (d.cluster === 'PassthroughCluster' || d.cluster === 'BlackHoleCluster')
      ) {
        res.note(`${c.path}: other connections on ${where} follow the catch-all (${d.cluster})`);
      } else {
        res.note(
          `${c.path}: every address on ${where} goes to ${destinationName(d)}; a port-wide frontend cannot be programmed, those connections keep their destination`,
        );
      }
      continue;
    }
    const routeName = c.target.kind === 'rds' ? c.target.routeName : `${lr.name} (inline)`;
    const rc = c.target.kind === 'rds' ? routes.get(c.target.routeName) : c.target.routes;
    if (c.target.kind === 'rds') referenced.add(c.target.routeName);
    const source = `${lr.name} → route ${routeName}`;
    if (c.target.kind === 'rds') base.route = c.target.routeName;
    if (!rc) {
      if (c.address !== '*') {
        out.push({ ...base, address: c.address, source, pending: `waiting for RDS route "${routeName}"` });
      } else {
        const why = `waiting for RDS route "${routeName}" to learn the VIPs on ${where}`;
        res.note(`${c.path}: ${why}`);
        uses.waiting(TYPE.listener, lr.name, why);
      }
      continue;
    }
    if (c.address !== '*') {
      const vh =
        rc.virtualHosts.find((v) => domainMatchesAddress(v.domains, c.address, c.port)) ??
        (rc.virtualHosts.length === 1
          ? rc.virtualHosts[0]
          : rc.virtualHosts.find((v) => v.domains.includes('*')));
      if (!vh) {
        res.note(`${c.path}: route "${routeName}" has no virtual host for ${where}`);
      } else if (!vh.destination) {
        out.push({
          ...base,
          address: c.address,
          source,
          pending: `route "${routeName}" was refused`,
          refused: true,
        });
      } else {
        noteFallback(c.tcpFallback, vh.destination, c.path, where, res);
        out.push({ ...base, address: c.address, source, destination: vh.destination });
      }
      continue;
    }
    for (const vh of rc.virtualHosts) {
      for (const d of vh.domains) {
        const ip = domainAddress(d, c.port);
        if (!ip) continue;
        const entry = { ...base, address: ip, rank: 2, source: `${source} virtual host "${vh.name}"` };
        if (vh.destination) out.push({ ...entry, destination: vh.destination });
        else {
          out.push({
            ...entry,
            pending: `virtual host "${vh.name}" of route "${routeName}" was refused`,
            refused: true,
          });
        }
      }
    }
  }
  return out;
}

function noteFallback(
  tcp: Destination | undefined,
  http: Destination,
  path: string,
  where: string,
  res: ResourceFindings,
): void {
  if (tcp && destinationName(tcp) !== destinationName(http) && !isPassthrough(tcp)) {
    res.note(
      `${path}: non-HTTP connections to ${where} would go to ${destinationName(tcp)} in Envoy; the kernel sends every connection to ${destinationName(http)}`,
    );
  }
}

/** `10.0.0.5`, `10.0.0.5:80`, `[fd00::5]:80` or `fd00::5` → the IP, when the port (if any) is this listener's. */
export function domainAddress(domain: string, port: number): string | undefined {
  if (isIP(domain)) return domain;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(domain);
  if (v6?.[1] && isIP(v6[1]) === 6) return v6[2] === undefined || Number(v6[2]) === port ? v6[1] : undefined;
  const v4 = /^([0-9.]+):(\d+)$/.exec(domain);
  if (v4?.[1] && isIP(v4[1]) === 4 && Number(v4[2]) === port) return v4[1];
  return undefined;
}

function domainMatchesAddress(domains: string[], address: string, port: number): boolean {
  return domains.some((d) => domainAddress(d, port) === address);
}

/** The most specific source wins for an (address, port), as Envoy's listener and chain matching would. */
function chooseFrontends(entries: FrontendEntry[], findings: Findings): FrontendEntry[] {
  const best = new Map<string, FrontendEntry>();
  for (const e of entries) {
    const key = `${e.address}|${e.port}`;
    const cur = best.get(key);
    if (!cur || e.rank < cur.rank) {
      best.set(key, e);
    } else if (e.rank === cur.rank && nameOf(e) !== nameOf(cur)) {
      findings
        .forResource(TYPE.listener, e.listener)
        .note(`${e.address}:${e.port} is also routed by ${cur.source}, which is used: ${e.source} ignored`);
    }
  }
  return [...best.values()].sort((a, b) => cmp(a.address, b.address) || a.port - b.port);
}

function nameOf(e: FrontendEntry): string {
  return e.destination ? destinationName(e.destination) : (e.pending ?? '');
}

/** VIP:port → waypoint address, from the workload API (a waypoint named by hostname is found through its own VIP). */
function waypointIndex(
  waypoints: ServiceWaypoint[],
  clusters: Map<string, ClusterState>,
  frontends: FrontendEntry[],
): (address: string, port: number) => (Waypoint & { service: string }) | string | undefined {
  const byVip = new Map<string, ServiceWaypoint>();
  for (const w of waypoints) for (const vip of w.vips) byVip.set(vip, w);
  return (address, port) => {
    const w = byVip.get(address);
    if (!w) return undefined;
    if (w.ports.length > 0 && !w.ports.some((p) => p.servicePort === port)) return undefined;
    const service = `${w.namespace}/${w.hostname}`;
    if (w.waypoint.address) return { address: w.waypoint.address, port: w.waypoint.port, service };
    const host = w.waypoint.hostname;
    if (!host) return `service ${w.namespace}/${w.hostname} names a waypoint without an address or hostname`;
    const fqdn = host.hostname.includes('.')
      ? host.hostname
      : `${host.hostname}.${host.namespace}.svc.cluster.local`;
    const suffix = `||${fqdn}`;
    const f = frontends.find(
      (x) =>
        x.destination?.kind === 'cluster' &&
        x.destination.cluster.startsWith('outbound|') &&
        x.destination.cluster.endsWith(suffix) &&
        clusters.has(x.destination.cluster),
    );
    if (!f) return `waiting for the VIP of waypoint ${fqdn} (no outbound listener for it yet)`;
    return { address: f.address, port: w.waypoint.port, service };
  };
}

interface Model {
  desired: DesiredState;
  views: FrontendView[];
  clusterWaypoints: Map<string, Waypoint>;
}

interface ClusterIndex {
  clusters: Map<string, ClusterState>;
  refusedClusters: Set<string>;
  previous: DesiredState | undefined;
}

function buildModel(
  chosen: FrontendEntry[],
  index: ClusterIndex,
  waypointFor: (address: string, port: number) => (Waypoint & { service: string }) | string | undefined,
  findings: Findings,
  uses: Uses,
): Model {
  const services = new Map<string, Service>();
  const frontends: Frontend[] = [];
  const views: FrontendView[] = [];
  const clusterWaypoints = new Map<string, Waypoint>();
  const kept: { entry: FrontendEntry; view: FrontendView; why: string }[] = [];

  // A destination used from both address families becomes two services, each with its family's endpoints.
  const families = new Map<string, Set<number>>();
  for (const e of chosen) {
    if (!e.destination) continue;
    const n = destinationName(e.destination);
    families.set(n, (families.get(n) ?? new Set()).add(isIP(e.address)));
  }

  for (const e of chosen) {
    const view: FrontendView = {
      address: e.address,
      port: e.port,
      protocol: 'tcp',
      cluster: e.destination ? destinationName(e.destination) : '',
      source: e.source,
    };
    views.push(view);
    const members = !e.destination
      ? []
      : e.destination.kind === 'cluster'
        ? [e.destination.cluster]
        : e.destination.members.map((m) => m.cluster);
    const mark = (pending: string | undefined) => {
      for (const [typeUrl, name] of [
        [TYPE.listener, e.listener],
        [TYPE.route, e.route],
        ...members.map((m) => [TYPE.cluster, m]),
        ...members.map((m) => [TYPE.endpoint, index.clusters.get(m)?.parsed.edsName]),
      ] as [string, string | undefined][]) {
        if (pending === undefined) uses.programmed(typeUrl, name);
        else uses.waiting(typeUrl, name, `${e.address}:${e.port}: ${pending}`);
      }
    };
    if (!e.destination) {
      view.pending = e.pending ?? 'no destination';
      if (e.refused) kept.push({ entry: e, view, why: view.pending });
      else mark(view.pending);
      continue;
    }
    const family = isIP(e.address);
    const wp = waypointFor(e.address, e.port);
    if (typeof wp === 'string') {
      view.pending = wp;
      findings.forResource(TYPE.address, `${e.address}:${e.port}`).note(wp);
      mark(wp);
      continue;
    }
    let service: Service | { pending: string; refused: boolean };
    if (wp) {
      const waypoint = { address: wp.address, port: wp.port };
      service = {
        name: `waypoint|${wp.address}|${wp.port}`,
        kind: 'waypoint',
        lbPolicy: 'random',
        endpoints: [],
        waypoint,
      };
      if (e.destination.kind === 'cluster') clusterWaypoints.set(e.destination.cluster, waypoint);
    } else {
      const both = (families.get(destinationName(e.destination))?.size ?? 0) > 1;
      service = serviceFor(e.destination, index, family, both);
    }
    if ('pending' in service) {
      view.pending = service.pending;
      if (service.refused) kept.push({ entry: e, view, why: service.pending });
      else mark(service.pending);
      continue;
    }
    if (!services.has(service.name)) services.set(service.name, service);
    frontends.push({ address: e.address, port: e.port, protocol: 'tcp', service: service.name });
    mark(undefined);
    if (wp) uses.programmed(TYPE.address, wp.service);
  }
  // A refused service keeps its last accepted entries; one that never had any is not rewritten.
  for (const { entry, view, why } of kept) {
    const before = index.previous?.frontends.find(
      (f) => f.port === entry.port && sameAddress(f.address, entry.address),
    );
    const service = index.previous?.services.find((s) => s.name === before?.service);
    if (!before || !service) {
      findings
        .forResource(TYPE.listener, entry.listener)
        .note(`${entry.address}:${entry.port}: ${why}; not rewritten (it has no earlier entries to keep)`);
      continue;
    }
    if (!services.has(service.name)) services.set(service.name, service);
    frontends.push(before);
    view.cluster = service.name;
    delete view.pending;
    findings
      .forResource(TYPE.listener, entry.listener)
      .note(
        `${entry.address}:${entry.port}: ${why}; it keeps its last accepted entries (service ${service.name})`,
      );
  }
  frontends.sort((a, b) => cmp(a.address, b.address) || a.port - b.port);
  return {
    desired: { services: [...services.values()].sort((a, b) => cmp(a.name, b.name)), frontends },
    views,
    clusterWaypoints,
  };
}

/** The kernel service for a destination and address family, or why there is none yet. */
function serviceFor(
  d: Destination,
  { clusters, refusedClusters }: ClusterIndex,
  family: number,
  splitFamilies: boolean,
): Service | { pending: string; refused: boolean } {
  const name = splitFamilies && family === 6 ? `${destinationName(d)}|ipv6` : destinationName(d);
  const members = d.kind === 'cluster' ? [{ cluster: d.cluster, weight: 1 }] : d.members;
  const states: ClusterState[] = [];
  for (const m of members) {
    const c = clusters.get(m.cluster);
    if (!c) {
      if (d.kind === 'cluster' && m.cluster === 'PassthroughCluster') {
        return { name: m.cluster, kind: 'passthrough', lbPolicy: 'random', endpoints: [] };
      }
      if (d.kind === 'cluster' && m.cluster === 'BlackHoleCluster') {
        return { name: m.cluster, kind: 'blackhole', lbPolicy: 'random', endpoints: [] };
      }
      if (refusedClusters.has(m.cluster))
        return { pending: `cluster ${m.cluster} was refused`, refused: true };
      return { pending: `cluster ${m.cluster} is not among the accepted clusters`, refused: false };
    }
    if (c.pending) return { pending: `cluster ${m.cluster}: ${c.pending}`, refused: false };
    states.push(c);
  }
  const only = states[0];
  if (d.kind === 'cluster' && only) {
    const s: Service = {
      name: only.parsed.kind === 'endpoints' ? name : only.parsed.name,
      kind: only.parsed.kind,
      lbPolicy: only.parsed.lbPolicy,
      endpoints:
        only.parsed.kind === 'endpoints' ? only.endpoints.filter((x) => isIP(x.address) === family) : [],
    };
    if (only.parsed.maxConnections !== undefined) s.maxConnections = only.parsed.maxConnections;
    if (only.parsed.activeRequestBias !== undefined) s.activeRequestBias = only.parsed.activeRequestBias;
    if (only.parsed.kind === 'endpoints') Object.assign(s, loadBalancing(only));
    return s;
  }
  if (states.some((s) => s.parsed.kind !== 'endpoints')) {
    return {
      pending: 'weighted clusters mixing passthrough or blackhole clusters cannot be chosen per connection',
      refused: false,
    };
  }
  // Weighted clusters, chosen per connection: one service whose endpoint weights keep each member's share.
  const endpoints: Endpoint[] = [];
  let heaviest = members[0];
  members.forEach((m, i) => {
    const c = states[i];
    if (!c) return;
    if (heaviest && m.weight > heaviest.weight) heaviest = m;
    const mine = memberWeights(
      c,
      c.endpoints.filter((x) => isIP(x.address) === family),
    );
    const totals = sumBy(mine, (x) => x.priority);
    for (const ep of mine) {
      const total = totals.get(ep.priority) ?? 1;
      const { localityWeight: _, ...plain } = ep;
      endpoints.push({
        ...plain,
        weight: Math.max(1, Math.round((m.weight * ep.weight * SHARE_SCALE) / total)),
      });
    }
  });
  const heaviestState = clusters.get(heaviest?.cluster ?? '');
  const policyOf = heaviestState?.parsed;
  const lbPolicy: LbPolicy = policyOf?.lbPolicy ?? 'round_robin';
  const s: Service = { name, kind: 'endpoints', lbPolicy, endpoints };
  if (policyOf?.activeRequestBias !== undefined) s.activeRequestBias = policyOf.activeRequestBias;
  // the heaviest member's settings, as for the policy; its locality weights are already in the weights
  if (heaviestState) {
    const { localityWeighted: _, ...rest } = loadBalancing(heaviestState);
    Object.assign(s, rest);
  }
  return s;
}

/** A cluster's load-balancing settings beyond the policy, as the kernel service carries them. */
function loadBalancing(c: ClusterState): Partial<Service> {
  const p = c.parsed;
  const out: Partial<Service> = {};
  if (c.overprovisioningFactor !== undefined) out.overprovisioningFactor = c.overprovisioningFactor;
  if (p.panicThreshold !== undefined) out.panicThreshold = p.panicThreshold;
  if (p.failTrafficOnPanic) out.failTrafficOnPanic = true;
  if (p.localityWeighted) out.localityWeighted = true;
  if (p.outlierDetection) out.outlierDetection = p.outlierDetection;
  if (p.connectTimeoutMs !== undefined) out.connectTimeoutMs = p.connectTimeoutMs;
  if (p.closeConnections) out.closeConnections = p.closeConnections;
  return out;
}

/**
 * A weighted-cluster member's endpoints with its locality weighting folded into their weights
 * (Envoy's shares for its EDS health at this moment; plan.ts's localityShares), since the
 * synthetic service mixes members with different localities.
 */
function memberWeights(c: ClusterState, eps: Endpoint[]): Endpoint[] {
  if (!c.parsed.localityWeighted) return eps;
  const overprovisioning = c.overprovisioningFactor ?? DEFAULT_OVERPROVISIONING;
  const out: Endpoint[] = [];
  for (const priority of new Set(eps.map((e) => e.priority))) {
    const mine = eps.filter((e) => e.priority === priority && e.health !== 'draining');
    const key = (e: Endpoint): string => `${e.address}|${e.port}`;
    const shares = localityWeights(
      mine.map((e) => ({
        key: key(e),
        weight: e.weight,
        healthy: e.health === 'healthy' || e.health === 'unknown',
        locality: `${e.locality?.region ?? ''}/${e.locality?.zone ?? ''}/${e.locality?.subZone ?? ''}`,
        localityWeight: e.localityWeight ?? 0,
      })),
      overprovisioning,
    );
    if (!shares) {
      out.push(...mine);
      continue;
    }
    for (const e of mine) {
      const weight = shares.get(key(e));
      if (weight) out.push({ ...e, weight });
    }
  }
  return out;
}

/** Addresses compared as the kernel keys them: a previous state rebuilt from the maps spells IPv6 canonically. */
function sameAddress(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    return canonicalAddress(a) === canonicalAddress(b);
  } catch {
    return false;
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
