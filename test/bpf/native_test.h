/* Record layout shared by test/bpf/native_test.bpf.c and test/native.test.ts. */
#ifndef KERNMESH_NATIVE_TEST_H
#define KERNMESH_NATIVE_TEST_H

#include <linux/types.h>

/* One connect() seen by test_connect4, sent through km_test_events. 16 bytes, no implicit padding. */
struct test_connect_event {
	__u32 pid;
	__u32 dst_ip4; /* network order, as the application passed it */
	__u16 dst_port; /* host order */
	__u16 family;
	__u32 seq; /* value of the connect counter after this connect */
};

/* Slots of km_test_counters. */
enum test_counter {
	COUNTER_CONNECT = 0,
	COUNTER_SOCKHASH_INSERT = 1,
	COUNTER_MSG = 2,
	COUNTER_MAX = 4,
};

/* Puts enum test_counter in the object's BTF, where the btfEnum test reads it (never called). */
struct test_enums {
	enum test_counter counter;
};
static __attribute__((noinline, used)) int test_enums_btf(struct test_enums *e)
{
	return e != 0;
}

#endif
