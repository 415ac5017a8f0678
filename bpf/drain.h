/* Structs of drain.bpf.o (closing connections to removed endpoints, issue 17) shared with user
 * space: src/dataplane/codec.ts declares them and the agent checks them against this object's BTF. */
#ifndef KERNMESH_DRAIN_H
#define KERNMESH_DRAIN_H

#include "kernmesh.h"

/* km_drain value, keyed by km_host_key {service, backend}: the routed sockets of the service to that
 * backend are closed by the socket iterator; backend_id 0 closes every routed socket of the service. */
struct km_drain {
	__u8 address[16]; /* the backend's, as km_backend: the socket's peer must be it (ids get reused) */
	__u16 port;       /* network order */
	__u8 family;      /* enum km_family */
	__u8 pad;
	__u32 pad2;
	__u64 closed;     /* sockets this entry closed */
};

/* One record per socket the iterator closed (bpf_seq_write), for the agent's log and counters. */
struct km_drained {
	__u64 cookie;  /* socket cookie */
	__u64 ns;      /* bpf_ktime_get_ns() when it was closed */
	__u32 service_id;
	__u32 backend_id;
	__u8 local_address[16]; /* the client's end */
	__u8 remote_address[16];
	__u16 local_port;  /* host order */
	__u16 remote_port; /* host order */
	__u8 family;       /* enum km_family */
	__u8 pad[3];
};

#endif /* KERNMESH_DRAIN_H */
