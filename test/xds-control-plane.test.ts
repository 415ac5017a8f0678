// The test control plane itself keeps istiod's rules: a stale nonce is ignored, a NACK is recorded
// and not answered, and proxy-status moves NOT SENT → STALE → SYNCED / ERROR. Driven by a raw client.
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { test } from 'node:test';
import { decodeToJson, encodeFromJson } from '../src/xds/proto-json.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';
import { TestControlPlane } from './support/control-plane.js';

const METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources';

void test('stale nonces are ignored, NACKs are recorded and not answered, proxy-status follows istiod', async () => {
  const cp = await TestControlPlane.start();
  const client = new grpc.Client(cp.address, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest(
    METHOD,
    (b: Uint8Array) => Buffer.from(b),
    (b: Buffer) => b,
  );
  call.on('error', () => undefined);
  const responses: JsonObject[] = [];
  let wake: (() => void) | undefined;
  call.on('data', (b: Buffer) => {
    responses.push(decodeToJson('envoy.service.discovery.v3.DiscoveryResponse', b) as JsonObject);
    wake?.();
  });
  const nextResponse = async (n: number): Promise<JsonObject> => {
    while (responses.length < n) await new Promise<void>((r) => (wake = r));
    return responses[n - 1]!;
  };
  const send = (json: JsonObject): void => {
    call.write(encodeFromJson('envoy.service.discovery.v3.DiscoveryRequest', json));
  };
  try {
    cp.setResources(TYPE.cluster, [{ '@type': TYPE.cluster, name: 'a', type: 'STATIC' }], { version: 'c1' });
    send({ node: { id: 'sidecar~127.0.0.1~x.demo~demo.svc.cluster.local' }, type_url: TYPE.cluster });
    const r1 = await nextResponse(1);
    assert.equal(r1['version_info'], 'c1');
    assert.equal(cp.proxyStatus()['Cluster']?.status, 'STALE', 'sent, not yet ACKed');
    const n1 = r1['nonce'] as string;
    send({ version_info: 'c1', type_url: TYPE.cluster, response_nonce: n1 });
    await cp.waitForAck(TYPE.cluster, { nonce: n1 });
    assert.equal(cp.proxyStatus()['Cluster']?.status, 'SYNCED');

    cp.setResources(TYPE.cluster, [{ '@type': TYPE.cluster, name: 'b', type: 'STATIC' }], { version: 'c2' });
    const r2 = await nextResponse(2);
    // An ACK of the older nonce arrives late: stale, ignored, no answer.
    send({ version_info: 'c1', type_url: TYPE.cluster, response_nonce: n1 });
    const stale = await cp.waitFor((r) => r.kind === 'stale');
    assert.equal(stale.json['response_nonce'], n1);
    assert.equal(cp.proxyStatus()['Cluster']?.status, 'STALE');
    // A NACK of the current nonce: recorded, ERROR with our message, not answered.
    send({
      version_info: 'c1',
      type_url: TYPE.cluster,
      response_nonce: r2['nonce'] as string,
      error_detail: { code: 3, message: 'b: nope' },
    });
    await cp.waitForNack(TYPE.cluster);
    assert.deepStrictEqual(cp.proxyStatus()['Cluster'], { status: 'ERROR', error: 'b: nope' });
    // Nothing answered either request: the next response is the next push.
    cp.setResources(TYPE.cluster, [], { version: 'c3' });
    const r3 = await nextResponse(3);
    assert.equal(r3['version_info'], 'c3');
    assert.equal(responses.length, 3);
  } finally {
    call.cancel();
    client.close();
    await cp.stop();
  }
});
