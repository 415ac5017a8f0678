/* Maps of accel.bpf.c that telemetry.bpf.c also reads (by name, through the pin directory): one
 * definition for both objects, so they cannot drift apart. */
#ifndef KERNMESH_ACCEL_MAPS_H
#define KERNMESH_ACCEL_MAPS_H

#include "common.h"
#include "accel.h"

/* Per-socket acceleration state (cloned from a listener onto the sockets it accepts). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct km_accel_sock);
} km_accel_sock SEC(".maps");

/* Bytes redirected into each accelerated socket, keyed by the receiving end; telemetry reads and
 * deletes the entry when the socket closes (LRU: without telemetry, entries age out). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_sock_key);
	__type(value, __u64);
} km_accel_rx_bytes SEC(".maps");

#endif /* KERNMESH_ACCEL_MAPS_H */
