// SPDX-License-Identifier: GPL-2.0
/* Test-only programs for the native binding's kernel tests (test/native.test.ts).
 * They exercise each kind of map and attachment the binding offers, with effects a test can observe. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "native_test.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} km_test_hash SEC(".maps");

/* Deliberately tiny so a test can fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 4);
} km_test_small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, COUNTER_MAX);
} km_test_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} km_test_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} km_test_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 64);
} km_test_sockhash SEC(".maps");

/* Only here so the struct's layout is in the object's BTF, where the btfStruct test reads it. */
struct test_connect_event test_connect_event_layout;

static __always_inline __u64 count(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&km_test_counters, &slot);

	if (!c)
		return 0;
	return __sync_add_and_fetch(c, 1);
}

/* Counts every IPv4 connect in the cgroup and reports it; never changes the destination. */
SEC("cgroup/connect4")
int test_connect4(struct bpf_sock_addr *ctx)
{
	struct test_connect_event *e;
	__u64 seq = count(COUNTER_CONNECT);

	e = bpf_ringbuf_reserve(&km_test_events, sizeof(*e), 0);
	if (!e)
		return 1;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->dst_ip4 = ctx->user_ip4;
	e->dst_port = bpf_ntohs(ctx->user_port);
	e->family = ctx->user_family;
	e->seq = seq;
	bpf_ringbuf_submit(e, 0);
	return 1;
}

/* Puts both ends of every established TCP connection in the cgroup into km_test_sockhash. */
SEC("sockops")
int test_sockops(struct bpf_sock_ops *skops)
{
	__u64 key;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	key = ((__u64)skops->local_port << 32) | bpf_ntohl(skops->remote_port);
	if (bpf_sock_hash_update(skops, &km_test_sockhash, &key, BPF_ANY) == 0)
		count(COUNTER_SOCKHASH_INSERT);
	return 1;
}

/* Counts sendmsg calls on sockets in km_test_sockhash and lets the bytes through unchanged. */
SEC("sk_msg")
int test_sk_msg(struct sk_msg_md *msg)
{
	count(COUNTER_MSG);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
