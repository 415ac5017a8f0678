// Control plane lost (issue 14): the last accepted config stays in force while istiod is gone, the
// client retries with a jittered backoff capped at 30 s, and a returning control plane with a
// different config is resynchronised. 30 minutes of absence are simulated with a fake clock.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { validateAgainst } from '../src/translate/validate.js';
import { TYPE } from '../src/xds/types.js';
import { FakeClock } from './support/control-plane-clock.js';
import { TestControlPlane } from './support/control-plane.js';
import { assignment, edsCluster } from './support/control-plane-istiod.js';
import { prng } from './support/fuzz.js';
import { connectionState, makeClient } from './support/xds-client.js';

const A = 'outbound|80||a.test.svc.cluster.local';
const B = 'outbound|80||b.test.svc.cluster.local';

function serve(cp: TestControlPlane, cluster: string, ip: string): void {
  cp.setResources(TYPE.cluster, [edsCluster(cluster)]);
  cp.setResources(TYPE.endpoint, [assignment(cluster, [{ address: ip, port: 80 }])]);
  cp.setResources(TYPE.listener, []);
}

void test('control plane gone for 30 simulated minutes: config kept, jittered backoff capped at 30 s, resync with its new config', async () => {
  const first = await TestControlPlane.start();
  const port = Number(first.address.split(':')[1]);
  serve(first, A, '127.0.0.1');
  const clock = new FakeClock();
  const client = makeClient(first, { clock, random: prng(14), validate: validateAgainst });
  let second: TestControlPlane | undefined;
  try {
    client.start();
    await first.waitForAck(TYPE.endpoint);
    const heldBefore = JSON.stringify(client.snapshot(TYPE.endpoint));
    const statusesBefore = client.status().types.map((t) => [t.typeUrl, t.status, t.version]);
    const down = connectionState(client, (s) => s.state === 'BACKOFF');
    await first.stop();
    const lost = await down;
    assert.match(lost.lastError ?? '', /ADS stream to .* closed/);

    // Nothing listens on the port now: each retry fails and the next one is scheduled.
    const delays: number[] = [];
    let simulated = 0;
    while (simulated < 30 * 60_000) {
      const status = client.status().connection;
      assert.equal(status.state, 'BACKOFF');
      const delay = status.retryInMs!;
      delays.push(delay);
      const failed = connectionState(client, (s) => s.state === 'BACKOFF' && s.attempts > status.attempts);
      clock.advance(delay);
      simulated += delay;
      await failed;
      assert.equal(
        JSON.stringify(client.snapshot(TYPE.endpoint)),
        heldBefore,
        'the last accepted config stays',
      );
    }
    const capped = delays.filter((d) => d > 20_000);
    assert.ok(
      delays.every((d) => d >= 400 && d <= 36_000),
      `delays within 0.5 s and 30 s ±20 %: ${delays.join(',')}`,
    );
    assert.ok(
      delays[0]! < 1_000 && capped.length > delays.length / 2,
      'exponential from 0.5 s, capped at 30 s',
    );
    assert.ok(new Set(capped).size > capped.length / 2, 'jittered: the capped delays differ');
    assert.deepEqual(
      client.status().types.map((t) => [t.typeUrl, t.status, t.version]),
      statusesBefore,
      'statuses and versions kept',
    );

    // It comes back with a different config: resynchronised, the old one replaced.
    second = await TestControlPlane.start({ port });
    serve(second, B, '127.0.0.2');
    const streamsBefore = client.status().connection.streams;
    clock.advance(client.status().connection.retryInMs!);
    await second.waitForAck(TYPE.endpoint);
    assert.deepEqual(
      client.snapshot(TYPE.cluster).map((r) => r.name),
      [B],
    );
    const cla = client.snapshot(TYPE.endpoint)[0]?.resource;
    assert.equal(cla?.['cluster_name'], B);
    const now = client.status().connection;
    assert.equal(now.state, 'CONNECTED');
    assert.equal(now.streams, streamsBefore + 1);
    console.log(
      `# 30 simulated minutes without a control plane: ${delays.length} retries, delays ${Math.min(...delays)}–${Math.max(...delays)} ms (${new Set(capped).size} distinct of ${capped.length} capped); config kept; resynced to the new config on return`,
    );
  } finally {
    client.stop();
    await second?.stop();
  }
});
