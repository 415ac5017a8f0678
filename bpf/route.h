/* Structs and constants of route.bpf.o (connect4/6, getpeername, sockops, waypoints, outlier
 * detection) shared with user space: src/dataplane/codec.ts declares each struct and enum, and the
 * agent checks them against this object's BTF at start. Addresses are 16 bytes (kernmesh.h); ports
 * in network order, as the kernel hands them to sock_addr programs. */
#ifndef KERNMESH_ROUTE_H
#define KERNMESH_ROUTE_H

#include <linux/bpf.h> /* struct bpf_timer */
#include "kernmesh.h"

enum km_route_limits {
	KM_MAX_PRIORITIES = 8,
	/* LEAST_REQUEST: active_request_bias in 16.16 fixed point; the kernel computes 0 and 1.0 only. */
	KM_LR_BIAS_ONE = 65536,
	/* LEAST_REQUEST's weighted mode scans the whole group: at most this many endpoints in it. */
	KM_LR_MAX_WEIGHTED = 1024,
	KM_SERVICE_NAME_LEN = 256,
};

/* km_service.kind */
enum km_service_kind {
	KM_KIND_ENDPOINTS = 0,
	KM_KIND_PASSTHROUGH = 1,
	KM_KIND_BLACKHOLE = 2,
	KM_KIND_WAYPOINT = 3,
};

/* km_service.lb_policy */
enum km_lb_policy {
	KM_LB_RANDOM = 0,
	KM_LB_ROUND_ROBIN = 1,
	KM_LB_LEAST_REQUEST = 2,
	KM_LB_MAGLEV = 3,
};

/* Counter reasons: index = service_id * KM_REASON_COUNT + reason in km_counters (per CPU). */
enum km_reason {
	KM_REASON_ROUTED = 0,
	KM_REASON_NO_ENDPOINT = 1,
	KM_REASON_OVERFLOW = 2,
	KM_REASON_PASSTHROUGH = 3,
	KM_REASON_BLACKHOLE = 4,
	KM_REASON_WAYPOINT = 5,
	KM_REASON_MAP_MISS = 6,
	KM_REASON_COUNT = 8,
};

/* km_service.flags */
enum km_service_flag {
	KM_SVC_OUTLIER = 0x01,            /* outlier detection: connect failures counted per host, ejected hosts skipped */
	KM_SVC_SPLIT_LOCAL_ORIGIN = 0x02, /* outlier_detection.split_external_local_origin_errors */
	KM_SVC_ALWAYS_EJECT_ONE = 0x04,   /* outlier_detection.always_eject_one_host */
	KM_SVC_FAIL_ON_PANIC = 0x08,      /* zone_aware_lb_config.fail_traffic_on_panic: refuse rather than use every host */
};

/* km_slot_key.priority: this bit marks a priority's own panic slots and Maglev table. */
enum km_slot_priority {
	KM_PANIC_TABLE = 0x08,
};

/* km_host_state.counted_priority when the ejection holds no km_outlier.ejected[] slot. */
enum km_host_counted {
	KM_HOST_UNCOUNTED = 0xff,
};

/* Indexes of km_outlier.counters, named as Envoy's outlier_detection stats. */
enum km_outlier_counter {
	KM_OD_EJECTIONS_TOTAL = 0,       /* deprecated ejections_total: detected 5xx, within max % */
	KM_OD_ENFORCED_TOTAL = 1,        /* ejections_enforced_total */
	KM_OD_OVERFLOW = 2,              /* ejections_overflow */
	KM_OD_DETECTED_5XX = 3,          /* ejections_detected_consecutive_5xx */
	KM_OD_ENFORCED_5XX = 4,          /* ejections_enforced_consecutive_5xx */
	KM_OD_DETECTED_GATEWAY = 5,      /* ejections_detected_consecutive_gateway_failure */
	KM_OD_ENFORCED_GATEWAY = 6,      /* ejections_enforced_consecutive_gateway_failure */
	KM_OD_DETECTED_LOCAL_ORIGIN = 7, /* ejections_detected_consecutive_local_origin_failure */
	KM_OD_ENFORCED_LOCAL_ORIGIN = 8, /* ejections_enforced_consecutive_local_origin_failure */
	KM_OD_COUNTERS = 10,
};

/* km_frontends key: what connect() asked for. */
struct km_frontend_key {
	__u8 address[16];
	__u16 port;
	__u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;   /* enum km_family */
};

struct km_frontend {
	__u32 service_id;
};

/* km_services value. Slots and Maglev tables are double-buffered: `generation` names the live
 * half, so the writer fills the other half and switches the service with this one update.
 * Priority p's slots are keyed priority p: its healthy hosts, slot_count[p] of them. In panic a
 * connect picks among every non-draining host: when panic_separate has bit p, from the
 * panic_slot_count[p] slots (and Maglev table) keyed priority p | KM_PANIC_TABLE, each host with its
 * own weight (Envoy ignores locality weights in panic); else from the healthy slots themselves. */
struct km_service {
	__u8 kind;      /* enum km_service_kind */
	__u8 lb_policy; /* enum km_lb_policy */
	__u8 generation;
	__u8 waypoint_family;
	__u32 max_connections; /* 0: no cap */
	__u16 slot_count[KM_MAX_PRIORITIES]; /* healthy slots per priority group */
	__u16 maglev_size;                   /* entries per Maglev table (prime), 0 unless MAGLEV */
	__u16 waypoint_port;
	__u8 waypoint_address[16];
	__u8 lr_weighted;       /* LEAST_REQUEST: bit p set when group p's weights differ (weighted mode) */
	__u8 lr_panic_weighted; /* the same for the panic slots */
	__u8 flags;             /* enum km_service_flag */
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

/* Key of km_slots (dense, weight-expanded endpoint slots) and km_maglev (lookup tables). */
struct km_slot_key {
	__u32 service_id;
	__u16 index;
	__u8 priority; /* | KM_PANIC_TABLE for the panic slots */
	__u8 generation;
};

struct km_slot {
	__u32 backend_id;
	__u32 weight;
};

struct km_backend {
	__u8 address[16];
	__u16 port;
	__u8 family; /* enum km_family */
	__u8 pad;
};

/* km_svc_names value: the service's name, so ids survive agent restarts. NUL-padded. */
struct km_service_name {
	char name[KM_SERVICE_NAME_LEN];
};

/* ---- outlier detection (issue 17) ---- */

/* km_members value (keyed by km_host_key): written by user space for services with outlier detection. */
struct km_member {
	__u8 priority;
	__u8 healthy; /* EDS healthy or unknown: counted in the priority's healthy_count */
	__u16 pad;
};

/* km_hosts value: one per (service, backend) that failed a connect; written by the kernel only,
 * removed by the sweep once it has nothing left to remember. */
struct km_host_state {
	__u64 ejected_ns;   /* bpf_ktime_get_ns() at the last ejection */
	__u64 unejected_ns; /* at the last return, 0 before the first */
	__u32 ejected;      /* 1 while ejected, 2 while an ejection is written; compare-and-swap only */
	__u32 counted_priority; /* the km_outlier.ejected[] slot this ejection holds, KM_HOST_UNCOUNTED if none */
	__u32 consecutive_5xx;
	__u32 consecutive_gateway;
	__u32 consecutive_local_origin;
	__u32 backoff;       /* Envoy's ejection time multiplier */
	__u32 num_ejections; /* how many times ejected */
	__u32 jitter_ms;     /* of the current ejection */
	__u64 failures;      /* connect failures counted, ever */
};

/* km_outlier value, per service id: written by the kernel only (user space zeroes it when an id is
 * given to another service). The sweep timer runs every interval while a host is ejected or backing off. */
struct km_outlier {
	struct bpf_timer timer;
	__u32 active;      /* ejections_active */
	__u32 sweep_armed; /* 1 while the timer is set */
	__u32 ejected[KM_MAX_PRIORITIES]; /* ejected hosts counted in healthy_count, per priority */
	__u64 counters[KM_OD_COUNTERS];   /* enum km_outlier_counter */
};

struct km_route_enums {
	enum km_route_limits limits;
	enum km_service_kind kind;
	enum km_lb_policy lb_policy;
	enum km_reason reason;
	enum km_service_flag service_flag;
	enum km_slot_priority slot_priority;
	enum km_host_counted host_counted;
	enum km_outlier_counter outlier_counter;
};
KM_BTF_ENUMS(km_route_enums)

#endif /* KERNMESH_ROUTE_H */
