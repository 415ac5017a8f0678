/* Kernel-side helpers shared by route.bpf.c, accel.bpf.c, telemetry.bpf.c and drain.bpf.c: socket
 * address constants, copying context addresses, and the socket key acceleration and telemetry both
 * build. Not shared with user space (that is kernmesh.h and each object's header). */
#ifndef KERNMESH_COMMON_H
#define KERNMESH_COMMON_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kernmesh.h"

/* <sys/socket.h> values; the UAPI headers these programs build with do not define them. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM 1

/* Copies four address words. A macro, not a function: context fields must be read at constant
 * offsets from the context pointer, which a pointer passed to a helper would not guarantee. */
#define KM_COPY_IP6(dst, src)          \
	do {                           \
		(dst)[0] = (src)[0];   \
		(dst)[1] = (src)[1];   \
		(dst)[2] = (src)[2];   \
		(dst)[3] = (src)[3];   \
	} while (0)

/* IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes plain IPv4, so a v4 client and a dual-stack server
 * name the same connection the same way. */
static __always_inline int km_fold_v4_mapped(__u32 *family, __u32 *ip)
{
	if (*family == AF_INET6 && ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff)) {
		*family = AF_INET;
		ip[0] = ip[3];
		ip[1] = 0;
		ip[2] = 0;
		ip[3] = 0;
		return 1;
	}
	return 0;
}

/* This socket's view of its connection as a km_sock_key (the key of km_accel_sockhash and
 * km_accel_rx_bytes). -1 for another family, or when only one end is v4-mapped. */
static __always_inline int km_sock_key_from_skops(struct bpf_sock_ops *skops, struct km_sock_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = skops->family;
	if (k->family == AF_INET) {
		k->local_ip[0] = skops->local_ip4;
		k->remote_ip[0] = skops->remote_ip4;
	} else if (k->family == AF_INET6) {
		__u32 lfam = AF_INET6, rfam = AF_INET6;

		KM_COPY_IP6(k->local_ip, skops->local_ip6);
		KM_COPY_IP6(k->remote_ip, skops->remote_ip6);
		km_fold_v4_mapped(&lfam, k->local_ip);
		km_fold_v4_mapped(&rfam, k->remote_ip);
		if (lfam != rfam)
			return -1;
		k->family = lfam;
	} else {
		return -1;
	}
	k->local_port = skops->local_port;
	k->remote_port = bpf_ntohl(skops->remote_port);
	return 0;
}

#endif /* KERNMESH_COMMON_H */
