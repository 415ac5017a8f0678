// What `kernmesh accel` asks of the running agent through the control socket: the state, on/off, and
// a new rules file, validated before anything changes (a bad file leaves the rules in force).
import type { Accelerator } from './accel.js';
import { AccelRulesError, formatAccelRule, parseAccelRules } from './rules.js';

export interface AccelStatus {
  enabled: boolean;
  /** Where the rules in force came from: a file, the control socket, or none. */
  source: string;
  applied_at?: string;
  /** In force now, with their line in the source and what each decided since it was loaded. */
  rules: { line: number; rule: string; matched: string; accelerated: string; refused: string }[];
  counters: Record<string, string>;
}

export function accelStatus(accel: Accelerator): AccelStatus {
  const inForce = accel.rulesInForce();
  return {
    enabled: accel.config().enabled,
    source: inForce?.source ?? 'none',
    ...(inForce ? { applied_at: inForce.appliedAt } : {}),
    rules: accel.ruleStats().map((r) => ({
      line: r.rule.line,
      rule: formatAccelRule(r.rule),
      matched: r.matched.toString(),
      accelerated: r.accelerated.toString(),
      refused: r.refused.toString(),
    })),
    counters: Object.fromEntries(Object.entries(accel.counters()).map(([k, v]) => [k, v.toString()])),
  };
}

/** Thrown for a bad rules file: the message lists file:line:column: reason, `errors` each of them. */
export class RulesRefused extends Error {
  constructor(
    readonly errors: { line: number; column: number; message: string }[],
    message: string,
  ) {
    super(message);
    this.name = 'RulesRefused';
  }
}

/** Parses and applies a rules text; new connections are matched against it at once. */
export function loadAccelRules(accel: Accelerator, text: string, source: string): AccelStatus {
  let rules;
  try {
    rules = parseAccelRules(text, source);
  } catch (e) {
    if (e instanceof AccelRulesError)
      throw new RulesRefused(e.errors, `rules not loaded, the rules in force stay:\n${e.message}`);
    throw e;
  }
  accel.setRules(rules, source);
  return accelStatus(accel);
}
