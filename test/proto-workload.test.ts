// Istio's workload API (istio.workload.Address, istio.security.Authorization) decoded through our
// registry from bytes laid out field by field as istiod writes them. The field numbers below are typed
// from istio/istio pkg/workloadapi/{workload,security/authorization}.proto at 86c9f01fd735, not read
// from proto/, so a wrong number or type in our declarations fails here.
import assert from 'node:assert/strict';
import { isIPv4 } from 'node:net';
import { describe, it } from 'node:test';
import protobuf from 'protobufjs';
import { encodeAddress } from '../src/net/address.js';
import { decodeToJson, encodeFromJson } from '../src/xds/proto-json.js';
import { lookupType } from '../src/xds/protos.js';
import { decodeResource } from '../src/xds/decode.js';
import type { JsonObject, JsonValue } from '../src/xds/types.js';
import { readFixture } from './support/fixtures.js';

const ADDRESS_URL = 'type.googleapis.com/istio.workload.Address';
const AUTHORIZATION_URL = 'type.googleapis.com/istio.security.Authorization';

// Field numbers as Istio declares them.
const ADDRESS = { workload: 1, service: 2 };
const SERVICE = {
  name: 1,
  namespace: 2,
  hostname: 3,
  addresses: 4,
  ports: 5,
  subject_alt_names: 6,
  waypoint: 7,
  load_balancing: 8,
  ip_families: 9,
  extensions: 10,
  canonical: 11,
  ingress_use_waypoint: 12,
  weighted_waypoints: 13,
  visibility: 14,
};
const WORKLOAD = {
  name: 1,
  namespace: 2,
  addresses: 3,
  network: 4,
  tunnel_protocol: 5,
  trust_domain: 6,
  service_account: 7,
  waypoint: 8,
  node: 9,
  canonical_name: 10,
  canonical_revision: 11,
  workload_type: 12,
  workload_name: 13,
  native_tunnel: 14,
  authorization_policies: 16,
  status: 17,
  cluster_id: 18,
  network_gateway: 19,
  uid: 20,
  hostname: 21,
  services: 22,
  application_tunnel: 23,
  locality: 24,
  network_mode: 25,
  extensions: 26,
  capacity: 27,
};
const NETWORK_ADDRESS = { network: 1, address: 2, length: 3 };
const GATEWAY_ADDRESS = { hostname: 1, address: 2, hbone_mtls_port: 3 };
const NAMESPACED_HOSTNAME = { namespace: 1, hostname: 2 };
const WEIGHTED_WAYPOINT = { destination: 1, weight: 2 };
const PORT = { service_port: 1, target_port: 2, app_protocol: 3 };
const LOAD_BALANCING = { routing_preference: 1, mode: 2, health_policy: 3 };
const LOCALITY = { region: 1, zone: 2, subzone: 3 };
const APPLICATION_TUNNEL = { protocol: 1, port: 2 };
const EXTENSION = { name: 1, config: 2 };
const PORT_LIST = { ports: 1 };
// Protobuf's own layouts: a map entry, google.protobuf.Any, the wrapper types.
const MAP_ENTRY = { key: 1, value: 2 };
const ANY = { type_url: 1, value: 2 };
const WRAPPER = { value: 1 };
const AUTHORIZATION = { name: 1, namespace: 2, scope: 3, action: 4, groups: 5, dry_run: 6, extensions: 7 };
const GROUP = { rules: 1 };
const RULES = { matches: 2 };
const MATCH = {
  namespaces: 1,
  not_namespaces: 2,
  principals: 3,
  not_principals: 4,
  source_ips: 5,
  not_source_ips: 6,
  destination_ips: 7,
  not_destination_ips: 8,
  destination_ports: 9,
  not_destination_ports: 10,
  service_accounts: 11,
  not_service_accounts: 12,
  extensions: 13,
};
const CIDR = { address: 1, length: 2 };
const SERVICE_ACCOUNT_MATCH = { namespace: 1, serviceAccount: 2 };
const STRING_MATCH = { exact: 1, prefix: 2, suffix: 3, presence: 4 };
// Enum values as Istio declares them.
const HBONE = 1;
const POD = 2;
const UNHEALTHY = 1;
const HOST_NETWORK = 1;
const PROXY = 1;
const IPV4_ONLY = 1;
const HTTP11 = 1;
const GRPC = 3;
const NAMESPACE_VISIBILITY = 1;
const FAILOVER = 2;
const ZONE = 2;
const NODE = 4;
const ALLOW_ALL = 1;
const WORKLOAD_SELECTOR = 2;
const NAMESPACE_SCOPE = 1;
const DENY = 1;

/** One protobuf message written field by field, as a Go marshaller lays it out. */
class Wire {
  private readonly w = protobuf.Writer.create();
  str(field: number, v: string): this {
    this.w.uint32((field << 3) | 2).string(v);
    return this;
  }
  bytes(field: number, v: Uint8Array): this {
    this.w.uint32((field << 3) | 2).bytes(v);
    return this;
  }
  varint(field: number, v: number): this {
    this.w.uint32(field << 3).uint32(v);
    return this;
  }
  bool(field: number, v: boolean): this {
    this.w.uint32(field << 3).bool(v);
    return this;
  }
  msg(field: number, m: Wire): this {
    return this.bytes(field, m.finish());
  }
  /** proto3 repeated scalars: one length-delimited run of varints, as Go writes them. */
  packed(field: number, vs: number[]): this {
    const inner = protobuf.Writer.create();
    for (const v of vs) inner.uint32(v);
    return this.bytes(field, inner.finish());
  }
  finish(): Uint8Array {
    return this.w.finish();
  }
}
const wire = (): Wire => new Wire();

function ipBytes(ip: string): Buffer {
  const b = encodeAddress(ip);
  return isIPv4(ip) ? b.subarray(0, 4) : b;
}
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');

/** The bytes of a Delta Resource's `resource` Any, decoded the way the xDS client decodes them. */
function decodeAs(typeUrl: string, value: Uint8Array, name: string): JsonObject {
  const d = decodeResource(typeUrl, { type_url: typeUrl, value }, '0', name);
  assert.equal(d.error, undefined, `decode ${name}: ${d.error}`);
  assert.ok(d.resource);
  return d.resource;
}

/** What the JSON says comes back as the same bytes' JSON (the file source goes JSON → bytes). */
function assertJsonRoundTrip(typeName: string, json: JsonObject): void {
  const { '@type': _t, ...fields } = json;
  assert.deepStrictEqual(decodeToJson(typeName, encodeFromJson(typeName, fields)), fields);
}

const gatewayByAddress = (ip: string, port: number, network = ''): Wire => {
  const na = wire();
  if (network) na.str(NETWORK_ADDRESS.network, network);
  na.bytes(NETWORK_ADDRESS.address, ipBytes(ip));
  return wire().msg(GATEWAY_ADDRESS.address, na).varint(GATEWAY_ADDRESS.hbone_mtls_port, port);
};
const gatewayByHostname = (namespace: string, hostname: string, port: number): Wire =>
  wire()
    .msg(
      GATEWAY_ADDRESS.hostname,
      wire().str(NAMESPACED_HOSTNAME.namespace, namespace).str(NAMESPACED_HOSTNAME.hostname, hostname),
    )
    .varint(GATEWAY_ADDRESS.hbone_mtls_port, port);

void describe('istio.workload.Address as current istiod sends it', () => {
  void it('a Service with canonical=true, a waypoint and every newer field decodes with each value', () => {
    const svc = wire()
      .str(SERVICE.name, 'reviews')
      .str(SERVICE.namespace, 'bookinfo')
      .str(SERVICE.hostname, 'reviews.bookinfo.svc.cluster.local')
      .msg(SERVICE.addresses, wire().bytes(NETWORK_ADDRESS.address, ipBytes('10.96.198.255')))
      .msg(
        SERVICE.addresses,
        wire().str(NETWORK_ADDRESS.network, 'net1').bytes(NETWORK_ADDRESS.address, ipBytes('fd00:10:96::5')),
      )
      .msg(
        SERVICE.ports,
        wire()
          .varint(PORT.service_port, 9080)
          .varint(PORT.target_port, 9080)
          .varint(PORT.app_protocol, HTTP11),
      )
      .msg(SERVICE.ports, wire().varint(PORT.service_port, 9090).varint(PORT.app_protocol, GRPC))
      .str(SERVICE.subject_alt_names, 'spiffe://cluster.local/ns/bookinfo/sa/reviews')
      .msg(SERVICE.waypoint, gatewayByAddress('10.96.65.117', 15008))
      .msg(
        SERVICE.load_balancing,
        wire()
          .packed(LOAD_BALANCING.routing_preference, [ZONE, NODE])
          .varint(LOAD_BALANCING.mode, FAILOVER)
          .varint(LOAD_BALANCING.health_policy, ALLOW_ALL),
      )
      .varint(SERVICE.ip_families, IPV4_ONLY)
      .bool(SERVICE.canonical, true)
      .bool(SERVICE.ingress_use_waypoint, true)
      .msg(
        SERVICE.weighted_waypoints,
        wire()
          .msg(WEIGHTED_WAYPOINT.destination, gatewayByAddress('10.96.65.117', 15008))
          .varint(WEIGHTED_WAYPOINT.weight, 90),
      )
      .msg(
        SERVICE.weighted_waypoints,
        wire()
          .msg(WEIGHTED_WAYPOINT.destination, gatewayByHostname('bookinfo', 'canary-waypoint', 15008))
          .varint(WEIGHTED_WAYPOINT.weight, 10),
      )
      .varint(SERVICE.visibility, NAMESPACE_VISIBILITY);
    const bytes = wire().msg(ADDRESS.service, svc).finish();

    const json = decodeAs(ADDRESS_URL, bytes, 'bookinfo/reviews.bookinfo.svc.cluster.local');
    const waypoint = { address: { address: b64(ipBytes('10.96.65.117')) }, hbone_mtls_port: 15008 };
    assert.deepStrictEqual(json, {
      '@type': ADDRESS_URL,
      service: {
        name: 'reviews',
        namespace: 'bookinfo',
        hostname: 'reviews.bookinfo.svc.cluster.local',
        addresses: [
          { address: b64(ipBytes('10.96.198.255')) },
          { network: 'net1', address: b64(ipBytes('fd00:10:96::5')) },
        ],
        ports: [
          { service_port: 9080, target_port: 9080, app_protocol: 'HTTP11' },
          { service_port: 9090, app_protocol: 'GRPC' },
        ],
        subject_alt_names: ['spiffe://cluster.local/ns/bookinfo/sa/reviews'],
        waypoint,
        load_balancing: {
          routing_preference: ['ZONE', 'NODE'],
          mode: 'FAILOVER',
          health_policy: 'ALLOW_ALL',
        },
        ip_families: 'IPV4_ONLY',
        canonical: true,
        ingress_use_waypoint: true,
        weighted_waypoints: [
          { destination: waypoint, weight: 90 },
          {
            destination: {
              hostname: { namespace: 'bookinfo', hostname: 'canary-waypoint' },
              hbone_mtls_port: 15008,
            },
            weight: 10,
          },
        ],
        visibility: 'NAMESPACE',
      },
    });
    assertJsonRoundTrip('istio.workload.Address', json);
  });

  void it('a Service without field 11 (older istiod) and with a CIDR address decodes; /0 stays present', () => {
    const svc = wire()
      .str(SERVICE.name, 'external')
      .str(SERVICE.namespace, 'egress')
      .str(SERVICE.hostname, 'external.example.com')
      .msg(
        SERVICE.addresses,
        wire().bytes(NETWORK_ADDRESS.address, ipBytes('192.0.2.0')).varint(NETWORK_ADDRESS.length, 24),
      )
      .msg(
        SERVICE.addresses,
        wire().bytes(NETWORK_ADDRESS.address, ipBytes('0.0.0.0')).varint(NETWORK_ADDRESS.length, 0),
      )
      .msg(SERVICE.addresses, wire().bytes(NETWORK_ADDRESS.address, ipBytes('192.0.2.77')))
      .msg(SERVICE.ports, wire().varint(PORT.service_port, 443).varint(PORT.target_port, 8443))
      .msg(SERVICE.waypoint, gatewayByHostname('egress', 'egress-waypoint.egress.svc.cluster.local', 15008));
    const json = decodeAs(
      ADDRESS_URL,
      wire().msg(ADDRESS.service, svc).finish(),
      'egress/external.example.com',
    );
    assert.deepStrictEqual(json.service, {
      name: 'external',
      namespace: 'egress',
      hostname: 'external.example.com',
      // `length` is proto3 optional: 0 is a /0 range, absent is one host.
      addresses: [
        { address: b64(ipBytes('192.0.2.0')), length: 24 },
        { address: b64(ipBytes('0.0.0.0')), length: 0 },
        { address: b64(ipBytes('192.0.2.77')) },
      ],
      ports: [{ service_port: 443, target_port: 8443 }],
      waypoint: {
        hostname: { namespace: 'egress', hostname: 'egress-waypoint.egress.svc.cluster.local' },
        hbone_mtls_port: 15008,
      },
    });
    assertJsonRoundTrip('istio.workload.Address', json);
  });

  void it('a Workload with every field issue 13 reads (and the rest) decodes with each value', () => {
    const extensionConfig = wire()
      .str(ANY.type_url, 'type.googleapis.com/google.protobuf.StringValue')
      .bytes(ANY.value, wire().str(WRAPPER.value, 'opaque').finish());
    const wl = wire()
      .str(WORKLOAD.name, 'reviews-v1-5b9d8c7f4-abcde')
      .str(WORKLOAD.namespace, 'bookinfo')
      .bytes(WORKLOAD.addresses, ipBytes('10.244.2.54'))
      .bytes(WORKLOAD.addresses, ipBytes('fd00:10:244::36'))
      .str(WORKLOAD.network, 'network1')
      .varint(WORKLOAD.tunnel_protocol, HBONE)
      .str(WORKLOAD.trust_domain, 'example.org')
      .str(WORKLOAD.service_account, 'bookinfo-reviews')
      .msg(WORKLOAD.waypoint, gatewayByAddress('10.96.65.117', 15008, 'network1'))
      .str(WORKLOAD.node, 'ambient-worker2')
      .str(WORKLOAD.canonical_name, 'reviews')
      .str(WORKLOAD.canonical_revision, 'v1')
      .varint(WORKLOAD.workload_type, POD)
      .str(WORKLOAD.workload_name, 'reviews-v1')
      .bool(WORKLOAD.native_tunnel, true)
      .str(WORKLOAD.authorization_policies, 'bookinfo/allow-productpage')
      .str(WORKLOAD.authorization_policies, 'istio-system/istio_converted_static_strict')
      .varint(WORKLOAD.status, UNHEALTHY)
      .str(WORKLOAD.cluster_id, 'cluster-east')
      .msg(WORKLOAD.network_gateway, gatewayByAddress('172.18.0.10', 15008, 'network2'))
      .str(WORKLOAD.uid, 'cluster-east//Pod/bookinfo/reviews-v1-5b9d8c7f4-abcde')
      .str(WORKLOAD.hostname, 'reviews-0.reviews.bookinfo.svc.cluster.local')
      .msg(
        WORKLOAD.services,
        wire()
          .str(MAP_ENTRY.key, 'bookinfo/reviews.bookinfo.svc.cluster.local')
          .msg(
            MAP_ENTRY.value,
            wire().msg(
              PORT_LIST.ports,
              wire().varint(PORT.service_port, 9080).varint(PORT.target_port, 9080),
            ),
          ),
      )
      .msg(
        WORKLOAD.services,
        wire()
          .str(MAP_ENTRY.key, 'bookinfo/reviews-canary.bookinfo.svc.cluster.local')
          .msg(
            MAP_ENTRY.value,
            wire().msg(PORT_LIST.ports, wire().varint(PORT.service_port, 80).varint(PORT.target_port, 9080)),
          ),
      )
      .msg(
        WORKLOAD.application_tunnel,
        wire().varint(APPLICATION_TUNNEL.protocol, PROXY).varint(APPLICATION_TUNNEL.port, 15088),
      )
      .msg(
        WORKLOAD.locality,
        wire()
          .str(LOCALITY.region, 'eu-west')
          .str(LOCALITY.zone, 'eu-west-1a')
          .str(LOCALITY.subzone, 'rack7'),
      )
      .varint(WORKLOAD.network_mode, HOST_NETWORK)
      .msg(
        WORKLOAD.extensions,
        wire().str(EXTENSION.name, 'vendor.ext').msg(EXTENSION.config, extensionConfig),
      )
      .msg(WORKLOAD.capacity, wire().varint(WRAPPER.value, 3));
    const uid = 'cluster-east//Pod/bookinfo/reviews-v1-5b9d8c7f4-abcde';
    const json = decodeAs(ADDRESS_URL, wire().msg(ADDRESS.workload, wl).finish(), uid);
    assert.deepStrictEqual(json.workload, {
      uid,
      name: 'reviews-v1-5b9d8c7f4-abcde',
      namespace: 'bookinfo',
      addresses: [b64(ipBytes('10.244.2.54')), b64(ipBytes('fd00:10:244::36'))],
      hostname: 'reviews-0.reviews.bookinfo.svc.cluster.local',
      network: 'network1',
      tunnel_protocol: 'HBONE',
      trust_domain: 'example.org',
      service_account: 'bookinfo-reviews',
      waypoint: {
        address: { network: 'network1', address: b64(ipBytes('10.96.65.117')) },
        hbone_mtls_port: 15008,
      },
      network_gateway: {
        address: { network: 'network2', address: b64(ipBytes('172.18.0.10')) },
        hbone_mtls_port: 15008,
      },
      node: 'ambient-worker2',
      canonical_name: 'reviews',
      canonical_revision: 'v1',
      workload_type: 'POD',
      workload_name: 'reviews-v1',
      native_tunnel: true,
      application_tunnel: { protocol: 'PROXY', port: 15088 },
      services: {
        'bookinfo/reviews.bookinfo.svc.cluster.local': { ports: [{ service_port: 9080, target_port: 9080 }] },
        'bookinfo/reviews-canary.bookinfo.svc.cluster.local': {
          ports: [{ service_port: 80, target_port: 9080 }],
        },
      },
      authorization_policies: ['bookinfo/allow-productpage', 'istio-system/istio_converted_static_strict'],
      status: 'UNHEALTHY',
      cluster_id: 'cluster-east',
      locality: { region: 'eu-west', zone: 'eu-west-1a', subzone: 'rack7' },
      network_mode: 'HOST_NETWORK',
      extensions: [
        {
          name: 'vendor.ext',
          config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: 'opaque' },
        },
      ],
      capacity: 3,
    });
    assertJsonRoundTrip('istio.workload.Address', json);
  });

  void it('a Workload as istiod elides defaults: no trust domain, service account, type or status on the wire', () => {
    // cluster.local, "default", DEPLOYMENT and HEALTHY are left for the reader to fill in (docs/xds.md).
    const wl = wire()
      .str(WORKLOAD.uid, 'Kubernetes//Pod/default/sleep-1')
      .str(WORKLOAD.name, 'sleep-1')
      .str(WORKLOAD.namespace, 'default')
      .bytes(WORKLOAD.addresses, ipBytes('10.244.1.9'));
    const json = decodeAs(
      ADDRESS_URL,
      wire().msg(ADDRESS.workload, wl).finish(),
      'Kubernetes//Pod/default/sleep-1',
    );
    assert.deepStrictEqual(json.workload, {
      uid: 'Kubernetes//Pod/default/sleep-1',
      name: 'sleep-1',
      namespace: 'default',
      addresses: [b64(ipBytes('10.244.1.9'))],
    });
  });
});

const sm = (kind: keyof typeof STRING_MATCH, v?: string): Wire =>
  kind === 'presence' ? wire().msg(STRING_MATCH.presence, wire()) : wire().str(STRING_MATCH[kind], v ?? '');
const cidr = (ip: string, length: number): Wire =>
  wire().bytes(CIDR.address, ipBytes(ip)).varint(CIDR.length, length);
const saMatch = (namespace: string, sa: string): Wire =>
  wire().str(SERVICE_ACCOUNT_MATCH.namespace, namespace).str(SERVICE_ACCOUNT_MATCH.serviceAccount, sa);
const cidrJson = (ip: string, length: number): JsonObject => ({ address: b64(ipBytes(ip)), length });

void describe('istio.security.Authorization as current istiod sends it', () => {
  void it('a policy with every kind of match, dry_run and an extension decodes with each value', () => {
    const everyKind = wire()
      .msg(MATCH.namespaces, sm('exact', 'bookinfo'))
      .msg(MATCH.namespaces, sm('prefix', 'team-'))
      .msg(MATCH.not_namespaces, sm('suffix', '-test'))
      .msg(MATCH.principals, sm('exact', 'cluster.local/ns/bookinfo/sa/productpage'))
      .msg(MATCH.not_principals, sm('presence'))
      .msg(MATCH.source_ips, cidr('10.244.0.0', 16))
      .msg(MATCH.not_source_ips, cidr('10.244.7.0', 24))
      .msg(MATCH.destination_ips, cidr('fd00:10:244::', 48))
      .msg(MATCH.not_destination_ips, cidr('fd00:10:244::1', 128))
      .packed(MATCH.destination_ports, [9080, 443])
      .packed(MATCH.not_destination_ports, [15021])
      .msg(MATCH.service_accounts, saMatch('bookinfo', 'bookinfo-productpage'))
      .msg(MATCH.not_service_accounts, saMatch('bookinfo', 'default'))
      .msg(MATCH.extensions, wire().str(EXTENSION.name, 'l7-only'));
    const groups = [
      // One rule per clause of the Istio rule (from, to, when), each with its alternatives.
      wire().msg(GROUP.rules, wire().msg(RULES.matches, everyKind)),
      // An Istio rule with no clauses: a group with one rule that has no matches (matches everything).
      wire().msg(GROUP.rules, wire()),
      // A condition istiod could only express in L7: an empty match (matches nothing).
      wire().msg(GROUP.rules, wire().msg(RULES.matches, wire())),
    ];
    const pol = wire()
      .str(AUTHORIZATION.name, 'every-kind')
      .str(AUTHORIZATION.namespace, 'bookinfo')
      .varint(AUTHORIZATION.scope, WORKLOAD_SELECTOR)
      .varint(AUTHORIZATION.action, DENY);
    for (const g of groups) pol.msg(AUTHORIZATION.groups, g);
    pol
      .bool(AUTHORIZATION.dry_run, true)
      .msg(AUTHORIZATION.extensions, wire().str(EXTENSION.name, 'vendor.policy'));

    const json = decodeAs(AUTHORIZATION_URL, pol.finish(), 'bookinfo/every-kind');
    assert.deepStrictEqual(json, {
      '@type': AUTHORIZATION_URL,
      name: 'every-kind',
      namespace: 'bookinfo',
      scope: 'WORKLOAD_SELECTOR',
      action: 'DENY',
      groups: [
        {
          rules: [
            {
              matches: [
                {
                  namespaces: [{ exact: 'bookinfo' }, { prefix: 'team-' }],
                  not_namespaces: [{ suffix: '-test' }],
                  service_accounts: [{ namespace: 'bookinfo', serviceAccount: 'bookinfo-productpage' }],
                  not_service_accounts: [{ namespace: 'bookinfo', serviceAccount: 'default' }],
                  principals: [{ exact: 'cluster.local/ns/bookinfo/sa/productpage' }],
                  not_principals: [{ presence: {} }],
                  source_ips: [cidrJson('10.244.0.0', 16)],
                  not_source_ips: [cidrJson('10.244.7.0', 24)],
                  destination_ips: [cidrJson('fd00:10:244::', 48)],
                  not_destination_ips: [cidrJson('fd00:10:244::1', 128)],
                  destination_ports: [9080, 443],
                  not_destination_ports: [15021],
                  extensions: [{ name: 'l7-only' }],
                },
              ],
            },
          ],
        },
        { rules: [{}] },
        { rules: [{ matches: [{}] }] },
      ],
      dry_run: true,
      extensions: [{ name: 'vendor.policy' }],
    });
    assertJsonRoundTrip('istio.security.Authorization', json);
  });

  void it("istiod's STRICT PeerAuthentication conversion: DENY to sources without a principal", () => {
    const pol = wire()
      .str(AUTHORIZATION.name, 'istio_converted_static_strict')
      .str(AUTHORIZATION.namespace, 'istio-system')
      .varint(AUTHORIZATION.scope, WORKLOAD_SELECTOR)
      .varint(AUTHORIZATION.action, DENY)
      .msg(
        AUTHORIZATION.groups,
        wire().msg(GROUP.rules, wire().msg(RULES.matches, wire().msg(MATCH.not_principals, sm('presence')))),
      );
    const json = decodeAs(AUTHORIZATION_URL, pol.finish(), 'istio-system/istio_converted_static_strict');
    assert.deepStrictEqual(json, {
      '@type': AUTHORIZATION_URL,
      name: 'istio_converted_static_strict',
      namespace: 'istio-system',
      scope: 'WORKLOAD_SELECTOR',
      action: 'DENY',
      groups: [{ rules: [{ matches: [{ not_principals: [{ presence: {} }] }] }] }],
    });
  });

  void it('GLOBAL and ALLOW are the zero values: absent from the JSON, so readers must default them', () => {
    const pol = wire().str(AUTHORIZATION.name, 'allow-nothing').str(AUTHORIZATION.namespace, 'istio-system');
    const json = decodeAs(AUTHORIZATION_URL, pol.finish(), 'istio-system/allow-nothing');
    assert.deepStrictEqual(json, {
      '@type': AUTHORIZATION_URL,
      name: 'allow-nothing',
      namespace: 'istio-system',
    });
  });

  void it('a scope or action istiod may add later arrives as its number, not as a known value', () => {
    const pol = wire()
      .str(AUTHORIZATION.name, 'future')
      .str(AUTHORIZATION.namespace, 'ns')
      .varint(AUTHORIZATION.scope, 7)
      .varint(AUTHORIZATION.action, 2);
    const json = decodeAs(AUTHORIZATION_URL, pol.finish(), 'ns/future');
    assert.equal(json.scope, 7);
    assert.equal(json.action, 2);
  });

  void it('ports written unpacked (one varint per value) decode the same as packed ones', () => {
    const match = wire()
      .varint(MATCH.destination_ports, 80)
      .varint(MATCH.destination_ports, 8080)
      .varint(MATCH.not_destination_ports, 9090);
    const bytes = wire()
      .str(AUTHORIZATION.name, 'p')
      .str(AUTHORIZATION.namespace, 'ns')
      .varint(AUTHORIZATION.scope, NAMESPACE_SCOPE)
      .msg(AUTHORIZATION.groups, wire().msg(GROUP.rules, wire().msg(RULES.matches, match)))
      .finish();
    const json = decodeAs(AUTHORIZATION_URL, bytes, 'ns/p');
    assert.deepStrictEqual(json.groups, [
      { rules: [{ matches: [{ destination_ports: [80, 8080], not_destination_ports: [9090] }] }] },
    ]);
    assert.equal(json.scope, 'NAMESPACE');
  });

  void it("proto3 JSON of a policy in lowerCamelCase is accepted; serviceAccount is Istio's own spelling", () => {
    const json = decodeToJson(
      'istio.security.Authorization',
      encodeFromJson('istio.security.Authorization', {
        name: 'a',
        dryRun: true,
        groups: [
          {
            rules: [
              {
                matches: [{ notPrincipals: [{ presence: {} }], serviceAccounts: [{ serviceAccount: 'x' }] }],
              },
            ],
          },
        ],
      }),
    );
    assert.deepStrictEqual(json, {
      name: 'a',
      groups: [
        {
          rules: [
            {
              matches: [{ not_principals: [{ presence: {} }], service_accounts: [{ serviceAccount: 'x' }] }],
            },
          ],
        },
      ],
      dry_run: true,
    });
  });
});

// ztunnel's own dump (serde names, "network/ip" strings, policies as rules[[[match]]]): each entry
// written back as the istiod resource it came from, decoded, and compared value by value with the dump.
void describe('the shapes of a real ztunnel dump (ztunnel-wds.dump.json) through our declarations', () => {
  const dump = readFixture('ztunnel-wds.dump.json');
  const obj = (v: JsonValue | undefined): JsonObject =>
    v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  const entries = (v: JsonValue | undefined): JsonObject[] => Object.values(obj(v)).map(obj);
  const splitNetworkIp = (s: string): [string, string] => [
    s.slice(0, s.indexOf('/')),
    s.slice(s.indexOf('/') + 1),
  ];

  void it("every workload decodes with the dump's uid, IPs, identity, waypoint, type, node and cluster", () => {
    const workloads = entries(dump.workloads);
    assert.equal(workloads.length, 27);
    const known = new Set([
      'uid',
      'name',
      'namespace',
      'workloadIps',
      'network',
      'protocol',
      'trustDomain',
      'serviceAccount',
      'waypoint',
      'node',
      'canonicalName',
      'canonicalRevision',
      'workloadType',
      'workloadName',
      'nativeTunnel',
      'status',
      'clusterId',
    ]);
    for (const w of workloads) {
      // Every key of the dump is carried over below, so none is left untested.
      assert.deepStrictEqual(
        Object.keys(w).filter((k) => !known.has(k)),
        [],
        JSON.stringify(w.uid),
      );
      const s = (k: string): string => (typeof w[k] === 'string' ? w[k] : '');
      const ips = (w.workloadIps as string[]) ?? [];
      const wl = wire()
        .str(WORKLOAD.uid, s('uid'))
        .str(WORKLOAD.name, s('name'))
        .str(WORKLOAD.namespace, s('namespace'));
      for (const ip of ips) wl.bytes(WORKLOAD.addresses, ipBytes(ip));
      if (s('network')) wl.str(WORKLOAD.network, s('network'));
      if (s('protocol') === 'HBONE') wl.varint(WORKLOAD.tunnel_protocol, HBONE);
      wl.str(WORKLOAD.trust_domain, s('trustDomain')).str(WORKLOAD.service_account, s('serviceAccount'));
      const wp = obj(w.waypoint);
      const [wpNetwork, wpIp] = splitNetworkIp(typeof wp.destination === 'string' ? wp.destination : '/');
      if (wp.destination) wl.msg(WORKLOAD.waypoint, gatewayByAddress(wpIp, Number(wp.port), wpNetwork));
      wl.str(WORKLOAD.node, s('node')).str(WORKLOAD.canonical_name, s('canonicalName'));
      wl.str(WORKLOAD.canonical_revision, s('canonicalRevision'));
      if (s('workloadType') === 'pod') wl.varint(WORKLOAD.workload_type, POD);
      wl.str(WORKLOAD.workload_name, s('workloadName'));
      if (w.nativeTunnel === true) wl.bool(WORKLOAD.native_tunnel, true);
      wl.str(WORKLOAD.cluster_id, s('clusterId'));

      const json = decodeAs(ADDRESS_URL, wire().msg(ADDRESS.workload, wl).finish(), s('uid'));
      const expected: JsonObject = {
        uid: s('uid'),
        name: s('name'),
        namespace: s('namespace'),
        addresses: ips.map((ip) => b64(ipBytes(ip))),
        ...(s('network') ? { network: s('network') } : {}),
        ...(s('protocol') === 'HBONE' ? { tunnel_protocol: 'HBONE' } : {}),
        trust_domain: s('trustDomain'),
        service_account: s('serviceAccount'),
        ...(wp.destination
          ? {
              waypoint: {
                address: { ...(wpNetwork ? { network: wpNetwork } : {}), address: b64(ipBytes(wpIp)) },
                hbone_mtls_port: Number(wp.port),
              },
            }
          : {}),
        node: s('node'),
        canonical_name: s('canonicalName'),
        canonical_revision: s('canonicalRevision'),
        ...(s('workloadType') === 'pod' ? { workload_type: 'POD' } : {}),
        workload_name: s('workloadName'),
        ...(w.nativeTunnel === true ? { native_tunnel: true } : {}),
        cluster_id: s('clusterId'),
      };
      assert.deepStrictEqual(json.workload, expected, s('uid'));
      // The words ztunnel prints for the zero values (NONE is its TCP, DEPLOYMENT, HEALTHY) are not on the wire.
      assert.equal(s('status'), 'Healthy');
      assert.ok(['TCP', 'HBONE'].includes(s('protocol')), s('protocol'));
      assert.ok(['deployment', 'pod'].includes(s('workloadType')));
    }
  });

  void it('every service decodes with its VIPs and ports, and canonical=true as istiod sets it', () => {
    const services = entries(dump.services);
    assert.equal(services.length, 19);
    for (const svc of services) {
      // `endpoints` is ztunnel's join of the workloads' `services` maps, not a field of Service.
      assert.deepStrictEqual(Object.keys(svc).sort(), [
        'endpoints',
        'hostname',
        'name',
        'namespace',
        'ports',
        'subjectAltNames',
        'vips',
      ]);
      const sans = (svc.subjectAltNames as string[]) ?? [];
      const s = (k: string): string => (typeof svc[k] === 'string' ? svc[k] : '');
      const vips = ((svc.vips as string[]) ?? []).map(splitNetworkIp);
      const ports = Object.entries(obj(svc.ports)).map(([p, t]) => [Number(p), Number(t)] as const);
      const m = wire()
        .str(SERVICE.name, s('name'))
        .str(SERVICE.namespace, s('namespace'))
        .str(SERVICE.hostname, s('hostname'));
      for (const [network, ip] of vips) {
        const na = wire();
        if (network) na.str(NETWORK_ADDRESS.network, network);
        m.msg(SERVICE.addresses, na.bytes(NETWORK_ADDRESS.address, ipBytes(ip)));
      }
      for (const [p, t] of ports)
        m.msg(SERVICE.ports, wire().varint(PORT.service_port, p).varint(PORT.target_port, t));
      for (const san of sans) m.str(SERVICE.subject_alt_names, san);
      m.bool(SERVICE.canonical, true);
      const name = `${s('namespace')}/${s('hostname')}`;
      const json = decodeAs(ADDRESS_URL, wire().msg(ADDRESS.service, m).finish(), name);
      assert.deepStrictEqual(
        json.service,
        {
          name: s('name'),
          namespace: s('namespace'),
          hostname: s('hostname'),
          addresses: vips.map(([network, ip]) => ({
            ...(network ? { network } : {}),
            address: b64(ipBytes(ip)),
          })),
          ports: ports.map(([p, t]) => ({ service_port: p, target_port: t })),
          ...(sans.length ? { subject_alt_names: sans } : {}),
          canonical: true,
        },
        name,
      );
    }
  });

  void it('both policies decode: rules[[[match]]] become groups/rules/matches, service accounts intact', () => {
    // The dump's matches hold service accounts only; anything else would be left out here, so refuse it.
    const serviceAccountsOf = (match: JsonValue): { namespace: string; serviceAccount: string }[] => {
      assert.deepStrictEqual(Object.keys(obj(match)), ['serviceAccounts']);
      return ((obj(match).serviceAccounts as JsonValue[]) ?? []).map(obj).map((sa) => ({
        namespace: typeof sa.namespace === 'string' ? sa.namespace : '',
        serviceAccount: typeof sa.serviceAccount === 'string' ? sa.serviceAccount : '',
      }));
    };
    const policies = ((dump.policies as JsonValue[]) ?? []).map(obj);
    assert.equal(policies.length, 2);
    const scopes: Record<string, [number, string]> = {
      Namespace: [NAMESPACE_SCOPE, 'NAMESPACE'],
      WorkloadSelector: [WORKLOAD_SELECTOR, 'WORKLOAD_SELECTOR'],
    };
    for (const p of policies) {
      const s = (k: string): string => (typeof p[k] === 'string' ? p[k] : '');
      const rules = (p.rules as JsonValue[][][]) ?? [];
      const m = wire().str(AUTHORIZATION.name, s('name')).str(AUTHORIZATION.namespace, s('namespace'));
      const scope = scopes[s('scope')];
      if (scope) m.varint(AUTHORIZATION.scope, scope[0]);
      if (s('action') === 'Deny') m.varint(AUTHORIZATION.action, DENY);
      for (const group of rules) {
        const g = wire();
        for (const clause of group) {
          const r = wire();
          for (const match of clause) {
            const mm = wire();
            for (const sa of serviceAccountsOf(match))
              mm.msg(MATCH.service_accounts, saMatch(sa.namespace, sa.serviceAccount));
            r.msg(RULES.matches, mm);
          }
          g.msg(GROUP.rules, r);
        }
        m.msg(AUTHORIZATION.groups, g);
      }
      const name = `${s('namespace')}/${s('name')}`;
      const json = decodeAs(AUTHORIZATION_URL, m.finish(), name);
      const expectedGroups = rules.map((group) => ({
        rules: group.map((clause) => ({
          matches: clause.map((match) => ({ service_accounts: serviceAccountsOf(match) })),
        })),
      }));
      assert.deepStrictEqual(
        json,
        {
          '@type': AUTHORIZATION_URL,
          name: s('name'),
          namespace: s('namespace'),
          ...(scope ? { scope: scope[1] } : {}),
          ...(s('action') === 'Deny' ? { action: 'DENY' } : {}),
          ...(expectedGroups.length ? { groups: expectedGroups } : {}),
        },
        name,
      );
    }
  });
});

void it('the registry knows both workload API resource types by their type URLs', () => {
  assert.ok(lookupType(ADDRESS_URL));
  assert.ok(lookupType(AUTHORIZATION_URL));
});
