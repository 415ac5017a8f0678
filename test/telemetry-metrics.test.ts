import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';

import type { ConnEvent } from '../src/telemetry/codec.js';
import { istioLabels, IstioTcpMetrics, serviceIdentity } from '../src/telemetry/metrics.js';

const base: ConnEvent = {
  type: 'close',
  timestampNs: 0n,
  cookie: 1n,
  cgroupId: 1n,
  pid: 1,
  direction: 'outbound',
  localAddress: '127.0.0.1',
  localPort: 40000,
  remoteAddress: '127.0.0.21',
  remotePort: 9080,
  serviceId: 1,
  backendId: 1,
  bytesSent: 100n,
  bytesReceived: 2000n,
  durationNs: 1n,
  srttUs: 1,
  retransmits: 0,
  connectUs: 0,
  endReason: 'closed',
  accelerated: false,
};

void test('service identity comes from the Envoy cluster name or a bare host', () => {
  assert.deepEqual(serviceIdentity('outbound|9080||reviews.default.svc.cluster.local'), {
    host: 'reviews.default.svc.cluster.local',
    name: 'reviews',
    namespace: 'default',
  });
  assert.deepEqual(
    serviceIdentity('outbound|9080|v1|reviews.bookinfo.svc.cluster.local')?.namespace,
    'bookinfo',
  );
  assert.deepEqual(serviceIdentity('db.example.com')?.name, 'db');
  assert.equal(serviceIdentity(undefined), undefined);
});

void test('labels: the source reports outbound, the destination inbound; unknown where not known', () => {
  const svc = serviceIdentity('outbound|9080||reviews.default.svc.cluster.local');
  assert.deepEqual(istioLabels(base, svc, { name: 'productpage-v1' }), {
    reporter: 'source',
    destination_service: 'reviews.default.svc.cluster.local',
    destination_service_name: 'reviews',
    destination_service_namespace: 'default',
    source_workload: 'productpage-v1',
    destination_workload: 'unknown',
  });
  assert.deepEqual(istioLabels({ ...base, direction: 'inbound' }, undefined, { name: 'reviews-v1' }), {
    reporter: 'destination',
    destination_service: 'unknown',
    destination_service_name: 'unknown',
    destination_service_namespace: 'unknown',
    source_workload: 'unknown',
    destination_workload: 'reviews-v1',
  });
});

void test('bytes follow Istio: received = request (source to destination), sent = response', async () => {
  const registry = new Registry();
  const m = new IstioTcpMetrics(registry);
  const labels = istioLabels(base, undefined);
  m.record({ ...base, type: 'open' }, labels);
  m.record(base, labels);
  const inbound = { ...base, direction: 'inbound' as const, bytesSent: 7n, bytesReceived: 5n };
  m.record(inbound, istioLabels(inbound, undefined));
  const text = await registry.metrics();
  assert.match(text, /istio_tcp_received_bytes_total\{reporter="source",[^}]*\} 100\n/);
  assert.match(text, /istio_tcp_sent_bytes_total\{reporter="source",[^}]*\} 2000\n/);
  assert.match(text, /istio_tcp_received_bytes_total\{reporter="destination",[^}]*\} 5\n/);
  assert.match(text, /istio_tcp_sent_bytes_total\{reporter="destination",[^}]*\} 7\n/);
  assert.match(text, /istio_tcp_connections_opened_total\{reporter="source",[^}]*\} 1\n/);
  assert.match(text, /istio_tcp_connections_closed_total\{reporter="source",[^}]*\} 1\n/);
});
