// The acceptance table of L4 authorization (issue 13), shared by the kernel-level test (compiler and
// kernel object driven directly) and the end-to-end test (agent, control plane, enrolled pods).
// One server pod, shop/reviews, on node-1; sources with and without workloads in the workload API.
import type { JsonObject } from '../../src/xds/types.js';
import type { AuthzTopology } from './authz-net.js';
import {
  cidr,
  exact,
  policy,
  presence,
  prefix,
  suffix,
  workload,
  type PolicySpec,
} from './authz-resources.js';

export const NODE = 'node-1';
export const PORTS = { main: 8080, other: 8081, admin: 9090 } as const;

/** Where a probe comes from: host addresses of "another host", the local pod, the node itself. */
export type Source = 'ratings' | 'teller' | 'legacy' | 'anonymous' | 'auditor6' | 'local' | 'node';
export const SOURCES: readonly Source[] = [
  'ratings',
  'teller',
  'legacy',
  'anonymous',
  'auditor6',
  'local',
  'node',
];

/** Every workload of the mesh; the server lists `listed` (its WORKLOAD_SELECTOR policies). */
export function workloads(t: AuthzTopology, listed: string[] = []): { name: string; resource: JsonObject }[] {
  const [ratings, teller, legacy] = t.addr.hosts as [string, string, string, string];
  return [
    workload({
      name: 'reviews',
      namespace: 'shop',
      serviceAccount: 'reviews',
      ips: [t.addr.pod, t.addr.pod6],
      node: NODE,
      policies: listed,
    }),
    // not enrolled: it lists a DENY of everything, which must not reach it
    workload({
      name: 'other',
      namespace: 'shop',
      ips: [t.addr.other],
      node: NODE,
      policies: ['shop/deny-all-other'],
    }),
    workload({
      name: 'productpage',
      namespace: 'shop',
      serviceAccount: 'productpage',
      ips: [t.addr.local],
      node: NODE,
    }),
    workload({
      name: 'ratings',
      namespace: 'shop',
      serviceAccount: 'ratings',
      ips: [ratings],
      node: 'node-2',
    }),
    // empty trust domain: ztunnel reads cluster.local
    workload({
      name: 'teller',
      namespace: 'bank',
      serviceAccount: 'teller',
      trustDomain: '',
      ips: [teller],
      node: 'node-2',
    }),
    // empty service account: ztunnel reads default
    workload({ name: 'legacy', namespace: 'shop', serviceAccount: '', ips: [legacy], node: 'node-2' }),
    workload({
      name: 'auditor',
      namespace: 'bank',
      serviceAccount: 'auditor',
      ips: [t.addr.host6],
      node: 'node-2',
    }),
  ];
}

export const DENY_ALL_OTHER = policy({
  name: 'deny-all-other',
  namespace: 'shop',
  scope: 'WORKLOAD_SELECTOR',
  action: 'DENY',
  groups: [[]],
});

export interface Outcome {
  reason: string;
  /** The policy's name, '' when no single policy decides. */
  policy: string;
  namespace: string;
}

export interface Probe {
  from: Source;
  port?: number;
  /** 'allow', or the counter a denial adds to. */
  expect: 'allow' | Outcome;
  /** A dry-run report the probe adds (kernmesh_authorization_dry_run_denied_total). */
  dryRun?: Outcome;
}

export interface Row {
  name: string;
  policies: { name: string; resource: JsonObject }[];
  /** WORKLOAD_SELECTOR policies the server's workload lists. */
  listed?: string[];
  probes: Probe[];
}

const ws = (
  p: Omit<PolicySpec, 'namespace'> & { namespace?: string },
): { name: string; resource: JsonObject } => policy({ namespace: 'shop', scope: 'WORKLOAD_SELECTOR', ...p });
const deny = (reason: string, policyName: string, namespace: string): Outcome => ({
  reason,
  policy: policyName,
  namespace,
});
const notAllowed = deny('no_allow_match', '', 'shop');

export const ROWS: Row[] = [
  {
    name: 'allow by default: no policy applies',
    policies: [],
    probes: SOURCES.map((from) => ({ from, expect: 'allow' as const })),
  },
  {
    name: 'allow-nothing: an ALLOW policy with no rules allows nothing',
    policies: [ws({ name: 'allow-nothing', groups: [] })],
    listed: ['shop/allow-nothing'],
    probes: SOURCES.map((from) => ({ from, expect: notAllowed })),
  },
  {
    name: 'a rule with no clauses matches every connection (ALLOW all, DENY all)',
    policies: [
      ws({ name: 'allow-all', groups: [[]] }),
      ws({ name: 'deny-all', action: 'DENY', groups: [[]] }),
    ],
    listed: ['shop/allow-all', 'shop/deny-all'],
    probes: ['ratings', 'anonymous', 'local', 'node', 'auditor6'].map((from) => ({
      from: from as Source,
      expect: deny('deny_policy', 'deny-all', 'shop'),
    })),
  },
  {
    name: 'deny wins over allow',
    policies: [
      ws({ name: 'allow-all', groups: [[]] }),
      ws({
        name: 'deny-ratings',
        action: 'DENY',
        groups: [[[{ principals: [exact('cluster.local/ns/shop/sa/ratings')] }]]],
      }),
    ],
    listed: ['shop/allow-all', 'shop/deny-ratings'],
    probes: [
      { from: 'ratings', expect: deny('deny_policy', 'deny-ratings', 'shop') },
      { from: 'teller', expect: 'allow' },
      { from: 'anonymous', expect: 'allow' },
    ],
  },
  {
    name: 'namespace rules: namespaces and not_namespaces of the source identity',
    policies: [
      ws({ name: 'from-bank', groups: [[[{ namespaces: [exact('bank')] }]]] }),
      ws({
        name: 'any-but-shop',
        groups: [[[{ namespaces: [presence()], not_namespaces: [prefix('sho')] }]]],
      }),
    ],
    listed: ['shop/from-bank', 'shop/any-but-shop'],
    probes: [
      { from: 'teller', expect: 'allow' },
      { from: 'auditor6', expect: 'allow' },
      { from: 'ratings', expect: notAllowed },
      { from: 'local', expect: notAllowed },
      // no identity: no namespace, so neither presence nor exact holds
      { from: 'anonymous', expect: notAllowed },
    ],
  },
  {
    name: 'principal rules: compared without spiffe://, empty trust domain = cluster.local, empty service account = default',
    policies: [
      ws({
        name: 'principals',
        groups: [
          [[{ principals: [exact('cluster.local/ns/bank/sa/teller'), suffix('/ns/shop/sa/default')] }]],
        ],
      }),
    ],
    listed: ['shop/principals'],
    probes: [
      { from: 'teller', expect: 'allow' },
      { from: 'legacy', expect: 'allow' },
      { from: 'ratings', expect: notAllowed },
      { from: 'anonymous', expect: notAllowed },
      { from: 'node', expect: notAllowed },
    ],
  },
  {
    name: 'service-account rules: namespace and account, not the trust domain',
    policies: [
      ws({
        name: 'service-accounts',
        groups: [
          [
            [
              {
                service_accounts: [
                  { namespace: 'shop', serviceAccount: 'ratings' },
                  { namespace: 'bank', serviceAccount: 'teller' },
                ],
                not_service_accounts: [{ namespace: 'bank', serviceAccount: 'teller' }],
              },
            ],
          ],
        ],
      }),
    ],
    listed: ['shop/service-accounts'],
    probes: [
      { from: 'ratings', expect: 'allow' },
      { from: 'teller', expect: notAllowed },
      { from: 'legacy', expect: notAllowed },
      { from: 'local', expect: notAllowed },
      { from: 'anonymous', expect: notAllowed },
    ],
  },
  {
    name: 'ip blocks: source_ips and not_source_ips, IPv4 and IPv6',
    policies: [
      ws({
        name: 'from-block',
        groups: [[[{ source_ips: [cidr('198.18.4.0/30')], not_source_ips: [cidr('198.18.4.3')] }]]],
      }),
      ws({ name: 'deny-v6-hosts', action: 'DENY', groups: [[[{ source_ips: [cidr('2001:db8:4::/48')] }]]] }),
    ],
    listed: ['shop/from-block', 'shop/deny-v6-hosts'],
    probes: [
      { from: 'ratings', expect: 'allow' },
      { from: 'teller', expect: notAllowed },
      { from: 'legacy', expect: notAllowed },
      { from: 'anonymous', expect: notAllowed },
      { from: 'auditor6', expect: deny('deny_policy', 'deny-v6-hosts', 'shop') },
    ],
  },
  {
    name: 'ports and not-ports: destination_ports and not_destination_ports',
    policies: [
      ws({
        name: 'ports',
        groups: [[[{ destination_ports: [PORTS.main, PORTS.other], not_destination_ports: [PORTS.other] }]]],
      }),
      ws({
        name: 'deny-not-main',
        action: 'DENY',
        groups: [[[{ not_destination_ports: [PORTS.main, PORTS.other] }]]],
      }),
    ],
    listed: ['shop/ports', 'shop/deny-not-main'],
    probes: [
      { from: 'ratings', port: PORTS.main, expect: 'allow' },
      { from: 'anonymous', port: PORTS.main, expect: 'allow' },
      { from: 'ratings', port: PORTS.other, expect: notAllowed },
      { from: 'ratings', port: PORTS.admin, expect: deny('deny_policy', 'deny-not-main', 'shop') },
    ],
  },
  {
    name: 'the three scopes: GLOBAL everywhere, NAMESPACE in its namespace, WORKLOAD_SELECTOR where listed',
    policies: [
      policy({
        name: 'deny-anonymous-host',
        namespace: 'istio-system',
        scope: 'GLOBAL',
        action: 'DENY',
        groups: [[[{ source_ips: [cidr('198.18.4.5')] }]]],
      }),
      policy({
        name: 'deny-bank',
        namespace: 'shop',
        scope: 'NAMESPACE',
        action: 'DENY',
        groups: [[[{ namespaces: [exact('bank')] }]]],
      }),
      // another namespace's NAMESPACE policy, and a WORKLOAD_SELECTOR policy not listed: neither applies
      policy({
        name: 'deny-everything',
        namespace: 'bank',
        scope: 'NAMESPACE',
        action: 'DENY',
        groups: [[]],
      }),
      ws({ name: 'unlisted-deny-all', action: 'DENY', groups: [[]] }),
      ws({ name: 'deny-legacy', action: 'DENY', groups: [[[{ principals: [suffix('/sa/default')] }]]] }),
    ],
    listed: ['shop/deny-legacy'],
    probes: [
      { from: 'anonymous', expect: deny('deny_policy', 'deny-anonymous-host', 'istio-system') },
      { from: 'teller', expect: deny('deny_policy', 'deny-bank', 'shop') },
      { from: 'legacy', expect: deny('deny_policy', 'deny-legacy', 'shop') },
      { from: 'ratings', expect: 'allow' },
      { from: 'node', expect: 'allow' },
    ],
  },
  {
    name: 'dry-run DENY: reported, not enforced',
    policies: [
      ws({
        name: 'would-deny-ratings',
        action: 'DENY',
        dryRun: true,
        groups: [[[{ namespaces: [exact('shop')] }]]],
      }),
    ],
    listed: ['shop/would-deny-ratings'],
    probes: [
      { from: 'ratings', expect: 'allow', dryRun: deny('dry_run_deny', 'would-deny-ratings', 'shop') },
      { from: 'teller', expect: 'allow' },
    ],
  },
  {
    name: 'dry-run ALLOW: a source none of them allows is reported, not denied',
    policies: [ws({ name: 'would-allow-bank', dryRun: true, groups: [[[{ namespaces: [exact('bank')] }]]] })],
    listed: ['shop/would-allow-bank'],
    probes: [
      { from: 'teller', expect: 'allow' },
      { from: 'ratings', expect: 'allow', dryRun: deny('dry_run_no_allow_match', '', 'shop') },
    ],
  },
  {
    name: 'STRICT PeerAuthentication as istiod converts it: sources without an identity denied',
    policies: [
      policy({
        name: 'istio_converted_static_strict',
        namespace: 'istio-system',
        scope: 'WORKLOAD_SELECTOR',
        action: 'DENY',
        groups: [[[{ not_principals: [presence()] }]]],
      }),
    ],
    listed: ['istio-system/istio_converted_static_strict'],
    probes: [
      { from: 'ratings', expect: 'allow' },
      { from: 'teller', expect: 'allow' },
      { from: 'local', expect: 'allow' },
      { from: 'auditor6', expect: 'allow' },
      { from: 'anonymous', expect: deny('deny_policy', 'istio_converted_static_strict', 'istio-system') },
      { from: 'node', expect: deny('deny_policy', 'istio_converted_static_strict', 'istio-system') },
    ],
  },
  {
    name: 'L7-only conditions as istiod sends them: an empty match in a DENY never matches; an ALLOW rule with L7 is dropped',
    policies: [
      // DENY `to: [{operation: {paths: ["/admin"]}}]`: the path goes, an empty match stays
      ws({ name: 'deny-admin-path', action: 'DENY', groups: [[[{}]]] }),
      // ALLOW with two Istio rules: `when: request.headers[x]` (dropped) and `from: namespaces [bank]`
      ws({ name: 'allow-bank-or-header', groups: [[[{ namespaces: [exact('bank')] }]]] }),
    ],
    listed: ['shop/deny-admin-path', 'shop/allow-bank-or-header'],
    probes: [
      { from: 'teller', expect: 'allow' },
      { from: 'ratings', expect: notAllowed },
    ],
  },
];

/** A listed policy the control plane has not sent: every connection to the workload is denied. */
export const PENDING_ROW: Row = {
  name: 'a listed policy not received yet fails closed',
  policies: [],
  listed: ['shop/not-sent-yet'],
  probes: [
    { from: 'ratings', expect: deny('policy_pending', 'not-sent-yet', 'shop') },
    { from: 'teller', expect: deny('policy_pending', 'not-sent-yet', 'shop') },
  ],
};
