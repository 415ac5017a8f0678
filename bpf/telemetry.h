/* Structs and constants of telemetry.bpf.o (connection events, per-socket state, counters) shared
 * with user space: src/telemetry/codec.ts declares each struct and enum, and the agent checks them
 * against this object's BTF at start. */
#ifndef KERNMESH_TELEMETRY_H
#define KERNMESH_TELEMETRY_H

#include "kernmesh.h"

struct km_telemetry_config {
	__u32 enabled;
	__u32 pad;
};

/* km_conn_event.type */
enum km_conn_event_type {
	KM_CONN_OPEN = 1,
	KM_CONN_CLOSE = 2,
};

/* km_conn_event.direction, km_tele_sock.direction */
enum km_direction {
	KM_DIR_OUTBOUND = 1, /* this socket connected */
	KM_DIR_INBOUND = 2,  /* this socket was accepted */
};

/* km_conn_event.end_reason */
enum km_end_reason {
	KM_END_NONE = 0,
	KM_END_CLOSED = 1,  /* FIN handshake */
	KM_END_ABORTED = 2, /* reset or timed out before an orderly close */
};

/* km_conn_event.flags */
enum km_conn_flag {
	KM_CONN_F_REWRITTEN = 1 << 0,   /* connect() destination was rewritten: orig_* and service_id set */
	KM_CONN_F_ACCELERATED = 1 << 1, /* some bytes went through the sockmap */
};

/* One ring-buffer record per connection open and close. */
struct km_conn_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns() */
	__u64 cookie;       /* socket cookie: pairs an open with its close */
	__u64 cgroup_id;
	__u64 bytes_sent;     /* payload bytes, close only */
	__u64 bytes_received; /* payload bytes, close only */
	__u64 duration_ns;    /* close only */
	__u32 pid;            /* tgid that created the socket (the listener's for accepted sockets) */
	__u32 family;         /* AF_INET / AF_INET6 */
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 orig_ip[4]; /* destination the application asked for, when rewritten */
	__u16 local_port;
	__u16 remote_port;
	__u16 orig_port;
	__u8 type;      /* enum km_conn_event_type */
	__u8 direction; /* enum km_direction */
	__u32 service_id;
	__u32 backend_id;
	__u32 srtt_us;
	__u32 total_retrans;
	__u8 end_reason;  /* enum km_end_reason */
	__u8 flags;       /* enum km_conn_flag */
	__u8 orig_family; /* of orig_ip: enum km_family (routing's values) */
	__u8 pad;
	__u32 connect_us; /* outbound: connect() (SYN sent) to established, in microseconds */
};

/* km_tele_sock.flags */
enum km_tele_flag {
	KM_TELE_TRACKED = 1 << 0,
	KM_TELE_FIN_IN = 1 << 1,        /* the peer's FIN was received: bytes_received counts it */
	KM_TELE_FIN_OUT_ACKED = 1 << 2, /* our FIN was acked: bytes_acked counts it */
	KM_TELE_CONNECTING = 1 << 3,    /* connect() sent the SYN: open_ns is the connect time */
};

/* Per-socket telemetry state (sk_storage). */
struct km_tele_sock {
	__u64 open_ns;
	__u64 cgroup_id;
	__u64 base_bytes_acked;    /* at establishment: the SYN is not payload */
	__u64 base_bytes_received;
	__u32 pid;
	__u32 flags;     /* enum km_tele_flag */
	__u32 direction; /* enum km_direction */
	__u32 connect_us; /* outbound: connect() to established; open_ns holds the connect time until then */
};

/* Per-service traffic counted by cgroup_skb, per CPU; service 0 is traffic not routed to a service. */
struct km_service_traffic {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

/* Indexes of the per-CPU km_telemetry_counters array. */
enum km_tele_counter {
	KM_TELE_EVENTS_LOST = 0,
	KM_TELE_EVENTS_SENT = 1,
	KM_TELE_COUNTER_MAX = 4,
};

struct km_telemetry_enums {
	enum km_conn_event_type event_type;
	enum km_direction direction;
	enum km_end_reason end_reason;
	enum km_conn_flag conn_flag;
	enum km_tele_flag tele_flag;
	enum km_tele_counter counter;
};
KM_BTF_ENUMS(km_telemetry_enums)

#endif /* KERNMESH_TELEMETRY_H */
