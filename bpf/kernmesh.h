/* Structs shared between the BPF programs and user space (src/dataplane, src/telemetry).
 * Every struct here has a TypeScript codec whose size and offsets a test checks against BTF.
 * Fixed-width types only, explicit padding, so the layout is the same on both sides. */
#ifndef KERNMESH_H
#define KERNMESH_H

#include <linux/types.h>
#include <linux/bpf.h> /* struct bpf_timer */

/* ---- routing (connect4/6, getpeername, waypoints) ---- */
/* Addresses are 16 bytes: IPv4 in the first 4 (network order), the rest zero. Ports in network
 * order, as the kernel hands them to sock_addr programs. */

#define KM_AF_INET 4
#define KM_AF_INET6 6

#define KM_MAX_PRIORITIES 8

/* km_service.kind */
#define KM_KIND_ENDPOINTS 0
#define KM_KIND_PASSTHROUGH 1
#define KM_KIND_BLACKHOLE 2
#define KM_KIND_WAYPOINT 3

/* km_service.lb_policy */
#define KM_LB_RANDOM 0
#define KM_LB_ROUND_ROBIN 1
#define KM_LB_LEAST_REQUEST 2
#define KM_LB_MAGLEV 3

/* LEAST_REQUEST: active_request_bias in 16.16 fixed point; the kernel computes 0 and 1.0 only. */
#define KM_LR_BIAS_ONE 65536
/* LEAST_REQUEST's weighted mode scans the whole group: at most this many endpoints in it. */
#define KM_LR_MAX_WEIGHTED 1024

/* Counter reasons: index = service_id * KM_REASON_COUNT + reason in km_counters (per CPU). */
#define KM_REASON_ROUTED 0
#define KM_REASON_NO_ENDPOINT 1
#define KM_REASON_OVERFLOW 2
#define KM_REASON_PASSTHROUGH 3
#define KM_REASON_BLACKHOLE 4
#define KM_REASON_WAYPOINT 5
#define KM_REASON_MAP_MISS 6
#define KM_REASON_COUNT 8

/* km_frontends key: what connect() asked for. */
struct km_frontend_key {
	__u8 address[16];
	__u16 port;
	__u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;   /* KM_AF_INET / KM_AF_INET6 */
};

struct km_frontend {
	__u32 service_id;
};

/* km_service.flags */
#define KM_SVC_OUTLIER 0x01            /* outlier detection: connect failures counted per host, ejected hosts skipped */
#define KM_SVC_SPLIT_LOCAL_ORIGIN 0x02 /* outlier_detection.split_external_local_origin_errors */
#define KM_SVC_ALWAYS_EJECT_ONE 0x04   /* outlier_detection.always_eject_one_host */
#define KM_SVC_FAIL_ON_PANIC 0x08      /* zone_aware_lb_config.fail_traffic_on_panic: refuse rather than use every host */

/* km_services value. Slots and Maglev tables are double-buffered: `generation` names the live
 * half, so the writer fills the other half and switches the service with this one update.
 * Priority p's slots are keyed priority p: its healthy hosts, slot_count[p] of them. In panic a
 * connect picks among every non-draining host: when panic_separate has bit p, from the
 * panic_slot_count[p] slots (and Maglev table) keyed priority p | KM_PANIC_TABLE, each host with its
 * own weight (Envoy ignores locality weights in panic); else from the healthy slots themselves. */
struct km_service {
	__u8 kind;
	__u8 lb_policy;
	__u8 generation;
	__u8 waypoint_family;
	__u32 max_connections; /* 0: no cap */
	__u16 slot_count[KM_MAX_PRIORITIES]; /* healthy slots per priority group */
	__u16 maglev_size;                   /* entries per Maglev table (prime), 0 unless MAGLEV */
	__u16 waypoint_port;
	__u8 waypoint_address[16];
	__u8 lr_weighted;       /* LEAST_REQUEST: bit p set when group p's weights differ (weighted mode) */
	__u8 lr_panic_weighted; /* the same for the panic slots */
	__u8 flags;             /* KM_SVC_* */
	__u8 panic_mask;        /* priorities in panic when no host is ejected (Envoy's per-priority panic) */
	__u32 lr_bias; /* LEAST_REQUEST active_request_bias, KM_LR_BIAS_ONE or 0 */
	/* priority levels as Envoy computes them (issue 17): health from host counts */
	__u16 panic_slot_count[KM_MAX_PRIORITIES];
	__u16 host_count[KM_MAX_PRIORITIES];    /* non-draining hosts per priority */
	__u16 healthy_count[KM_MAX_PRIORITIES]; /* EDS-healthy hosts per priority */
	__u8 load[KM_MAX_PRIORITIES]; /* % of connects per priority when no host is ejected */
	__u16 overprovisioning;       /* overprovisioning_factor, percent (Envoy's default 140) */
	__u8 panic_threshold;         /* healthy_panic_threshold, percent; 0: never in panic */
	__u8 panic_separate;          /* bit p: priority p's panic slots follow its healthy ones */
	/* outlier detection (KM_SVC_OUTLIER): Envoy's consecutive-failure detector, connects as results */
	__u32 outlier_hosts;          /* the cluster's hosts: max_ejection_percent's denominator */
	__u32 consecutive_5xx;        /* thresholds; 0: never reached */
	__u32 consecutive_gateway;
	__u32 consecutive_local_origin;
	__u8 enforcing_5xx; /* percent */
	__u8 enforcing_gateway;
	__u8 enforcing_local_origin;
	__u8 max_ejection_percent;
	__u32 interval_ms;
	__u32 base_ejection_ms;
	__u32 max_ejection_ms;
	__u32 max_jitter_ms;
	__u32 connect_timeout_ms; /* a connect with no answer for this long is a failure */
};

#define KM_PANIC_TABLE 0x08 /* km_slot_key.priority bit of a priority's panic slots and table */

/* Key of km_slots (dense, weight-expanded endpoint slots) and km_maglev (lookup tables). */
struct km_slot_key {
	__u32 service_id;
	__u16 index;
	__u8 priority;
	__u8 generation;
};

struct km_slot {
	__u32 backend_id;
	__u32 weight;
};

struct km_backend {
	__u8 address[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* km_svc_names value: the service's name, so ids survive agent restarts. NUL-padded. */
struct km_service_name {
	char name[256];
};

/* km_sock_route flags */
#define KM_SOCK_ROUTED 0x01           /* destination rewritten; getpeername reports the original */
#define KM_SOCK_WAYPOINT_PENDING 0x02 /* first message still has to carry the waypoint TLV */
#define KM_SOCK_COUNTED 0x04          /* holds one unit of km_backend_conn / km_service_conn */
#define KM_SOCK_V4_MAPPED 0x08        /* IPv6 socket that connected to a v4-mapped VIP */
#define KM_SOCK_PASSTHROUGH 0x10      /* matched a passthrough service; destination untouched */
#define KM_SOCK_CONNECT_DONE 0x20     /* its connect's result went to outlier detection */

/* Per-socket routing decision (BPF_MAP_TYPE_SK_STORAGE map km_sock_route), written by connect4/6.
 * STABLE LAYOUT: telemetry programs read this map by name (same pinned map); append only. */
struct km_sock_route {
	__u8 orig_address[16]; /* the VIP the application asked for */
	__u16 orig_port;
	__u8 family; /* family of orig_address: KM_AF_INET / KM_AF_INET6 */
	__u8 flags;
	__u32 service_id;
	__u32 backend_id; /* 0 for passthrough and waypoint */
	__u32 connect_ms; /* bpf_ktime_get_ns() / 1e6 when the SYN left (sockops), for the connect timeout */
};


/* ---- outlier detection (issue 17) ---- */

/* Key of km_hosts (per-host detector state) and km_members (a host's place in a service). */
struct km_host_key {
	__u32 service_id;
	__u32 backend_id;
};

/* km_members value: written by user space for services with outlier detection. */
struct km_member {
	__u8 priority;
	__u8 healthy; /* EDS healthy or unknown: counted in the priority's healthy_count */
	__u16 pad;
};

#define KM_HOST_UNCOUNTED 0xff

/* km_hosts value: one per (service, backend) that failed a connect; written by the kernel only,
 * removed by the sweep once it has nothing left to remember. */
struct km_host_state {
	__u64 ejected_ns;   /* bpf_ktime_get_ns() at the last ejection */
	__u64 unejected_ns; /* at the last return, 0 before the first */
	__u32 ejected;      /* 1 while ejected; changed by compare-and-swap only */
	__u32 counted_priority; /* the km_outlier.ejected[] slot this ejection holds, KM_HOST_UNCOUNTED if none */
	__u32 consecutive_5xx;
	__u32 consecutive_gateway;
	__u32 consecutive_local_origin;
	__u32 backoff;       /* Envoy's ejection time multiplier */
	__u32 num_ejections; /* how many times ejected */
	__u32 jitter_ms;     /* of the current ejection */
	__u64 failures;      /* connect failures counted, ever */
};

/* Indexes of km_outlier.counters, named as Envoy's outlier_detection stats. */
#define KM_OD_EJECTIONS_TOTAL 0              /* deprecated ejections_total: detected 5xx, within max % */
#define KM_OD_ENFORCED_TOTAL 1               /* ejections_enforced_total */
#define KM_OD_OVERFLOW 2                     /* ejections_overflow */
#define KM_OD_DETECTED_5XX 3                 /* ejections_detected_consecutive_5xx */
#define KM_OD_ENFORCED_5XX 4                 /* ejections_enforced_consecutive_5xx */
#define KM_OD_DETECTED_GATEWAY 5             /* ejections_detected_consecutive_gateway_failure */
#define KM_OD_ENFORCED_GATEWAY 6             /* ejections_enforced_consecutive_gateway_failure */
#define KM_OD_DETECTED_LOCAL_ORIGIN 7        /* ejections_detected_consecutive_local_origin_failure */
#define KM_OD_ENFORCED_LOCAL_ORIGIN 8        /* ejections_enforced_consecutive_local_origin_failure */
#define KM_OD_COUNTERS 10

/* km_outlier value, per service id: written by the kernel only (user space zeroes it when an id is
 * given to another service). The sweep timer runs every interval while a host is ejected or backing off. */
struct km_outlier {
	struct bpf_timer timer;
	__u32 active;      /* ejections_active */
	__u32 sweep_armed; /* 1 while the timer is set */
	__u32 ejected[KM_MAX_PRIORITIES]; /* ejected hosts counted in healthy_count, per priority */
	__u64 counters[KM_OD_COUNTERS];
};

/* ---- closing connections to removed endpoints (drain.bpf.c, issue 17) ---- */

/* km_drain value, keyed by km_host_key {service, backend}: the routed sockets of the service to that
 * backend are closed by the socket iterator; backend_id 0 closes every routed socket of the service. */
struct km_drain {
	__u8 address[16]; /* the backend's, as km_backend: the socket's peer must be it (ids get reused) */
	__u16 port;       /* network order */
	__u8 family;      /* KM_AF_INET / KM_AF_INET6 */
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
	__u8 family;       /* KM_AF_INET / KM_AF_INET6 */
	__u8 pad[3];
};

/* ---- acceleration and telemetry ---- */

/* Acceleration rules: two banks of KM_ACCEL_MAX_RULES in km_accel_rules; user space fills the idle
 * bank, then flips km_accel_config.rule_bank, so a connection never sees half a rule set. */
#define KM_ACCEL_MAX_RULES 64

#define KM_ACCEL_MATCH_IP (1 << 0)
#define KM_ACCEL_MATCH_PORT (1 << 1)
#define KM_ACCEL_MATCH_UID (1 << 2)
#define KM_ACCEL_MATCH_GID (1 << 3)

#define KM_ACCEL_ACCEPT 1
#define KM_ACCEL_RETURN 2

struct km_accel_rule {
	__u8 matches;    /* KM_ACCEL_MATCH_* bits; a match not set matches anything */
	__u8 action;     /* KM_ACCEL_ACCEPT or KM_ACCEL_RETURN */
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

/* One end of a TCP connection seen from that socket; IPv4-mapped IPv6 is folded to IPv4 so both
 * ends of a dual-stack connection build matching keys. Ports in host order. */
struct km_sock_key {
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
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

#define KM_ACCEL_SOCK_OWNER_KNOWN (1 << 0)
#define KM_ACCEL_SOCK_ACCELERATED (1 << 1) /* in the sockhash */
#define KM_ACCEL_SOCK_REFUSED (1 << 2)     /* local, but the rules said no */
#define KM_ACCEL_SOCK_FELL_BACK (1 << 3)   /* a message took the stack: never redirect again (byte order) */

/* Per-socket acceleration state (sk_storage, cloned from a listener onto the sockets it accepts). */
struct km_accel_sock {
	__u32 uid;
	__u32 gid;
	__u32 state; /* KM_ACCEL_SOCK_* */
	__u32 pad;
	__u64 bytes_out; /* bytes this socket sent through the sockmap, not seen by TCP's counters */
};

/* Indexes of the per-CPU km_accel_counters array. */
#define KM_ACCEL_SOCKETS_INSERTED 0
#define KM_ACCEL_MSGS_REDIRECTED 1
#define KM_ACCEL_REDIRECT_FAILURES 2
#define KM_ACCEL_BYTES_REDIRECTED 3
#define KM_ACCEL_SOCKETS_REFUSED 4
#define KM_ACCEL_INSERT_FAILURES 5
#define KM_ACCEL_MSGS_FALLBACK 6 /* passed to the stack after a fallback or with acceleration off */
#define KM_ACCEL_COUNTER_MAX 8

/* Per rule slot of km_accel_rules (same index), per CPU: what each rule decided. A connection is
 * counted once, by its connecting socket, when it is established. */
struct km_accel_rule_stats {
	__u64 matched;     /* the rule's matches held (rules after a matching RETURN are not evaluated) */
	__u64 accelerated; /* the first matching ACCEPT, when no RETURN matched */
	__u64 refused;     /* the first matching RETURN */
};

/* ---- capture of redirected messages (kernmesh capture) ---- */

/* km_capture_config.match: filters that must all hold for a connection's messages to be copied. */
#define KM_CAPTURE_MATCH_PORT (1 << 0)    /* either end's port is `port` */
#define KM_CAPTURE_MATCH_IP (1 << 1)      /* either end's address is in addr/prefix_len */
#define KM_CAPTURE_MATCH_SERVICE (1 << 2) /* either end is in km_capture_endpoints with this bit */
#define KM_CAPTURE_MATCH_POD (1 << 3)     /* either end is in km_capture_endpoints with this bit */

#define KM_CAPTURE_MAX_SNAPLEN 65535

struct km_capture_config {
	__u32 enabled; /* the only thing sk_msg reads when capture is off */
	__u32 snaplen;
	__u32 match;   /* KM_CAPTURE_MATCH_* */
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
#define KM_CAPTURE_MESSAGES 0
#define KM_CAPTURE_BYTES 1
#define KM_CAPTURE_LOST_RATE 2  /* over max_messages_per_sec */
#define KM_CAPTURE_LOST_BYTES 3 /* over max_bytes_per_sec */
#define KM_CAPTURE_LOST_RING 4  /* ring buffer full */
#define KM_CAPTURE_LOST_PULL 5  /* the message could not be linearised for copying */
#define KM_CAPTURE_COUNTER_MAX 8

struct km_telemetry_config {
	__u32 enabled;
	__u32 pad;
};

#define KM_CONN_OPEN 1
#define KM_CONN_CLOSE 2

#define KM_DIR_OUTBOUND 1 /* this socket connected */
#define KM_DIR_INBOUND 2  /* this socket was accepted */

#define KM_END_NONE 0
#define KM_END_CLOSED 1  /* FIN handshake */
#define KM_END_ABORTED 2 /* reset or timed out before an orderly close */

#define KM_CONN_F_REWRITTEN (1 << 0)   /* connect() destination was rewritten: orig_* and service_id set */
#define KM_CONN_F_ACCELERATED (1 << 1) /* some bytes went through the sockmap */

/* One ring-buffer record per connection open and close. */
struct km_conn_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns() */
	__u64 cookie;       /* socket cookie: pairs an open with its close */
	__u64 cgroup_id;
	__u64 bytes_sent;     /* payload bytes, close only */
	__u64 bytes_received; /* payload bytes, close only */
	__u64 duration_ns;    /* close only */
	__u32 pid;            /* tgid that created the socket (the listener's for accepted sockets) */
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 orig_ip[4]; /* destination the application asked for, when rewritten */
	__u16 local_port;
	__u16 remote_port;
	__u16 orig_port;
	__u8 type;      /* KM_CONN_OPEN / KM_CONN_CLOSE */
	__u8 direction; /* KM_DIR_* */
	__u32 service_id;
	__u32 backend_id;
	__u32 srtt_us;
	__u32 total_retrans;
	__u8 end_reason;  /* KM_END_* */
	__u8 flags;       /* KM_CONN_F_* */
	__u8 orig_family; /* of orig_ip: KM_AF_INET / KM_AF_INET6 (routing's values) */
	__u8 pad;
	__u32 connect_us; /* outbound: connect() (SYN sent) to established, in microseconds */
};

/* Per-socket telemetry state (sk_storage). */
#define KM_TELE_TRACKED (1 << 0)
#define KM_TELE_FIN_IN (1 << 1)        /* the peer's FIN was received: bytes_received counts it */
#define KM_TELE_FIN_OUT_ACKED (1 << 2) /* our FIN was acked: bytes_acked counts it */
#define KM_TELE_CONNECTING (1 << 3)    /* connect() sent the SYN: open_ns is the connect time */

struct km_tele_sock {
	__u64 open_ns;
	__u64 cgroup_id;
	__u64 base_bytes_acked;    /* at establishment: the SYN is not payload */
	__u64 base_bytes_received;
	__u32 pid;
	__u32 flags;     /* KM_TELE_* */
	__u32 direction; /* KM_DIR_* */
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
#define KM_TELE_EVENTS_LOST 0
#define KM_TELE_EVENTS_SENT 1
#define KM_TELE_COUNTER_MAX 4

#endif /* KERNMESH_H */
