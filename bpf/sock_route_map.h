/* km_sock_route, the per-socket routing decision: written by route.bpf.c's connect4/6, read by
 * telemetry.bpf.c. Both objects include this one definition, so the map they share by name in the
 * pin directory cannot drift apart (libbpf refuses to reuse a pinned map whose definition differs). */
#ifndef KERNMESH_SOCK_ROUTE_MAP_H
#define KERNMESH_SOCK_ROUTE_MAP_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct km_sock_route);
} km_sock_route SEC(".maps");

/* The socket's route if connect() rewrote its destination, else NULL. */
static __always_inline struct km_sock_route *km_routed_sock(struct bpf_sock *sk)
{
	struct km_sock_route *r = bpf_sk_storage_get(&km_sock_route, sk, 0, 0);

	return r && (r->flags & KM_SOCK_ROUTED) ? r : NULL;
}

#endif /* KERNMESH_SOCK_ROUTE_MAP_H */
