// SPDX-License-Identifier: GPL-2.0
/* L4 authorization for enrolled pods (Istio AuthorizationPolicy as istiod sends it to node proxies).
 *
 * km_authz_lookup is an sk_lookup program attached to each enrolled pod's network namespace: the
 * kernel runs it when it looks for a listening socket for a new connection (a SYN), before any
 * socket or request exists, so a denied connection never reaches accept() and the client gets a
 * reset (ECONNREFUSED). Established connections never run it: no per-packet cost.
 *
 * km_authz_close is a TCP socket iterator run by the agent inside a pod's namespace after a policy
 * change: it evaluates every accepted connection again and destroys those now denied (Linux 6.5+).
 *
 * Policies are compiled in user space (src/authz) into terms: conjunctions of at most one identity
 * set, one source CIDR set each way and one port set each way, each a single map lookup. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "authz.h"

char LICENSE[] SEC("license") = "GPL";

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define LOOPBACK_IFINDEX 1

/* TCP states (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

/* km_authz_stats indexes */
#define KM_AUTHZ_S_EVENTS_SENT 0
#define KM_AUTHZ_S_EVENTS_LOST 1
#define KM_AUTHZ_S_COUNTERS_LOST 2
#define KM_AUTHZ_S_COUNT 4

/* ---- kernel types the iterator reads; CO-RE relocates each field by name (no vmlinux.h) ---- */
struct in6_addr___km {
	__u32 u6_addr32[4];
};

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	struct in6_addr___km skc_v6_daddr;
	struct in6_addr___km skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* ---- maps (sizes are defaults; the agent sets them at load time) ---- */

/* Hash maps are NO_PREALLOC: a replaced value is freed after an RCU grace period, so a lookup
 * running during an update reads the old value or the new one, whole. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct km_authz_addr);
	__type(value, struct km_authz_dest);
} km_authz_dest SEC(".maps");

/* Source address → identity id; a miss is "no identity". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_addr);
	__type(value, __u32);
} km_authz_src SEC(".maps");

/* Term lists of all destinations; the writer never rewrites a live range in place. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct km_authz_term);
} km_authz_terms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct km_authz_id_key);
	__type(value, __u8);
} km_authz_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct km_authz_index_key);
	__type(value, struct km_authz_index);
} km_authz_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_port_key);
	__type(value, __u8);
} km_authz_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_cidr_key);
	__type(value, __u8);
} km_authz_cidrs SEC(".maps");

/* Denials per (policy or workload id, reason); entries are created on first use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_counter_key);
	__type(value, __u64);
} km_authz_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_AUTHZ_S_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} km_authz_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} km_authz_events SEC(".maps");

/* Never written: puts struct km_authz_event in the object's BTF for the layout test. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_authz_event);
} km_authz_event_format SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_authz_config);
} km_authz_config SEC(".maps");

/* Scratch of the iterator: listening sockets of the current run (older runs' entries are stale). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_listener_key);
	__type(value, __u64);
} km_authz_listeners SEC(".maps");

/* ---- evaluation ---- */

struct km_authz_conn {
	__u32 family; /* KM_AF_INET / KM_AF_INET6 */
	__u32 src[4];
	__u32 dst[4];
	__u16 src_port;
	__u16 dst_port;
	__u32 identity;
	__u32 workload;
};

struct km_authz_verdict {
	__u32 reason; /* 0: allowed */
	__u32 id;
};

struct km_authz_walk {
	const struct km_authz_conn *c;
	struct km_authz_verdict *v;
	__u32 first;
	__u32 last_dry_policy;
	__u8 report; /* count and report dry-run matches (lookups, not the iterator's re-evaluation) */
	__u8 allow_matched;
	__u8 dry_allow_matched;
};

static __always_inline void stat(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&km_authz_stats, &index);

	if (n)
		*n += 1;
}

static __always_inline void count(__u32 id, __u32 reason)
{
	struct km_authz_counter_key k = { .id = id, .reason = reason };
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&km_authz_counters, &k);
	if (n) {
		*n += 1;
		return;
	}
	if (bpf_map_update_elem(&km_authz_counters, &k, &one, BPF_NOEXIST) == 0)
		return;
	/* another CPU created it meanwhile, or the map is full */
	n = bpf_map_lookup_elem(&km_authz_counters, &k);
	if (n)
		*n += 1;
	else
		stat(KM_AUTHZ_S_COUNTERS_LOST);
}

/* Never blocks: a full ring buffer loses the event and counts it. */
static __always_inline void report(const struct km_authz_conn *c, __u32 reason, __u32 id, __u8 closed)
{
	struct km_authz_event *e = bpf_ringbuf_reserve(&km_authz_events, sizeof(*e), 0);

	if (!e) {
		stat(KM_AUTHZ_S_EVENTS_LOST);
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	e->family = c->family;
	__builtin_memcpy(e->src_ip, c->src, 16);
	__builtin_memcpy(e->dst_ip, c->dst, 16);
	e->src_port = c->src_port;
	e->dst_port = c->dst_port;
	e->id = id;
	e->workload = c->workload;
	e->identity = c->identity;
	e->reason = reason;
	e->closed = closed;
	e->pad[0] = 0;
	e->pad[1] = 0;
	bpf_ringbuf_submit(e, 0);
	stat(KM_AUTHZ_S_EVENTS_SENT);
}

static __always_inline int in_cidrs(const struct km_authz_conn *c, __u32 set, __u8 negated)
{
	struct km_authz_cidr_key k = {};

	k.prefixlen = 48 + (c->family == KM_AF_INET ? 32 : 128);
	k.set = set;
	k.negated = negated;
	k.family = c->family;
	__builtin_memcpy(k.ip, c->src, 16);
	return bpf_map_lookup_elem(&km_authz_cidrs, &k) != NULL;
}

static __always_inline int in_ports(const struct km_authz_conn *c, __u32 set, __u8 negated)
{
	struct km_authz_port_key k = { .set = set, .port = c->dst_port, .negated = negated };

	return bpf_map_lookup_elem(&km_authz_ports, &k) != NULL;
}

static __always_inline int term_matches(const struct km_authz_term *t, const struct km_authz_conn *c)
{
	__u16 f = t->flags;

	if (f & (KM_AUTHZ_T_ID_IN | KM_AUTHZ_T_ID_NOT_IN)) {
		struct km_authz_id_key k = { .set = t->set, .identity = c->identity };
		int in = bpf_map_lookup_elem(&km_authz_ids, &k) != NULL;

		if ((f & KM_AUTHZ_T_ID_IN) && !in)
			return 0;
		if ((f & KM_AUTHZ_T_ID_NOT_IN) && in)
			return 0;
	}
	/* hash lookups before the trie's, which costs several times more */
	if ((f & KM_AUTHZ_T_PORT_IN) && !in_ports(c, t->set, 0))
		return 0;
	if ((f & KM_AUTHZ_T_PORT_NOT_IN) && in_ports(c, t->set, 1))
		return 0;
	if ((f & KM_AUTHZ_T_SRC_IN) && !in_cidrs(c, t->set, 0))
		return 0;
	if ((f & KM_AUTHZ_T_SRC_NOT_IN) && in_cidrs(c, t->set, 1))
		return 0;
	return 1;
}

/* One term per call; 1 stops the walk. The list holds DENY terms first, then ALLOW terms. */
static long walk_term(__u32 i, void *arg)
{
	struct km_authz_walk *w = arg;
	__u32 slot = w->first + i;
	struct km_authz_term *t = bpf_map_lookup_elem(&km_authz_terms, &slot);

	if (!t) {
		/* a range past the array's end is a writer bug: deny rather than skip */
		w->v->reason = KM_AUTHZ_R_OVER_BUDGET;
		w->v->id = w->c->workload;
		return 1;
	}
	if (!term_matches(t, w->c))
		return 0;
	if (t->action == KM_AUTHZ_DENY) {
		if (!(t->flags & KM_AUTHZ_T_DRY_RUN)) {
			w->v->reason = t->reason;
			w->v->id = t->policy;
			return 1;
		}
		/* one report per dry-run policy (its terms are consecutive) */
		if (w->report && t->policy != w->last_dry_policy) {
			w->last_dry_policy = t->policy;
			count(t->policy, KM_AUTHZ_R_DRY_RUN_DENY);
			report(w->c, KM_AUTHZ_R_DRY_RUN_DENY, t->policy, 0);
		}
		return 0;
	}
	if (t->flags & KM_AUTHZ_T_DRY_RUN) {
		w->dry_allow_matched = 1;
		return 0;
	}
	w->allow_matched = 1;
	return 1;
}

/* Fills c->identity and c->workload; v->reason stays 0 when the connection is allowed. */
static __always_inline void decide(struct km_authz_conn *c, struct km_authz_verdict *v, __u8 report_dry)
{
	struct km_authz_addr a = { .family = c->family };
	struct km_authz_dest *d;
	struct km_authz_walk w = {};
	__u32 *identity, n;

	v->reason = 0;
	v->id = 0;
	__builtin_memcpy(a.ip, c->dst, 16);
	d = bpf_map_lookup_elem(&km_authz_dest, &a);
	if (!d) {
		/* an enrolled pod's address with no workload published for it yet */
		v->reason = KM_AUTHZ_R_UNKNOWN_DEST;
		return;
	}
	c->workload = d->workload;
	n = d->count;
	/* no policy applies: allowed without even looking at the source */
	if (n == 0 && d->flags == 0 && d->list == 0)
		return;
	__builtin_memcpy(a.ip, c->src, 16);
	identity = bpf_map_lookup_elem(&km_authz_src, &a);
	c->identity = identity ? *identity : 0;
	if (n > 0) {
		if (n > KM_AUTHZ_MAX_TERMS)
			n = KM_AUTHZ_MAX_TERMS;
		w.c = c;
		w.v = v;
		w.first = d->first;
		w.report = report_dry;
		bpf_loop(n, walk_term, &w, 0);
		if (v->reason)
			return;
	}
	/* the folded terms: a DENY among them wins over any ALLOW the walk found */
	if (d->list) {
		struct km_authz_index_key k = { .list = d->list, .kind = KM_AUTHZ_IDX_IDENTITY, .value = c->identity };
		struct km_authz_index *by_id = bpf_map_lookup_elem(&km_authz_index, &k);
		struct km_authz_index *by_port;

		if (by_id && by_id->deny) {
			v->reason = by_id->reason;
			v->id = by_id->deny;
			return;
		}
		k.kind = KM_AUTHZ_IDX_PORT;
		k.value = c->dst_port;
		by_port = bpf_map_lookup_elem(&km_authz_index, &k);
		if (by_port && by_port->deny) {
			v->reason = by_port->reason;
			v->id = by_port->deny;
			return;
		}
		if ((by_id && by_id->allow) || (by_port && by_port->allow))
			w.allow_matched = 1;
	}
	if (d->flags & KM_AUTHZ_D_ALLOW) {
		if (!w.allow_matched) {
			v->reason = KM_AUTHZ_R_NO_ALLOW_MATCH;
			v->id = d->workload;
		}
	} else if ((d->flags & KM_AUTHZ_D_DRY_ALLOW) && !w.dry_allow_matched && report_dry) {
		count(d->workload, KM_AUTHZ_R_DRY_RUN_NO_ALLOW);
		report(c, KM_AUTHZ_R_DRY_RUN_NO_ALLOW, d->workload, 0);
	}
}

SEC("sk_lookup")
int km_authz_lookup(struct bpf_sk_lookup *ctx)
{
	struct km_authz_conn c = {};
	struct km_authz_verdict v;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	/* localhost in the pod's namespace */
	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		c.family = KM_AF_INET;
		c.src[0] = ctx->remote_ip4;
		c.dst[0] = ctx->local_ip4;
	} else if (ctx->family == AF_INET6) {
		c.family = KM_AF_INET6;
		c.src[0] = ctx->remote_ip6[0];
		c.src[1] = ctx->remote_ip6[1];
		c.src[2] = ctx->remote_ip6[2];
		c.src[3] = ctx->remote_ip6[3];
		c.dst[0] = ctx->local_ip6[0];
		c.dst[1] = ctx->local_ip6[1];
		c.dst[2] = ctx->local_ip6[2];
		c.dst[3] = ctx->local_ip6[3];
	} else {
		return SK_PASS;
	}
	/* the pod connecting to its own IPv4 address arrives with the address's device as ingress; the
	 * kernel drops that source from outside as a martian, so only the pod itself can send it.
	 * IPv6 has no such check: a connection from the pod's own IPv6 address is judged. */
	if (c.family == KM_AF_INET && c.src[0] == c.dst[0])
		return SK_PASS;
	c.src_port = bpf_ntohs(ctx->remote_port);
	c.dst_port = ctx->local_port;
	decide(&c, &v, 1);
	if (!v.reason)
		return SK_PASS;
	count(v.id, v.reason);
	report(&c, v.reason, v.id, 0);
	return SK_DROP;
}

/* ---- closing open connections that a new policy denies ---- */

static __always_inline int is_v4_mapped(const __u32 *ip)
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff);
}

static __always_inline __u64 current_run(void)
{
	__u32 zero = 0;
	struct km_authz_config *cfg = bpf_map_lookup_elem(&km_authz_config, &zero);

	return cfg ? cfg->iter_run : 0;
}

static __always_inline int listening_on(__u32 family, const __u32 *ip, __u32 port, __u64 run)
{
	struct km_authz_listener_key k = { .family = family, .port = port };
	__u64 *seen;

	__builtin_memcpy(k.ip, ip, 16);
	seen = bpf_map_lookup_elem(&km_authz_listeners, &k);
	if (seen && *seen == run)
		return 1;
	__builtin_memset(k.ip, 0, 16);
	seen = bpf_map_lookup_elem(&km_authz_listeners, &k);
	return seen && *seen == run;
}

/* The kernel visits listening sockets before established ones: each run first records the
 * listeners, then judges every connection accepted on one of their ports. */
SEC("iter/tcp")
int km_authz_close(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	struct km_authz_conn c = {};
	struct km_authz_verdict v;
	__u32 local[4] = {}, remote[4] = {}, family;
	__u64 run = current_run();
	__u8 state;

	if (!sk)
		return 0;
	if (sk->skc_family == AF_INET) {
		family = KM_AF_INET;
		local[0] = sk->skc_rcv_saddr;
		remote[0] = sk->skc_daddr;
	} else if (sk->skc_family == AF_INET6) {
		family = KM_AF_INET6;
		__builtin_memcpy(local, sk->skc_v6_rcv_saddr.u6_addr32, 16);
		__builtin_memcpy(remote, sk->skc_v6_daddr.u6_addr32, 16);
	} else {
		return 0;
	}
	state = sk->skc_state;
	if (state == TCP_LISTEN) {
		struct km_authz_listener_key k = { .family = family, .port = sk->skc_num };

		__builtin_memcpy(k.ip, local, 16);
		bpf_map_update_elem(&km_authz_listeners, &k, &run, BPF_ANY);
		return 0;
	}
	/* full sockets only: request and time-wait sockets have no protocol to destroy them with */
	if (state != TCP_ESTABLISHED && state != TCP_SYN_RECV && state != TCP_CLOSE_WAIT)
		return 0;
	if (!listening_on(family, local, sk->skc_num, run))
		return 0;
	/* accepted by a dual-stack listener from an IPv4 client: judged as the IPv4 connection it is */
	if (family == KM_AF_INET6 && is_v4_mapped(local) && is_v4_mapped(remote)) {
		family = KM_AF_INET;
		local[0] = local[3];
		remote[0] = remote[3];
		local[1] = local[2] = local[3] = 0;
		remote[1] = remote[2] = remote[3] = 0;
	}
	/* the pod's own connections to itself are never judged (sk_lookup skips loopback too) */
	if (family == KM_AF_INET && ((bpf_ntohl(remote[0]) >> 24) == 127 || remote[0] == local[0]))
		return 0;
	if (family == KM_AF_INET6 && remote[0] == local[0] && remote[1] == local[1] && remote[2] == local[2] &&
	    remote[3] == local[3])
		return 0;
	if (family == KM_AF_INET6 && !remote[0] && !remote[1] && !remote[2] && remote[3] == bpf_htonl(1))
		return 0;

	c.family = family;
	__builtin_memcpy(c.src, remote, 16);
	__builtin_memcpy(c.dst, local, 16);
	c.src_port = bpf_ntohs(sk->skc_dport);
	c.dst_port = sk->skc_num;
	decide(&c, &v, 0);
	if (!v.reason)
		return 0;
	if (bpf_sock_destroy(sk) == 0) {
		count(v.id, v.reason | KM_AUTHZ_CLOSED_BIT);
		report(&c, v.reason, v.id, 1);
	}
	return 0;
}
