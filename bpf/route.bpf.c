// SPDX-License-Identifier: GPL-2.0
/* In-kernel service routing: connect4/6 pick a backend for (VIP, port, protocol) and rewrite the
 * destination; getpeername4/6 report the VIP back; sockops keeps active connection counts;
 * sk_msg prefixes the waypoint TLV to a socket's first message. Maps are written by src/dataplane. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "sock_route_map.h"

#define ECONNREFUSED 111
/* A pick that races with a writer (slot or backend just removed) re-reads the service. */
#define KM_PICK_ATTEMPTS 3

/* Sizes below are defaults; the agent overrides them at load time (map sizes from flags). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_frontend_key);
	__type(value, struct km_frontend);
} km_frontends SEC(".maps");

/* Hash maps are NO_PREALLOC so a replaced value is freed after an RCU grace period: a connect
 * that already holds the old value reads it whole (preallocated elements are recycled at once). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_service);
} km_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_service_name);
} km_svc_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct km_slot_key);
	__type(value, struct km_slot);
} km_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct km_slot_key);
	__type(value, struct km_slot);
} km_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct km_backend);
} km_backends SEC(".maps");

/* Active connections per backend id and per service id (ids are dense, below max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} km_backend_conn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} km_service_conn SEC(".maps");

/* Round-robin cursor per service, shared by all CPUs and advanced atomically, so consecutive
 * connects of a service take consecutive slots whichever CPU they run on (a per-CPU cursor spreads
 * evenly only in the long run). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} km_rr SEC(".maps");

/* index = service_id * KM_REASON_COUNT + reason; service 0 collects what has no service. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16384 * KM_REASON_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} km_counters SEC(".maps");

/* Sockets whose first message still needs the waypoint TLV; km_waypoint_msg is attached to it. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} km_waypoint_sk SEC(".maps");

static __always_inline void count(__u32 service_id, __u32 reason)
{
	__u32 idx = service_id * KM_REASON_COUNT + reason;
	__u64 *c = bpf_map_lookup_elem(&km_counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline __u32 mix32(__u32 h)
{
	/* murmur3's finaliser: spreads nearby client addresses over the whole Maglev table */
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

struct pick {
	__u32 backend_id;
	const struct km_backend *backend;
};

static __always_inline int lowest_priority(const struct km_service *svc)
{
#pragma unroll
	for (int p = 0; p < KM_MAX_PRIORITIES; p++)
		if (svc->slot_count[p])
			return p;
	return -1;
}

static __always_inline struct km_slot *slot_at(__u32 service_id, const struct km_service *svc, int prio,
					      __u32 index)
{
	struct km_slot_key key = {
		.service_id = service_id,
		.index = index,
		.priority = prio,
		.generation = svc->generation,
	};
	return bpf_map_lookup_elem(&km_slots, &key);
}

static __always_inline __u32 backend_conns(__u32 backend_id)
{
	__u32 *n = bpf_map_lookup_elem(&km_backend_conn, &backend_id);

	return n ? *n : 0;
}

/* LEAST_REQUEST with unequal weights, as Envoy defines it: each endpoint weighs
 * weight / (active + 1)^bias at this connect, and one is drawn in proportion (Envoy keeps an EDF
 * schedule over the same weights: same expected shares, docs/translation.md). One pass, so every
 * count is read once: the draw keeps endpoint i with probability eff_i / (eff_0 + ... + eff_i). */
struct lr_draw {
	struct km_slot_key key;
	__u32 bias;
	__u32 backend_id;
	__u64 total;
	__u64 rng; /* splitmix64 state, seeded from bpf_get_prandom_u32 once per connect */
	int miss;
};

/* SplitMix64 (Steele et al.): one draw per endpoint without a helper call each (the helper cost
 * about 35 ns an endpoint, bench/least-request.ts); every output bit is usable. */
static __always_inline __u64 splitmix64(__u64 *state)
{
	__u64 z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static long lr_draw_step(__u32 index, void *ctx)
{
	struct lr_draw *d = ctx;
	struct km_slot *s;
	__u64 eff, r;

	d->key.index = index;
	s = bpf_map_lookup_elem(&km_slots, &d->key);
	if (!s) {
		d->miss = 1;
		return 1;
	}
	/* 32 fraction bits: a group's weights sum to at most 2^16 (plan.ts), so the total stays below
	 * 2^48 and the modulo skews a draw by under 2^-16; the quotient rounds off under 2^-32 */
	eff = (__u64)s->weight << 32;
	if (d->bias == KM_LR_BIAS_ONE)
		eff /= (__u64)backend_conns(s->backend_id) + 1;
	if (!eff)
		return 0;
	d->total += eff;
	r = splitmix64(&d->rng);
	if (r % d->total < eff)
		d->backend_id = s->backend_id;
	return 0;
}

static __always_inline long least_request_weighted(__u32 service_id, const struct km_service *svc, int prio,
						   __u32 count)
{
	struct lr_draw d = {
		.key = {
			.service_id = service_id,
			.priority = prio,
			.generation = svc->generation,
		},
		.bias = svc->lr_bias,
		.rng = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32(),
	};

	/* plan.ts refuses larger weighted groups; the clamp only bounds the loop for the verifier's sake */
	if (count > KM_LR_MAX_WEIGHTED)
		count = KM_LR_MAX_WEIGHTED;
	bpf_loop(count, lr_draw_step, &d, 0);
	if (d.miss || !d.backend_id)
		return -1;
	return d.backend_id;
}

/* One endpoint of the service's lowest selectable priority group, per its policy. Returns the
 * backend id, 0 when the group is empty, or -1 when a map entry is missing (writer race). */
static __always_inline long pick_endpoint(__u32 service_id, const struct km_service *svc, __u32 client_hash)
{
	int prio = lowest_priority(svc);
	struct km_slot *s, *s2;
	__u32 count, idx;

	if (prio < 0)
		return 0;
	count = svc->slot_count[prio & (KM_MAX_PRIORITIES - 1)];

	switch (svc->lb_policy) {
	case KM_LB_ROUND_ROBIN: {
		__u32 *cursor = bpf_map_lookup_elem(&km_rr, &service_id);

		if (!cursor)
			return -1;
		idx = __sync_fetch_and_add(cursor, 1);
		s = slot_at(service_id, svc, prio, idx % count);
		return s ? s->backend_id : -1;
	}
	case KM_LB_LEAST_REQUEST:
		/* one slot per endpoint; unequal weights take Envoy's weighted mode */
		if (svc->lr_weighted & (1 << (prio & (KM_MAX_PRIORITIES - 1))))
			return least_request_weighted(service_id, svc, prio, count);
		/* equal weights: the better of two random choices (Envoy's P2C; ties: the first) */
		s = slot_at(service_id, svc, prio, bpf_get_prandom_u32() % count);
		s2 = slot_at(service_id, svc, prio, bpf_get_prandom_u32() % count);
		if (!s || !s2)
			return -1;
		return backend_conns(s2->backend_id) < backend_conns(s->backend_id) ? s2->backend_id : s->backend_id;
	case KM_LB_MAGLEV: {
		struct km_slot_key key = {
			.service_id = service_id,
			.priority = prio,
			.generation = svc->generation,
		};

		if (!svc->maglev_size)
			return -1;
		key.index = client_hash % svc->maglev_size;
		s = bpf_map_lookup_elem(&km_maglev, &key);
		return s ? s->backend_id : -1;
	}
	default:
		s = slot_at(service_id, svc, prio, bpf_get_prandom_u32() % count);
		return s ? s->backend_id : -1;
	}
}

/* Where a connect goes, decided from the frontend key; the caller applies it to its family. */
struct decision {
	int verdict;     /* 1: allow (maybe rewritten), 0: refuse with ECONNREFUSED */
	int rewrite;     /* destination to be replaced by address/port */
	__u32 service_id;
	__u32 backend_id;
	__u8 family;
	__u8 flags;      /* km_sock_route flags to record */
	__u16 port;
	__u8 address[16];
};

static __always_inline void route(const struct km_frontend_key *fk, __u32 client_hash, struct decision *d)
{
	struct km_frontend *fe = bpf_map_lookup_elem(&km_frontends, fk);
	const struct km_service *svc = 0;
	__u32 id;

	d->verdict = 1;
	d->rewrite = 0;
	if (!fe)
		return; /* not a service VIP: untouched */
	id = fe->service_id;
	d->service_id = id;

	for (int attempt = 0; attempt < KM_PICK_ATTEMPTS; attempt++) {
		const struct km_backend *b;
		long backend_id;

		svc = bpf_map_lookup_elem(&km_services, &id);
		if (!svc)
			break;
		switch (svc->kind) {
		case KM_KIND_PASSTHROUGH:
			count(id, KM_REASON_PASSTHROUGH);
			d->flags = KM_SOCK_PASSTHROUGH;
			return;
		case KM_KIND_BLACKHOLE:
			count(id, KM_REASON_BLACKHOLE);
			d->verdict = 0;
			return;
		case KM_KIND_WAYPOINT:
			count(id, KM_REASON_WAYPOINT);
			d->rewrite = 1;
			d->family = svc->waypoint_family;
			d->port = svc->waypoint_port;
			__builtin_memcpy(d->address, svc->waypoint_address, 16);
			d->flags = KM_SOCK_ROUTED | KM_SOCK_WAYPOINT_PENDING;
			return;
		}
		if (svc->max_connections) {
			__u32 *active = bpf_map_lookup_elem(&km_service_conn, &id);

			if (active && *active >= svc->max_connections) {
				count(id, KM_REASON_OVERFLOW);
				d->verdict = 0;
				return;
			}
		}
		backend_id = pick_endpoint(id, svc, client_hash);
		if (backend_id == 0) {
			count(id, KM_REASON_NO_ENDPOINT);
			d->verdict = 0;
			return;
		}
		if (backend_id < 0)
			continue;
		b = bpf_map_lookup_elem(&km_backends, &backend_id);
		if (!b)
			continue;
		d->rewrite = 1;
		d->backend_id = backend_id;
		d->family = b->family;
		d->port = b->port;
		__builtin_memcpy(d->address, b->address, 16);
		d->flags = KM_SOCK_ROUTED;
		count(id, KM_REASON_ROUTED);
		return;
	}
	/* the frontend names a service or slot that is not there: refuse rather than leak the VIP */
	count(id, KM_REASON_MAP_MISS);
	d->verdict = 0;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const struct km_frontend_key *fk,
				     const struct decision *d)
{
	struct km_sock_route *r;

	if (!d->flags) {
		/* a reconnected UDP socket must not keep a previous route */
		r = bpf_sk_storage_get(&km_sock_route, ctx->sk, 0, 0);
		if (r)
			r->flags = 0;
		return;
	}
	r = bpf_sk_storage_get(&km_sock_route, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!r)
		return;
	__builtin_memcpy(r->orig_address, fk->address, 16);
	r->orig_port = fk->port;
	r->family = fk->family;
	r->flags = d->flags;
	r->service_id = d->service_id;
	r->backend_id = d->backend_id;
}

static __always_inline int refuse(void)
{
	/* kube-proxy's behaviour: ECONNREFUSED, not the EPERM a plain 0 would give (kernel >= 5.18) */
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	struct km_frontend_key fk = {};
	struct decision d = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst = ctx->user_ip4;
	__u32 src = 0;

	if (sk)
		src = sk->src_ip4; /* the bound source address, if the client bound one */
	__builtin_memcpy(fk.address, &dst, 4);
	fk.port = (__u16)ctx->user_port;
	fk.protocol = ctx->protocol;
	fk.family = KM_AF_INET;
	/* unbound sockets have no source yet: the netns stands for the client (one per pod) */
	route(&fk, mix32(src ?: (__u32)bpf_get_netns_cookie(ctx)), &d);
	if (!d.verdict)
		return refuse();
	if (d.rewrite) {
		__u32 addr;

		if (d.family != KM_AF_INET) {
			count(d.service_id, KM_REASON_NO_ENDPOINT);
			return refuse();
		}
		__builtin_memcpy(&addr, d.address, 4);
		ctx->user_ip4 = addr;
		ctx->user_port = d.port;
	}
	remember(ctx, &fk, &d);
	return 1;
}

static __always_inline int is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

SEC("cgroup/connect6")
int km_connect6(struct bpf_sock_addr *ctx)
{
	struct km_frontend_key fk = {};
	struct decision d = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst[4], src[4] = {};
	int mapped;

	KM_COPY_IP6(dst, ctx->user_ip6);
	if (sk)
		KM_COPY_IP6(src, sk->src_ip6);
	mapped = is_v4_mapped(dst[0], dst[1], dst[2]);
	fk.port = (__u16)ctx->user_port;
	fk.protocol = ctx->protocol;
	if (mapped) {
		/* v4-mapped destinations take the IPv4 path: same frontends as connect4 */
		__builtin_memcpy(fk.address, &dst[3], 4);
		fk.family = KM_AF_INET;
	} else {
		__builtin_memcpy(fk.address, dst, 16);
		fk.family = KM_AF_INET6;
	}
	{
		__u32 h = src[0] ^ mix32(src[1]) ^ mix32(src[2] + 0x9e3779b9) ^ mix32(src[3] + 0x7f4a7c15);

		if (!(src[0] | src[1] | src[2] | src[3]))
			h = (__u32)bpf_get_netns_cookie(ctx);
		route(&fk, mix32(h), &d);
	}
	if (!d.verdict)
		return refuse();
	if (d.rewrite) {
		if (d.family == KM_AF_INET) {
			__u32 addr;

			__builtin_memcpy(&addr, d.address, 4);
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = addr;
		} else if (!mapped) {
			__u32 a[4];

			__builtin_memcpy(a, d.address, 16);
			KM_COPY_IP6(ctx->user_ip6, a);
		} else {
			/* a v4-mapped socket cannot reach an IPv6 backend */
			count(d.service_id, KM_REASON_NO_ENDPOINT);
			return refuse();
		}
		ctx->user_port = d.port;
	}
	if (mapped)
		d.flags |= d.flags ? KM_SOCK_V4_MAPPED : 0;
	remember(ctx, &fk, &d);
	return 1;
}

SEC("cgroup/getpeername4")
int km_getpeername4(struct bpf_sock_addr *ctx)
{
	struct km_sock_route *r = km_routed_sock(ctx->sk);
	__u32 addr;

	if (r && r->family == KM_AF_INET) {
		__builtin_memcpy(&addr, r->orig_address, 4);
		ctx->user_ip4 = addr;
		ctx->user_port = r->orig_port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int km_getpeername6(struct bpf_sock_addr *ctx)
{
	struct km_sock_route *r = km_routed_sock(ctx->sk);
	__u32 a[4];

	if (!r)
		return 1;
	if (r->family == KM_AF_INET) {
		__builtin_memcpy(&a[3], r->orig_address, 4);
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = a[3];
	} else {
		__builtin_memcpy(a, r->orig_address, 16);
		KM_COPY_IP6(ctx->user_ip6, a);
	}
	ctx->user_port = r->orig_port;
	return 1;
}

static __always_inline void conn_add(void *map, __u32 id, int delta)
{
	__u32 *n = bpf_map_lookup_elem(map, &id);

	if (!n)
		return;
	if (delta < 0 && *n == 0)
		return; /* never wrap below zero (an id reused while old sockets were open) */
	__sync_fetch_and_add(n, delta);
}

/* Other sockops programs on the same cgroup may set callback flags too: always OR, never replace. */
SEC("sockops")
int km_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct km_sock_route *r;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		r = km_routed_sock(sk);
		if (!r)
			break;
		if (!(r->flags & KM_SOCK_COUNTED)) {
			if (r->backend_id)
				conn_add(&km_backend_conn, r->backend_id, 1);
			conn_add(&km_service_conn, r->service_id, 1);
			r->flags |= KM_SOCK_COUNTED;
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		}
		if (r->flags & KM_SOCK_WAYPOINT_PENDING) {
			__u64 cookie = bpf_get_socket_cookie(skops);

			bpf_sock_hash_update(skops, &km_waypoint_sk, &cookie, BPF_NOEXIST);
		}
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		r = bpf_sk_storage_get(&km_sock_route, sk, 0, 0);
		if (!r || !(r->flags & KM_SOCK_COUNTED))
			break;
		if (r->backend_id)
			conn_add(&km_backend_conn, r->backend_id, -1);
		conn_add(&km_service_conn, r->service_id, -1);
		r->flags &= ~KM_SOCK_COUNTED;
		break;
	}
	return 1;
}

/* The waypoint learns the original destination from a TLV ahead of the application's bytes:
 * 0x01, length (4 bytes BE: address and port), address, port (network order), then 0xfe with
 * length 0. addr_len is 4 or 16, a constant at each call, so the copies have constant sizes. */
static __always_inline int push_waypoint_tlv(struct sk_msg_md *msg, const struct km_sock_route *r,
					     const __u32 addr_len)
{
	const __u32 end_marker = 5 + addr_len + 2;
	const __u32 total = end_marker + 5;
	__u8 *data, *end;

	if (bpf_msg_push_data(msg, 0, total, 0) || bpf_msg_pull_data(msg, 0, total, 0))
		return -1;
	data = msg->data;
	end = msg->data_end;
	if (data + total > end)
		return -1;
	data[0] = 0x01;
	data[1] = 0;
	data[2] = 0;
	data[3] = 0;
	data[4] = addr_len + 2;
	__builtin_memcpy(data + 5, r->orig_address, addr_len);
	__builtin_memcpy(data + 5 + addr_len, &r->orig_port, 2);
	data[end_marker] = 0xfe;
	data[end_marker + 1] = 0;
	data[end_marker + 2] = 0;
	data[end_marker + 3] = 0;
	data[end_marker + 4] = 0;
	return 0;
}

SEC("sk_msg")
int km_waypoint_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct km_sock_route *r;
	int err;

	if (!sk)
		return SK_PASS;
	r = bpf_sk_storage_get(&km_sock_route, sk, 0, 0);
	if (!r || !(r->flags & KM_SOCK_WAYPOINT_PENDING))
		return SK_PASS;
	if (r->family == KM_AF_INET)
		err = push_waypoint_tlv(msg, r, 4); /* 16 bytes in all */
	else
		err = push_waypoint_tlv(msg, r, 16); /* 28 bytes in all */
	if (err)
		return SK_DROP;
	r->flags &= ~KM_SOCK_WAYPOINT_PENDING;
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
