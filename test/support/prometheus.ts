// Debian's package prometheus: promtool is the reference checker of the exposition format, and the
// server evaluates dashboards' PromQL against real scrapes.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Fails unless `promtool check metrics` accepts the exposition, with promtool's complaint. */
export function assertPromtoolAccepts(exposition: string): void {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
  if (r.error)
    throw new Error(
      `promtool not runnable (Debian package prometheus; scripts/setup.sh installs it): ${r.error.message}`,
      { cause: r.error },
    );
  assert.equal(r.status, 0, `promtool check metrics failed:\n${r.stdout}${r.stderr}\n${exposition}`);
}

/** One series of an instant query's result. */
export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

/**
 * Debian's Prometheus server on loopback, scraping the given targets every second into a temporary
 * TSDB; query() is its HTTP API's instant query.
 */
export class PrometheusServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
    private readonly log: () => string,
  ) {}

  static async start(
    dir: string,
    targets: { job: string; address: string; path: string }[],
  ): Promise<PrometheusServer> {
    const config = join(dir, 'prometheus.yml');
    writeFileSync(
      config,
      [
        'global:',
        '  scrape_interval: 1s',
        '  evaluation_interval: 1s',
        'scrape_configs:',
        ...targets.flatMap((t) => [
          `  - job_name: ${t.job}`,
          `    metrics_path: ${t.path}`,
          '    static_configs:',
          `      - targets: ['${t.address}']`,
        ]),
        '',
      ].join('\n'),
    );
    // A free port now; if another process takes it first, Prometheus exits and the next one is tried.
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      let log = '';
      const child = spawn(
        'prometheus',
        [
          `--config.file=${config}`,
          `--storage.tsdb.path=${join(dir, `data-${attempt}`)}`,
          `--web.listen-address=127.0.0.1:${port}`,
          '--log.level=warn',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      child.stderr.on('data', (d: Buffer) => (log += d.toString()));
      const url = `http://127.0.0.1:${port}`;
      const server = new PrometheusServer(child, url, () => log);
      for (let i = 0; i < 200 && child.exitCode === null; i++) {
        try {
          if ((await fetch(`${url}/-/ready`)).status === 200) return server;
        } catch {
          /* not listening yet */
        }
        await sleep(50);
      }
      await server.stop();
      if (attempt === 2) throw new Error(`prometheus did not start: ${log}`);
    }
  }

  async query(expr: string): Promise<PromSample[]> {
    const r = await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await r.json()) as { status: string; error?: string; data?: { result: PromSample[] } };
    if (body.status !== 'success')
      throw new Error(`query ${expr}: ${body.error ?? r.status} (${this.log()})`);
    return body.data!.result;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await done;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}
