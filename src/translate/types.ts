// What translate/ hands to its callers besides the kernel model: the operator-facing view of every
// cluster and frontend, what was refused, what is accepted but not enforced, and per-resource notes.
import type { DesiredState, Endpoint, LbPolicy, ServiceKind, Waypoint } from '../dataplane/model.js';
import type { Rejection, ServiceWaypoint, XdsResource } from '../xds/types.js';

/** A field accepted because it changes no routing, but which the kernel does not act on. */
export interface NotEnforced {
  typeUrl: string;
  name: string;
  /** Path inside the resource, e.g. `outlier_detection` or `filter_chains[0].filters[1]...idle_timeout`. */
  field: string;
}

/** A status line for one resource, in the operator's words ("inbound listener: not on the outbound kernel path"). */
export interface StatusNote {
  typeUrl: string;
  name: string;
  note: string;
}

/** A hostname of a STRICT_DNS/LOGICAL_DNS cluster that the agent must resolve (I/O stays outside translate). */
export interface DnsQuery {
  hostname: string;
  /** Envoy's dns_lookup_family: which address families to keep. */
  family: 'v4' | 'v6' | 'any' | 'v4_preferred' | 'all';
  /** dns_refresh_rate in milliseconds (Envoy's default 5000). */
  refreshMs: number;
  respectTtl: boolean;
  clusters: string[];
}

export interface ClusterView {
  name: string;
  /** Envoy's discovery type: EDS, STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST; null when only a ClusterLoadAssignment was seen. */
  type: string | null;
  lbPolicy: LbPolicy | null;
  kind: ServiceKind;
  maxConnections?: number;
  endpoints: Endpoint[];
  waypoint: Waypoint | null;
  /** Why this cluster is not (yet) programmed, when it is not. */
  pending?: string;
}

export interface FrontendView {
  address: string;
  port: number;
  protocol: 'tcp' | 'udp';
  /** The Envoy cluster the traffic goes to (or the synthetic weighted-cluster name). */
  cluster: string;
  /** The listener (and route) the frontend comes from. */
  source: string;
  /** Why this frontend is not programmed, when it is not (cluster missing, waiting for RDS/EDS...). */
  pending?: string;
}

/** Istio's outboundTrafficPolicy as virtualOutbound's catch-all chain says it. */
export type OutboundPolicy = 'passthrough' | 'blackhole';

export interface TranslateInput {
  /** Accepted resources of every type (CDS, EDS, LDS, RDS); order does not matter. */
  resources: XdsResource[];
  /** Services with a waypoint, from the workload API. */
  waypoints?: ServiceWaypoint[];
  /** Resolved addresses of DNS cluster hostnames (from `dnsQueries` of an earlier translate). */
  dns?: ReadonlyMap<string, readonly string[]>;
  /** The last desired state: a service refused now keeps the entries it had there (DESIGN: never worse than before). */
  previous?: DesiredState;
  /**
   * Resources the source refused (NACKed). A refused cluster absent from `resources` (refused since
   * the agent started, so no accepted version is held) is treated as refused, not as unknown: its
   * frontends keep their entries from `previous`.
   */
  refusedBySource?: { typeUrl: string; name: string }[];
}

/** What one input resource became: part of a programmed frontend, or waiting (and why). */
export interface ResourceUse {
  typeUrl: string;
  name: string;
  use: 'programmed' | 'waiting';
  why?: string;
}

export interface TranslateResult {
  desired: DesiredState;
  rejected: Rejection[];
  notEnforced: NotEnforced[];
  status: StatusNote[];
  clusters: ClusterView[];
  frontends: FrontendView[];
  dnsQueries: DnsQuery[];
  /** Resources programmed or waiting; refused ones are in `rejected`, the rest are not used. */
  uses: ResourceUse[];
  /** undefined when no virtualOutbound listener was given. */
  outboundPolicy?: OutboundPolicy;
}

/** Collects findings for one resource; every refusal carries its path inside the resource. */
export class Findings {
  readonly rejected: Rejection[] = [];
  readonly notEnforced: NotEnforced[] = [];
  readonly status: StatusNote[] = [];

  forResource(typeUrl: string, name: string): ResourceFindings {
    return new ResourceFindings(this, typeUrl, name);
  }

  /**
   * Takes in the findings of an earlier analysis of one resource (cached, see analyse.ts) and goes on
   * collecting for it: the returned collector counts the refusals already made.
   */
  continueWith(earlier: Findings, typeUrl: string, name: string): ResourceFindings {
    this.merge(earlier);
    const res = new ResourceFindings(this, typeUrl, name);
    res.countEarlier(earlier.rejected);
    return res;
  }

  merge(other: Findings): void {
    this.rejected.push(...other.rejected);
    this.notEnforced.push(...other.notEnforced);
    this.status.push(...other.status);
  }
}

export class ResourceFindings {
  private refusals = 0;
  private wholeRefusals = 0;
  private inPart = false;
  constructor(
    private readonly all: Findings,
    readonly typeUrl: string,
    readonly name: string,
  ) {}

  /** Counts refusals made by an earlier analysis of the same resource. */
  countEarlier(rejected: readonly Rejection[]): void {
    for (const r of rejected) {
      this.refusals++;
      if (!r.partial) this.wholeRefusals++;
    }
  }

  refuse(path: string, reason: string): void {
    this.refusals++;
    if (!this.inPart) this.wholeRefusals++;
    this.all.rejected.push({
      typeUrl: this.typeUrl,
      name: this.name,
      reason: path ? `${path}: ${reason}` : reason,
      ...(this.inPart ? { partial: true } : {}),
    });
  }

  /**
   * Runs fn with its refusals scoped to one part of the resource that translate skips on its own
   * (a virtual host): the xDS client may apply the rest of the resource while NACKing them.
   */
  part<T>(fn: () => T): T {
    const outer = this.inPart;
    this.inPart = true;
    try {
      return fn();
    } finally {
      this.inPart = outer;
    }
  }

  notEnforced(field: string): void {
    this.all.notEnforced.push({ typeUrl: this.typeUrl, name: this.name, field });
  }

  note(note: string): void {
    this.all.status.push({ typeUrl: this.typeUrl, name: this.name, note });
  }

  get refused(): boolean {
    return this.refusals > 0;
  }

  /** Refused as a whole: some refusal is not scoped to a part (see part()). */
  get refusedWhole(): boolean {
    return this.wholeRefusals > 0;
  }

  /** How many refusals so far: compare before and after a part to know whether that part was refused. */
  get refusalCount(): number {
    return this.refusals;
  }

  /** A scratch collector whose findings are kept only if the caller merges them. */
  static scratch(typeUrl: string, name: string): { findings: Findings; res: ResourceFindings } {
    const findings = new Findings();
    return { findings, res: findings.forResource(typeUrl, name) };
  }
}

export function joinPath(base: string, field: string): string {
  if (!base) return field;
  return field.startsWith('[') ? `${base}${field}` : `${base}.${field}`;
}
