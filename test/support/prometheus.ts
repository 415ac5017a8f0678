// promtool (Debian package prometheus) is the reference checker of the exposition format.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

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
