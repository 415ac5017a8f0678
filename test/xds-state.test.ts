// The per-type protocol state machine driven by response sequences, without any I/O.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeltaTypeState, SotwTypeState, type DecodedResource, type Validator } from '../src/xds/state.js';
import { TYPE } from '../src/xds/types.js';

const clock = () => new Date('2026-01-01T00:00:00Z');
const cluster = (name: string, extra: Record<string, string> = {}): DecodedResource => ({
  name,
  resource: { '@type': TYPE.cluster, name, type: 'EDS', ...extra },
});
const cla = (name: string, port = 80): DecodedResource => ({
  name,
  resource: {
    '@type': TYPE.endpoint,
    cluster_name: name,
    endpoints: [
      {
        lb_endpoints: [
          { endpoint: { address: { socket_address: { address: '127.0.0.2', port_value: port } } } },
        ],
      },
    ],
  },
});
const refuse =
  (bad: string, reason = 'not L4'): Validator =>
  (typeUrl, resources) =>
    resources.filter((r) => r.name === bad).map((r) => ({ typeUrl, name: r.name, reason }));

void test('SotW CDS: initial request, ACK echoes version and nonce, missing resources are deleted', () => {
  const s = new SotwTypeState(TYPE.cluster, clock);
  assert.deepStrictEqual(s.streamStarted(), {
    type_url: TYPE.cluster,
    version_info: '',
    resource_names: [],
    response_nonce: '',
  });
  const r1 = s.handleResponse({ version_info: 'v1', nonce: 'n1', resources: [cluster('a'), cluster('b')] });
  assert.deepStrictEqual(r1.request, {
    type_url: TYPE.cluster,
    version_info: 'v1',
    resource_names: [],
    response_nonce: 'n1',
  });
  assert.equal(r1.changed, true);
  const r2 = s.handleResponse({ version_info: 'v2', nonce: 'n2', resources: [cluster('b')] });
  assert.equal(r2.changed, true);
  assert.deepStrictEqual(
    s.snapshot().map((r) => r.name),
    ['b'],
  );
  assert.equal(s.snapshot()[0]?.version, 'v1', 'unchanged content keeps the version it was accepted under');
  const r3 = s.handleResponse({ version_info: 'v3', nonce: 'n3', resources: [] });
  assert.equal(r3.changed, true);
  assert.deepStrictEqual(s.snapshot(), [], 'an empty CDS response deletes every cluster');
  assert.equal(s.status().version, 'v3');
});

void test('SotW: a bad resource is NACKed with the last accepted version while the good ones apply', () => {
  const s = new SotwTypeState(TYPE.cluster, clock);
  s.streamStarted();
  s.handleResponse({ version_info: 'v1', nonce: 'n1', resources: [cluster('a'), cluster('b')] });
  const r = s.handleResponse(
    {
      version_info: 'v2',
      nonce: 'n2',
      resources: [cluster('a', { lb_policy: 'RANDOM' }), cluster('b', { lb_policy: 'MAGLEV' }), cluster('c')],
    },
    refuse('b', 'lb_policy: header hashing is L7'),
  );
  assert.deepStrictEqual(r.request, {
    type_url: TYPE.cluster,
    version_info: 'v1',
    resource_names: [],
    response_nonce: 'n2',
    error_detail: { code: 3, message: 'b: lb_policy: header hashing is L7' },
  });
  assert.equal(s.resourceState('a')?.status, 'ACKED');
  assert.equal(s.resourceState('a')?.accepted?.resource['lb_policy'], 'RANDOM');
  assert.equal(s.resourceState('b')?.status, 'NACKED');
  assert.equal(
    s.resourceState('b')?.accepted?.resource['lb_policy'],
    undefined,
    'b keeps its last accepted content',
  );
  assert.equal(s.resourceState('c')?.status, 'ACKED');
  const st = s.status();
  assert.equal(st.status, 'NACKED');
  assert.equal(st.version, 'v1');
  assert.match(st.lastError ?? '', /header hashing/);
  // The next good response clears the error and moves the version on.
  const ok = s.handleResponse({
    version_info: 'v3',
    nonce: 'n3',
    resources: [cluster('a'), cluster('b'), cluster('c')],
  });
  assert.equal(ok.request.error_detail, undefined);
  assert.equal(ok.request.version_info, 'v3');
  assert.equal(s.status().status, 'ACKED');
});

void test('SotW: a resource that cannot be decoded is NACKed with its reason, duplicates too', () => {
  const s = new SotwTypeState(TYPE.cluster, clock);
  s.streamStarted();
  const r = s.handleResponse({
    version_info: 'v1',
    nonce: 'n1',
    resources: [cluster('a'), { name: 'resources[1]', error: 'cannot decode' }, cluster('a')],
  });
  assert.match(r.request.error_detail?.message ?? '', /resources\[1\]: cannot decode/);
  assert.match(r.request.error_detail?.message ?? '', /a: duplicate resource name/);
  assert.deepStrictEqual(s.snapshot(), [], 'a name sent twice is refused as a whole');
  assert.equal(s.resourceState('a')?.status, 'NACKED');
});

void test('SotW EDS: subscription follows CDS with the latest nonce; partial pushes change only what they carry', () => {
  const s = new SotwTypeState(TYPE.endpoint, clock);
  assert.deepStrictEqual(s.setSubscription(['x', 'y']), { changed: false }, 'no stream yet: nothing to send');
  assert.deepStrictEqual(s.streamStarted().resource_names, ['x', 'y']);
  s.handleResponse({ version_info: 'e1', nonce: 'n1', resources: [cla('x'), cla('y')] });
  const partial = s.handleResponse({ version_info: 'e2', nonce: 'n2', resources: [cla('y', 81)] });
  assert.equal(partial.changed, true);
  assert.deepStrictEqual(
    s.snapshot().map((r) => [r.name, r.version]),
    [
      ['x', 'e1'],
      ['y', 'e2'],
    ],
  );
  const sub = s.setSubscription(['y', 'z']);
  assert.deepStrictEqual(sub.request, {
    type_url: TYPE.endpoint,
    version_info: 'e2',
    resource_names: ['y', 'z'],
    response_nonce: 'n2',
  });
  assert.equal(sub.changed, true, 'x was dropped');
  assert.equal(s.resourceState('z')?.status, 'REQUESTED');
  assert.equal(s.markDoesNotExist('z'), true);
  assert.equal(s.resourceState('z')?.status, 'DOES_NOT_EXIST');
  // Resources nobody asked for are ignored.
  s.handleResponse({ version_info: 'e3', nonce: 'n3', resources: [cla('q')] });
  assert.equal(s.resourceState('q'), undefined);
});

void test('SotW reconnect: the nonce is forgotten, versions and config are kept, resent content is no change', () => {
  const s = new SotwTypeState(TYPE.cluster, clock);
  s.streamStarted();
  s.handleResponse({ version_info: 'v7', nonce: 'n1', resources: [cluster('a')] });
  s.streamEnded();
  assert.deepStrictEqual(
    s.snapshot().map((r) => r.name),
    ['a'],
  );
  assert.deepStrictEqual(s.streamStarted(), {
    type_url: TYPE.cluster,
    version_info: 'v7',
    resource_names: [],
    response_nonce: '',
  });
  const again = s.handleResponse({ version_info: 'v7', nonce: 'm1', resources: [cluster('a')] });
  assert.equal(again.changed, false, 'no duplicate apply');
});

void test('Delta: initial versions on reconnect, removals, ACK without subscription changes, NACK with detail', () => {
  const s = new DeltaTypeState(TYPE.endpoint, clock);
  s.setSubscription(['x', 'y']);
  assert.deepStrictEqual(s.streamStarted(), {
    type_url: TYPE.endpoint,
    resource_names_subscribe: ['x', 'y'],
    resource_names_unsubscribe: [],
    initial_resource_versions: {},
    response_nonce: '',
  });
  const r1 = s.handleResponse({
    system_version_info: 's1',
    nonce: 'd1',
    resources: [
      { ...cla('x'), version: '1' },
      { ...cla('y'), version: '1' },
    ],
    removed_resources: [],
  });
  assert.deepStrictEqual(r1.request, {
    type_url: TYPE.endpoint,
    resource_names_subscribe: [],
    resource_names_unsubscribe: [],
    initial_resource_versions: {},
    response_nonce: 'd1',
  });
  const r2 = s.handleResponse(
    {
      system_version_info: 's2',
      nonce: 'd2',
      resources: [{ ...cla('x', 90), version: '2' }],
      removed_resources: ['y'],
    },
    refuse('x'),
  );
  assert.deepStrictEqual(r2.request.error_detail, { code: 3, message: 'x: not L4' });
  assert.equal(s.resourceState('y')?.status, 'DOES_NOT_EXIST');
  assert.equal(s.resourceState('x')?.accepted?.version, '1');
  const sub = s.setSubscription(['x', 'z']);
  assert.deepStrictEqual(sub.request, {
    type_url: TYPE.endpoint,
    resource_names_subscribe: ['z'],
    resource_names_unsubscribe: ['y'],
    initial_resource_versions: {},
    response_nonce: '',
  });
  s.streamEnded();
  assert.deepStrictEqual(s.streamStarted().initial_resource_versions, { x: '1' });
});

void test('Delta wildcard: removed resources are deleted', () => {
  const s = new DeltaTypeState(TYPE.cluster, clock);
  assert.deepStrictEqual(s.streamStarted().resource_names_subscribe, []);
  s.handleResponse({
    system_version_info: '',
    nonce: 'd1',
    resources: [
      { ...cluster('a'), version: '1' },
      { ...cluster('b'), version: '1' },
    ],
    removed_resources: [],
  });
  const r = s.handleResponse({
    system_version_info: '',
    nonce: 'd2',
    resources: [],
    removed_resources: ['a'],
  });
  assert.equal(r.changed, true);
  assert.deepStrictEqual(
    s.snapshot().map((x) => x.name),
    ['b'],
  );
  assert.equal(s.resourceState('a'), undefined);
});

const route = (name: string, hosts: string[]): DecodedResource => ({
  name,
  resource: {
    '@type': TYPE.route,
    name,
    virtual_hosts: hosts.map((h) => ({ name: h, domains: [h], routes: [{ route: { cluster: h } }] })),
  },
});
/** Refuses one virtual host of a route as translate does: scoped to that part (partial). */
const refuseVhost =
  (vhost: string): Validator =>
  (typeUrl, resources) =>
    resources.flatMap((r) =>
      JSON.stringify(r.resource).includes(`"name":"${vhost}"`)
        ? [{ typeUrl, name: r.name, reason: `virtual_hosts[1].routes[0].match.headers: L7`, partial: true }]
        : [],
    );

void test('SotW RDS: a resource refused only in one virtual host is applied and still NACKed with the reason', () => {
  const s = new SotwTypeState(TYPE.route, clock);
  s.setSubscription(['8080', '9090']);
  s.streamStarted();
  s.handleResponse({
    version_info: 'r1',
    nonce: 'n1',
    resources: [route('8080', ['a']), route('9090', ['z'])],
  });
  const r = s.handleResponse(
    { version_info: 'r2', nonce: 'n2', resources: [route('8080', ['a', 'canary']), route('9090', ['y'])] },
    refuseVhost('canary'),
  );
  assert.deepStrictEqual(r.request, {
    type_url: TYPE.route,
    version_info: 'r1',
    resource_names: ['8080', '9090'],
    response_nonce: 'n2',
    error_detail: { code: 3, message: '8080: virtual_hosts[1].routes[0].match.headers: L7' },
  });
  assert.equal(r.changed, true);
  const st = s.resourceState('8080');
  assert.equal(st?.status, 'NACKED', 'the resource shows the refusal');
  assert.match(st?.lastError ?? '', /virtual_hosts\[1\]/);
  assert.equal(
    (st?.accepted?.resource['virtual_hosts'] as unknown[]).length,
    2,
    'and its content is applied (translate skips the refused virtual host)',
  );
  assert.equal(st?.accepted?.version, 'r2');
  assert.equal(s.resourceState('9090')?.status, 'ACKED');
  assert.equal(s.status().status, 'NACKED');
  // The same content again is refused again and changes nothing.
  const again = s.handleResponse(
    { version_info: 'r3', nonce: 'n3', resources: [route('8080', ['a', 'canary'])] },
    refuseVhost('canary'),
  );
  assert.equal(again.changed, false);
  assert.match(again.request.error_detail?.message ?? '', /8080: virtual_hosts\[1\]/);
  assert.equal(s.resourceState('8080')?.status, 'NACKED');
});

void test('a whole-resource refusal next to a partial one keeps the last accepted content', () => {
  const s = new DeltaTypeState(TYPE.route, clock);
  s.setSubscription(['8080']);
  s.streamStarted();
  s.handleResponse({
    system_version_info: '',
    nonce: 'd1',
    resources: [{ ...route('8080', ['a']), version: '1' }],
    removed_resources: [],
  });
  const both: Validator = (typeUrl, resources, held) => [
    ...refuseVhost('canary')(typeUrl, resources, held),
    { typeUrl, name: '8080', reason: 'request_headers_to_add: header rewrite is L7' },
  ];
  const r = s.handleResponse(
    {
      system_version_info: '',
      nonce: 'd2',
      resources: [{ ...route('8080', ['a', 'canary']), version: '2' }],
      removed_resources: [],
    },
    both,
  );
  assert.equal(r.changed, false);
  assert.equal(r.request.error_detail?.message.split('\n').length, 2, 'every reason is in the NACK');
  assert.equal(s.resourceState('8080')?.status, 'NACKED');
  assert.equal(s.resourceState('8080')?.accepted?.version, '1');
});
