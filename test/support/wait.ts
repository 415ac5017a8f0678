// Waiting for asynchronous effects (sockops counts, ring buffer events, an agent's pushes) without
// timed assertions: the bound is on attempts, the assertion is on state.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

export interface EventuallyOptions {
  attempts: number;
  intervalMs: number;
}

/** Polls until check() holds; fails naming `what` when it never does within the attempts. */
export async function eventually(
  what: string,
  check: () => Promise<boolean> | boolean,
  { attempts, intervalMs }: EventuallyOptions = { attempts: 400, intervalMs: 50 },
): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (await check()) return;
    await sleep(intervalMs);
  }
  assert.fail(`never happened: ${what}`);
}
