// SPDX-License-Identifier: GPL-2.0
/* A routing object built from other sources than the agent's (test/codec.test.ts): struct
 * km_frontend_key with two members swapped, enum km_lb_policy with a policy added before MAGLEV.
 * The agent must refuse it before it reaches the kernel, naming both differences. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kernmesh.h"

enum km_lb_policy {
	KM_LB_RANDOM = 0,
	KM_LB_ROUND_ROBIN = 1,
	KM_LB_LEAST_REQUEST = 2,
	KM_LB_RING_HASH = 3,
	KM_LB_MAGLEV = 4,
};

struct km_frontend_key {
	__u8 address[16];
	__u16 port;
	__u8 family;
	__u8 protocol;
};

struct km_frontend {
	__u32 service_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct km_frontend_key);
	__type(value, struct km_frontend);
} km_frontends SEC(".maps");

struct km_drift_enums {
	enum km_lb_policy lb_policy;
};
KM_BTF_ENUMS(km_drift_enums)

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
