// The operator's other inputs, fuzzed (issue 14): every CLI flag with random values, the YAML config
// file with mutated lines, and the acceleration rules file with mutated rules. Each input is either
// taken or refused with the error type of that input naming the flag, key or line at fault; nothing
// throws anything else, and nothing hangs (each case is timed and the slowest printed).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { AccelRulesError, parseAccelRules } from '../src/accel/rules.js';
import { ConfigError, loadConfig, OPTIONS } from '../src/config/config.js';
import { pick, prng, type Random } from './support/fuzz.js';

const SEED = Number(process.env['KERNMESH_FUZZ_SEED'] ?? 20261202);
const CASES = Number(process.env['KERNMESH_FUZZ_CASES'] ?? 5000);

const VALUES = [
  '',
  ' ',
  '-1',
  '0',
  '65536',
  '99999999999999999999',
  'true',
  'maybe',
  '=',
  'a=b',
  'a=',
  '=b',
  '127.0.0.1',
  '127.0.0.1:0',
  '[::1]:15010',
  'host:port',
  '/nonexistent/file',
  '/dev/null',
  'x'.repeat(10_000),
  '\u0000',
  'é🙂',
  '--',
  'frontends=0',
  'backends=12',
  'slots=-4',
  'nope=3',
  'delta',
  'sotw',
  'debug',
  'LOUD',
];

const BASE = [
  '--xds-address',
  '127.0.0.1:15010',
  '--pod-name',
  'p',
  '--pod-namespace',
  'ns',
  '--instance-ip',
  '10.0.0.1',
];

function timed<T>(slowest: { ms: number; what: string }, what: string, fn: () => T): T {
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    const ms = performance.now() - t0;
    if (ms > slowest.ms) Object.assign(slowest, { ms, what });
  }
}

void test(`every CLI flag with fuzzed values is taken or refused naming the flag (seed ${SEED})`, () => {
  const r = prng(SEED);
  const counts = { cases: 0, taken: 0, refused: 0 };
  const slowest = { ms: 0, what: '' };
  const perFlag = Math.max(20, Math.ceil(CASES / OPTIONS.length));
  for (const o of OPTIONS) {
    for (let i = 0; i < perFlag; i++) {
      const value = pick(r, VALUES);
      const form = r();
      const args =
        o.kind === 'bool' && form < 0.3
          ? [`--${o.name}`]
          : form < 0.6
            ? [`--${o.name}=${value}`]
            : [`--${o.name}`, value];
      const argv = [...BASE, ...args];
      counts.cases++;
      try {
        timed(slowest, argv.join(' ').slice(0, 80), () => loadConfig(argv, {}, { checkFiles: false }));
        counts.taken++;
      } catch (err) {
        counts.refused++;
        assert.ok(err instanceof ConfigError, `${args.join(' ').slice(0, 100)}: threw ${String(err)}`);
        const names = [o.name, 'config file', 'unexpected argument', 'unknown flag'];
        assert.ok(
          names.some((n) => err.message.includes(n)),
          `${args.join(' ').slice(0, 100)}: "${err.message.slice(0, 200)}" does not name the flag`,
        );
      }
    }
  }
  console.log(
    `# flags: ${counts.cases} cases over ${OPTIONS.length} flags: ${counts.taken} taken, ${counts.refused} refused with the flag named; slowest ${slowest.ms.toFixed(1)} ms (${slowest.what})`,
  );
  assert.ok(counts.cases >= 1000);
});

const CONFIG_BASE = `xds-address: 127.0.0.1:15010
pod-name: p
pod-namespace: ns
instance-ip:
  - 10.0.0.1
log-level: info
map-size:
  backends: 1024
label:
  app: web
waypoints: false
admin: 127.0.0.1:15000
`;

function mutateYaml(r: Random, text: string): string {
  const lines = text.split('\n');
  const i = Math.floor(r() * lines.length);
  switch (Math.floor(r() * 6)) {
    case 0:
      lines[i] = `${lines[i] ?? ''}${pick(r, [':', ' [', '{', '"', ' &a', ' *a', '\t', ' - x'])}`;
      break;
    case 1:
      lines.splice(i, 1);
      break;
    case 2:
      lines[i] = (lines[i] ?? '').replace(/: .*$/, `: ${pick(r, VALUES)}`);
      break;
    case 3:
      lines.splice(i, 0, `${pick(r, OPTIONS).name}: ${pick(r, VALUES)}`);
      break;
    case 4:
      lines[i] = `  ${lines[i] ?? ''}`;
      break;
    default:
      lines.splice(
        i,
        0,
        `${pick(r, ['unknown-key', 'map-size', 'label', 'cgroup'])}:\n  - ${pick(r, VALUES)}`,
      );
  }
  return lines.join('\n');
}

void test(`the config file, mutated line by line, is taken or refused naming the file (seed ${SEED})`, () => {
  const r = prng(SEED + 1);
  const dir = mkdtempSync(join(tmpdir(), 'kernmesh-fuzz-config-'));
  const counts = { cases: 0, taken: 0, refused: 0, withLine: 0 };
  const slowest = { ms: 0, what: '' };
  try {
    const file = join(dir, 'kernmesh.yaml');
    for (let i = 0; i < Math.max(500, Math.ceil(CASES / 5)); i++) {
      let text = CONFIG_BASE;
      for (let k = 0; k < 1 + Math.floor(r() * 3); k++) text = mutateYaml(r, text);
      writeFileSync(file, text);
      counts.cases++;
      try {
        timed(slowest, `case ${i}`, () => loadConfig(['--config', file], {}, { checkFiles: false }));
        counts.taken++;
      } catch (err) {
        counts.refused++;
        assert.ok(err instanceof ConfigError, `case ${i} threw ${String(err)}\n${text}`);
        assert.ok(
          err.message.includes(file) || /^flag |unknown flag|needs|--/.test(err.message),
          `case ${i}: "${err.message.slice(0, 200)}" does not name the file\n${text}`,
        );
        if (/ line \d+/.test(err.message)) counts.withLine++;
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(
    `# config file: ${counts.cases} cases: ${counts.taken} taken, ${counts.refused} refused naming the file (${counts.withLine} with the line); slowest ${slowest.ms.toFixed(1)} ms`,
  );
});

const RULES_BASE = [
  '# accelerate the mesh, never the admin port',
  'chain --ip 127.0.0.0/8 --uid-owner 1337 -j ACCEPT',
  'chain --port 15000 -j RETURN',
  'chain --ip ::1/128 --gid-owner 0 -j ACCEPT',
];

const RULE_TOKENS = [
  'chain',
  '--ip',
  '--port',
  '--uid-owner',
  '--gid-owner',
  '-j',
  'ACCEPT',
  'RETURN',
  'DROP',
  '10.0.0.0/33',
  '::/129',
  '1.2.3.4/8',
  '65536',
  '-1',
  '4294967295',
  'x'.repeat(5000),
  '#',
  '',
];

void test(`the acceleration rules file, mutated, is taken or refused with the line and column (seed ${SEED})`, () => {
  const r = prng(SEED + 2);
  const counts = { cases: 0, taken: 0, refused: 0, errors: 0 };
  const slowest = { ms: 0, what: '' };
  for (let i = 0; i < Math.max(1000, CASES); i++) {
    const lines = [...RULES_BASE];
    for (let k = 0; k < 1 + Math.floor(r() * 3); k++) {
      const at = Math.floor(r() * lines.length);
      const tokens = (lines[at] ?? '').split(' ');
      const op = r();
      if (op < 0.4) tokens[Math.floor(r() * tokens.length)] = pick(r, RULE_TOKENS);
      else if (op < 0.6) tokens.splice(Math.floor(r() * tokens.length), 1);
      else if (op < 0.8) tokens.splice(Math.floor(r() * (tokens.length + 1)), 0, pick(r, RULE_TOKENS));
      else lines.push(...Array.from({ length: Math.floor(r() * 80) }, () => RULES_BASE[1]!));
      lines[at] = tokens.join(' ');
    }
    const text = lines.join('\n');
    counts.cases++;
    try {
      timed(slowest, `case ${i}`, () => parseAccelRules(text, 'rules.txt'));
      counts.taken++;
    } catch (err) {
      counts.refused++;
      assert.ok(err instanceof AccelRulesError, `case ${i} threw ${String(err)}\n${text.slice(0, 500)}`);
      assert.ok(err.errors.length > 0);
      for (const e of err.errors) {
        counts.errors++;
        assert.ok(e.line >= 1 && e.line <= lines.length + 1, `line ${e.line} of ${lines.length}`);
        assert.ok(e.column >= 1 && e.message.length > 0);
      }
    }
  }
  console.log(
    `# acceleration rules: ${counts.cases} cases: ${counts.taken} taken, ${counts.refused} refused (${counts.errors} errors, each with line and column); slowest ${slowest.ms.toFixed(1)} ms`,
  );
});
