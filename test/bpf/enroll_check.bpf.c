// SPDX-License-Identifier: GPL-2.0
/* The alternative to per-pod attachment that bench/k8s-enroll.ts measures: one connect4 program at
 * the pods' parent cgroup that looks the caller's pod up in a map of enrolled pods keyed by cgroup
 * id. Pods sit at two depths (Guaranteed directly under kubepods, the others under a QoS cgroup), so
 * a miss costs two lookups. Not used by the agent. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} km_bench_enrolled SEC(".maps");

/* [0]: the depth of a Guaranteed pod's cgroup; [1] enrolled hits, [2] misses. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} km_bench_check SEC(".maps");

static __always_inline void bump(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&km_bench_check, &i);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("cgroup/connect4")
int km_bench_check4(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	__u64 *level = bpf_map_lookup_elem(&km_bench_check, &zero);
	__u64 id;

	if (!level)
		return 1;
	id = bpf_get_current_ancestor_cgroup_id(*level);
	if (bpf_map_lookup_elem(&km_bench_enrolled, &id)) {
		bump(1);
		return 1;
	}
	id = bpf_get_current_ancestor_cgroup_id(*level + 1);
	if (bpf_map_lookup_elem(&km_bench_enrolled, &id)) {
		bump(1);
		return 1;
	}
	bump(2);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
