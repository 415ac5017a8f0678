import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';

import type { ConnEvent } from '../src/telemetry/codec.js';
import { ISTIO_TCP_LABELS, istioLabels, IstioTcpMetrics, serviceIdentity } from '../src/telemetry/metrics.js';
import { WorkloadIndex, type CgroupWorkloads } from '../src/telemetry/workloads.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';

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

const b64 = (ip: string): string => Buffer.from(ip.split('.').map(Number)).toString('base64');

/** The workload API's view of bookinfo, as istiod sends it (proto3 JSON of istio.workload.Address). */
const addresses: XdsResource[] = [
  {
    typeUrl: TYPE.address,
    name: 'Kubernetes//Pod/default/productpage-v1-abc',
    version: '1',
    resource: {
      workload: {
        uid: 'Kubernetes//Pod/default/productpage-v1-abc',
        name: 'productpage-v1-abc',
        namespace: 'default',
        addresses: [b64('10.0.0.5')],
        service_account: 'bookinfo-productpage',
        workload_name: 'productpage-v1',
        canonical_name: 'productpage',
        canonical_revision: 'v1',
        cluster_id: 'east',
        trust_domain: 'cluster.local',
      },
    },
  },
  {
    typeUrl: TYPE.address,
    name: 'Kubernetes//Pod/default/reviews-v2-xyz',
    version: '1',
    resource: {
      workload: {
        name: 'reviews-v2-xyz',
        namespace: 'default',
        addresses: [b64('10.0.0.21')],
        service_account: 'bookinfo-reviews',
        workload_name: 'reviews-v2',
        canonical_name: 'reviews',
        canonical_revision: 'v2',
        cluster_id: 'west',
        services: {
          'default/reviews.default.svc.cluster.local': { ports: [{ service_port: 9080, target_port: 9081 }] },
        },
      },
    },
  },
  {
    typeUrl: TYPE.address,
    name: 'default/reviews.default.svc.cluster.local',
    version: '1',
    resource: {
      service: {
        name: 'reviews',
        namespace: 'default',
        hostname: 'reviews.default.svc.cluster.local',
        addresses: [{ network: '', address: b64('10.96.0.9') }],
        ports: [{ service_port: 9080, target_port: 9081 }],
      },
    },
  },
];

void test('labels: unknown everywhere when nothing is known about either end', () => {
  const l = istioLabels(base, undefined);
  assert.equal(l.reporter, 'source');
  for (const k of ISTIO_TCP_LABELS.filter(
    (x) => !['reporter', 'request_protocol', 'response_flags'].includes(x),
  ))
    assert.equal(l[k], 'unknown', k);
  assert.equal(l.request_protocol, 'tcp');
});

void test('labels: the source reports both ends from the workload API, the service from the VIP asked for', () => {
  const index = new WorkloadIndex();
  index.update(addresses);
  const ev: ConnEvent = {
    ...base,
    localAddress: '10.0.0.5',
    remoteAddress: '10.0.0.21',
    remotePort: 9081,
    originalAddress: '10.96.0.9',
    originalPort: 9080,
  };
  const l = istioLabels(ev, serviceIdentity('outbound|9080|v2|reviews.default.svc.cluster.local'), {
    directory: index,
    clusterId: 'east',
  });
  assert.deepEqual(l, {
    reporter: 'source',
    source_workload: 'productpage-v1',
    source_workload_namespace: 'default',
    source_principal: 'spiffe://cluster.local/ns/default/sa/bookinfo-productpage',
    source_app: 'productpage',
    source_version: 'v1',
    source_canonical_service: 'productpage',
    source_canonical_revision: 'v1',
    source_cluster: 'east',
    destination_workload: 'reviews-v2',
    destination_workload_namespace: 'default',
    destination_principal: 'spiffe://cluster.local/ns/default/sa/bookinfo-reviews',
    destination_app: 'reviews',
    destination_version: 'v2',
    destination_canonical_service: 'reviews',
    destination_canonical_revision: 'v2',
    destination_cluster: 'west',
    destination_service: 'reviews.default.svc.cluster.local',
    destination_service_name: 'reviews',
    destination_service_namespace: 'default',
    request_protocol: 'tcp',
    response_flags: '-',
    connection_security_policy: 'unknown',
  });
});

void test('labels: the destination names its service from the port it serves, the source by address', () => {
  const index = new WorkloadIndex();
  index.update(addresses);
  const ev: ConnEvent = {
    ...base,
    direction: 'inbound',
    localAddress: '10.0.0.21',
    localPort: 9081,
    remoteAddress: '::ffff:10.0.0.5',
    remotePort: 40000,
  };
  const l = istioLabels(ev, undefined, { directory: index, clusterId: 'west' });
  assert.equal(l.reporter, 'destination');
  assert.equal(l.destination_service, 'reviews.default.svc.cluster.local');
  assert.equal(l.destination_workload, 'reviews-v2');
  assert.equal(l.source_workload, 'productpage-v1', 'v4-mapped peer found by its IPv4 address');
  assert.equal(l.source_cluster, 'east');
  assert.equal(l.connection_security_policy, 'none');
  // another port of the workload is no service's
  assert.equal(
    istioLabels({ ...ev, localPort: 15000 }, undefined, { directory: index }).destination_service,
    'unknown',
  );
});

void test("labels: the pod enrolled behind a cgroup wins over the address; its cluster is the agent's", () => {
  const enrolled: CgroupWorkloads = {
    byCgroup: (id) => (id === 77n ? { workload: 'ratings-v1', namespace: 'shop' } : undefined),
  };
  const index = new WorkloadIndex(enrolled);
  index.update(addresses);
  const l = istioLabels({ ...base, cgroupId: 77n, localAddress: '10.0.0.5' }, undefined, {
    directory: index,
    clusterId: 'east',
  });
  assert.equal(l.source_workload, 'ratings-v1');
  assert.equal(l.source_workload_namespace, 'shop');
  assert.equal(l.source_cluster, 'east');
  assert.equal(l.source_principal, 'unknown');
  const other = istioLabels({ ...base, cgroupId: 78n, localAddress: '10.0.0.5' }, undefined, {
    directory: index,
  });
  assert.equal(other.source_workload, 'productpage-v1', 'a cgroup with no pod falls back to the address');
});

void test('a waypoint is not a service: the destination service comes from the VIP asked for', () => {
  assert.equal(serviceIdentity('waypoint|10.0.0.9|15008'), undefined);
  const index = new WorkloadIndex();
  index.update(addresses);
  const ev = { ...base, originalAddress: '10.96.0.9', originalPort: 9080 };
  assert.equal(istioLabels(ev, undefined, { directory: index }).destination_service_name, 'reviews');
  assert.equal(
    istioLabels({ ...ev, originalPort: 1234 }, undefined, { directory: index }).destination_service,
    'unknown',
    'a port the service does not have',
  );
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
