import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config/config.js';

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'kernmesh-config-'));
}

const noFiles = { checkFiles: false };

void test('flags win over KERNMESH_ variables, which win over the config file', () => {
  const dir = tmp();
  try {
    const file = join(dir, 'kernmesh.yaml');
    writeFileSync(
      file,
      'xds-address: file-host:15010\nxds-protocol: sotw\nlog-level: warn\ncgroup: [/a, /b]\n',
    );
    const env = { KERNMESH_CONFIG: file, KERNMESH_XDS_PROTOCOL: 'delta', KERNMESH_LOG_LEVEL: 'debug' };
    const c = loadConfig(['--log-level', 'error'], env, noFiles);
    assert.deepEqual(c.xdsAddress, { host: 'file-host', port: 15010 });
    assert.equal(c.xdsProtocol, 'delta');
    assert.equal(c.logLevel, 'error');
    assert.deepEqual(c.cgroups, ['/a', '/b']);
    assert.equal(c.tls, false);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

void test('defaults follow Istio: TLS on 15012, admin on 127.0.0.1:15000, bpffs under /sys/fs/bpf/kernmesh', () => {
  const c = loadConfig(
    ['--xds-address', 'istiod.istio-system.svc:15012', '--cgroup=/x', '--cgroup', '/y'],
    {},
    noFiles,
  );
  assert.equal(c.tls, true);
  assert.equal(c.serverName, 'istiod.istio-system.svc');
  assert.equal(c.rootCa, '/var/run/secrets/istio/root-cert.pem');
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 15000 });
  assert.equal(c.bpffs, '/sys/fs/bpf/kernmesh');
  assert.deepEqual(c.cgroups, ['/x', '/y']);
  assert.equal(c.xdsProtocol, 'delta');
});

void test('identity comes from flags or the downward-API environment', () => {
  const env = {
    POD_NAME: 'kernmesh-abc',
    POD_NAMESPACE: 'istio-system',
    INSTANCE_IP: '10.0.0.7',
    ISTIO_META_FOO: 'bar',
  };
  const c = loadConfig(
    ['--xds-file', '/dev/null', '--cluster-id', 'east', '--label', 'app=kernmesh'],
    env,
    noFiles,
  );
  assert.equal(c.identity.podName, 'kernmesh-abc');
  assert.equal(c.identity.podNamespace, 'istio-system');
  assert.deepEqual(c.identity.instanceIps, ['10.0.0.7']);
  assert.equal(c.identity.clusterId, 'east');
  assert.deepEqual(c.identity.labels, { app: 'kernmesh' });
  assert.equal(c.identity.extraMetadata.FOO, 'bar');
});

void test('bare --access-log means stdout; --no-waypoints turns a boolean off; map sizes parse', () => {
  const c = loadConfig(
    [
      '--xds-file',
      'f',
      '--access-log',
      '--no-waypoints',
      '--map-size',
      'services=1024',
      '--map-size=backends=4096',
    ],
    { KERNMESH_WAYPOINTS: 'true' },
    noFiles,
  );
  assert.equal(c.accessLog, 'stdout');
  assert.equal(c.waypoints, false);
  assert.deepEqual(c.mapSizes, { services: 1024, backends: 4096 });
});

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

void test('a bad flag stops the start and names the flag', () => {
  rejects(() => loadConfig(['--xds-adress', 'x:1'], {}, noFiles), /unknown flag --xds-adress/);
  rejects(
    () => loadConfig(['--xds-protocol', 'grpc', '--xds-file', 'f'], {}, noFiles),
    /flag --xds-protocol: "grpc" is not/,
  );
  rejects(
    () => loadConfig(['--xds-address', 'istiod'], {}, noFiles),
    /flag --xds-address: "istiod" is not HOST:PORT/,
  );
  rejects(() => loadConfig(['--xds-file', 'f', '--admin', '1.2.3.4:99999'], {}, noFiles), /flag --admin/);
  rejects(
    () => loadConfig(['--xds-file', 'f', '--tls=maybe'], {}, noFiles),
    /flag --tls: "maybe" is not a boolean/,
  );
  rejects(() => loadConfig(['--xds-file'], {}, noFiles), /flag --xds-file: needs a value/);
  rejects(
    () => loadConfig(['--xds-file', 'f', '--map-size', 'services=lots'], {}, noFiles),
    /flag --map-size: map size/,
  );
  rejects(
    () => loadConfig(['--xds-file', 'f', '--map-size', 'routes=5'], {}, noFiles),
    /flag --map-size: "routes" is not a capacity name/,
  );
  rejects(() => loadConfig([], {}, noFiles), /no xDS source/);
  rejects(() => loadConfig(['--xds-file', 'f', '--xds-address', 'a:1'], {}, noFiles), /exclusive/);
  rejects(
    () => loadConfig(['--xds-file', 'f'], { KERNMESH_LOG_LEVEL: 'loud' }, noFiles),
    /environment KERNMESH_LOG_LEVEL/,
  );
});

void test('a bad config file stops the start and names the file, line and key', () => {
  const dir = tmp();
  try {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'xds-file: /tmp/x\nlog-level: info\nwaypoint: true\n');
    rejects(
      () => loadConfig(['--config', bad], {}, noFiles),
      new RegExp(`config file ${bad} line 3: unknown key "waypoint"`),
    );
    writeFileSync(bad, 'xds-file: /tmp/x\nxds-protocol: rest\n');
    rejects(
      () => loadConfig(['--config', bad], {}, noFiles),
      /line 2 key xds-protocol: "rest" is not an xDS protocol/,
    );
    writeFileSync(bad, 'xds-file: /tmp/x\ncgroup: [/a,\n');
    rejects(() => loadConfig(['--config', bad], {}, noFiles), /config file .* not valid YAML/);
    rejects(
      () => loadConfig(['--config', join(dir, 'missing.yaml')], {}, noFiles),
      /cannot read config file/,
    );
  } finally {
    rmSync(dir, { recursive: true });
  }
});

void test('an unreadable xDS file or a missing cgroup stops the start', () => {
  const dir = tmp();
  try {
    const cg = join(dir, 'cg');
    mkdirSync(cg);
    rejects(
      () => loadConfig(['--xds-file', join(dir, 'nope.json'), '--cgroup', cg]),
      /flag --xds-file: cannot read xDS file .*ENOENT/,
    );
    const xds = join(dir, 'xds.json');
    writeFileSync(xds, '{}');
    rejects(
      () => loadConfig(['--xds-file', xds, '--cgroup', cg]),
      new RegExp(`flag --cgroup: ${cg} is not a cgroup v2 directory`),
    );
    rejects(() => loadConfig(['--xds-file', xds]), /no cgroup to serve/);
    writeFileSync(join(cg, 'cgroup.procs'), '');
    assert.equal(loadConfig(['--xds-file', xds, '--cgroup', cg]).xdsFile, xds);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

void test('--drain-removed-after: a duration, off unless set; a bad one is refused naming the flag', () => {
  assert.equal(loadConfig(['--xds-file', 'f'], {}, noFiles).drainRemovedAfterMs, undefined);
  assert.equal(
    loadConfig(['--xds-file', 'f', '--drain-removed-after', '30s'], {}, noFiles).drainRemovedAfterMs,
    30_000,
  );
  assert.equal(
    loadConfig(['--xds-file', 'f', '--drain-removed-after=250ms'], {}, noFiles).drainRemovedAfterMs,
    250,
  );
  rejects(
    () => loadConfig(['--xds-file', 'f', '--drain-removed-after', 'soon'], {}, noFiles),
    /flag --drain-removed-after: "soon" is not a duration/,
  );
});
