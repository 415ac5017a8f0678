// The image's runtime stage must hold everything `kernmesh run` loads. No Docker engine runs here, so
// the test reads the Dockerfile, assembles exactly what its runtime stage copies from the build stage
// (node_modules pruned to production dependencies as `npm prune --omit=dev` leaves them, dist/ built
// afresh by tsc, the addon, the BPF objects, package.json...) into an empty directory, and runs the
// agent from there against a test control plane: a connect through a service VIP must be routed.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';

import { REPO_ROOT, adminAddress, stopProcess, type KernmeshProcess } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import {
  assignment,
  edsCluster,
  getJson,
  outbound,
  passthroughCluster,
  tcpListener,
} from './support/control-plane-istiod.js';
import { kernelTest } from './support/kernel.js';
import { Client, startBackend } from './support/net.js';
import { eventually } from './support/wait.js';
import { TYPE } from '../src/xds/types.js';

interface Copy {
  from: string;
  to: string;
}

/** The runtime stage: its apt packages, WORKDIR, the COPY --from=build lines and the entrypoint. */
function runtimeStage(): {
  packages: string[];
  workdir: string;
  copies: Copy[];
  entrypoint: string[];
  buildWorkdir: string;
} {
  const text = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages = text.split(/^FROM /m).slice(1);
  assert.ok(stages.length >= 2, 'a build stage and a runtime stage');
  const build = stages[0]!;
  const runtime = stages[stages.length - 1]!;
  const buildWorkdir = /^WORKDIR (\S+)/m.exec(build)![1]!;
  const workdir = /^WORKDIR (\S+)/m.exec(runtime)![1]!;
  const packages =
    /apt-get install [^&]*?--no-install-recommends ([^&]+)/.exec(runtime)?.[1]?.trim().split(/\s+/) ?? [];
  const copies = [...runtime.matchAll(/^COPY --from=build (\S+) (\S+)\s*$/gm)].map((m) => ({
    from: m[1]!,
    to: m[2]!,
  }));
  assert.equal(
    copies.length,
    [...runtime.matchAll(/^COPY /gm)].length,
    'every runtime COPY comes from the build stage',
  );
  const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])/m.exec(runtime)![1]!) as string[];
  return { packages, workdir, copies, entrypoint, buildWorkdir };
}

/** What the build stage has at `path` after `npm run build && npm prune --omit=dev`, made from the repo. */
function assemble(stage: ReturnType<typeof runtimeStage>, out: string): void {
  const built = mkdtempSync(join(tmpdir(), 'km-build-'));
  try {
    // dist/ as `npm run build` makes it (tsc), from the current sources
    execFileSync(
      process.execPath,
      [
        join(REPO_ROOT, 'node_modules/typescript/bin/tsc'),
        '-p',
        join(REPO_ROOT, 'tsconfig.json'),
        '--outDir',
        join(built, 'dist'),
      ],
      {
        stdio: 'pipe',
      },
    );
    for (const c of stage.copies) {
      const src = relative(stage.buildWorkdir, c.from);
      const dest = join(out, c.to.endsWith('/') ? c.to : c.to);
      if (src === 'dist') cpSync(join(built, 'dist'), join(out, c.to), { recursive: true });
      else if (src === 'node_modules') {
        // the production dependency tree npm prune --omit=dev keeps
        const keep = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], {
          cwd: REPO_ROOT,
          encoding: 'utf8',
        })
          .split('\n')
          .filter((p) => p.startsWith(join(REPO_ROOT, 'node_modules') + '/'));
        for (const p of keep)
          cpSync(p, join(out, c.to, relative(join(REPO_ROOT, 'node_modules'), p)), { recursive: true });
      } else if (src.includes('*')) {
        const dir = dirname(src);
        const re = new RegExp(`^${basename(src).replace(/\./g, '\\.').replace(/\*/g, '.*')}$`);
        const files = readdirSync(join(REPO_ROOT, dir)).filter((f) => re.test(f));
        assert.ok(files.length > 0, `${c.from} matches files`);
        mkdirSync(dest, { recursive: true });
        for (const f of files) cpSync(join(REPO_ROOT, dir, f), join(dest, f));
      } else {
        assert.ok(existsSync(join(REPO_ROOT, src)), `${c.from} exists after the build`);
        const target = c.to.endsWith('/') ? join(dest, basename(src)) : dest;
        cpSync(join(REPO_ROOT, src), target, { recursive: true });
      }
    }
  } finally {
    rmSync(built, { recursive: true, force: true });
  }
}

void test('the runtime stage installs every library the native addon links against (or its base image has it)', () => {
  const { packages } = runtimeStage();
  const addon = join(REPO_ROOT, 'native/build/Release/kernmesh_native.node');
  const libs = [...execFileSync('ldd', [addon], { encoding: 'utf8' }).matchAll(/=> (\/\S+)/g)].map(
    (m) => m[1]!,
  );
  // node:20-bookworm-slim has the C and C++ runtimes; apt brings the listed packages' dependencies
  const closure = new Set(
    execFileSync(
      'apt-cache',
      [
        'depends',
        '--recurse',
        '--no-recommends',
        '--no-suggests',
        '--no-conflicts',
        '--no-breaks',
        '--no-replaces',
        '--no-enhances',
        ...packages,
      ],
      {
        encoding: 'utf8',
      },
    )
      .split('\n')
      .map((l) => l.replace(/^\s*(PreDepends|Depends):\s*/, '').trim())
      .filter((l) => /^[a-z0-9][a-z0-9+.-]+$/.test(l)),
  );
  for (const base of ['libc6', 'libstdc++6', 'libgcc-s1']) closure.add(base);
  for (const lib of libs) {
    // merged /usr: dpkg knows a library under /lib or /usr/lib, whichever its package shipped
    const owner = (path: string): string | undefined => {
      try {
        return execFileSync('dpkg-query', ['-S', path], { encoding: 'utf8', stdio: 'pipe' }).split(':')[0];
      } catch {
        return undefined;
      }
    };
    const pkg =
      owner(lib) ??
      owner(lib.replace(/^\/usr\/lib\//, '/lib/')) ??
      owner(lib.replace(/^\/lib\//, '/usr/lib/'));
    assert.ok(pkg, `${lib}: no Debian package owns it`);
    assert.ok(closure.has(pkg), `${lib} comes from ${pkg}, which the runtime stage does not install`);
  }
});

kernelTest('an agent assembled from exactly what the Dockerfile copies starts and routes', async (t, env) => {
  const stage = runtimeStage();
  const root = mkdtempSync(join(tmpdir(), 'km-image-'));
  env.defer(() => rmSync(root, { recursive: true, force: true }));
  const app = join(root, stage.workdir);
  mkdirSync(app, { recursive: true });
  assemble(stage, app);
  t.diagnostic(`runtime stage: ${stage.copies.map((c) => c.from).join(', ')}`);

  const cp = await TestControlPlane.start();
  env.defer(() => cp.stop());
  const backend = await startBackend('127.95.0.1');
  env.defer(() => backend.close());
  const VIP = '127.100.95.1';
  const cluster = outbound('image.test.svc.cluster.local', 8085);
  cp.setResources(TYPE.cluster, [passthroughCluster, edsCluster(cluster)]);
  cp.setResources(TYPE.endpoint, [assignment(cluster, [{ address: backend.address, port: backend.port }])]);
  cp.setResources(TYPE.listener, [tcpListener(VIP, 8085, cluster)]);

  // ENTRYPOINT ["node", "dist/src/cli/main.js"] from WORKDIR, nothing from the repository
  const [cmd, ...entry] = stage.entrypoint;
  assert.equal(cmd, 'node');
  const child = spawn(
    process.execPath,
    [
      ...entry,
      'run',
      '--xds-address',
      cp.address,
      '--cgroup',
      env.cgroup,
      '--bpffs',
      join(env.pinDir, 'image'),
      '--admin',
      '127.0.0.1:0',
    ],
    {
      cwd: app,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: root },
    },
  ) as KernmeshProcess;
  env.defer(async () => void (await stopProcess(child, 'SIGKILL')));
  child.lines = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stderrText = () => stderr;
  createInterface({ input: child.stdout! }).on('line', (l) => {
    try {
      child.lines.push(JSON.parse(l) as never);
    } catch {
      child.lines.push({ text: l });
    }
  });
  const admin = await adminAddress(child);
  await eventually('/ready', async () => {
    if (child.exitCode !== null)
      assert.fail(
        `the assembled agent exited ${child.exitCode}: ${stderr} ${JSON.stringify(child.lines.slice(-3))}`,
      );
    return (await getJson(admin, '/ready').catch(() => ({ status: 0 }))).status === 200;
  });
  const client = new Client(env.cgroup);
  env.defer(() => client.exit());
  const r = await client.connect({ host: VIP, port: 8085, readId: true });
  assert.equal(r.backend, backend.id, `routed by the assembled agent: ${r.err ?? ''}`);
  assert.equal(await stopProcess(child), 0);
});
