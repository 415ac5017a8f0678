// The README's first command, run as the suite's own test: `kernmesh demo` on the real kernel.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runKernmesh } from './support/cli.js';
import { kernelTest } from './support/kernel.js';

kernelTest(
  'kernmesh demo runs to completion, prints where connections landed and the status of each resource, and cleans up',
  async () => {
    // The demo makes (and removes) its own cgroup and pin directory; the admin endpoint takes a free port.
    const { code, stdout, stderr } = await runKernmesh(['demo', '--admin', '127.0.0.1:0']);
    assert.equal(code, 0, `demo failed:\n${stdout}\n${stderr}`);

    const row = (service: string) => stdout.split('\n').find((l) => l.startsWith(`${service} `)) ?? '';
    // Weighted round robin: 12 connections over weights 1:1:2.
    assert.match(row('reviews'), /reviews-1×3 reviews-2×3 reviews-3×6/);
    assert.match(row('ratings'), /ratings-1×\d+ ratings-2×\d+/);
    assert.match(row('details'), /details-\d×12/, 'Maglev keeps one client on one endpoint');
    assert.match(row('productpage'), /productpage-b×12/, 'priority 0 is unhealthy: priority 1 serves');
    assert.match(row('passthrough'), /external×12/);
    assert.match(row('blackhole'), /ECONNREFUSED×12/);
    assert.match(row('web (HTTP)'), /ECONNREFUSED×12/);
    assert.match(stdout, /getpeername is rewritten back/);
    assert.match(stdout, /RDS\s+8080\s+NACKED\s+.*header match on x-canary/);
    assert.match(stdout, /CDS\s+outbound\|9080\|\|reviews\.demo\.svc\.cluster\.local\s+ACKED/);
    assert.match(stdout, /Admin endpoint: http:\/\/127\.0\.0\.1:\d+\//);

    const pid = /kernmesh-demo-(\d+)/.exec(stdout)?.[1];
    assert.ok(pid, 'the demo names its cgroup');
    assert.match(stdout, /\[demo\] clean$/m);
    assert.equal(existsSync(join('/sys/fs/bpf', `kernmesh-demo-${pid}`)), false, 'pin directory removed');
    const cgroupLine = /cgroup (\S+kernmesh-demo-\d+)/.exec(stdout)![1]!;
    assert.equal(existsSync(cgroupLine), false, 'cgroup removed');
  },
);
