// The admin endpoint under bad clients (issue 14): malformed requests, unknown paths, huge query
// strings, slow clients and many concurrent connections are answered or closed cleanly, and while
// they go on a normal request is still served. It binds to localhost by default, changes no state,
// and the probe listener serves only readiness and metrics.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { PROBE_ROUTES, startAdminServer, type AdminServer, type AdminSource } from '../src/admin/server.js';
import { loadConfig } from '../src/config/config.js';
import { TYPE } from '../src/xds/types.js';
import { eventually } from './support/wait.js';

const source: AdminSource = {
  readiness: () => ({ ready: true, reasons: [] }),
  serverInfo: () => ({ version: 'test' }),
  configDump: () => ({
    bootstrap: { node: { id: 'n' } },
    startedAt: new Date(0).toISOString(),
    resources: [
      {
        typeUrl: TYPE.cluster,
        name: 'c',
        version: '1',
        resource: { '@type': TYPE.cluster, name: 'c', type: 'STATIC' },
      },
    ],
    versions: {},
    rejections: [],
  }),
  debugXds: () => ({}),
  debugMaps: () => ({ maps: [] }),
  debugBpf: () => ({}),
  renderMetrics: () => Promise.resolve({ contentType: 'text/plain', body: 'kernmesh_up 1\n' }),
};

/** Sends raw bytes and returns what came back before the server closed (or the wait ended). */
function raw(port: number, bytes: string, waitMs = 5000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let text = '';
    const done = (closed: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ text, closed });
    };
    const timer = setTimeout(() => done(false), waitMs);
    s.on('data', (d: Buffer) => (text += d.toString()));
    s.on('close', () => done(true));
    s.on('error', () => undefined);
    s.write(bytes);
  });
}

async function get(admin: AdminServer, path: string): Promise<number> {
  return (await fetch(`http://${admin.address}${path}`)).status;
}

void test('malformed requests, unknown paths, huge targets and other methods are answered and closed cleanly', async () => {
  const admin = await startAdminServer(source, { host: '127.0.0.1', port: 0 });
  try {
    const cases: [string, string, RegExp][] = [
      ['garbage', 'this is not http\r\n\r\n', /^HTTP\/1\.1 400 /],
      ['bad header', 'GET / HTTP/1.1\r\nno colon here\r\n\r\n', /^HTTP\/1\.1 400 /],
      [
        'headers over 16 KiB',
        `GET / HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`,
        /^HTTP\/1\.1 431 /,
      ],
      ['binary', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', /^HTTP\/1\.1 400 /],
    ];
    for (const [what, bytes, status] of cases) {
      const r = await raw(admin.port, bytes);
      assert.match(r.text, status, `${what}: ${r.text.slice(0, 100)}`);
      assert.ok(r.closed, `${what}: the connection is closed`);
    }
    assert.equal(await get(admin, '/nope'), 404);
    assert.equal(await get(admin, `/config_dump?name_regex=${'x'.repeat(9000)}`), 414);
    assert.equal(await get(admin, '/config_dump?name_regex=(('), 400);
    assert.equal(await get(admin, '/config_dump?mask=a.b.c.d.e.f&include_eds&resource=nope'), 400);
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const r = await fetch(`http://${admin.address}/healthcheck/fail`, { method });
      assert.equal(r.status, 405, `${method} changes nothing`);
    }
    assert.equal(await get(admin, '/ready'), 200);
    console.log(
      `# malformed: ${cases.length} raw cases answered 400/431 and closed; 404, 414, 400, 405 answered`,
    );
  } finally {
    await admin.close();
  }
});

void test('a slow client is cut off and never blocks the others', async () => {
  const admin = await startAdminServer(source, { host: '127.0.0.1', port: 0, requestTimeoutMs: 500 });
  try {
    // Headers trickled one byte at a time, never finished.
    const slow = connect(admin.port, '127.0.0.1');
    slow.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => slow.on('close', () => resolve()));
    let sent = 0;
    const drip = setInterval(() => {
      if (!slow.destroyed) slow.write('GET /config_dump HTTP/1.1\r\nx: '.charAt(sent++ % 30) || 'a');
    }, 50);
    // Meanwhile every normal request is served.
    let served = 0;
    let open = true;
    void closed.then(() => (open = false));
    while (open) {
      assert.equal(await get(admin, '/ready'), 200);
      served++;
    }
    clearInterval(drip);
    await closed;
    assert.ok(served > 0);
    console.log(`# slow client cut off by the request timeout; ${served} requests served meanwhile`);
  } finally {
    await admin.close();
  }
});

void test('many concurrent connections are answered or closed, and the endpoint still serves', async () => {
  const admin = await startAdminServer(source, { host: '127.0.0.1', port: 0, maxConnections: 64 });
  const sockets: Socket[] = [];
  try {
    const outcomes = await Promise.all(
      Array.from(
        { length: 400 },
        (_, i) =>
          new Promise<'answered' | 'closed'>((resolve) => {
            const s = connect(admin.port, '127.0.0.1');
            sockets.push(s);
            let text = '';
            s.on('error', () => undefined);
            s.on('data', (d: Buffer) => {
              text += d.toString();
              if (/\r\n\r\n/.test(text)) resolve('answered');
            });
            s.on('close', () => resolve(text ? 'answered' : 'closed'));
            s.on('connect', () =>
              s.write(`GET /${i % 2 ? 'ready' : 'stats/prometheus'} HTTP/1.1\r\nhost: x\r\n\r\n`),
            );
          }),
      ),
    );
    const answered = outcomes.filter((o) => o === 'answered').length;
    const closed = outcomes.length - answered;
    assert.equal(answered + closed, 400, 'every connection answered or closed');
    assert.ok(answered > 0);
    for (const s of sockets) s.destroy();
    // Once the server has seen the burst's sockets close, a new client is served.
    await eventually(
      'served after the burst',
      async () => (await get(admin, '/ready').catch(() => 0)) === 200,
    );
    console.log(
      `# 400 concurrent connections (cap 64): ${answered} answered, ${closed} closed at once; served after`,
    );
  } finally {
    for (const s of sockets) s.destroy();
    await admin.close();
  }
});

void test('localhost by default; the probe listener serves readiness and metrics only', async () => {
  const config = loadConfig(['--xds-address', '127.0.0.1:15010'], {}, { checkFiles: false });
  assert.equal(config.admin.host, '127.0.0.1');
  assert.equal(config.probes, undefined, 'no probe listener unless asked for');
  const probes = await startAdminServer(source, { host: '127.0.0.1', port: 0, routes: 'probes' });
  try {
    for (const path of PROBE_ROUTES) assert.equal(await get(probes, path), 200, path);
    for (const path of ['/', '/config_dump', '/debug/xds', '/debug/maps', '/clusters', '/server_info'])
      assert.equal(await get(probes, path), 404, path);
  } finally {
    await probes.close();
  }
});

void test("config_dump never prints a key: fields Envoy's protos mark sensitive are redacted", async () => {
  const secret = '-----BEGIN PRIVATE KEY-----\nMIIEsecret\n-----END PRIVATE KEY-----';
  const cluster = {
    '@type': TYPE.cluster,
    name: 'tls',
    type: 'STATIC',
    transport_socket: {
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
        common_tls_context: {
          tls_certificates: [
            {
              certificate_chain: { inline_string: 'CERT' },
              private_key: { inline_string: secret },
              password: { inline_string: 'hunter2' },
            },
          ],
        },
      },
    },
  };
  const withSecret: AdminSource = {
    ...source,
    configDump: () => ({
      ...source.configDump(),
      resources: [{ typeUrl: TYPE.cluster, name: 'tls', version: '1', resource: cluster }],
      rejections: [
        { typeUrl: TYPE.cluster, name: 'tls2', reason: 'x', failed: { ...cluster, name: 'tls2' } },
      ],
    }),
  };
  const admin = await startAdminServer(withSecret, { host: '127.0.0.1', port: 0 });
  try {
    const text = await (await fetch(`http://${admin.address}/config_dump`)).text();
    assert.ok(!text.includes('MIIEsecret') && !text.includes('hunter2'), 'no key or password printed');
    const redacted = text.match(/\[redacted\]/g)?.length ?? 0;
    // private_key and password of the accepted cluster, and of the refused one wherever it shows
    assert.ok(redacted >= 4 && redacted % 2 === 0, `${redacted} redacted`);
    assert.ok(text.includes('CERT'), 'what is not sensitive is printed');
  } finally {
    await admin.close();
  }
});
