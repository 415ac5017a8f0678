// The agent's operator-tool flags: the control socket and connection traces, refused at start with the
// flag at fault when wrong.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { loadConfig } from '../src/config/config.js';

const base = ['--xds-file', '/dev/null'];
const load = (...argv: string[]) => loadConfig([...base, ...argv], {}, { checkFiles: false });

void test('the control socket defaults to /run/kernmesh/control.sock; none turns it off; it must be absolute', () => {
  assert.equal(load().controlSocket, '/run/kernmesh/control.sock');
  assert.equal(load().controlSocketExplicit, false);
  assert.equal(load('--control-socket', 'none').controlSocket, undefined);
  const c = load('--control-socket', '/tmp/x/control.sock');
  assert.deepEqual([c.controlSocket, c.controlSocketExplicit], ['/tmp/x/control.sock', true]);
  assert.throws(
    () => load('--control-socket', 'run/control.sock'),
    /flag --control-socket: "run\/control.sock" is not an absolute path/,
  );
});

void test('traces are off without --trace-endpoint; sampling and queue are checked', () => {
  assert.equal(load().traces, undefined);
  assert.deepEqual(load('--trace-endpoint', 'http://127.0.0.1:4318/v1/traces').traces, {
    endpoint: 'http://127.0.0.1:4318/v1/traces',
    sampling: 0.01,
    queueSize: 2048,
  });
  assert.deepEqual(
    load('--trace-endpoint', 'https://c:4318/v1/traces', '--trace-sampling', '0.5', '--trace-queue', '10')
      .traces,
    { endpoint: 'https://c:4318/v1/traces', sampling: 0.5, queueSize: 10 },
  );
  assert.throws(
    () => load('--trace-endpoint', 'collector:4318'),
    /flag --trace-endpoint: "collector:4318" is not an http\(s\) URL/,
  );
  assert.throws(
    () => load('--trace-endpoint', 'http://c/v1/traces', '--trace-sampling', '2'),
    /flag --trace-sampling: "2" is not a fraction from 0 to 1/,
  );
  assert.throws(
    () => load('--trace-endpoint', 'http://c/v1/traces', '--trace-queue', '0'),
    /flag --trace-queue: "0" is not a queue size/,
  );
  assert.throws(
    () => load('--trace-sampling', '1'),
    /flag --trace-sampling: tracing is off without --trace-endpoint/,
  );
});
