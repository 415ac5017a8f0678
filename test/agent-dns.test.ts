// The DNS half of STRICT_DNS/LOGICAL_DNS clusters: lookups on the refresh rate, answers fed back to translate().
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DnsRefresher } from '../src/agent/dns.js';
import type { DnsQuery } from '../src/translate/index.js';

const query = (hostname: string, refreshMs = 60_000): DnsQuery => ({
  hostname,
  family: 'any',
  refreshMs,
  respectTtl: false,
  clusters: ['c'],
});

void describe('DnsRefresher', () => {
  void it('resolves new hostnames, reports changes, keeps the last answer on failure and forgets dropped names', async () => {
    const answers: Record<string, string[] | Error> = { 'db.internal': ['127.0.0.31'] };
    const changes: Record<string, readonly string[]>[] = [];
    const errors: string[] = [];
    const dns = new DnsRefresher({
      lookup: (host) => {
        const a = answers[host];
        return a instanceof Error || a === undefined
          ? Promise.reject(a ?? new Error('ENOTFOUND'))
          : Promise.resolve(a);
      },
      onChange: (m) => changes.push(Object.fromEntries(m)),
      onError: (host, err) => errors.push(`${host}: ${err.message}`),
    });
    try {
      dns.update([query('db.internal')]);
      await dns.refreshAll();
      assert.deepEqual(dns.current().get('db.internal'), ['127.0.0.31']);

      answers['db.internal'] = ['127.0.0.31', '127.0.0.32'];
      await dns.refreshAll();
      answers['db.internal'] = new Error('SERVFAIL');
      await dns.refreshAll();
      assert.deepEqual(dns.current().get('db.internal'), ['127.0.0.31', '127.0.0.32']);
      assert.deepEqual(errors, ['db.internal: resolve db.internal: SERVFAIL']);

      dns.update([]);
      assert.equal(dns.current().size, 0);
      assert.deepEqual(changes, [
        { 'db.internal': ['127.0.0.31'] },
        { 'db.internal': ['127.0.0.31', '127.0.0.32'] },
        {},
      ]);
    } finally {
      dns.close();
    }
  });

  void it('re-resolves on the refresh rate', async () => {
    let calls = 0;
    const dns = new DnsRefresher({
      lookup: () => Promise.resolve([`127.0.0.${++calls}`]),
      onChange: () => undefined,
    });
    try {
      // Waits for the third answer, driven by the 1 ms refresh timer only (no timing assertion).
      const third = new Promise<void>((resolve) => {
        const check = setInterval(() => {
          if (calls >= 3) {
            clearInterval(check);
            resolve();
          }
        }, 1);
      });
      dns.update([query('x.internal', 1)]);
      await third;
      assert.ok(calls >= 3);
    } finally {
      dns.close();
    }
  });

  void it('uses the node resolver by default (localhost from /etc/hosts)', async () => {
    const dns = new DnsRefresher({ onChange: () => undefined });
    try {
      dns.update([query('localhost')]);
      await dns.refreshAll();
      const got = dns.current().get('localhost') ?? [];
      assert.ok(
        got.some((a) => a === '127.0.0.1' || a === '::1'),
        JSON.stringify(got),
      );
    } finally {
      dns.close();
    }
  });
});
