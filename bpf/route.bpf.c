// SPDX-License-Identifier: GPL-2.0
/* In-kernel service routing: connect4/6 pick a backend for (VIP, port, protocol) and rewrite the
 * destination; getpeername4/6 report the VIP back; sockops keeps active connection counts;
 * sk_msg prefixes the waypoint TLV to a socket's first message. Maps are written by src/dataplane. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "route.h"
#include "sock_route_map.h"

#define ECONNREFUSED 111
/* A pick that races with a writer (slot or backend just removed) re-reads the service. */
#define KM_PICK_ATTEMPTS 3

/* Sizes below are defaults; the agent overrides them at load time (map sizes from flags). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_frontend_key);
	__type(value, struct km_frontend);
} km_frontends SEC(".maps");

/* Hash maps are NO_PREALLOC so a replaced value is freed after an RCU grace period: a connect
 * that already holds the old value reads it whole (preallocated elements are recycled at once). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_service);
} km_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_service_name);
} km_svc_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct km_slot_key);
	__type(value, struct km_slot);
} km_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct km_slot_key);
	__type(value, struct km_slot);
} km_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct km_backend);
} km_backends SEC(".maps");

/* Active connections per backend id and per service id (ids are dense, below max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} km_backend_conn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} km_service_conn SEC(".maps");

/* Round-robin cursor per service, shared by all CPUs and advanced atomically, so consecutive
 * connects of a service take consecutive slots whichever CPU they run on (a per-CPU cursor spreads
 * evenly only in the long run). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} km_rr SEC(".maps");

/* index = service_id * KM_REASON_COUNT + reason; service 0 collects what has no service. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16384 * KM_REASON_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} km_counters SEC(".maps");

/* Sockets whose first message still needs the waypoint TLV; km_waypoint_msg is attached to it. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} km_waypoint_sk SEC(".maps");

/* Outlier detection: per (service, backend) detector state, created by the first failed connect and
 * removed by the sweep once the host has nothing left to remember. connect4 reads it only while the
 * service has an ejection (km_outlier.active), so a healthy service costs no lookup here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct km_host_key);
	__type(value, struct km_host_state);
} km_hosts SEC(".maps");

/* A host's priority and EDS health in a service with outlier detection (user space writes it):
 * which priority an ejection counts against, and whether the host is still the service's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct km_host_key);
	__type(value, struct km_member);
} km_members SEC(".maps");

/* Per service: ejections active (per priority), Envoy's outlier counters and the sweep timer. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_outlier);
} km_outlier SEC(".maps");

static __always_inline void count(__u32 service_id, __u32 reason)
{
	__u32 idx = service_id * KM_REASON_COUNT + reason;
	__u64 *c = bpf_map_lookup_elem(&km_counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline __u32 mix32(__u32 h)
{
	/* murmur3's finaliser: spreads nearby client addresses over the whole Maglev table */
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Tries at an ejected host before a connect scans the whole group for the others. */
#define KM_EJECT_TRIES 4

/* Where a connect picks within one priority: the healthy slots, or in panic every host's. */
struct group {
	__u32 service_id;
	__u8 prio;
	__u8 table_prio; /* km_slot_key.priority of the slots (and of the Maglev table) to read */
	__u8 weighted;   /* LEAST_REQUEST weighted mode for these slots */
	__u8 avoid;      /* skip ejected hosts (not in panic, and the service has an ejection) */
	__u32 count;     /* slots */
	__u8 generation;
};

static __always_inline struct km_slot *group_slot(const struct group *g, __u32 i)
{
	struct km_slot_key key = {
		.service_id = g->service_id,
		.index = i,
		.priority = g->table_prio,
		.generation = g->generation,
	};
	return bpf_map_lookup_elem(&km_slots, &key);
}

static __always_inline int host_ejected(__u32 service_id, __u32 backend_id)
{
	struct km_host_key k = { .service_id = service_id, .backend_id = backend_id };
	struct km_host_state *h = bpf_map_lookup_elem(&km_hosts, &k);

	return h && h->ejected;
}

static __always_inline __u32 backend_conns(__u32 backend_id)
{
	__u32 *n = bpf_map_lookup_elem(&km_backend_conn, &backend_id);

	return n ? *n : 0;
}

/* SplitMix64 (Steele et al.): one draw per endpoint without a helper call each (the helper cost
 * about 35 ns an endpoint, bench/least-request.ts); every output bit is usable. */
static __always_inline __u64 splitmix64(__u64 *state)
{
	__u64 z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static __always_inline __u64 seed64(void)
{
	return ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
}

/* LEAST_REQUEST with unequal weights, as Envoy defines it: each endpoint weighs
 * weight / (active + 1)^bias at this connect, and one is drawn in proportion (Envoy keeps an EDF
 * schedule over the same weights: same expected shares, docs/translation.md). One pass, so every
 * count is read once: the draw keeps endpoint i with probability eff_i / (eff_0 + ... + eff_i).
 * The fallback scan past ejected hosts is the same draw with every weight 1 and no bias. */
struct lr_draw {
	struct group g;
	__u32 bias;
	__u32 backend_id;
	__u64 total;
	__u64 rng; /* splitmix64 state, seeded from bpf_get_prandom_u32 once per connect */
	int miss;
	int uniform; /* every slot weighs 1 (the fallback scan) */
};

static long lr_draw_step(__u32 index, void *ctx)
{
	struct lr_draw *d = ctx;
	struct km_slot *s = group_slot(&d->g, index);
	__u64 eff, r;

	if (!s) {
		d->miss = 1;
		return 1;
	}
	if (d->g.avoid && host_ejected(d->g.service_id, s->backend_id))
		return 0;
	if (d->uniform) {
		eff = 1;
	} else {
		/* 32 fraction bits: a group's weights sum to at most 2^16 (plan.ts), so the total stays
		 * below 2^48 and the modulo skews a draw by under 2^-16; the quotient rounds off under 2^-32 */
		eff = (__u64)s->weight << 32;
		if (d->bias == KM_LR_BIAS_ONE)
			eff /= (__u64)backend_conns(s->backend_id) + 1;
	}
	if (!eff)
		return 0;
	d->total += eff;
	r = splitmix64(&d->rng);
	if (r % d->total < eff)
		d->backend_id = s->backend_id;
	return 0;
}

/* A draw over the whole group: LEAST_REQUEST's weighted mode, or (uniform) one slot among those
 * whose host is not ejected. Returns the backend id, 0 when none qualifies, -1 on a writer race.
 * The pick functions are global (not static) so the verifier checks each once, not per call site. */
__noinline long group_draw(const struct group *g, __u32 bias, int uniform)
{
	struct lr_draw d = {
		.bias = bias,
		.uniform = uniform,
	};
	__u32 count;

	if (!g)
		return -1;
	d.g = *g;
	d.rng = seed64();
	count = g->count;
	/* plan.ts refuses larger groups; the clamp only bounds the loop for the verifier's sake */
	if (count > 4096)
		count = 4096;
	bpf_loop(count, lr_draw_step, &d, 0);
	if (d.miss)
		return -1;
	return d.backend_id;
}

/* The slot at i, unless its host is ejected (then 0); -1 when the slot is missing. */
static __always_inline long usable(const struct group *g, __u32 i)
{
	struct km_slot *s = group_slot(g, i);

	if (!s)
		return -1;
	if (g->avoid && host_ejected(g->service_id, s->backend_id))
		return 0;
	return s->backend_id;
}

/* A uniform slot whose host is not ejected: a few random tries, then the scan. */
static __always_inline long random_usable(const struct group *g)
{
	long b;

#pragma unroll
	for (int i = 0; i < KM_EJECT_TRIES; i++) {
		b = usable(g, bpf_get_prandom_u32() % g->count);
		if (b)
			return b;
	}
	return group_draw(g, 0, 1);
}

/* One endpoint of the group, per the service's policy. Returns the backend id, 0 when the group
 * has no usable host, or -1 when a map entry is missing (writer race). */
__noinline long pick_in_group(const struct group *g, __u8 policy, __u32 lr_bias)
{
	long a, b;
	__u32 idx;

	if (!g)
		return -1;
	if (!g->count)
		return 0;
	switch (policy) {
	case KM_LB_ROUND_ROBIN: {
		__u32 sid = g->service_id;
		__u32 *cursor = bpf_map_lookup_elem(&km_rr, &sid);

		if (!cursor)
			return -1;
		idx = __sync_fetch_and_add(cursor, 1);
		/* an ejected host's turn goes to the next slots of the same turn, as Envoy's rotation
		 * over the hosts that are left would */
#pragma unroll
		for (int i = 0; i < KM_EJECT_TRIES; i++) {
			a = usable(g, (idx + i) % g->count);
			if (a)
				return a;
		}
		return group_draw(g, 0, 1);
	}
	case KM_LB_LEAST_REQUEST:
		/* one slot per endpoint; unequal weights take Envoy's weighted mode */
		if (g->weighted)
			return group_draw(g, lr_bias, 0);
		/* equal weights: the better of two random choices (Envoy's P2C; ties: the first) */
		a = random_usable(g);
		b = random_usable(g);
		if (a <= 0 || b <= 0)
			return a <= 0 ? a : b;
		return backend_conns(b) < backend_conns(a) ? b : a;
	case KM_LB_MAGLEV:
		return -2; /* the caller reads the table */
	default:
		return random_usable(g);
	}
}

/* Maglev: the client's table entry; an ejected host's clients probe the next entries, so the other
 * clients keep theirs (what rebuilding the table without the host does, near enough). */
__noinline long pick_maglev(const struct group *g, __u16 size, __u32 client_hash)
{
	struct km_slot_key key = {};
	struct km_slot *s;

	if (!g || !size)
		return -1;
	key.service_id = g->service_id;
	key.priority = g->table_prio;
	key.generation = g->generation;
	key.index = client_hash % size;
#pragma unroll
	for (int i = 0; i < KM_EJECT_TRIES; i++) {
		s = bpf_map_lookup_elem(&km_maglev, &key);
		if (!s)
			return -1;
		if (!g->avoid || !host_ejected(g->service_id, s->backend_id))
			return s->backend_id;
		key.index = key.index + 1 == size ? 0 : key.index + 1;
	}
	/* every entry tried was ejected: one of the group's other hosts, uniformly by slot */
	return group_draw(g, 0, 1);
}

/* Envoy's priority load (LoadBalancerBase::recalculatePerPriorityState and ...Panic), from the
 * hosts per priority with the ejected ones taken out of the healthy: a level's health is
 * min(100, overprovisioning × healthy / hosts); the levels take load in order up to their health,
 * scaled up when their sum is under 100; below the panic threshold a level uses every host, and
 * when every level is in panic the load follows the host counts. Only runs while a host is ejected:
 * otherwise the service value carries the same result, computed by user space (plan.ts). Each
 * stage is a bpf_loop over the levels, so the verifier walks one level, not every combination. */
struct loads {
	__u32 hosts[KM_MAX_PRIORITIES];
	__u32 healthy[KM_MAX_PRIORITIES];
	__u32 health[KM_MAX_PRIORITIES];
	__u32 load[KM_MAX_PRIORITIES];
	__u32 overprovisioning;
	__u32 threshold;
	__u32 sum;      /* of health, then of hosts */
	__u32 norm;     /* normalized total health */
	__u32 left;     /* load not yet given */
	__u32 first;    /* first level with health (or hosts), KM_MAX_PRIORITIES if none */
	__u32 mask;     /* levels in panic */
};

static long loads_health(__u32 i, void *ctx)
{
	struct loads *l = ctx;
	__u32 p = i & (KM_MAX_PRIORITIES - 1), t = l->hosts[p], h = t ? l->overprovisioning * l->healthy[p] / t : 0;

	l->health[p] = h > 100 ? 100 : h;
	l->sum += l->health[p];
	return 0;
}

static long loads_distribute(__u32 i, void *ctx)
{
	struct loads *l = ctx;
	__u32 p = i & (KM_MAX_PRIORITIES - 1), x = l->health[p] * 100 / l->norm;

	if (l->first == KM_MAX_PRIORITIES && l->health[p])
		l->first = p;
	if (x > l->left)
		x = l->left;
	l->load[p] = x;
	l->left -= x;
	return 0;
}

static long loads_panic(__u32 i, void *ctx)
{
	struct loads *l = ctx;
	__u32 p = i & (KM_MAX_PRIORITIES - 1), t = l->hosts[p];

	if (t ? 100 * l->healthy[p] < l->threshold * t : l->threshold > 0)
		l->mask |= 1 << p;
	return 0;
}

static long loads_by_hosts(__u32 i, void *ctx)
{
	struct loads *l = ctx;
	__u32 p = i & (KM_MAX_PRIORITIES - 1), x = 100 * l->hosts[p] / l->sum;

	if (l->first == KM_MAX_PRIORITIES && l->hosts[p])
		l->first = p;
	l->load[p] = x;
	l->left -= x;
	return 0;
}

struct prio_load {
	__u32 ejected[KM_MAX_PRIORITIES]; /* in: km_outlier.ejected (the map value holds a timer, which
					   * a global function may not be handed) */
	__u8 load[KM_MAX_PRIORITIES];     /* out */
	__u8 panic_mask;
};

__noinline int loads_with_ejections(const struct km_service *svc, struct prio_load *out)
{
	struct loads l = {
		.left = 100,
		.first = KM_MAX_PRIORITIES,
	};
	__u32 hosts = 0;

	if (!svc || !out)
		return -1;
	l.overprovisioning = svc->overprovisioning;
	l.threshold = svc->panic_threshold;
#pragma unroll
	for (int p = 0; p < KM_MAX_PRIORITIES; p++) {
		__u32 h = svc->healthy_count[p], e = out->ejected[p];

		l.hosts[p] = svc->host_count[p];
		l.healthy[p] = e < h ? h - e : 0;
		hosts += l.hosts[p];
	}
	bpf_loop(KM_MAX_PRIORITIES, loads_health, &l, 0);
	l.norm = l.sum < 100 ? l.sum : 100;
	if (l.norm == 0 && l.threshold == 0) {
		/* nothing healthy and panic off: the first level, whose healthy hosts are none */
		l.load[0] = 100;
	} else {
		if (l.norm) {
			bpf_loop(KM_MAX_PRIORITIES, loads_distribute, &l, 0);
			if (l.left && l.first < KM_MAX_PRIORITIES)
				l.load[l.first & (KM_MAX_PRIORITIES - 1)] += l.left;
		}
		if (l.norm < 100)
			bpf_loop(KM_MAX_PRIORITIES, loads_panic, &l, 0);
		if (l.mask == 0xff && hosts) {
			/* every level in panic: load by host count, the remainder to the first non-empty */
			l.sum = hosts;
			l.left = 100;
			l.first = KM_MAX_PRIORITIES;
			bpf_loop(KM_MAX_PRIORITIES, loads_by_hosts, &l, 0);
			if (l.first < KM_MAX_PRIORITIES)
				l.load[l.first & (KM_MAX_PRIORITIES - 1)] += l.left;
		}
	}
#pragma unroll
	for (int p = 0; p < KM_MAX_PRIORITIES; p++)
		out->load[p] = l.load[p];
	out->panic_mask = l.mask;
	return 0;
}

/* The priority a connect goes to (Envoy's choosePriority: a draw against the loads), -1 when
 * no level has load. */
static __always_inline int choose_priority(const __u8 *load)
{
	__u32 r = bpf_get_prandom_u32() % 100, acc = 0;

#pragma unroll
	for (int p = 0; p < KM_MAX_PRIORITIES; p++) {
		acc += load[p];
		if (r < acc)
			return p;
	}
	return -1;
}

/* One endpoint of the service: a priority by Envoy's loads (the service value's, or recomputed
 * while hosts are ejected), then a host of that level per the policy. Returns the backend id, 0
 * when there is none, or -1 when a map entry is missing (writer race). */
static __always_inline long pick_endpoint(__u32 service_id, const struct km_service *svc, __u32 client_hash)
{
	struct prio_load recomputed;
	__u8 panic_mask = svc->panic_mask;
	const __u8 *load = svc->load;
	struct group g = { .service_id = service_id, .generation = svc->generation };
	int prio, in_panic;

	if (svc->flags & KM_SVC_OUTLIER) {
		struct km_outlier *od = bpf_map_lookup_elem(&km_outlier, &service_id);

		if (od && od->active) {
#pragma unroll
			for (int p = 0; p < KM_MAX_PRIORITIES; p++)
				recomputed.ejected[p] = od->ejected[p];
		}
		if (od && od->active && loads_with_ejections(svc, &recomputed) == 0) {
			load = recomputed.load;
			panic_mask = recomputed.panic_mask;
			g.avoid = 1;
		}
	}
	/* all on the first level and it is not in panic: the common case takes no draw */
	if (load[0] == 100 && !(panic_mask & 1))
		prio = 0;
	else
		prio = choose_priority(load);
	if (prio < 0)
		return 0;
	prio &= KM_MAX_PRIORITIES - 1;
	g.prio = prio;
	g.table_prio = prio;
	in_panic = (panic_mask >> prio) & 1;
	if (in_panic) {
		if (svc->flags & KM_SVC_FAIL_ON_PANIC)
			return 0;
		g.avoid = 0; /* in panic Envoy uses every host, ejected or not */
		g.count = svc->panic_slot_count[prio];
		g.weighted = (svc->lr_panic_weighted >> prio) & 1;
		if ((svc->panic_separate >> prio) & 1)
			g.table_prio = prio | KM_PANIC_TABLE;
	} else {
		g.count = svc->slot_count[prio];
		g.weighted = (svc->lr_weighted >> prio) & 1;
	}
	if (svc->lb_policy == KM_LB_MAGLEV) {
		if (!g.count)
			return 0;
		return pick_maglev(&g, svc->maglev_size, client_hash);
	}
	return pick_in_group(&g, svc->lb_policy, svc->lr_bias);
}

/* Where a connect goes, decided from the frontend key; the caller applies it to its family. */
struct decision {
	int verdict;     /* 1: allow (maybe rewritten), 0: refuse with ECONNREFUSED */
	int rewrite;     /* destination to be replaced by address/port */
	__u32 service_id;
	__u32 backend_id;
	__u8 family;
	__u8 flags;      /* km_sock_route flags to record */
	__u16 port;
	__u8 address[16];
};

static __always_inline void route(const struct km_frontend_key *fk, __u32 client_hash, struct decision *d)
{
	struct km_frontend *fe = bpf_map_lookup_elem(&km_frontends, fk);
	const struct km_service *svc = 0;
	__u32 id;

	d->verdict = 1;
	d->rewrite = 0;
	if (!fe)
		return; /* not a service VIP: untouched */
	id = fe->service_id;
	d->service_id = id;

	for (int attempt = 0; attempt < KM_PICK_ATTEMPTS; attempt++) {
		const struct km_backend *b;
		long backend_id;

		svc = bpf_map_lookup_elem(&km_services, &id);
		if (!svc)
			break;
		switch (svc->kind) {
		case KM_KIND_PASSTHROUGH:
			count(id, KM_REASON_PASSTHROUGH);
			d->flags = KM_SOCK_PASSTHROUGH;
			return;
		case KM_KIND_BLACKHOLE:
			count(id, KM_REASON_BLACKHOLE);
			d->verdict = 0;
			return;
		case KM_KIND_WAYPOINT:
			count(id, KM_REASON_WAYPOINT);
			d->rewrite = 1;
			d->family = svc->waypoint_family;
			d->port = svc->waypoint_port;
			__builtin_memcpy(d->address, svc->waypoint_address, 16);
			d->flags = KM_SOCK_ROUTED | KM_SOCK_WAYPOINT_PENDING;
			return;
		}
		if (svc->max_connections) {
			__u32 *active = bpf_map_lookup_elem(&km_service_conn, &id);

			if (active && *active >= svc->max_connections) {
				count(id, KM_REASON_OVERFLOW);
				d->verdict = 0;
				return;
			}
		}
		backend_id = pick_endpoint(id, svc, client_hash);
		if (backend_id == 0) {
			count(id, KM_REASON_NO_ENDPOINT);
			d->verdict = 0;
			return;
		}
		if (backend_id < 0)
			continue;
		b = bpf_map_lookup_elem(&km_backends, &backend_id);
		if (!b)
			continue;
		d->rewrite = 1;
		d->backend_id = backend_id;
		d->family = b->family;
		d->port = b->port;
		__builtin_memcpy(d->address, b->address, 16);
		d->flags = KM_SOCK_ROUTED;
		count(id, KM_REASON_ROUTED);
		return;
	}
	/* the frontend names a service or slot that is not there: refuse rather than leak the VIP */
	count(id, KM_REASON_MAP_MISS);
	d->verdict = 0;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const struct km_frontend_key *fk,
				     const struct decision *d)
{
	struct km_sock_route *r;

	if (!d->flags) {
		/* a reconnected UDP socket must not keep a previous route */
		r = bpf_sk_storage_get(&km_sock_route, ctx->sk, 0, 0);
		if (r)
			r->flags = 0;
		return;
	}
	r = bpf_sk_storage_get(&km_sock_route, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!r)
		return;
	__builtin_memcpy(r->orig_address, fk->address, 16);
	r->orig_port = fk->port;
	r->family = fk->family;
	r->flags = d->flags;
	r->service_id = d->service_id;
	r->backend_id = d->backend_id;
}

static __always_inline int refuse(void)
{
	/* kube-proxy's behaviour: ECONNREFUSED, not the EPERM a plain 0 would give (kernel >= 5.18) */
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	struct km_frontend_key fk = {};
	struct decision d = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst = ctx->user_ip4;
	__u32 src = 0;

	if (sk)
		src = sk->src_ip4; /* the bound source address, if the client bound one */
	__builtin_memcpy(fk.address, &dst, 4);
	fk.port = (__u16)ctx->user_port;
	fk.protocol = ctx->protocol;
	fk.family = KM_AF_INET;
	/* unbound sockets have no source yet: the netns stands for the client (one per pod) */
	route(&fk, mix32(src ?: (__u32)bpf_get_netns_cookie(ctx)), &d);
	if (!d.verdict)
		return refuse();
	if (d.rewrite) {
		__u32 addr;

		if (d.family != KM_AF_INET) {
			count(d.service_id, KM_REASON_NO_ENDPOINT);
			return refuse();
		}
		__builtin_memcpy(&addr, d.address, 4);
		ctx->user_ip4 = addr;
		ctx->user_port = d.port;
	}
	remember(ctx, &fk, &d);
	return 1;
}

static __always_inline int is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

SEC("cgroup/connect6")
int km_connect6(struct bpf_sock_addr *ctx)
{
	struct km_frontend_key fk = {};
	struct decision d = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 dst[4], src[4] = {};
	int mapped;

	KM_COPY_IP6(dst, ctx->user_ip6);
	if (sk)
		KM_COPY_IP6(src, sk->src_ip6);
	mapped = is_v4_mapped(dst[0], dst[1], dst[2]);
	fk.port = (__u16)ctx->user_port;
	fk.protocol = ctx->protocol;
	if (mapped) {
		/* v4-mapped destinations take the IPv4 path: same frontends as connect4 */
		__builtin_memcpy(fk.address, &dst[3], 4);
		fk.family = KM_AF_INET;
	} else {
		__builtin_memcpy(fk.address, dst, 16);
		fk.family = KM_AF_INET6;
	}
	{
		__u32 h = src[0] ^ mix32(src[1]) ^ mix32(src[2] + 0x9e3779b9) ^ mix32(src[3] + 0x7f4a7c15);

		if (!(src[0] | src[1] | src[2] | src[3]))
			h = (__u32)bpf_get_netns_cookie(ctx);
		route(&fk, mix32(h), &d);
	}
	if (!d.verdict)
		return refuse();
	if (d.rewrite) {
		if (d.family == KM_AF_INET) {
			__u32 addr;

			__builtin_memcpy(&addr, d.address, 4);
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = addr;
		} else if (!mapped) {
			__u32 a[4];

			__builtin_memcpy(a, d.address, 16);
			KM_COPY_IP6(ctx->user_ip6, a);
		} else {
			/* a v4-mapped socket cannot reach an IPv6 backend */
			count(d.service_id, KM_REASON_NO_ENDPOINT);
			return refuse();
		}
		ctx->user_port = d.port;
	}
	if (mapped)
		d.flags |= d.flags ? KM_SOCK_V4_MAPPED : 0;
	remember(ctx, &fk, &d);
	return 1;
}

SEC("cgroup/getpeername4")
int km_getpeername4(struct bpf_sock_addr *ctx)
{
	struct km_sock_route *r = km_routed_sock(ctx->sk);
	__u32 addr;

	if (r && r->family == KM_AF_INET) {
		__builtin_memcpy(&addr, r->orig_address, 4);
		ctx->user_ip4 = addr;
		ctx->user_port = r->orig_port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int km_getpeername6(struct bpf_sock_addr *ctx)
{
	struct km_sock_route *r = km_routed_sock(ctx->sk);
	__u32 a[4];

	if (!r)
		return 1;
	if (r->family == KM_AF_INET) {
		__builtin_memcpy(&a[3], r->orig_address, 4);
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = a[3];
	} else {
		__builtin_memcpy(a, r->orig_address, 16);
		KM_COPY_IP6(ctx->user_ip6, a);
	}
	ctx->user_port = r->orig_port;
	return 1;
}

static __always_inline void conn_add(void *map, __u32 id, int delta)
{
	__u32 *n = bpf_map_lookup_elem(map, &id);

	if (!n)
		return;
	if (delta < 0 && *n == 0)
		return; /* never wrap below zero (an id reused while old sockets were open) */
	__sync_fetch_and_add(n, delta);
}

/* ---- outlier detection: Envoy's consecutive-failure detector (outlier_detection_impl.cc), with
 * each connect as a result: a refused, unreachable or unanswered connect is LocalOriginConnectFailed
 * or LocalOriginTimeout, an established one LocalOriginConnectSuccessFinal. Without
 * split_external_local_origin_errors both failures count as gateway errors (503, 504) towards
 * consecutive_gateway_failure and consecutive_5xx; with it, towards consecutive_local_origin_failure.
 * Ejection and return happen here, never waiting for user space. ---- */

enum km_ejection_type { KM_EJECT_5XX, KM_EJECT_GATEWAY, KM_EJECT_LOCAL_ORIGIN };

/* The kernel's struct sock, for sk_err only (CO-RE: the offset comes from the running kernel). */
struct sock___km {
	int sk_err;
} __attribute__((preserve_access_index));

static __always_inline void od_count(struct km_outlier *od, int counter)
{
	if (counter >= 0 && counter < KM_OD_COUNTERS)
		__sync_fetch_and_add(&od->counters[counter], 1);
}

static __always_inline __u64 ms_ns(__u32 ms)
{
	return (__u64)ms * 1000000ULL;
}

static int sweep(void *map, __u32 *key, struct km_outlier *od);

/* The sweep timer runs while something is ejected or backing off; whoever ejects makes sure it runs. */
static __always_inline void arm_sweep(struct km_outlier *od, const struct km_service *svc)
{
	if (__sync_val_compare_and_swap(&od->sweep_armed, 0, 1) != 0)
		return;
	bpf_timer_init(&od->timer, &km_outlier, 1 /* CLOCK_MONOTONIC */);
	bpf_timer_set_callback(&od->timer, sweep);
	bpf_timer_start(&od->timer, ms_ns(svc->interval_ms ?: 1), 0);
}

/* max_ejection_percent over the cluster's hosts, as Envoy: 100 × (active + 1) / hosts <= max. */
static __always_inline int may_eject(const struct km_service *svc, __u32 active)
{
	if ((__u64)(active + 1) * 100 <= (__u64)svc->max_ejection_percent * svc->outlier_hosts)
		return 1;
	return (svc->flags & KM_SVC_ALWAYS_EJECT_ONE) && active == 0;
}

/* DetectorImpl::ejectHost: within max_ejection_percent, enforced with the type's percentage. */
static __noinline void eject(__u32 service_id, __u32 backend_id, const struct km_service *svc,
			     struct km_host_state *h, int type)
{
	struct km_host_key key = { .service_id = service_id, .backend_id = backend_id };
	struct km_outlier *od = bpf_map_lookup_elem(&km_outlier, &service_id);
	struct km_member *m;
	__u32 enforcing, a, base, prio;
	__u64 now;
	int reserved = 0;

	if (!od)
		return;
	if (!may_eject(svc, od->active)) {
		od_count(od, KM_OD_OVERFLOW);
		return;
	}
	if (type == KM_EJECT_5XX)
		od_count(od, KM_OD_EJECTIONS_TOTAL); /* Envoy's deprecated counter: detected and within max % */
	enforcing = type == KM_EJECT_5XX ? svc->enforcing_5xx :
		    type == KM_EJECT_GATEWAY ? svc->enforcing_gateway : svc->enforcing_local_origin;
	if (bpf_get_prandom_u32() % 100 >= enforcing)
		return;
	/* 2 claims the host while its ejection is written: the sweep on another CPU unejects only a
	 * host at 1, so it cannot return one whose ejected_ns and slot are not set yet (it did, once a
	 * CI run under load: the slot stayed counted with no host ejected, and active never reached 0) */
	if (__sync_val_compare_and_swap(&h->ejected, 0, 2) != 0)
		return; /* another CPU ejected it */
	/* the active count moves only by compare-and-swap, so racing ejections never pass the cap */
#pragma unroll
	for (int i = 0; i < 8; i++) {
		a = od->active;
		if (!may_eject(svc, a))
			break;
		if (__sync_val_compare_and_swap(&od->active, a, a + 1) == a) {
			reserved = 1;
			break;
		}
	}
	if (!reserved) {
		__sync_lock_test_and_set(&h->ejected, 0);
		od_count(od, KM_OD_OVERFLOW);
		return;
	}
	now = bpf_ktime_get_ns();
	h->ejected_ns = now;
	h->num_ejections += 1;
	h->jitter_ms = svc->max_jitter_ms ? bpf_get_prandom_u32() % (svc->max_jitter_ms + 1) : 0;
	base = svc->base_ejection_ms;
	if ((__u64)h->backoff * base < (__u64)svc->max_ejection_ms + base)
		h->backoff += 1;
	/* a healthy host's ejection takes it out of its priority's health */
	h->counted_priority = KM_HOST_UNCOUNTED;
	m = bpf_map_lookup_elem(&km_members, &key);
	if (m && m->healthy) {
		prio = m->priority & (KM_MAX_PRIORITIES - 1);
		__sync_fetch_and_add(&od->ejected[prio], 1);
		h->counted_priority = prio;
	}
	od_count(od, KM_OD_ENFORCED_TOTAL);
	od_count(od, type == KM_EJECT_5XX ? KM_OD_ENFORCED_5XX :
		     type == KM_EJECT_GATEWAY ? KM_OD_ENFORCED_GATEWAY : KM_OD_ENFORCED_LOCAL_ORIGIN);
	__sync_lock_test_and_set(&h->ejected, 1); /* written: the sweep may return it from now on */
	arm_sweep(od, svc);
}

/* DetectorImpl::onConsecutiveErrorWorker: an ejected host is left as it is; otherwise eject, then
 * reset the counter that fired. */
static __always_inline void consecutive_error(__u32 service_id, __u32 backend_id, const struct km_service *svc,
					      struct km_host_state *h, int type)
{
	struct km_outlier *od;

	if (h->ejected)
		return;
	od = bpf_map_lookup_elem(&km_outlier, &service_id);
	if (od)
		od_count(od, type == KM_EJECT_5XX ? KM_OD_DETECTED_5XX :
			     type == KM_EJECT_GATEWAY ? KM_OD_DETECTED_GATEWAY : KM_OD_DETECTED_LOCAL_ORIGIN);
	eject(service_id, backend_id, svc, h, type);
	if (type == KM_EJECT_5XX)
		h->consecutive_5xx = 0;
	else if (type == KM_EJECT_GATEWAY)
		h->consecutive_gateway = 0;
	else
		h->consecutive_local_origin = 0;
}

/* A connect to the host failed (refused, unreachable, or unanswered for connect_timeout). */
static __noinline void host_failure(__u32 service_id, __u32 backend_id)
{
	struct km_host_key key = { .service_id = service_id, .backend_id = backend_id };
	const struct km_service *svc = bpf_map_lookup_elem(&km_services, &service_id);
	struct km_host_state *h, fresh = { .counted_priority = KM_HOST_UNCOUNTED };

	if (!svc || !(svc->flags & KM_SVC_OUTLIER))
		return;
	if (!bpf_map_lookup_elem(&km_members, &key))
		return; /* no longer one of the service's hosts */
	h = bpf_map_lookup_elem(&km_hosts, &key);
	if (!h) {
		bpf_map_update_elem(&km_hosts, &key, &fresh, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&km_hosts, &key);
		if (!h)
			return;
	}
	__sync_fetch_and_add(&h->failures, 1);
	if (svc->flags & KM_SVC_SPLIT_LOCAL_ORIGIN) {
		if (__sync_fetch_and_add(&h->consecutive_local_origin, 1) + 1 == svc->consecutive_local_origin)
			consecutive_error(service_id, backend_id, svc, h, KM_EJECT_LOCAL_ORIGIN);
		return;
	}
	/* a gateway error (503, 504) counts towards both, the gateway check first (putHttpResponseCode) */
	if (__sync_fetch_and_add(&h->consecutive_gateway, 1) + 1 == svc->consecutive_gateway)
		consecutive_error(service_id, backend_id, svc, h, KM_EJECT_GATEWAY);
	if (__sync_fetch_and_add(&h->consecutive_5xx, 1) + 1 == svc->consecutive_5xx)
		consecutive_error(service_id, backend_id, svc, h, KM_EJECT_5XX);
}

/* A connect to the host was established: the consecutive counts start again. */
static __always_inline void host_success(__u32 service_id, __u32 backend_id)
{
	struct km_host_key key = { .service_id = service_id, .backend_id = backend_id };
	struct km_host_state *h = bpf_map_lookup_elem(&km_hosts, &key);
	const struct km_service *svc;

	if (!h)
		return; /* never failed, or forgotten: nothing to reset */
	svc = bpf_map_lookup_elem(&km_services, &service_id);
	if (svc && (svc->flags & KM_SVC_SPLIT_LOCAL_ORIGIN)) {
		h->consecutive_local_origin = 0;
		return;
	}
	h->consecutive_5xx = 0;
	h->consecutive_gateway = 0;
}

/* One host's turn in the sweep (DetectorImpl::onIntervalTimer for one cluster). */
struct sweep_ctx {
	__u32 service_id;
	__u32 remaining; /* hosts still ejected or backing off: the timer goes on */
	__u64 now;
	const struct km_service *svc; /* NULL: the service is gone */
};

static __always_inline void uneject(struct km_outlier *od, struct km_host_state *h, __u64 now)
{
	__u32 p = h->counted_priority;

	if (__sync_val_compare_and_swap(&h->ejected, 1, 0) != 1)
		return;
	if (od) {
		if (od->active)
			__sync_fetch_and_add(&od->active, -1);
		if (p < KM_MAX_PRIORITIES && od->ejected[p])
			__sync_fetch_and_add(&od->ejected[p], -1);
	}
	h->counted_priority = KM_HOST_UNCOUNTED;
	/* Envoy resets the counters, so a few new failures do not eject the host again at once */
	h->consecutive_5xx = 0;
	h->consecutive_gateway = 0;
	h->consecutive_local_origin = 0;
	h->unejected_ns = now;
}

static long sweep_host(void *map, struct km_host_key *key, struct km_host_state *h, struct sweep_ctx *c)
{
	__u32 sid = c->service_id;
	struct km_outlier *od;
	struct km_member *m;
	const struct km_service *svc = c->svc;
	__u64 ejected_for, interval;

	if (key->service_id != sid)
		return 0;
	od = bpf_map_lookup_elem(&km_outlier, &sid);
	m = svc ? bpf_map_lookup_elem(&km_members, key) : 0;
	if (h->ejected) {
		/* back after min(base × multiplier, max) + jitter; a host that left the service, or whose
		 * priority or EDS health changed, is returned at once so the counts stay its service's */
		ejected_for = svc ? ms_ns(svc->base_ejection_ms) * h->backoff : 0;
		if (svc && ejected_for > ms_ns(svc->max_ejection_ms))
			ejected_for = ms_ns(svc->max_ejection_ms);
		if (!svc || !m ||
		    (h->counted_priority == KM_HOST_UNCOUNTED ? m->healthy :
								(!m->healthy || m->priority != h->counted_priority)) ||
		    ejected_for + ms_ns(h->jitter_ms) <= c->now - h->ejected_ns)
			uneject(od, h, c->now);
	} else if (svc && h->backoff && h->unejected_ns) {
		/* healthy for a whole interval since its return: the multiplier comes down by one */
		interval = ms_ns(svc->interval_ms);
		if (c->now - h->unejected_ns >= interval)
			h->backoff -= 1;
	}
	if (!svc || !m) {
		bpf_map_delete_elem(&km_hosts, key);
		return 0;
	}
	if (h->ejected || h->backoff) {
		c->remaining++;
		return 0;
	}
	/* nothing left to remember: a host that fails again starts afresh, as an unknown one would */
	if (!h->consecutive_5xx && !h->consecutive_gateway && !h->consecutive_local_origin)
		bpf_map_delete_elem(&km_hosts, key);
	return 0;
}

static int sweep(void *map, __u32 *key, struct km_outlier *od)
{
	struct sweep_ctx c = { .service_id = *key, .now = bpf_ktime_get_ns() };
	const struct km_service *svc = bpf_map_lookup_elem(&km_services, key);

	/* cleared first: an ejection from now on either arms the timer itself or is seen below */
	__sync_lock_test_and_set(&od->sweep_armed, 0);
	if (svc && (svc->flags & KM_SVC_OUTLIER))
		c.svc = svc;
	bpf_for_each_map_elem(&km_hosts, sweep_host, &c, 0);
	if (c.remaining && c.svc && __sync_val_compare_and_swap(&od->sweep_armed, 0, 1) == 0)
		bpf_timer_start(&od->timer, ms_ns(c.svc->interval_ms ?: 1), 0);
	return 0;
}

/* The connect's result, once: a failure (err set, or no answer for connect_timeout) or a success. */
static __always_inline void connect_result(struct km_sock_route *r, int failed)
{
	if (r->flags & KM_SOCK_CONNECT_DONE)
		return;
	r->flags |= KM_SOCK_CONNECT_DONE;
	if (failed)
		host_failure(r->service_id, r->backend_id);
	else
		host_success(r->service_id, r->backend_id);
}

static __always_inline int connect_timed_out(const struct km_sock_route *r)
{
	const struct km_service *svc = bpf_map_lookup_elem(&km_services, &r->service_id);
	__u32 now_ms = bpf_ktime_get_ns() / 1000000;

	return svc && now_ms - r->connect_ms >= svc->connect_timeout_ms;
}

/* The socket's pending error: ECONNREFUSED after a RST, EHOSTUNREACH and the like after ICMP,
 * ETIMEDOUT when the SYN retries ran out; 0 when the application closed it itself. */
static __always_inline int sock_error(struct bpf_sock *sk)
{
	struct sock___km *s = (void *)bpf_skc_to_tcp_sock(sk);

	return s ? s->sk_err : 0;
}

/* Other sockops programs on the same cgroup may set callback flags too: always OR, never replace. */
SEC("sockops")
int km_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct km_sock_route *r;
	const struct km_service *svc;
	__u32 sid;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* the SYN leaves now: with outlier detection, watch the connect's fate */
		r = km_routed_sock(sk);
		if (!r || !r->backend_id)
			break;
		sid = r->service_id;
		svc = bpf_map_lookup_elem(&km_services, &sid);
		if (!svc || !(svc->flags & KM_SVC_OUTLIER))
			break;
		r->connect_ms = bpf_ktime_get_ns() / 1000000;
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
							  BPF_SOCK_OPS_RTO_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		r = km_routed_sock(sk);
		if (!r)
			break;
		if (!(r->flags & KM_SOCK_COUNTED)) {
			if (r->backend_id)
				conn_add(&km_backend_conn, r->backend_id, 1);
			conn_add(&km_service_conn, r->service_id, 1);
			r->flags |= KM_SOCK_COUNTED;
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		}
		if (r->connect_ms)
			connect_result(r, 0);
		if (r->flags & KM_SOCK_WAYPOINT_PENDING) {
			__u64 cookie = bpf_get_socket_cookie(skops);

			bpf_sock_hash_update(skops, &km_waypoint_sk, &cookie, BPF_NOEXIST);
		}
		break;
	case BPF_SOCK_OPS_RTO_CB:
		/* a SYN retransmitted: the connect is a failure once connect_timeout has passed */
		if (skops->state != BPF_TCP_SYN_SENT)
			break;
		r = km_routed_sock(sk);
		if (r && r->connect_ms && !(r->flags & KM_SOCK_CONNECT_DONE) && connect_timed_out(r))
			connect_result(r, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		r = bpf_sk_storage_get(&km_sock_route, sk, 0, 0);
		if (!r)
			break;
		if (skops->args[0] == BPF_TCP_SYN_SENT && r->connect_ms && !(r->flags & KM_SOCK_CONNECT_DONE) &&
		    (r->flags & KM_SOCK_ROUTED)) {
			/* closed before any answer: refused or unreachable (an error), or given up by the
			 * application, which counts only past connect_timeout */
			if (sock_error(sk) || connect_timed_out(r))
				connect_result(r, 1);
		}
		if (!(r->flags & KM_SOCK_COUNTED))
			break;
		if (r->backend_id)
			conn_add(&km_backend_conn, r->backend_id, -1);
		conn_add(&km_service_conn, r->service_id, -1);
		r->flags &= ~KM_SOCK_COUNTED;
		break;
	}
	return 1;
}

/* The waypoint learns the original destination from a TLV ahead of the application's bytes:
 * 0x01, length (4 bytes BE: address and port), address, port (network order), then 0xfe with
 * length 0. addr_len is 4 or 16, a constant at each call, so the copies have constant sizes. */
static __always_inline int push_waypoint_tlv(struct sk_msg_md *msg, const struct km_sock_route *r,
					     const __u32 addr_len)
{
	const __u32 end_marker = 5 + addr_len + 2;
	const __u32 total = end_marker + 5;
	__u8 *data, *end;

	if (bpf_msg_push_data(msg, 0, total, 0) || bpf_msg_pull_data(msg, 0, total, 0))
		return -1;
	data = msg->data;
	end = msg->data_end;
	if (data + total > end)
		return -1;
	data[0] = 0x01;
	data[1] = 0;
	data[2] = 0;
	data[3] = 0;
	data[4] = addr_len + 2;
	__builtin_memcpy(data + 5, r->orig_address, addr_len);
	__builtin_memcpy(data + 5 + addr_len, &r->orig_port, 2);
	data[end_marker] = 0xfe;
	data[end_marker + 1] = 0;
	data[end_marker + 2] = 0;
	data[end_marker + 3] = 0;
	data[end_marker + 4] = 0;
	return 0;
}

SEC("sk_msg")
int km_waypoint_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct km_sock_route *r;
	int err;

	if (!sk)
		return SK_PASS;
	r = bpf_sk_storage_get(&km_sock_route, sk, 0, 0);
	if (!r || !(r->flags & KM_SOCK_WAYPOINT_PENDING))
		return SK_PASS;
	if (r->family == KM_AF_INET)
		err = push_waypoint_tlv(msg, r, 4); /* 16 bytes in all */
	else
		err = push_waypoint_tlv(msg, r, 16); /* 28 bytes in all */
	if (err)
		return SK_DROP;
	r->flags &= ~KM_SOCK_WAYPOINT_PENDING;
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
