// The real istiod/Envoy config dumps the tests read. They live outside the repo, in
// ../shared/fixtures/istio beside the checkout (CI clones the repo next to shared/), and are never copied in.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';

import type { JsonObject } from '../../src/xds/types.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export const FIXTURES_DIR = join(REPO_ROOT, '..', 'shared', 'fixtures', 'istio');

/** Why the fixtures cannot be read (for `{ skip }`), or false when they are there. */
export function fixturesMissing(): string | false {
  return existsSync(FIXTURES_DIR)
    ? false
    : `Istio fixtures not found at ${FIXTURES_DIR}: these tests need ../shared/fixtures/istio beside the checkout`;
}

/** The path of one fixture file; throws, naming the path, when it is absent. */
export function fixturePath(name: string): string {
  const path = join(FIXTURES_DIR, name);
  if (!existsSync(path)) throw new Error(fixturesMissing() || `fixture ${path} is missing`);
  return path;
}

/** One fixture file parsed as YAML (.yaml) or JSON (anything else). */
export function readFixture(name: string): JsonObject {
  const text = readFileSync(fixturePath(name), 'utf8');
  return (name.endsWith('.yaml') ? parseYaml(text) : JSON.parse(text)) as JsonObject;
}
