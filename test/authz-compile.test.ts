// The authorization compiler without a kernel: what a resource is refused for (every fault with its
// path), how policies expand into terms, how sources become identities, and that what cannot be
// given to the kernel denies. The codecs are checked against bpf/authz.bpf.o's BTF.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';

import {
  ACTION_CODE,
  AuthzIds,
  compile,
  DEST_FLAGS,
  MAX_TERMS,
  REASONS,
  TERM_FLAGS,
  type AuthzModel,
} from '../src/authz/compile.js';
import { fileBtf } from '../native/index.js';
import { specDifferences } from '../native/spec.js';
import { AUTHZ_SPEC, cidrKey, decodeCidrKey } from '../src/authz/codec.js';
import {
  readAuthorization,
  readWorkload,
  type AuthzPolicy,
  type AuthzWorkload,
} from '../src/authz/policy.js';
import type { JsonObject } from '../src/xds/types.js';
import { btfEnums, btfStructs } from './support/btf.js';
import { cidr, exact, policy, presence, workload } from './support/authz-resources.js';

execFileSync('make', ['-s', '-C', 'bpf'], { stdio: ['ignore', 'ignore', 'inherit'] });

void describe('codecs of bpf/authz.h', () => {
  const btf = btfStructs('bpf/authz.bpf.o');
  for (const l of AUTHZ_SPEC.structs)
    void it(`struct ${l.struct} matches its codec`, () => {
      const s = btf.get(l.struct);
      assert.ok(s, `struct ${l.struct} not in the BTF`);
      assert.equal(s.size, l.size, 'sizeof');
      assert.deepEqual(s.members, l.fields);
    });
  void it('constants: every enum value the compiler mirrors is the object’s, and the agent’s own check at load agrees', () => {
    const enums = btfEnums('bpf/authz.bpf.o');
    for (const e of AUTHZ_SPEC.enums) {
      const live = enums.get(e.enum);
      assert.ok(live, `enum ${e.enum} not in the BTF`);
      for (const [name, value] of Object.entries(e.values)) assert.equal(live[name], value, name);
    }
    assert.deepEqual(specDifferences(AUTHZ_SPEC, fileBtf('bpf/authz.bpf.o')), []);
  });
  void it('a CIDR key covers set, negated and family before the prefix, and round-trips', () => {
    const c = readAuthorization(
      policy({ name: 'p', namespace: 'n', groups: [[[{ source_ips: [cidr('10.1.2.3/16')] }]]] }).resource,
    );
    assert.ok(!c.errors);
    const block = c.policy.groups[0]!.clauses[0]!.matches[0]!.sourceIps[0]!;
    const k = cidrKey(7, block, true);
    assert.equal(k.readUInt32LE(0), 48 + 16);
    assert.deepEqual([...k.subarray(10, 14)], [10, 1, 0, 0], 'host bits cleared');
    const back = decodeCidrKey(k);
    assert.deepEqual([back.set, back.negated, back.cidr.length, back.cidr.family], [7, true, 16, 4]);
  });
});

const pol = (o: JsonObject, name = 'ns/p'): ReturnType<typeof readAuthorization> =>
  readAuthorization(o, name);

void describe('reading an Authorization: refused with every fault and its path', () => {
  const base = { name: 'p', namespace: 'ns' };
  const cases: [string, JsonObject, RegExp][] = [
    [
      'a StringMatch with no kind (ztunnel drops it, widening a not_ list)',
      { ...base, groups: [{ rules: [{ matches: [{ not_principals: [{}] }] }] }] },
      /^ns\/p\.groups\[0\]\.rules\[0\]\.matches\[0\]\.not_principals\[0\]: no match kind set/,
    ],
    [
      'an address of 5 bytes',
      { ...base, groups: [{ rules: [{ matches: [{ source_ips: [{ address: 'AQIDBAU=', length: 8 }] }] }] }] },
      /source_ips\[0\]\.address: 5 bytes; an address has 4 or 16/,
    ],
    [
      'a prefix longer than the address',
      {
        ...base,
        groups: [{ rules: [{ matches: [{ destination_ips: [{ address: 'CgAAAA==', length: 33 }] }] }] }],
      },
      /destination_ips\[0\]\.length: 33 is not a prefix length of an IPv4 address \(0-32\)/,
    ],
    [
      'a port above 65535 (ztunnel truncates it to 16 bits)',
      { ...base, groups: [{ rules: [{ matches: [{ not_destination_ports: [8080, 70000] }] }] }] },
      /not_destination_ports\[1\]: 70000 is not a port/,
    ],
    [
      'an unknown scope',
      { ...base, scope: 5 },
      /^ns\/p\.scope: 5 is not one of GLOBAL, NAMESPACE, WORKLOAD_SELECTOR/,
    ],
    ['an unknown action', { ...base, action: 'AUDIT' }, /^ns\/p\.action: "AUDIT" is not one of ALLOW, DENY/],
    [
      'an extension on a match',
      {
        ...base,
        groups: [{ rules: [{ matches: [{ namespaces: [{ exact: 'a' }], extensions: [{ name: 'x' }] }] }] }],
      },
      /matches\[0\]\.extensions: an extension may narrow or widen the match/,
    ],
    [
      'a name that is not the resource name',
      { name: 'q', namespace: 'ns' },
      /^ns\/p: named "ns\/p" but holds "ns\/q"/,
    ],
    ['a field kernmesh does not know', { ...base, future_field: 1 }, /^ns\/p\.future_field: unknown field/],
  ];
  for (const [what, o, re] of cases)
    void it(what, () => {
      const r = pol(o);
      assert.ok(r.errors, 'refused');
      assert.ok(
        r.errors.some((e) => re.test(e)),
        `${r.errors.join('; ')} should match ${re}`,
      );
    });
  void it('every fault of one resource is listed, and what was understood is kept', () => {
    const r = pol({
      ...base,
      scope: 'NAMESPACE',
      action: 'DENY',
      groups: [{ rules: [{ matches: [{ principals: [{}], destination_ports: [-1] }] }] }],
    });
    assert.ok(r.errors);
    assert.equal(r.errors.length, 2);
    assert.equal(r.refused.scope, 'NAMESPACE');
    assert.equal(r.refused.action, 'DENY');
  });
  void it('zero values are defaults: GLOBAL, ALLOW, not dry-run', () => {
    const r = pol(base);
    assert.ok(!r.errors);
    assert.deepEqual(
      [r.policy.scope, r.policy.action, r.policy.dryRun, r.policy.groups],
      ['GLOBAL', 'ALLOW', false, []],
    );
  });
});

void describe('reading a workload', () => {
  void it("fills istiod's empty values as ztunnel does", () => {
    const w = readWorkload(workload({ name: 'a', namespace: 'ns', ips: ['10.0.0.1', 'fd00::1'] }).resource)!;
    assert.deepEqual(
      [w.trustDomain, w.serviceAccount, w.addresses, w.hostNetwork],
      ['cluster.local', 'default', ['10.0.0.1', 'fd00::1'], false],
    );
  });
  void it('a workload with an address of another length is not read (ztunnel refuses it whole)', () => {
    assert.equal(readWorkload({ workload: { uid: 'u', addresses: ['AQID'] } }), undefined);
  });
});

function ok(o: JsonObject): AuthzPolicy {
  const r = readAuthorization(o, `${o.namespace as string}/${o.name as string}`);
  assert.ok(!r.errors, r.errors?.join('; '));
  return r.policy;
}

const server = (policies: string[] = []): AuthzWorkload =>
  readWorkload(
    workload({
      name: 'srv',
      namespace: 'shop',
      serviceAccount: 'srv',
      ips: ['10.0.0.1'],
      node: 'n1',
      policies,
    }).resource,
  )!;
const peer = (name: string, ns: string, ip: string, extra: { hostNetwork?: boolean } = {}): AuthzWorkload =>
  readWorkload(
    workload({ name, namespace: ns, serviceAccount: name, ips: [ip], node: 'n2', ...extra }).resource,
  )!;

function run(policies: AuthzPolicy[], workloads: AuthzWorkload[], ids = new AuthzIds()): AuthzModel {
  return compile({ policies, refused: [], workloads, node: 'n1' }, ids);
}

/** The kernel's decision, evaluated over the model as bpf/authz.bpf.c does (for the compiler's tests). */
function decide(m: AuthzModel, src: string, dst: string, port: number): number {
  const d = m.dests.get(dst);
  if (!d) return REASONS.unknown_destination;
  const identity = m.sources.get(src) ?? 0;
  let allowed = false;
  for (const t of d.terms) {
    const s = m.sets.get(t.set);
    const inIds = s?.identities.includes(identity) ?? false;
    if (t.flags & TERM_FLAGS.idIn && !inIds) continue;
    if (t.flags & TERM_FLAGS.idNotIn && inIds) continue;
    const ports = (neg: boolean): boolean => s!.ports.some((p) => p.negated === neg && p.port === port);
    if (t.flags & TERM_FLAGS.portIn && !ports(false)) continue;
    if (t.flags & TERM_FLAGS.portNotIn && ports(true)) continue;
    if (t.flags & TERM_FLAGS.dryRun) continue;
    if (t.action === ACTION_CODE.DENY) return t.reason;
    allowed = true;
    break;
  }
  // the folded terms: one lookup by identity, one by port; a DENY there wins over any ALLOW
  const idx = m.index.get(d.list);
  const byId = idx?.identities.get(identity);
  const byPort = idx?.ports.get(port);
  if (byId?.deny) return byId.reason;
  if (byPort?.deny) return byPort.reason;
  if (byId?.allow || byPort?.allow) allowed = true;
  if (d.flags & DEST_FLAGS.allow && !allowed) return REASONS.no_allow_match;
  return 0;
}

void describe('compiling', () => {
  const ns = (n: string): JsonObject => ({ namespaces: [exact(n)] });
  void it('a group becomes one term per choice of one match in each clause', () => {
    const p = ok(
      policy({
        name: 'p',
        namespace: 'shop',
        scope: 'NAMESPACE',
        groups: [
          [
            [{ destination_ports: [1] }, { destination_ports: [2] }],
            [ns('a'), ns('b'), ns('c')],
          ],
        ],
      }).resource,
    );
    const m = run([p], [server()]);
    assert.equal(m.dests.get('10.0.0.1')!.terms.length, 6);
  });
  void it('an empty match never holds; a clause of only empty matches sinks its group; a group with no clauses holds', () => {
    const none = ok(
      policy({ name: 'p', namespace: 'shop', scope: 'NAMESPACE', groups: [[[{}], [ns('a')]]] }).resource,
    );
    assert.equal(run([none], [server()]).dests.get('10.0.0.1')!.terms.length, 0);
    const all = ok(policy({ name: 'p', namespace: 'shop', scope: 'NAMESPACE', groups: [[]] }).resource);
    const t = run([all], [server()]).dests.get('10.0.0.1')!.terms;
    assert.deepEqual(
      t.map((x) => [x.flags, x.set]),
      [[0, 0]],
      'one term without conditions',
    );
  });
  void it('an ALLOW with no groups: the destination requires an ALLOW match and has none', () => {
    const p = ok(policy({ name: 'p', namespace: 'shop', scope: 'NAMESPACE', groups: [] }).resource);
    const d = run([p], [server()]).dests.get('10.0.0.1')!;
    assert.deepEqual([d.terms.length, d.flags], [0, DEST_FLAGS.allow]);
  });
  void it('source CIDRs of the chosen matches intersect; a port both allowed and excluded is not allowed', () => {
    const p = ok(
      policy({
        name: 'p',
        namespace: 'shop',
        scope: 'NAMESPACE',
        groups: [
          [
            [{ source_ips: [cidr('10.1.0.0/16'), cidr('10.9.0.0/16')], destination_ports: [80, 81] }],
            [{ source_ips: [cidr('10.1.2.0/24')], not_destination_ports: [81] }],
          ],
        ],
      }).resource,
    );
    const m = run([p], [server()]);
    const [t] = m.dests.get('10.0.0.1')!.terms;
    const s = m.sets.get(t!.set)!;
    assert.deepEqual(
      s.cidrs.map((c) => [c.negated, c.cidr.length, [...c.cidr.bytes.subarray(0, 4)].join('.')]),
      [[false, 24, '10.1.2.0']],
    );
    assert.deepEqual(s.ports, [
      { negated: false, port: 80 },
      { negated: true, port: 81 },
    ]);
  });
  void it('destination IPs are decided per destination address at compile time', () => {
    const p = ok(
      policy({
        name: 'p',
        namespace: 'shop',
        scope: 'NAMESPACE',
        action: 'DENY',
        groups: [[[{ destination_ips: [cidr('10.0.0.0/24')], not_destination_ips: [cidr('10.0.0.2')] }]]],
      }).resource,
    );
    const two = readWorkload(
      workload({ name: 'srv', namespace: 'shop', ips: ['10.0.0.1', '10.0.0.2', '10.0.1.1'], node: 'n1' })
        .resource,
    )!;
    const m = run([p], [two]);
    assert.deepEqual(
      ['10.0.0.1', '10.0.0.2', '10.0.1.1'].map((a) => m.dests.get(a)!.terms.length),
      [1, 0, 0],
    );
  });
  void it('an address two workloads share: an ALLOW needs both identities to pass, a DENY either', () => {
    const a = peer('a', 'x', '10.9.0.1');
    const b = peer('b', 'y', '10.9.0.1');
    const allowX = ok(
      policy({ name: 'allow-x', namespace: 'shop', scope: 'NAMESPACE', groups: [[[ns('x')]]] }).resource,
    );
    assert.equal(decide(run([allowX], [server(), a, b]), '10.9.0.1', '10.0.0.1', 80), REASONS.no_allow_match);
    assert.equal(decide(run([allowX], [server(), a]), '10.9.0.1', '10.0.0.1', 80), 0);
    const denyX = ok(
      policy({ name: 'deny-x', namespace: 'shop', scope: 'NAMESPACE', action: 'DENY', groups: [[[ns('x')]]] })
        .resource,
    );
    assert.equal(decide(run([denyX], [server(), a, b]), '10.9.0.1', '10.0.0.1', 80), REASONS.deny_policy);
  });
  void it("a host-network workload's address is also the node's: it may be a source with no identity", () => {
    const h = peer('agent', 'infra', '10.9.0.7', { hostNetwork: true });
    const strict = ok(
      policy({
        name: 'istio_converted_static_strict',
        namespace: 'istio-system',
        scope: 'WORKLOAD_SELECTOR',
        action: 'DENY',
        groups: [[[{ not_principals: [presence()] }]]],
      }).resource,
    );
    const m = run([strict], [server(['istio-system/istio_converted_static_strict']), h]);
    assert.equal(decide(m, '10.9.0.7', '10.0.0.1', 80), REASONS.deny_policy);
    assert.equal(
      m.names.identities.get(m.sources.get('10.9.0.7')!),
      '(no identity) | cluster.local/ns/infra/sa/agent',
    );
  });
  void it('a listed policy not received denies everything, named; a refused DENY too; a refused ALLOW allows nothing', () => {
    const m = compile(
      {
        policies: [],
        refused: [
          {
            key: 'shop/bad-deny',
            name: 'bad-deny',
            namespace: 'shop',
            scope: 'NAMESPACE',
            action: 'DENY',
            dryRun: false,
            errors: ['x'],
          },
          {
            key: 'shop/bad-dry',
            name: 'bad-dry',
            namespace: 'shop',
            scope: 'NAMESPACE',
            dryRun: true,
            errors: ['x'],
          },
        ],
        workloads: [server(['shop/missing'])],
        node: 'n1',
      },
      new AuthzIds(),
    );
    const d = m.dests.get('10.0.0.1')!;
    assert.deepEqual(d.terms.map((t) => [m.names.policies.get(t.id)?.key, t.reason, t.flags]).sort(), [
      ['shop/bad-deny', REASONS.policy_refused, 0],
      ['shop/missing', REASONS.policy_pending, 0],
    ]);
    assert.deepEqual(
      m.workloads[0]!.policies.map((p) => [p.policy, p.state]),
      [
        ['shop/bad-deny', 'refused'],
        ['shop/bad-dry', 'dry_run'],
        ['shop/missing', 'pending'],
      ],
    );
  });
  void it(`more than ${MAX_TERMS} terms on one destination: one term that denies everything`, () => {
    const many = Array.from({ length: 5 }, (_, i) =>
      ok(
        policy({
          name: `p${i}`,
          namespace: 'shop',
          scope: 'NAMESPACE',
          // two conditions per term: walked, not folded into the index
          groups: [
            [
              Array.from({ length: 1000 }, (_, j) => ({
                destination_ports: [j + 1],
                not_source_ips: [cidr('10.9.9.9')],
              })),
            ],
          ],
        }).resource,
      ),
    );
    const m = run(many, [server()]);
    const d = m.dests.get('10.0.0.1')!;
    assert.deepEqual(
      d.terms.map((t) => t.reason),
      [REASONS.over_budget],
    );
    assert.equal(m.workloads[0]!.denyAll, 'over_budget');
  });
  void it('ids and sets stay the same across compiles of the same policies; identities listed in the shorter form', () => {
    const ids = new AuthzIds();
    const peers = Array.from({ length: 6 }, (_, i) => peer(`p${i}`, i === 0 ? 'y' : 'x', `10.9.0.${i + 1}`));
    const notY = ok(
      policy({
        name: 'not-y',
        namespace: 'shop',
        scope: 'NAMESPACE',
        groups: [[[{ not_namespaces: [exact('y')] }]]],
      }).resource,
    );
    const m1 = run([notY], [server(), ...peers], ids);
    const m2 = run([notY], [server(), ...peers], ids);
    const d1 = m1.dests.get('10.0.0.1')!;
    const d2 = m2.dests.get('10.0.0.1')!;
    assert.deepEqual(d1, d2);
    // one identity condition: folded out of the walk into one lookup by identity
    assert.deepEqual([d1.terms.length, d1.list > 0], [0, true]);
    const idx = m1.index.get(d1.list)!;
    const y = m1.sources.get('10.9.0.1')!;
    assert.equal(idx.identities.has(y), false, 'y is not allowed');
    assert.equal(idx.identities.get(m1.sources.get('10.9.0.2')!)?.allow, true);
    assert.equal(idx.identities.get(0)?.allow, true, 'no identity has no namespace, so not y');
    const set = [...m1.sets.values()][0]!;
    assert.deepEqual(set.identities, [y], 'the failing identities are fewer: listed as those that fail');
  });
});
