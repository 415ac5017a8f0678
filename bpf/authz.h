/* Structs and constants of the L4 authorization object (authz.bpf.c) shared with user space:
 * src/authz/codec.ts declares each struct and enum, and the agent checks them against this object's
 * BTF at start. Addresses: family (KM_AF_INET / KM_AF_INET6) and 4 words, IPv4 in the first
 * (network order). */
#ifndef KERNMESH_AUTHZ_H
#define KERNMESH_AUTHZ_H

#include "kernmesh.h"

enum km_authz_limits {
	/* A destination address evaluates at most this many terms; the compiler denies past it. */
	KM_AUTHZ_MAX_TERMS = 4096,
};

/* km_authz_term.action */
enum km_authz_action {
	KM_AUTHZ_ALLOW = 0,
	KM_AUTHZ_DENY = 1,
};

/* km_authz_term.flags: which conditions the term has. Each is one lookup in its set's map. */
enum km_authz_term_flag {
	KM_AUTHZ_T_DRY_RUN = 0x01,
	KM_AUTHZ_T_ID_IN = 0x02,	/* the source identity is in km_authz_ids under `set` */
	KM_AUTHZ_T_ID_NOT_IN = 0x04,	/* ... is not (the set lists the identities that fail) */
	KM_AUTHZ_T_SRC_IN = 0x08,	/* the source address is in km_authz_cidrs (negated 0) */
	KM_AUTHZ_T_SRC_NOT_IN = 0x10,	/* ... is not in km_authz_cidrs (negated 1) */
	KM_AUTHZ_T_PORT_IN = 0x20,	/* the destination port is in km_authz_ports (negated 0) */
	KM_AUTHZ_T_PORT_NOT_IN = 0x40,
};

/* km_authz_dest.flags */
enum km_authz_dest_flag {
	KM_AUTHZ_D_ALLOW = 0x01,	/* an enforced ALLOW policy applies: one of its terms must match */
	KM_AUTHZ_D_DRY_ALLOW = 0x02,	/* only dry-run ALLOW policies apply: report when none matches */
};

/* Why a connection was denied (or would have been): counter key and event field. */
enum km_authz_reason {
	KM_AUTHZ_R_DENY_POLICY = 1,	 /* id: the DENY policy */
	KM_AUTHZ_R_NO_ALLOW_MATCH = 2,	 /* id: the destination workload */
	KM_AUTHZ_R_UNKNOWN_DEST = 3,	 /* id: 0 (no workload is published for the address) */
	KM_AUTHZ_R_POLICY_PENDING = 4,	 /* id: a policy the workload lists but that has not arrived */
	KM_AUTHZ_R_POLICY_REFUSED = 5,	 /* id: a policy kernmesh refused (NACKed) */
	KM_AUTHZ_R_OVER_BUDGET = 6,	 /* id: the destination workload (too many terms) */
	KM_AUTHZ_R_DRY_RUN_DENY = 7,	 /* id: a dry-run DENY policy that matched */
	KM_AUTHZ_R_DRY_RUN_NO_ALLOW = 8, /* id: the destination workload (its dry-run ALLOWs all missed) */
	KM_AUTHZ_R_UNEXPRESSIBLE = 9,	 /* id: a DENY policy too large for the kernel's terms */
	KM_AUTHZ_R_COUNT = 10,
};

/* km_authz_counter_key.reason of an open connection closed after a policy change: this bit beside
 * the reason. */
enum km_authz_counter_bit {
	KM_AUTHZ_CLOSED_BIT = 0x100,
};

/* km_authz_index_key.kind */
enum km_authz_index_kind {
	KM_AUTHZ_IDX_IDENTITY = 0,
	KM_AUTHZ_IDX_PORT = 1,
};

/* Key of km_authz_dest (the node's enrolled workloads) and km_authz_src (every workload). */
struct km_authz_addr {
	__u32 family;
	__u32 ip[4];
};

/* A destination address: its terms are km_authz_terms[first .. first + count); `list` keys the
 * km_authz_index entries of the terms folded out of that walk (0: none). */
struct km_authz_dest {
	__u32 workload;
	__u32 first;
	__u32 count;
	__u32 flags;
	__u32 list;
};

/* km_authz_index: enforced terms with a single condition, folded per list into one lookup by the
 * connection's source identity (kind KM_AUTHZ_IDX_IDENTITY) or destination port (KM_AUTHZ_IDX_PORT). */
struct km_authz_index_key {
	__u32 list;
	__u32 kind;
	__u32 value;
};

struct km_authz_index {
	__u32 deny;	/* the first DENY policy matching (0: none) */
	__u8 reason;	/* what that denial counts as */
	__u8 allow;	/* an ALLOW policy matches */
	__u8 pad[2];
};

/* One conjunction of conditions of one policy, evaluated in list order (DENY terms first). */
struct km_authz_term {
	__u32 policy;
	__u32 set; /* key of this term's entries in the set maps */
	__u16 flags;
	__u8 action; /* enum km_authz_action */
	__u8 reason; /* what a match of a DENY term counts as (enum km_authz_reason) */
};

struct km_authz_id_key {
	__u32 set;
	__u32 identity;
};

struct km_authz_port_key {
	__u32 set;
	__u16 port;
	__u8 negated;
	__u8 pad;
};

/* LPM trie key: prefixlen covers set, negated and family (48 bits) plus the CIDR's length. */
struct km_authz_cidr_key {
	__u32 prefixlen;
	__u32 set;
	__u8 negated;
	__u8 family;
	__u8 ip[16];
	__u8 pad[2];
};

struct km_authz_counter_key {
	__u32 id;
	__u32 reason;
};

/* km_authz_events: one per denied connection, per dry-run denial, per open connection closed. */
struct km_authz_event {
	__u64 timestamp_ns;
	__u32 family;
	__u32 src_ip[4];
	__u32 dst_ip[4];
	__u16 src_port; /* host order */
	__u16 dst_port;
	__u32 id; /* policy or workload, as the reason says */
	__u32 workload;
	__u32 identity;
	__u8 reason;
	__u8 closed; /* 1: an open connection closed after a policy change */
	__u8 pad[2];
};

/* km_authz_config[0]: the run number of the socket iterator (scratch entries of older runs are stale). */
struct km_authz_config {
	__u64 iter_run;
};

/* Listening sockets seen by the iterator in this run: an open socket on their port was accepted. */
struct km_authz_listener_key {
	__u32 family;
	__u32 ip[4];
	__u32 port;
};

struct km_authz_enums {
	enum km_authz_limits limits;
	enum km_authz_action action;
	enum km_authz_term_flag term_flag;
	enum km_authz_dest_flag dest_flag;
	enum km_authz_reason reason;
	enum km_authz_counter_bit counter_bit;
	enum km_authz_index_kind index_kind;
};
KM_BTF_ENUMS(km_authz_enums)

#endif /* KERNMESH_AUTHZ_H */
