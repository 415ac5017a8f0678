/* Structs and constants of accel.bpf.o (same-node acceleration through a sockhash, and capture of
 * redirected messages) shared with user space: src/accel/codec.ts declares each struct and enum, and
 * the agent checks them against this object's BTF at start. */
#ifndef KERNMESH_ACCEL_H
#define KERNMESH_ACCEL_H

#include "kernmesh.h"

enum km_accel_limits {
	/* Acceleration rules: two banks of KM_ACCEL_MAX_RULES in km_accel_rules; user space fills the
	 * idle bank, then flips km_accel_config.rule_bank, so a connection never sees half a rule set. */
	KM_ACCEL_MAX_RULES = 64,
	KM_CAPTURE_MAX_SNAPLEN = 65535,
};

/* km_accel_rule.matches */
enum km_accel_match {
	KM_ACCEL_MATCH_IP = 1 << 0,
	KM_ACCEL_MATCH_PORT = 1 << 1,
	KM_ACCEL_MATCH_UID = 1 << 2,
	KM_ACCEL_MATCH_GID = 1 << 3,
};

/* km_accel_rule.action */
enum km_accel_action {
	KM_ACCEL_ACCEPT = 1,
	KM_ACCEL_RETURN = 2,
};

struct km_accel_rule {
	__u8 matches;    /* enum km_accel_match bits; a match not set matches anything */
	__u8 action;     /* enum km_accel_action */
	__u8 family;     /* AF_INET or AF_INET6, with KM_ACCEL_MATCH_IP */
	__u8 prefix_len;
	__u16 port;      /* host order */
	__u16 pad;
	__u32 uid;
	__u32 gid;
	__u32 addr[4];   /* network order; IPv4 in addr[0] */
};

struct km_accel_config {
	__u32 enabled;       /* 0: no new socket is inserted and open ones fall back to the stack */
	__u32 rule_bank;     /* 0 or 1: the live half of km_accel_rules */
	__u32 rule_count[2]; /* rules in each bank; written before the bank flips */
};

struct km_listener_key {
	__u32 family;
	__u32 ip[4];
	__u32 port;
};

/* Who owns a socket: captured at socket creation, where the creating task is current. */
struct km_sock_owner {
	__u32 uid;
	__u32 gid;
};

/* km_accel_sock.state */
enum km_accel_sock_state {
	KM_ACCEL_SOCK_OWNER_KNOWN = 1 << 0,
	KM_ACCEL_SOCK_ACCELERATED = 1 << 1, /* in the sockhash */
	KM_ACCEL_SOCK_REFUSED = 1 << 2,     /* local, but the rules said no */
	KM_ACCEL_SOCK_FELL_BACK = 1 << 3,   /* a message took the stack: never redirect again (byte order) */
};

/* Per-socket acceleration state (sk_storage, cloned from a listener onto the sockets it accepts). */
struct km_accel_sock {
	__u32 uid;
	__u32 gid;
	__u32 state; /* enum km_accel_sock_state */
	__u32 pad;
	__u64 bytes_out; /* bytes this socket sent through the sockmap, not seen by TCP's counters */
};

/* Indexes of the per-CPU km_accel_counters array. */
enum km_accel_counter {
	KM_ACCEL_SOCKETS_INSERTED = 0,
	KM_ACCEL_MESSAGES_REDIRECTED = 1,
	KM_ACCEL_REDIRECT_FAILURES = 2,
	KM_ACCEL_BYTES_REDIRECTED = 3,
	KM_ACCEL_SOCKETS_REFUSED = 4,
	KM_ACCEL_INSERT_FAILURES = 5,
	KM_ACCEL_MESSAGES_FALLBACK = 6, /* passed to the stack after a fallback or with acceleration off */
	KM_ACCEL_COUNTER_MAX = 8,
};

/* Per rule slot of km_accel_rules (same index), per CPU: what each rule decided. A connection is
 * counted once, by its connecting socket, when it is established. */
struct km_accel_rule_stats {
	__u64 matched;     /* the rule's matches held (rules after a matching RETURN are not evaluated) */
	__u64 accelerated; /* the first matching ACCEPT, when no RETURN matched */
	__u64 refused;     /* the first matching RETURN */
};

/* ---- capture of redirected messages (kernmesh capture) ---- */

/* km_capture_config.match: filters that must all hold for a connection's messages to be copied;
 * also the value bits of km_capture_endpoints. */
enum km_capture_match {
	KM_CAPTURE_MATCH_PORT = 1 << 0,    /* either end's port is `port` */
	KM_CAPTURE_MATCH_IP = 1 << 1,      /* either end's address is in addr/prefix_len */
	KM_CAPTURE_MATCH_SERVICE = 1 << 2, /* either end is in km_capture_endpoints with this bit */
	KM_CAPTURE_MATCH_POD = 1 << 3,     /* either end is in km_capture_endpoints with this bit */
};

struct km_capture_config {
	__u32 enabled; /* the only thing sk_msg reads when capture is off */
	__u32 snaplen;
	__u32 match;   /* enum km_capture_match */
	__u32 max_messages_per_sec;
	__u64 max_bytes_per_sec; /* captured bytes (at most snaplen a message) */
	__u32 family;            /* AF_INET or AF_INET6, with KM_CAPTURE_MATCH_IP */
	__u32 prefix_len;
	__u32 addr[4];           /* network order */
	__u32 port;              /* host order */
	__u32 pad;
};

/* Key of km_capture_endpoints: an address and port (port 0: any port of the address). */
struct km_capture_endpoint {
	__u32 family;
	__u32 ip[4];
	__u32 port;
};

/* One-second window of the capture caps. */
struct km_capture_window {
	__u64 start_ns;
	__u64 messages;
	__u64 bytes;
};

/* Ring-buffer record: one redirected message, its first caplen bytes after the header. */
struct km_capture_record {
	__u64 timestamp_ns;
	__u64 offset; /* bytes the sender sent through the sockmap before this message (TCP stream offset) */
	struct km_sock_key sender; /* the sending socket's view: local is the sender */
	__u32 size;   /* the whole message */
	__u32 caplen; /* bytes copied after this header */
	__u32 pad;
};

/* Indexes of the per-CPU km_capture_counters array. */
enum km_capture_counter {
	KM_CAPTURE_MESSAGES = 0,
	KM_CAPTURE_BYTES = 1,
	KM_CAPTURE_LOST_RATE = 2,  /* over max_messages_per_sec */
	KM_CAPTURE_LOST_BYTES = 3, /* over max_bytes_per_sec */
	KM_CAPTURE_LOST_RING = 4,  /* ring buffer full */
	KM_CAPTURE_LOST_PULL = 5,  /* the message could not be linearised for copying */
	KM_CAPTURE_COUNTER_MAX = 8,
};

struct km_accel_enums {
	enum km_accel_limits limits;
	enum km_accel_match match;
	enum km_accel_action action;
	enum km_accel_sock_state sock_state;
	enum km_accel_counter counter;
	enum km_capture_match capture_match;
	enum km_capture_counter capture_counter;
};
KM_BTF_ENUMS(km_accel_enums)

#endif /* KERNMESH_ACCEL_H */
