/* What more than one BPF object shares with the others and with user space: address families, the
 * per-socket routing decision (km_sock_route: written by route.bpf.o, read by telemetry and drain),
 * the (service, backend) key (route and drain) and a socket's view of its connection (accel and
 * telemetry). Each object's own structs are in its header: route.h, drain.h, accel.h,
 * telemetry.h, authz.h.
 *
 * Every struct has a TypeScript codec that declares its size and member offsets, and every enum the
 * agent relies on is declared there too: at start the agent checks both against the loaded object's
 * BTF and refuses to run on a difference. Constants are enums (not #defines) so that BTF carries
 * them; KM_BTF_ENUMS below keeps them in the object. Fixed-width types only, explicit padding. */
#ifndef KERNMESH_H
#define KERNMESH_H

#include <linux/types.h>

/* Puts a header's enums in the BTF of each object that includes it: clang emits an enum only where
 * a type the object keeps uses it, so each header ends with a struct holding one member of each of
 * its enums and this never-called function taking it (not loaded: no program calls it). */
#define KM_BTF_ENUMS(type)                                               \
	static __attribute__((noinline, used)) int type##_btf(struct type *enums) \
	{                                                                \
		return enums != 0;                                       \
	}

/* Addresses are 16 bytes: IPv4 in the first 4 (network order), the rest zero. This family byte
 * says which (routing, drain and authorization's structs). */
enum km_family {
	KM_AF_INET = 4,
	KM_AF_INET6 = 6,
};

/* km_sock_route.flags */
enum km_sock_flag {
	KM_SOCK_ROUTED = 0x01,           /* destination rewritten; getpeername reports the original */
	KM_SOCK_WAYPOINT_PENDING = 0x02, /* first message still has to carry the waypoint TLV */
	KM_SOCK_COUNTED = 0x04,          /* holds one unit of km_backend_conn / km_service_conn */
	KM_SOCK_V4_MAPPED = 0x08,        /* IPv6 socket that connected to a v4-mapped VIP */
	KM_SOCK_PASSTHROUGH = 0x10,      /* matched a passthrough service; destination untouched */
	KM_SOCK_CONNECT_DONE = 0x20,     /* its connect's result went to outlier detection */
};

/* Per-socket routing decision (BPF_MAP_TYPE_SK_STORAGE map km_sock_route), written by connect4/6.
 * STABLE LAYOUT: telemetry and drain read this map by name (same pinned map); append only. */
struct km_sock_route {
	__u8 orig_address[16]; /* the VIP the application asked for */
	__u16 orig_port;
	__u8 family; /* family of orig_address: KM_AF_INET / KM_AF_INET6 */
	__u8 flags;  /* enum km_sock_flag */
	__u32 service_id;
	__u32 backend_id; /* 0 for passthrough and waypoint */
	__u32 connect_ms; /* bpf_ktime_get_ns() / 1e6 when the SYN left (sockops), for the connect timeout */
};

/* Key of a (service, backend): route.bpf.o's km_hosts and km_members, drain.bpf.o's km_drain. */
struct km_host_key {
	__u32 service_id;
	__u32 backend_id;
};

/* One end of a TCP connection seen from that socket; IPv4-mapped IPv6 is folded to IPv4 so both
 * ends of a dual-stack connection build matching keys. Ports in host order. Acceleration's sockhash
 * key, and telemetry's key of the bytes acceleration redirected. */
struct km_sock_key {
	__u32 family; /* AF_INET / AF_INET6, as sockops reports it */
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
};

struct km_shared_enums {
	enum km_family family;
	enum km_sock_flag sock_flag;
};
KM_BTF_ENUMS(km_shared_enums)

#endif /* KERNMESH_H */
