// The command line as operators meet it: a bad flag, a bad config file and an unreadable or broken
// xDS file each stop `kernmesh run` before anything touches the kernel, with a message naming what is wrong.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { runKernmesh } from './support/cli.js';

const kernmesh = (...args: string[]) => runKernmesh(args);

const dir = mkdtempSync(join(tmpdir(), 'kernmesh-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));
// Looks like a cgroup v2 directory to the config check; the start stops before any attach.
const fakeCgroup = join(dir, 'cgroup');
mkdirSync(fakeCgroup);
writeFileSync(join(fakeCgroup, 'cgroup.procs'), '');

void test('kernmesh without a command prints the commands and exits 2; --help exits 0', async () => {
  const none = await kernmesh();
  assert.equal(none.code, 2);
  for (const c of ['run', 'check', 'status', 'maps', 'demo', 'cleanup'])
    assert.match(none.stdout, new RegExp(`\\b${c}\\b`));
  const help = await kernmesh('run', '--help');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--xds-address/);
  assert.match(help.stdout, /KERNMESH_XDS_ADDRESS/);
  const unknown = await kernmesh('frobnicate');
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
});

void test('a bad flag stops kernmesh run and names the flag', async () => {
  const r = await kernmesh('run', '--xds-adress', '127.0.0.1:15010');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /kernmesh run: unknown flag --xds-adress/);
  const p = await kernmesh('run', '--xds-file', '/dev/null', '--xds-protocol', 'rest');
  assert.equal(p.code, 2);
  assert.match(p.stderr, /flag --xds-protocol: "rest" is not an xDS protocol/);
});

void test('a bad config file stops kernmesh run and names the file, line and key', async () => {
  const file = join(dir, 'kernmesh.yaml');
  writeFileSync(file, `xds-file: /dev/null\ncgroup: [${fakeCgroup}]\nlog-level: chatty\n`);
  const r = await kernmesh('run', '--config', file);
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`config file ${file} line 3 key log-level: "chatty" is not a log level`));
});

void test('an unreadable xDS file, or one that is not xDS, stops kernmesh run and names the file', async () => {
  const missing = await kernmesh('run', '--xds-file', join(dir, 'nope.yaml'), '--cgroup', fakeCgroup);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /flag --xds-file: cannot read xDS file .*nope\.yaml: ENOENT/);
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{"resources": [ {"@type": ');
  const r = await kernmesh(
    'run',
    '--xds-file',
    broken,
    '--cgroup',
    fakeCgroup,
    '--bpffs',
    join(dir, 'not-bpffs'),
  );
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`--xds-file ${broken}: .*broken\\.json`));
});

void test('status without an agent says nobody answers; cleanup refuses a directory that is not on bpffs', async () => {
  const s = await kernmesh('status', '--admin', '127.0.0.1:1');
  assert.equal(s.code, 1);
  assert.match(s.stderr, /no agent answers at http:\/\/127\.0\.0\.1:1/);
  const c = await kernmesh('cleanup', '--bpffs', dir);
  assert.equal(c.code, 2);
  assert.match(c.stderr, /not on a bpffs mount; refusing/);
});
