// SPDX-License-Identifier: GPL-2.0
/* Per-connection telemetry: sockops reports each TCP connection's open and close through the
 * km_conn_events ring buffer; cgroup_skb counts packets and bytes per service in per-CPU maps.
 * Maps shared with routing (km_sock_route) and acceleration (km_accel_sock, km_accel_rx_bytes) come
 * from the headers those objects include, so loading with the same pin directory shares them. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "telemetry.h"
#include "sock_route_map.h"
#include "accel_maps.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_telemetry_config);
} km_telemetry_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} km_conn_events SEC(".maps");

/* Never written: a ring buffer has no value type, so this puts struct km_conn_event in the object's
 * BTF for the layout test and for bpftool. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_conn_event);
} km_conn_event_format SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_TELE_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} km_telemetry_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* service id, 0: not routed */
	__type(value, struct km_service_traffic);
} km_service_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct km_tele_sock);
} km_tele_sock SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&km_telemetry_counters, &index);

	if (c)
		*c += 1;
}

static __always_inline int telemetry_enabled(void)
{
	__u32 zero = 0;
	struct km_telemetry_config *cfg = bpf_map_lookup_elem(&km_telemetry_config, &zero);

	return cfg && cfg->enabled;
}

static __always_inline void fill_tuple(struct bpf_sock_ops *skops, struct km_conn_event *e)
{
	e->family = skops->family;
	if (skops->family == AF_INET) {
		e->local_ip[0] = skops->local_ip4;
		e->remote_ip[0] = skops->remote_ip4;
	} else {
		KM_COPY_IP6(e->local_ip, skops->local_ip6);
		KM_COPY_IP6(e->remote_ip, skops->remote_ip6);
	}
	e->local_port = skops->local_port;
	e->remote_port = bpf_ntohl(skops->remote_port);
}

static __always_inline void fill_route(struct bpf_sock *sk, struct km_conn_event *e)
{
	struct km_sock_route *r = km_routed_sock(sk);

	if (!r)
		return;
	e->flags |= KM_CONN_F_REWRITTEN;
	e->orig_family = r->family;
	__builtin_memcpy(e->orig_ip, r->orig_address, 16);
	e->orig_port = bpf_ntohs(r->orig_port);
	e->service_id = r->service_id;
	e->backend_id = r->backend_id;
}

/* Never blocks: a full ring buffer loses the event and says so in a counter. */
static __always_inline struct km_conn_event *reserve(void)
{
	struct km_conn_event *e = bpf_ringbuf_reserve(&km_conn_events, sizeof(*e), 0);

	if (!e) {
		count(KM_TELE_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

static __always_inline void on_established(struct bpf_sock_ops *skops, __u32 direction)
{
	struct bpf_sock *sk = skops->sk;
	struct km_tele_sock *st;
	struct km_conn_event *e;
	__u64 now;

	if (!sk || !telemetry_enabled())
		return;
	st = bpf_sk_storage_get(&km_tele_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	now = bpf_ktime_get_ns();
	st->connect_us = 0;
	if (direction == KM_DIR_OUTBOUND && (st->flags & KM_TELE_CONNECTING) && now > st->open_ns)
		st->connect_us = (now - st->open_ns) / 1000;
	st->open_ns = now;
	st->base_bytes_acked = skops->bytes_acked;
	st->base_bytes_received = skops->bytes_received;
	st->direction = direction;
	st->flags = KM_TELE_TRACKED;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);

	e = reserve();
	if (!e)
		return;
	e->type = KM_CONN_OPEN;
	e->direction = direction;
	e->timestamp_ns = st->open_ns;
	e->cookie = bpf_get_socket_cookie(skops);
	e->cgroup_id = st->cgroup_id;
	e->pid = st->pid;
	e->srtt_us = skops->srtt_us >> 3;
	e->connect_us = st->connect_us;
	fill_tuple(skops, e);
	fill_route(sk, e);
	bpf_ringbuf_submit(e, 0);
	count(KM_TELE_EVENTS_SENT);
}

/* The SYN is about to leave: the start of the connection's span (its handshake time). */
static __always_inline void on_connect(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct km_tele_sock *st;

	if (!sk || !telemetry_enabled())
		return;
	st = bpf_sk_storage_get(&km_tele_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	st->open_ns = bpf_ktime_get_ns();
	st->flags |= KM_TELE_CONNECTING;
}

static __always_inline void on_state_change(struct bpf_sock_ops *skops)
{
	__u32 old = skops->args[0], new = skops->args[1];
	struct bpf_sock *sk = skops->sk;
	struct km_accel_sock *acc;
	struct km_tele_sock *st;
	struct km_conn_event *e;
	struct km_sock_key k;
	__u64 *rx, sent, received;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&km_tele_sock, sk, 0, 0);
	if (!st || !(st->flags & KM_TELE_TRACKED))
		return;
	/* bytes_received counts the peer's FIN and bytes_acked our acked FIN; payload excludes both. */
	if (new == BPF_TCP_CLOSE_WAIT || new == BPF_TCP_CLOSING || (old == BPF_TCP_FIN_WAIT2 && new == BPF_TCP_CLOSE))
		st->flags |= KM_TELE_FIN_IN;
	if ((old == BPF_TCP_FIN_WAIT1 && new == BPF_TCP_FIN_WAIT2) ||
	    (new == BPF_TCP_CLOSE && (old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING)))
		st->flags |= KM_TELE_FIN_OUT_ACKED;
	if (new != BPF_TCP_CLOSE)
		return;
	st->flags &= ~KM_TELE_TRACKED;
	if (!telemetry_enabled())
		return;

	sent = skops->bytes_acked - st->base_bytes_acked;
	received = skops->bytes_received - st->base_bytes_received;
	if ((st->flags & KM_TELE_FIN_OUT_ACKED) && sent)
		sent--;
	if ((st->flags & KM_TELE_FIN_IN) && received)
		received--;

	e = reserve();
	if (!e)
		return;
	acc = bpf_sk_storage_get(&km_accel_sock, sk, 0, 0);
	if (acc && (acc->state & KM_ACCEL_SOCK_ACCELERATED)) {
		e->flags |= KM_CONN_F_ACCELERATED;
		sent += acc->bytes_out;
		/* the key accel.bpf.c credited; none when it could not build one (mixed families) */
		rx = km_sock_key_from_skops(skops, &k) ? NULL : bpf_map_lookup_elem(&km_accel_rx_bytes, &k);
		if (rx) {
			received += *rx;
			bpf_map_delete_elem(&km_accel_rx_bytes, &k);
		}
	}
	e->type = KM_CONN_CLOSE;
	e->direction = st->direction;
	e->timestamp_ns = bpf_ktime_get_ns();
	e->duration_ns = e->timestamp_ns - st->open_ns;
	e->cookie = bpf_get_socket_cookie(skops);
	e->cgroup_id = st->cgroup_id;
	e->pid = st->pid;
	e->bytes_sent = sent;
	e->bytes_received = received;
	e->srtt_us = skops->srtt_us >> 3;
	e->total_retrans = skops->total_retrans;
	e->connect_us = st->connect_us;
	e->end_reason = (old == BPF_TCP_FIN_WAIT2 || old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING ||
			 old == BPF_TCP_TIME_WAIT)
				? KM_END_CLOSED
				: KM_END_ABORTED;
	fill_tuple(skops, e);
	fill_route(sk, e);
	bpf_ringbuf_submit(e, 0);
	count(KM_TELE_EVENTS_SENT);
}

SEC("sockops")
int km_telemetry_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(skops, KM_DIR_OUTBOUND);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, KM_DIR_INBOUND);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state_change(skops);
		break;
	}
	return 1;
}

/* pid and cgroup are only known where the creating task is current; accepted sockets inherit the
 * listener's through BPF_F_CLONE. */
SEC("cgroup/sock_create")
int km_telemetry_sock_create(struct bpf_sock *sk)
{
	struct km_tele_sock *st;

	if (sk->type != SOCK_STREAM || sk->protocol != IPPROTO_TCP)
		return 1;
	st = bpf_sk_storage_get(&km_tele_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1;
	st->pid = bpf_get_current_pid_tgid() >> 32;
	st->cgroup_id = bpf_get_current_cgroup_id();
	return 1;
}

static __always_inline void count_traffic(struct __sk_buff *skb, int egress)
{
	struct km_service_traffic *t, zero = {};
	struct km_sock_route *r;
	struct bpf_sock *sk;
	__u32 service = 0;

	if (!telemetry_enabled())
		return;
	sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk) {
		r = km_routed_sock(sk);
		if (r)
			service = r->service_id;
	}
	t = bpf_map_lookup_elem(&km_service_traffic, &service);
	if (!t) {
		bpf_map_update_elem(&km_service_traffic, &service, &zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&km_service_traffic, &service);
		if (!t)
			return;
	}
	if (egress) {
		t->tx_packets++;
		t->tx_bytes += skb->len;
	} else {
		t->rx_packets++;
		t->rx_bytes += skb->len;
	}
}

SEC("cgroup_skb/ingress")
int km_telemetry_ingress(struct __sk_buff *skb)
{
	count_traffic(skb, 0);
	return 1;
}

SEC("cgroup_skb/egress")
int km_telemetry_egress(struct __sk_buff *skb)
{
	count_traffic(skb, 1);
	return 1;
}
