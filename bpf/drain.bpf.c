// SPDX-License-Identifier: GPL-2.0
/* Closing the connections of enrolled pods to endpoints that are gone (issue 17): a TCP socket
 * iterator, run by the agent once a removed endpoint's drain window has passed, destroys every socket
 * whose connect() kernmesh routed (km_sock_route, shared by name with route.bpf.o) to a (service,
 * backend) listed in km_drain. bpf_sock_destroy needs Linux 6.5; the agent loads this object apart
 * from routing, so routing runs where it is missing. Kernel types come from the running kernel's BTF
 * (CO-RE): only the fields read here are declared. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "common.h"
#include "drain.h"
#include "sock_route_map.h"

struct in6_addr___km {
	__u32 s6_addr32[4];
};

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	struct in6_addr___km skc_v6_daddr;
	struct in6_addr___km skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	void *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_host_key);
	__type(value, struct km_drain);
} km_drain SEC(".maps");

/* The socket's peer is the entry's backend (v4-mapped IPv6 sockets compare their IPv4 part). */
/* Not inlined: its signature also puts struct km_drained in the object's BTF, for the codec check. */
static __noinline int same_peer(const struct km_drain *d, const struct km_drained *rec)
{
	__u32 a[4], b[4];

	if (rec->remote_port != bpf_ntohs(d->port))
		return 0;
	__builtin_memcpy(a, d->address, 16);
	__builtin_memcpy(b, rec->remote_address, 16);
	if (d->family == KM_AF_INET)
		return a[0] == b[0];
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

SEC("iter/tcp")
int km_drain_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct km_drained rec = {};
	struct km_host_key key = {};
	struct km_sock_route *r;
	struct km_drain *d;
	struct tcp_sock *tp;
	__u32 family;

	if (!skc)
		return 0;
	family = BPF_CORE_READ(skc, skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* request and time-wait sockets: nothing to close */
	r = bpf_sk_storage_get(&km_sock_route, tp, 0, 0);
	if (!r || !(r->flags & KM_SOCK_ROUTED) || !r->backend_id)
		return 0;
	rec.service_id = r->service_id;
	rec.backend_id = r->backend_id;
	rec.local_port = BPF_CORE_READ(skc, skc_num);
	rec.remote_port = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (family == AF_INET) {
		__u32 l = BPF_CORE_READ(skc, skc_rcv_saddr), p = BPF_CORE_READ(skc, skc_daddr);

		__builtin_memcpy(rec.local_address, &l, 4);
		__builtin_memcpy(rec.remote_address, &p, 4);
		rec.family = KM_AF_INET;
	} else {
		struct in6_addr___km l, p;
		__u32 fl = AF_INET6, fp = AF_INET6;

		BPF_CORE_READ_INTO(&l, skc, skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&p, skc, skc_v6_daddr);
		km_fold_v4_mapped(&fl, l.s6_addr32);
		km_fold_v4_mapped(&fp, p.s6_addr32);
		__builtin_memcpy(rec.local_address, l.s6_addr32, 16);
		__builtin_memcpy(rec.remote_address, p.s6_addr32, 16);
		rec.family = fp == AF_INET ? KM_AF_INET : KM_AF_INET6;
	}
	key.service_id = r->service_id;
	key.backend_id = r->backend_id;
	d = bpf_map_lookup_elem(&km_drain, &key);
	if (d && d->family != rec.family)
		d = 0;
	if (d && !same_peer(d, &rec))
		d = 0;
	if (!d) {
		key.backend_id = 0; /* every connection of the service */
		d = bpf_map_lookup_elem(&km_drain, &key);
	}
	if (!d)
		return 0;
	rec.cookie = bpf_get_socket_cookie(tp);
	if (bpf_sock_destroy(skc))
		return 0;
	rec.ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&d->closed, 1);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
