import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  AccelRulesError,
  formatAccelRule,
  MAX_ACCEL_RULES,
  parseAccelRules,
  type AccelRule,
} from '../src/accel/rules.js';

const good: [string, Omit<AccelRule, 'line'>][] = [
  ['chain -j ACCEPT', { action: 'ACCEPT' }],
  ['chain -j RETURN', { action: 'RETURN' }],
  [
    'chain --ip 192.168.1.0/24 --port 80 --uid-owner 1337 --gid-owner 1337 -j ACCEPT',
    {
      ip: { family: 4, address: '192.168.1.0', prefixLength: 24 },
      port: 80,
      uid: 1337,
      gid: 1337,
      action: 'ACCEPT',
    },
  ],
  ['chain --port 15006 -j RETURN', { port: 15006, action: 'RETURN' }],
  ['  chain   --uid-owner 0    -j ACCEPT   ', { uid: 0, action: 'ACCEPT' }],
  ['chain -j ACCEPT --gid-owner 42', { gid: 42, action: 'ACCEPT' }],
  [
    'chain --ip 10.1.2.3 -j ACCEPT',
    { ip: { family: 4, address: '10.1.2.3', prefixLength: 32 }, action: 'ACCEPT' },
  ],
  // host bits are cleared, as iptables does
  [
    'chain --ip 10.1.2.3/8 -j ACCEPT',
    { ip: { family: 4, address: '10.0.0.0', prefixLength: 8 }, action: 'ACCEPT' },
  ],
  [
    'chain --ip 0.0.0.0/0 -j RETURN',
    { ip: { family: 4, address: '0.0.0.0', prefixLength: 0 }, action: 'RETURN' },
  ],
  [
    'chain --ip fd00:1:2::/48 -j ACCEPT',
    { ip: { family: 6, address: 'fd00:1:2::', prefixLength: 48 }, action: 'ACCEPT' },
  ],
  ['chain --ip ::1 -j ACCEPT', { ip: { family: 6, address: '::1', prefixLength: 128 }, action: 'ACCEPT' }],
  [
    'chain --ip 2001:db8::ff/120 -j RETURN',
    { ip: { family: 6, address: '2001:db8::', prefixLength: 120 }, action: 'RETURN' },
  ],
  [
    'chain --ip ::ffff:127.0.0.1 -j ACCEPT',
    { ip: { family: 6, address: '::ffff:7f00:1', prefixLength: 128 }, action: 'ACCEPT' },
  ],
  ['chain --port 80 -j ACCEPT # web only', { port: 80, action: 'ACCEPT' }],
  // the acceleration design's own example spells the target `--j`
  [
    'chain --ip 192.168.1.0/24 --uid-owner 1337 --j ACCEPT',
    { ip: { family: 4, address: '192.168.1.0', prefixLength: 24 }, uid: 1337, action: 'ACCEPT' },
  ],
  ['chain --port 15006 --j RETURN', { port: 15006, action: 'RETURN' }],
];

for (const [line, want] of good) {
  void test(`parses: ${line.trim()}`, () => {
    assert.deepEqual(parseAccelRules(line), [{ ...want, line: 1 }]);
  });
}

const bad: [string, number, RegExp][] = [
  ['rule -j ACCEPT', 1, /expected "chain", found "rule"/],
  ['chain --ip 300.1.1.1/24 -j ACCEPT', 12, /invalid address "300.1.1.1"/],
  ['chain --ip 10.0.0.0/33 -j ACCEPT', 12, /invalid prefix length "33": expected 0-32/],
  ['chain --ip fd00::/129 -j ACCEPT', 12, /invalid prefix length "129": expected 0-128/],
  ['chain --port 0 -j ACCEPT', 14, /invalid port "0": expected 1-65535/],
  ['chain --port 70000 -j ACCEPT', 14, /invalid port "70000"/],
  ['chain --port http -j ACCEPT', 14, /invalid port "http"/],
  ['chain --uid-owner -1 -j ACCEPT', 19, /invalid --uid-owner "-1"/],
  ['chain --gid-owner root -j ACCEPT', 19, /invalid --gid-owner "root"/],
  ['chain --port 80 -j DROP', 20, /invalid target "DROP": expected ACCEPT or RETURN/],
  ['chain --port 80 -j accept', 20, /invalid target "accept"/],
  ['chain --port 80', 16, /missing target/],
  ['chain --port 80 -j', 19, /-j needs a value/],
  ['chain --sport 80 -j ACCEPT', 7, /unknown option "--sport"/],
  ['chain --port 80 --port 81 -j ACCEPT', 17, /--port given twice/],
  ['chain --port 80 -j ACCEPT --j RETURN', 27, /-j given twice/],
  ['chain --port 80 --j', 20, /-j needs a value/],
];

for (const [line, column, message] of bad) {
  void test(`rejects at column ${column}: ${line}`, () => {
    assert.throws(
      () => parseAccelRules(line, 'accel.rules'),
      (e: unknown) => {
        assert.ok(e instanceof AccelRulesError);
        assert.equal(e.errors.length, 1);
        assert.equal(e.errors[0]?.line, 1);
        assert.equal(e.errors[0]?.column, column);
        assert.match(e.errors[0]?.message ?? '', message);
        assert.match(e.message, new RegExp(`^accel\\.rules:1:${column}: `));
        return true;
      },
    );
  });
}

void test('comments and blank lines are skipped and line numbers are kept', () => {
  const rules = parseAccelRules(
    [
      '# accelerate 192.168.1.0/24 traffic of processes with uid 1337, never port 15006',
      '',
      'chain --ip 192.168.1.0/24 --uid-owner 1337 -j ACCEPT',
      '   # indented comment',
      'chain --port 15006 -j RETURN',
    ].join('\n'),
  );
  assert.deepEqual(
    rules.map((r) => [r.line, formatAccelRule(r)]),
    [
      [3, 'chain --ip 192.168.1.0/24 --uid-owner 1337 -j ACCEPT'],
      [5, 'chain --port 15006 -j RETURN'],
    ],
  );
});

void test('an empty file is no rules (everything local is accelerated)', () => {
  assert.deepEqual(parseAccelRules('\n# nothing\n\n'), []);
});

void test('every bad line is reported, each with its own line and column', () => {
  const text = [
    'chain -j ACCEPT',
    'chain --port x -j ACCEPT',
    'chain -j ACCEPT',
    'chain --ip 1.2.3/8 -j RETURN',
  ].join('\n');
  assert.throws(
    () => parseAccelRules(text, 'r'),
    (e: unknown) => {
      assert.ok(e instanceof AccelRulesError);
      assert.deepEqual(
        e.errors.map((x) => [x.line, x.column]),
        [
          [2, 14],
          [4, 12],
        ],
      );
      return true;
    },
  );
});

void test(`more than ${MAX_ACCEL_RULES} rules is refused at the first rule too many`, () => {
  const text = Array.from({ length: MAX_ACCEL_RULES + 1 }, (_, i) => `chain --port ${i + 1} -j ACCEPT`).join(
    '\n',
  );
  assert.throws(() => parseAccelRules(text, 'r'), /^AccelRulesError: r:65:1: more than 64 rules/);
  assert.equal(
    parseAccelRules(text.split('\n').slice(0, MAX_ACCEL_RULES).join('\n')).length,
    MAX_ACCEL_RULES,
  );
});

void test('CRLF line endings parse the same', () => {
  assert.deepEqual(
    parseAccelRules('chain --port 80 -j ACCEPT\r\nchain --port 81 -j RETURN\r\n').map((r) => r.port),
    [80, 81],
  );
});
