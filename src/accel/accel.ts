// Same-node acceleration in the kernel (bpf/accel.bpf.c): loads the object with its maps pinned,
// attaches it to cgroups, writes the rules, turns it on and off, and reads its counters.
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';

import { possibleCpus, type BpfMap, type BpfObject } from '../../native/index.js';
import { attachPrograms, bpfObjectPath, openObject, type CgroupAttachment } from '../../native/objects.js';
import { sumPerCpuU64, u32 } from '../../native/spec.js';
import {
  ACCEL_COUNTER_SLOTS,
  ACCEL_COUNTERS,
  ACCEL_SPEC,
  CAPTURE_MATCH,
  CAPTURE_COUNTERS,
  CAPTURE_WINDOW_LAYOUT,
  decodeConfig,
  decodeRuleStats,
  encodeCaptureConfig,
  encodeCaptureEndpoint,
  encodeConfig,
  encodeRule,
  RULE_STATS_LAYOUT,
  type AccelConfig,
  type AccelCounterName,
  type CaptureConfig,
  type CaptureCounterName,
  type RuleStats,
} from './codec.js';
import { formatAccelRule, MAX_ACCEL_RULES, parseAccelRules, type AccelRule } from './rules.js';

export interface AcceleratorOptions {
  /** bpffs directory; maps are pinned here by name (shared with telemetry's object). */
  pinDir: string;
  objectPath?: string;
  log?: Logger;
}

export type AccelCounters = Record<AccelCounterName, bigint>;
export type CaptureCounters = Record<CaptureCounterName, bigint>;

/** The rule set in force and where it came from (a file, the control socket, or none). */
export interface RulesInForce {
  source: string;
  rules: AccelRule[];
  appliedAt: string;
}

/** A rule in force with what it decided since it was loaded. */
export interface RuleWithStats extends RuleStats {
  rule: AccelRule;
}

/** One km_capture_endpoints entry: an address, a port (0: any) and the filters it satisfies. */
export interface CaptureEndpoint {
  address: string;
  port: number;
  service?: boolean;
  pod?: boolean;
}

/** cgroup programs of bpf/accel.bpf.o, in attach order (CgroupAttachment.links follows it). */
export const ACCEL_CGROUP_PROGRAMS = ['km_accel_sock_create', 'km_accel_sockops'] as const;

export class Accelerator {
  private inForce: RulesInForce | undefined;

  private constructor(
    readonly object: BpfObject,
    private readonly log?: Logger,
  ) {}

  /** Loads bpf/accel.bpf.o (reusing maps already pinned in pinDir) and hooks sk_msg to the sockhash. */
  static open(opts: AcceleratorOptions): Accelerator {
    const path = opts.objectPath ?? bpfObjectPath('accel.bpf.o');
    let object: BpfObject;
    try {
      object = openObject(path, ACCEL_SPEC, { pinDir: opts.pinDir, ...(opts.log ? { log: opts.log } : {}) });
    } catch (e) {
      throw new Error(`load acceleration object ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      // replaces a previous run's program on the pinned sockhash (for sockets added from now on)
      object.program('km_accel_redirect').attachSockmap(object.map('km_accel_sockhash'));
    } catch (e) {
      object.close();
      throw new Error(`attach sk_msg to km_accel_sockhash: ${(e as Error).message}`, { cause: e });
    }
    return new Accelerator(object, opts.log);
  }

  private get configMap(): BpfMap {
    return this.object.map('km_accel_config');
  }

  /**
   * Attaches socket creation (owner capture) and sockops to a cgroup through bpf_link, next to any
   * other program of the same hook. With linkPinDir, the links stay after this process exits.
   */
  attach(cgroup: string, linkPinDir?: string): CgroupAttachment {
    return attachPrograms(this.object, ACCEL_CGROUP_PROGRAMS, cgroup, linkPinDir);
  }

  config(): AccelConfig {
    const v = this.configMap.lookup(u32(0));
    if (!v) throw new Error('km_accel_config has no entry 0');
    return decodeConfig(v);
  }

  /**
   * On: new local connections are inserted in the sockhash. Off: none are, and open accelerated
   * sockets send their next messages through the stack (they stay there, so bytes keep their order).
   */
  setEnabled(enabled: boolean): void {
    this.configMap.update(u32(0), encodeConfig({ ...this.config(), enabled }));
    this.log?.info({ accelerate: enabled }, 'acceleration %s', enabled ? 'on' : 'off');
  }

  /**
   * Writes the rules to the idle bank, then flips the live bank: a connection is matched against
   * either the old set or the new one, never a mix. An empty list accelerates every local connection.
   */
  setRules(rules: AccelRule[], source = 'rules'): void {
    if (rules.length > MAX_ACCEL_RULES)
      throw new Error(`${rules.length} acceleration rules, at most ${MAX_ACCEL_RULES}`);
    const rulesMap = this.object.map('km_accel_rules');
    const statsMap = this.object.map('km_accel_rule_stats');
    const cfg = this.config();
    const idle = cfg.ruleBank ^ 1;
    // A rule's counters start at zero with the rule (before its bank goes live).
    const zero = Buffer.alloc(possibleCpus() * RULE_STATS_LAYOUT.size);
    for (let i = 0; i < MAX_ACCEL_RULES; i++) statsMap.update(u32(idle * MAX_ACCEL_RULES + i), zero);
    rules.forEach((r, i) => rulesMap.update(u32(idle * MAX_ACCEL_RULES + i), encodeRule(r)));
    const counts: [number, number] = [...cfg.ruleCount];
    counts[idle] = rules.length;
    this.configMap.update(u32(0), encodeConfig({ ...cfg, ruleCount: counts }));
    this.configMap.update(u32(0), encodeConfig({ ...cfg, ruleCount: counts, ruleBank: idle }));
    this.inForce = { source, rules, appliedAt: new Date().toISOString() };
    this.log?.info({ rules: rules.map(formatAccelRule), source }, 'acceleration rules applied');
  }

  /** The rules this process put in force (undefined before the first setRules). */
  rulesInForce(): RulesInForce | undefined {
    return this.inForce;
  }

  /** Each live rule with its counters (the live bank: the rules connections are matched against now). */
  ruleStats(): RuleWithStats[] {
    const cfg = this.config();
    const statsMap = this.object.map('km_accel_rule_stats');
    const rules = this.inForce?.rules ?? [];
    return rules.slice(0, cfg.ruleCount[cfg.ruleBank]).map((rule, i) => {
      const v = statsMap.lookup(u32(cfg.ruleBank * MAX_ACCEL_RULES + i));
      return { rule, ...(v ? decodeRuleStats(v) : { matched: 0n, accelerated: 0n, refused: 0n }) };
    });
  }

  /**
   * Starts copying redirected messages that match into km_capture_ring. Endpoints (the resolved
   * --service and --pod filters) are written before capture turns on.
   */
  startCapture(config: Omit<CaptureConfig, 'enabled'>, endpoints: CaptureEndpoint[]): void {
    this.setCaptureEndpoints(endpoints);
    const window = this.object.map('km_capture_window');
    window.update(u32(0), Buffer.alloc(CAPTURE_WINDOW_LAYOUT.size));
    this.object.map('km_capture_config').update(u32(0), encodeCaptureConfig({ ...config, enabled: true }));
  }

  /** Replaces the endpoint filter entries (endpoints of a service change while a capture runs). */
  setCaptureEndpoints(endpoints: CaptureEndpoint[]): void {
    const map = this.object.map('km_capture_endpoints');
    const want = new Map<string, [Buffer, number]>();
    for (const e of endpoints) {
      const key = encodeCaptureEndpoint(e.address, e.port);
      const bits = (e.service ? CAPTURE_MATCH.service : 0) | (e.pod ? CAPTURE_MATCH.pod : 0);
      const prev = want.get(key.toString('hex'));
      want.set(key.toString('hex'), [key, (prev?.[1] ?? 0) | bits]);
    }
    for (const k of map.keys()) if (!want.has(k.toString('hex'))) map.delete(k);
    for (const [key, bits] of want.values()) map.update(key, u32(bits));
  }

  /** Turns capture off: sk_msg is back to reading one flag. */
  stopCapture(): void {
    this.object
      .map('km_capture_config')
      .update(
        u32(0),
        encodeCaptureConfig({ enabled: false, snaplen: 0, maxMessagesPerSecond: 0, maxBytesPerSecond: 0 }),
      );
    this.setCaptureEndpoints([]);
  }

  captureEnabled(): boolean {
    const v = this.object.map('km_capture_config').lookup(u32(0));
    return v !== undefined && v.readUInt32LE(0) !== 0;
  }

  captureCounters(): CaptureCounters {
    const map = this.object.map('km_capture_counters');
    const out = {} as CaptureCounters;
    CAPTURE_COUNTERS.forEach((name, i) => {
      const v = map.lookup(u32(i));
      out[name] = v ? sumPerCpuU64(v) : 0n;
    });
    return out;
  }

  counters(): AccelCounters {
    const map = this.object.map('km_accel_counters');
    const out = {} as AccelCounters;
    ACCEL_COUNTERS.forEach((name, i) => {
      const v = i < ACCEL_COUNTER_SLOTS ? map.lookup(u32(i)) : undefined;
      out[name] = v ? sumPerCpuU64(v) : 0n;
    });
    return out;
  }

  /** Closes our fds; pinned maps and pinned links stay, so accelerated sockets keep working. */
  close(): void {
    this.object.close();
  }
}

/**
 * Applies a rules file now and again whenever it changes. A file with errors is reported (every
 * line and column at fault) and the rules in force stay. Returns a handle that stops watching.
 */
export function watchAccelRules(
  path: string,
  accel: Pick<Accelerator, 'setRules'>,
  log?: Logger,
  onApplied?: (rules: AccelRule[] | Error) => void,
): { close(): void } {
  const apply = (): void => {
    let result: AccelRule[] | Error;
    try {
      result = parseAccelRules(readFileSync(path, 'utf8'), path);
      accel.setRules(result, path);
    } catch (e) {
      result = e as Error;
      log?.error({ err: e, file: path }, 'acceleration rules not applied, the previous ones stay');
    }
    onApplied?.(result);
  };
  apply();
  // Watch the directory: editors and ConfigMap mounts replace the file rather than write into it.
  let timer: NodeJS.Timeout | undefined;
  const watcher: FSWatcher = watch(dirname(path), (_event, file) => {
    if (file !== null && file !== basename(path) && !file.startsWith('..')) return;
    clearTimeout(timer);
    timer = setTimeout(apply, 50);
  });
  return {
    close: () => {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
