// A throwaway CA and istiod serving certificate, made with openssl in a temp dir for TLS tests.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  dir: string;
  caCertFile: string;
  /** A second, unrelated CA: verifying the server against it must fail. */
  otherCaCertFile: string;
  serverCert: Buffer;
  serverKey: Buffer;
  /** The server certificate's DNS name. */
  serverName: string;
  cleanup(): void;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makeTestPki(serverName = 'istiod.istio-system.svc'): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'kernmesh-pki-'));
  for (const ca of ['ca', 'other-ca']) {
    openssl(dir, [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${ca}.key`,
      '-out',
      `${ca}.pem`,
      '-days',
      '2',
      '-subj',
      `/O=kernmesh test/CN=${ca}`,
    ]);
  }
  writeFileSync(join(dir, 'san.ext'), `subjectAltName=DNS:${serverName}\nextendedKeyUsage=serverAuth\n`);
  openssl(dir, [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'server.key',
    '-out',
    'server.csr',
    '-subj',
    `/CN=${serverName}`,
  ]);
  openssl(dir, [
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '2',
    '-extfile',
    'san.ext',
  ]);
  return {
    dir,
    caCertFile: join(dir, 'ca.pem'),
    otherCaCertFile: join(dir, 'other-ca.pem'),
    serverCert: readFileSync(join(dir, 'server.pem')),
    serverKey: readFileSync(join(dir, 'server.key')),
    serverName,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
