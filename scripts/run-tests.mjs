// Runs every test file under test/ with node:test through tsx (TypeScript without a build step;
// `npm run typecheck` is what checks types). Node 20's runner takes no globs, so list them here.
// Kernel tests share machine-wide resources (bpffs, cgroups, loopback ports): one file at a time.
// Usage: node scripts/run-tests.mjs [substring ...]   runs only the files whose path contains one.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function find(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...find(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const filter = process.argv.slice(2);
let files = find('test').sort();
if (filter.length) files = files.filter((f) => filter.some((x) => f.includes(x)));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const r = spawnSync(
  process.execPath,
  // A hung test file fails after 5 minutes instead of holding CI to its limit: the runner SIGTERMs it
  // and test/support/kernel.ts removes its cgroups and pins on the way out. No --test-force-exit:
  // on Node 20 it ended files with many describe/it rows part-way, and their other tests never ran.
  [
    '--import',
    'tsx',
    '--enable-source-maps',
    '--test',
    '--test-concurrency=1',
    '--test-timeout=300000',
    ...files,
  ],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
