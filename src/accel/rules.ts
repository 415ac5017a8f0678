// Acceleration rules in the operators' syntax, one a line:
//   chain --ip 192.168.1.0/24 --port 80 --uid-owner 1337 --gid-owner 1337 -j ACCEPT|RETURN
// Any subset of the matches; `--j` is read as `-j` (the acceleration design's own example spells it so);
// `#` starts a comment. Every error names its line and column.
import { isIP } from 'node:net';

import { decodeAddress, encodeAddress } from '../net/address.js';

export type AccelAction = 'ACCEPT' | 'RETURN';

export interface AccelCidr {
  family: 4 | 6;
  /** Network address with host bits cleared, in its usual text form. */
  address: string;
  prefixLength: number;
}

export interface AccelRule {
  ip?: AccelCidr;
  port?: number;
  uid?: number;
  gid?: number;
  action: AccelAction;
  /** 1-based line in the rules text, for messages. */
  line: number;
}

/** The kernel's rule bank holds this many (KM_ACCEL_MAX_RULES). */
export const MAX_ACCEL_RULES = 64;

export interface RuleError {
  line: number;
  column: number;
  message: string;
}

export class AccelRulesError extends Error {
  constructor(
    readonly source: string,
    readonly errors: RuleError[],
  ) {
    super(errors.map((e) => `${source}:${e.line}:${e.column}: ${e.message}`).join('\n'));
    this.name = 'AccelRulesError';
  }
}

interface Token {
  text: string;
  column: number;
}

function tokenize(line: string): Token[] {
  const tokens: Token[] = [];
  const re = /\S+/g;
  for (let m = re.exec(line); m; m = re.exec(line)) tokens.push({ text: m[0], column: m.index + 1 });
  return tokens;
}

const MAX_ID = 4294967294; // (uid_t)-1 means "no change" to the kernel, never an owner

function parseInteger(text: string, min: number, max: number): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const n = Number(text);
  return n >= min && n <= max ? n : undefined;
}

/** Parses `A.B.C.D[/N]` or `X::Y[/N]`; a bare address is a single host. Host bits are cleared. */
export function parseCidr(text: string): AccelCidr | string {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = isIP(address);
  if (family !== 4 && family !== 6) return `invalid address "${address}": expected an IPv4 or IPv6 address`;
  const max = family === 4 ? 32 : 128;
  let prefixLength = max;
  if (slash >= 0) {
    const n = parseInteger(text.slice(slash + 1), 0, max);
    if (n === undefined) return `invalid prefix length "${text.slice(slash + 1)}": expected 0-${max}`;
    prefixLength = n;
  }
  const bytes = encodeAddress(address);
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, prefixLength - 8 * i));
    bytes[i] = (bytes[i] ?? 0) & ((0xff << (8 - bits)) & 0xff);
  }
  return { family, address: decodeAddress(bytes, family), prefixLength };
}

type Option = '--ip' | '--port' | '--uid-owner' | '--gid-owner' | '-j';
const OPTIONS: readonly Option[] = ['--ip', '--port', '--uid-owner', '--gid-owner', '-j'];

function parseLine(
  tokens: Token[],
  lineNo: number,
  lineLength: number,
  errors: RuleError[],
): AccelRule | undefined {
  const err = (column: number, message: string): undefined => {
    errors.push({ line: lineNo, column, message });
    return undefined;
  };
  const [first, ...rest] = tokens;
  if (!first) return undefined;
  if (first.text !== 'chain') return err(first.column, `expected "chain", found "${first.text}"`);

  const rule: Partial<AccelRule> = { line: lineNo };
  const seen = new Set<Option>();
  for (let i = 0; i < rest.length; i += 2) {
    const opt = rest[i]!;
    const value = rest[i + 1];
    const spelled = opt.text === '--j' ? '-j' : opt.text;
    if (!OPTIONS.includes(spelled as Option)) {
      return err(opt.column, `unknown option "${opt.text}": expected one of ${OPTIONS.join(', ')}`);
    }
    const name = spelled as Option;
    if (seen.has(name)) return err(opt.column, `${name} given twice`);
    seen.add(name);
    if (!value) return err(lineLength + 1, `${name} needs a value`);
    switch (name) {
      case '--ip': {
        const cidr = parseCidr(value.text);
        if (typeof cidr === 'string') return err(value.column, cidr);
        rule.ip = cidr;
        break;
      }
      case '--port': {
        const port = parseInteger(value.text, 1, 65535);
        if (port === undefined) return err(value.column, `invalid port "${value.text}": expected 1-65535`);
        rule.port = port;
        break;
      }
      case '--uid-owner':
      case '--gid-owner': {
        const id = parseInteger(value.text, 0, MAX_ID);
        if (id === undefined)
          return err(value.column, `invalid ${name} "${value.text}": expected a numeric id`);
        if (name === '--uid-owner') rule.uid = id;
        else rule.gid = id;
        break;
      }
      case '-j':
        if (value.text !== 'ACCEPT' && value.text !== 'RETURN') {
          return err(value.column, `invalid target "${value.text}": expected ACCEPT or RETURN`);
        }
        rule.action = value.text;
        break;
    }
  }
  if (!rule.action) return err(lineLength + 1, 'missing target: end the rule with -j ACCEPT or -j RETURN');
  return rule as AccelRule;
}

/**
 * Parses a rules file. Throws AccelRulesError listing every bad line (file:line:column: reason);
 * nothing is applied from a file with errors.
 */
export function parseAccelRules(text: string, source = 'rules'): AccelRule[] {
  const rules: AccelRule[] = [];
  const errors: RuleError[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const hash = raw.indexOf('#');
    const line = hash >= 0 ? raw.slice(0, hash) : raw;
    const tokens = tokenize(line);
    if (tokens.length === 0) return;
    const rule = parseLine(tokens, i + 1, line.trimEnd().length, errors);
    if (!rule) return;
    if (rules.length === MAX_ACCEL_RULES) {
      errors.push({ line: i + 1, column: 1, message: `more than ${MAX_ACCEL_RULES} rules` });
      return;
    }
    rules.push(rule);
  });
  if (errors.length) throw new AccelRulesError(source, errors);
  return rules;
}

/** The rule back in its own syntax (for logs and `kernmesh status`). */
export function formatAccelRule(rule: AccelRule): string {
  const parts = ['chain'];
  if (rule.ip) parts.push('--ip', `${rule.ip.address}/${rule.ip.prefixLength}`);
  if (rule.port !== undefined) parts.push('--port', String(rule.port));
  if (rule.uid !== undefined) parts.push('--uid-owner', String(rule.uid));
  if (rule.gid !== undefined) parts.push('--gid-owner', String(rule.gid));
  parts.push('-j', rule.action);
  return parts.join(' ');
}
