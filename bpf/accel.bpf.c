// SPDX-License-Identifier: GPL-2.0
/* Same-node acceleration: when both ends of a TCP connection are local sockets in attached cgroups
 * and the rules allow it, sockops puts both ends in km_accel_sockhash and sk_msg hands each message
 * straight to the peer's receive queue, skipping the TCP/IP stack. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"
#include "accel.h"
#include "accel_maps.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_accel_config);
} km_accel_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * KM_ACCEL_MAX_RULES);
	__type(key, __u32);
	__type(value, struct km_accel_rule);
} km_accel_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct km_sock_key);
	__type(value, __u64);
} km_accel_sockhash SEC(".maps");

/* Owner of each listening socket in scope, so the connecting end can apply uid/gid rules to the
 * accepting end before either is inserted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct km_listener_key);
	__type(value, struct km_sock_owner);
} km_accel_listeners SEC(".maps");

/* Decision taken by the connecting end, picked up by the accepting end (keyed by the connecting
 * end's view). LRU: an entry whose peer never shows up ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct km_sock_key);
	__type(value, __u32);
} km_accel_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_ACCEL_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} km_accel_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * KM_ACCEL_MAX_RULES);
	__type(key, __u32);
	__type(value, struct km_accel_rule_stats);
} km_accel_rule_stats SEC(".maps");

/* Capture (kernmesh capture): off unless an operator runs it; sk_msg then reads only `enabled`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_capture_config);
} km_capture_config SEC(".maps");

/* Addresses and ports of the capture's --service and --pod filters, resolved by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct km_capture_endpoint);
	__type(value, __u32); /* KM_CAPTURE_MATCH_SERVICE / KM_CAPTURE_MATCH_POD bits */
} km_capture_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_capture_window);
} km_capture_window SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} km_capture_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_CAPTURE_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} km_capture_counters SEC(".maps");

/* Never written: puts struct km_capture_record in the object's BTF for the layout test. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_capture_record);
} km_capture_record_format SEC(".maps");

static __always_inline void count(__u32 index, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&km_accel_counters, &index);

	if (c)
		*c += n;
}

static __always_inline struct km_accel_config *accel_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&km_accel_config, &zero);
}

static __always_inline void reverse_key(const struct km_sock_key *k, struct km_sock_key *r)
{
	r->family = k->family;
	KM_COPY_IP6(r->local_ip, k->remote_ip);
	KM_COPY_IP6(r->remote_ip, k->local_ip);
	r->local_port = k->remote_port;
	r->remote_port = k->local_port;
}

static __always_inline int ip_in_prefix(const __u32 *ip, const __u32 *addr, __u32 prefix_len)
{
	int i;

	for (i = 0; i < 4; i++) {
		int bits = (int)prefix_len - 32 * i;
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~0U << (32 - bits));
		if ((ip[i] ^ addr[i]) & mask)
			return 0;
	}
	return 1;
}

/* One rule scan, by value: bpf_loop's callback is verified once, whatever the number of rules. */
struct rule_scan {
	struct km_sock_key k;
	struct km_sock_owner owner[2]; /* the two ends */
	__u32 known[2];                /* whether each owner is known */
	__u32 bank;
	__u32 accepted;
	__u32 has_accept;
	__u32 returned;
	__u32 decided_by; /* slot of the first matching ACCEPT, or of the matching RETURN */
};

static __always_inline struct km_accel_rule_stats *rule_stats(__u32 slot)
{
	return bpf_map_lookup_elem(&km_accel_rule_stats, &slot);
}

static __always_inline int owner_matches(const struct km_accel_rule *r, const struct rule_scan *s, int end)
{
	if (!s->known[end])
		return 0;
	if ((r->matches & KM_ACCEL_MATCH_UID) && s->owner[end].uid != r->uid)
		return 0;
	if ((r->matches & KM_ACCEL_MATCH_GID) && s->owner[end].gid != r->gid)
		return 0;
	return 1;
}

static __always_inline int rule_matches(const struct km_accel_rule *r, const struct rule_scan *s)
{
	if (r->matches & KM_ACCEL_MATCH_IP) {
		if (r->family != s->k.family)
			return 0;
		if (!ip_in_prefix(s->k.local_ip, r->addr, r->prefix_len) &&
		    !ip_in_prefix(s->k.remote_ip, r->addr, r->prefix_len))
			return 0;
	}
	if ((r->matches & KM_ACCEL_MATCH_PORT) && r->port != s->k.local_port && r->port != s->k.remote_port)
		return 0;
	/* uid and gid must hold for the same end: "a process with uid U and gid G" is one process. */
	if (r->matches & (KM_ACCEL_MATCH_UID | KM_ACCEL_MATCH_GID))
		return owner_matches(r, s, 0) || owner_matches(r, s, 1);
	return 1;
}

static long scan_rule(__u32 i, void *ctx)
{
	struct rule_scan *s = ctx;
	__u32 idx = (s->bank & 1) * KM_ACCEL_MAX_RULES + (i & (KM_ACCEL_MAX_RULES - 1));
	struct km_accel_rule *r = bpf_map_lookup_elem(&km_accel_rules, &idx);
	struct km_accel_rule_stats *st;

	if (!r)
		return 1;
	if (r->action == KM_ACCEL_ACCEPT)
		s->has_accept = 1;
	if (!rule_matches(r, s))
		return 0;
	st = rule_stats(idx);
	if (st)
		st->matched++;
	if (r->action == KM_ACCEL_RETURN) {
		s->returned = 1;
		s->decided_by = idx;
		return 1;
	}
	if (!s->accepted)
		s->decided_by = idx;
	s->accepted = 1;
	return 0;
}

/* RETURN beats ACCEPT. Without any ACCEPT rule (no rules at all, or only RETURN rules) every local
 * connection not RETURNed is accelerated; with ACCEPT rules, only what one of them matches. */
static __always_inline int rules_allow(const struct km_accel_config *cfg, const struct km_sock_key *k,
				       const struct km_sock_owner *a, const struct km_sock_owner *b)
{
	struct rule_scan s = {};
	__u32 n;

	s.bank = cfg->rule_bank & 1;
	n = cfg->rule_count[s.bank];
	if (n == 0)
		return 1;
	if (n > KM_ACCEL_MAX_RULES)
		n = KM_ACCEL_MAX_RULES;
	s.k = *k;
	if (a) {
		s.owner[0] = *a;
		s.known[0] = 1;
	}
	if (b) {
		s.owner[1] = *b;
		s.known[1] = 1;
	}
	bpf_loop(n, scan_rule, &s, 0);
	if (s.returned || s.accepted) {
		struct km_accel_rule_stats *st = rule_stats(s.decided_by);

		if (st) {
			if (s.returned)
				st->refused++;
			else
				st->accelerated++;
		}
	}
	if (s.returned)
		return 0;
	return s.accepted || !s.has_accept;
}

static __always_inline struct km_accel_sock *sock_state(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&km_accel_sock, sk, 0, 0);
}

/* A listening socket's own address as km_accel_listeners' key; -1 for another family. */
static __always_inline int listener_key(struct bpf_sock_ops *skops, struct km_listener_key *lk)
{
	__u32 family = skops->family;

	__builtin_memset(lk, 0, sizeof(*lk));
	if (family == AF_INET) {
		lk->ip[0] = skops->local_ip4;
	} else if (family == AF_INET6) {
		KM_COPY_IP6(lk->ip, skops->local_ip6);
		km_fold_v4_mapped(&family, lk->ip);
	} else {
		return -1;
	}
	lk->family = family;
	lk->port = skops->local_port;
	return 0;
}

static __always_inline void remember_listener(struct bpf_sock_ops *skops)
{
	struct km_accel_sock *st = sock_state(skops);
	struct km_listener_key lk;
	struct km_sock_owner owner;

	if (!st || !(st->state & KM_ACCEL_SOCK_OWNER_KNOWN) || listener_key(skops, &lk))
		return;
	owner.uid = st->uid;
	owner.gid = st->gid;
	bpf_map_update_elem(&km_accel_listeners, &lk, &owner, BPF_ANY);
	/* To forget the listener when it closes. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void forget_listener(struct bpf_sock_ops *skops)
{
	struct km_listener_key lk;

	if (listener_key(skops, &lk))
		return;
	bpf_map_delete_elem(&km_accel_listeners, &lk);
}

/* The accepting end's owner: its listener bound to the exact address, else to the wildcard of the
 * same family, else (IPv4 clients) a dual-stack IPv6 wildcard. NULL: the server is not in scope. */
static __always_inline struct km_sock_owner *listener_owner(const struct km_sock_key *k)
{
	struct km_listener_key lk = {};
	struct km_sock_owner *o;

	lk.family = k->family;
	KM_COPY_IP6(lk.ip, k->remote_ip);
	lk.port = k->remote_port;
	o = bpf_map_lookup_elem(&km_accel_listeners, &lk);
	if (o)
		return o;
	lk.ip[0] = 0;
	lk.ip[1] = 0;
	lk.ip[2] = 0;
	lk.ip[3] = 0;
	o = bpf_map_lookup_elem(&km_accel_listeners, &lk);
	if (o || k->family != AF_INET)
		return o;
	lk.family = AF_INET6;
	return bpf_map_lookup_elem(&km_accel_listeners, &lk);
}

static __always_inline void insert(struct bpf_sock_ops *skops, struct km_sock_key *k, struct km_accel_sock *st)
{
	__u64 zero = 0;

	/* Before the socket can receive: a reused 4-tuple starts from zero. */
	bpf_map_update_elem(&km_accel_rx_bytes, k, &zero, BPF_ANY);
	if (bpf_sock_hash_update(skops, &km_accel_sockhash, k, BPF_ANY) == 0) {
		st->state |= KM_ACCEL_SOCK_ACCELERATED;
		count(KM_ACCEL_SOCKETS_INSERTED, 1);
	} else {
		count(KM_ACCEL_INSERT_FAILURES, 1);
	}
}

/* The connecting end decides for both ends: it knows its own owner and, from the listener, the
 * accepting end's; the decision waits in km_accel_pending for the accepting end. */
static __always_inline void on_active_established(struct bpf_sock_ops *skops)
{
	struct km_accel_config *cfg = accel_config();
	struct km_accel_sock *st = sock_state(skops);
	struct km_sock_owner self, *server;
	struct km_sock_key k;
	__u32 allow;

	if (!cfg || !cfg->enabled || !st || km_sock_key_from_skops(skops, &k))
		return;
	server = listener_owner(&k);
	if (!server)
		return;
	self.uid = st->uid;
	self.gid = st->gid;
	allow = rules_allow(cfg, &k, (st->state & KM_ACCEL_SOCK_OWNER_KNOWN) ? &self : NULL, server);
	bpf_map_update_elem(&km_accel_pending, &k, &allow, BPF_ANY);
	if (!allow) {
		st->state |= KM_ACCEL_SOCK_REFUSED;
		count(KM_ACCEL_SOCKETS_REFUSED, 1);
		return;
	}
	insert(skops, &k, st);
}

static __always_inline void on_passive_established(struct bpf_sock_ops *skops)
{
	struct km_accel_sock *st = sock_state(skops);
	struct km_sock_key k, peer;
	__u32 *allow;

	if (!st || km_sock_key_from_skops(skops, &k))
		return;
	reverse_key(&k, &peer);
	allow = bpf_map_lookup_elem(&km_accel_pending, &peer);
	if (!allow)
		return;
	if (*allow)
		insert(skops, &k, st);
	else
		st->state |= KM_ACCEL_SOCK_REFUSED;
	bpf_map_delete_elem(&km_accel_pending, &peer);
}

SEC("sockops")
int km_accel_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		remember_listener(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[0] == BPF_TCP_LISTEN)
			forget_listener(skops);
		break;
	}
	return 1;
}

/* The owner is only known where the creating task is current; sk_msg and sockops run elsewhere. */
SEC("cgroup/sock_create")
int km_accel_sock_create(struct bpf_sock *sk)
{
	struct km_accel_sock *st;
	__u64 ugid;

	if (sk->type != SOCK_STREAM || sk->protocol != IPPROTO_TCP)
		return 1;
	st = bpf_sk_storage_get(&km_accel_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1;
	ugid = bpf_get_current_uid_gid();
	st->uid = (__u32)ugid;
	st->gid = (__u32)(ugid >> 32);
	st->state = KM_ACCEL_SOCK_OWNER_KNOWN;
	return 1;
}

static __always_inline int key_from_msg(struct sk_msg_md *msg, struct km_sock_key *peer)
{
	__u32 lfam, rfam;

	__builtin_memset(peer, 0, sizeof(*peer));
	if (msg->family == AF_INET) {
		peer->family = AF_INET;
		peer->local_ip[0] = msg->remote_ip4;
		peer->remote_ip[0] = msg->local_ip4;
	} else if (msg->family == AF_INET6) {
		lfam = AF_INET6;
		rfam = AF_INET6;
		KM_COPY_IP6(peer->local_ip, msg->remote_ip6);
		KM_COPY_IP6(peer->remote_ip, msg->local_ip6);
		km_fold_v4_mapped(&lfam, peer->local_ip);
		km_fold_v4_mapped(&rfam, peer->remote_ip);
		if (lfam != rfam)
			return -1;
		peer->family = lfam;
	} else {
		return -1;
	}
	peer->local_port = bpf_ntohl(msg->remote_port);
	peer->remote_port = msg->local_port;
	return 0;
}

static __always_inline void capture_count(__u32 index, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&km_capture_counters, &index);

	if (c)
		*c += n;
}

/* KM_CAPTURE_MATCH_SERVICE/POD bits of one end: its address and port, or its address on any port. */
static __always_inline __u32 endpoint_bits(__u32 family, const __u32 *ip, __u32 port)
{
	struct km_capture_endpoint e = {};
	__u32 *v, bits = 0;

	e.family = family;
	KM_COPY_IP6(e.ip, ip);
	e.port = port;
	v = bpf_map_lookup_elem(&km_capture_endpoints, &e);
	if (v)
		bits |= *v;
	e.port = 0;
	v = bpf_map_lookup_elem(&km_capture_endpoints, &e);
	if (v)
		bits |= *v;
	return bits;
}

static __always_inline int capture_matches(const struct km_capture_config *c, const struct km_sock_key *k)
{
	__u32 sets = c->match & (KM_CAPTURE_MATCH_SERVICE | KM_CAPTURE_MATCH_POD);

	if ((c->match & KM_CAPTURE_MATCH_PORT) && k->local_port != c->port && k->remote_port != c->port)
		return 0;
	if (c->match & KM_CAPTURE_MATCH_IP) {
		if (c->family != k->family)
			return 0;
		if (!ip_in_prefix(k->local_ip, c->addr, c->prefix_len) &&
		    !ip_in_prefix(k->remote_ip, c->addr, c->prefix_len))
			return 0;
	}
	if (sets) {
		__u32 bits = endpoint_bits(k->family, k->local_ip, k->local_port) |
			     endpoint_bits(k->family, k->remote_ip, k->remote_port);

		if ((bits & sets) != sets)
			return 0;
	}
	return 1;
}

/* The caps hold per one-second window, shared by every CPU (a window reset racing another CPU may let a
 * few more through, never an unbounded number). */
static __always_inline int capture_admit(const struct km_capture_config *c, __u32 caplen)
{
	__u32 zero = 0;
	struct km_capture_window *w = bpf_map_lookup_elem(&km_capture_window, &zero);
	__u64 now = bpf_ktime_get_ns();

	if (!w)
		return 0;
	if (now - w->start_ns >= 1000000000ULL) {
		w->start_ns = now;
		w->messages = 0;
		w->bytes = 0;
	}
	if (__sync_fetch_and_add(&w->messages, 1) >= c->max_messages_per_sec) {
		capture_count(KM_CAPTURE_LOST_RATE, 1);
		return 0;
	}
	if (__sync_fetch_and_add(&w->bytes, caplen) + caplen > c->max_bytes_per_sec) {
		capture_count(KM_CAPTURE_LOST_BYTES, 1);
		return 0;
	}
	return 1;
}

/* Ring records have a size known to the verifier: one reservation per size class, at most twice the data. */
#define KM_CAPTURE_EMIT(class)                                                                         \
	do {                                                                                           \
		struct km_capture_record *r =                                                          \
			bpf_ringbuf_reserve(&km_capture_ring, sizeof(*r) + (class), 0);                \
		if (!r) {                                                                              \
			capture_count(KM_CAPTURE_LOST_RING, 1);                                        \
			return;                                                                        \
		}                                                                                      \
		*r = *hdr;                                                                             \
		if (caplen > (class))                                                                  \
			caplen = (class);                                                              \
		r->caplen = caplen;                                                                    \
		bpf_probe_read_kernel((void *)(r + 1), caplen, data);                                  \
		bpf_ringbuf_submit(r, 0);                                                              \
	} while (0)

static __always_inline void capture_copy(struct sk_msg_md *msg, struct km_capture_record *hdr, __u32 caplen)
{
	void *data, *data_end;

	/* The message lives in scattered pages: make its first caplen bytes contiguous to copy them. */
	if (bpf_msg_pull_data(msg, 0, caplen, 0)) {
		capture_count(KM_CAPTURE_LOST_PULL, 1);
		return;
	}
	data = (void *)(long)msg->data;
	data_end = (void *)(long)msg->data_end;
	if (data + caplen > data_end)
		caplen = data_end - data;
	if (caplen > KM_CAPTURE_MAX_SNAPLEN)
		caplen = KM_CAPTURE_MAX_SNAPLEN;
	capture_count(KM_CAPTURE_MESSAGES, 1);
	capture_count(KM_CAPTURE_BYTES, caplen);
	if (caplen <= 256)
		KM_CAPTURE_EMIT(256);
	else if (caplen <= 2048)
		KM_CAPTURE_EMIT(2048);
	else if (caplen <= 16384)
		KM_CAPTURE_EMIT(16384);
	else
		KM_CAPTURE_EMIT(KM_CAPTURE_MAX_SNAPLEN);
}

/* Copies the head of a redirected message for kernmesh capture, within the caps. */
static __always_inline void capture(struct sk_msg_md *msg, const struct km_capture_config *c,
				    const struct km_sock_key *peer, __u64 offset, __u32 size)
{
	struct km_capture_record hdr = {};
	__u32 caplen = size < c->snaplen ? size : c->snaplen;

	reverse_key(peer, &hdr.sender);
	if (!capture_matches(c, &hdr.sender))
		return;
	if (!capture_admit(c, caplen))
		return;
	hdr.timestamp_ns = bpf_ktime_get_ns();
	hdr.offset = offset;
	hdr.size = size;
	capture_copy(msg, &hdr, caplen);
}

/* A socket that sent one message through the stack stays there: a later redirect could overtake
 * bytes still queued in the peer's TCP receive queue. */
SEC("sk_msg")
int km_accel_redirect(struct sk_msg_md *msg)
{
	struct km_accel_config *cfg = accel_config();
	struct bpf_sock *sk = msg->sk;
	struct km_capture_config *cap;
	struct km_accel_sock *st;
	struct km_sock_key peer;
	__u64 *rx, offset;
	__u32 size = msg->size, zero = 0;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&km_accel_sock, sk, 0, 0);
	if (!st || (st->state & KM_ACCEL_SOCK_FELL_BACK)) {
		count(KM_ACCEL_MESSAGES_FALLBACK, 1);
		return SK_PASS;
	}
	if (!cfg || !cfg->enabled) {
		st->state |= KM_ACCEL_SOCK_FELL_BACK;
		count(KM_ACCEL_MESSAGES_FALLBACK, 1);
		return SK_PASS;
	}
	if (key_from_msg(msg, &peer) ||
	    bpf_msg_redirect_hash(msg, &km_accel_sockhash, &peer, BPF_F_INGRESS) != SK_PASS) {
		st->state |= KM_ACCEL_SOCK_FELL_BACK;
		count(KM_ACCEL_REDIRECT_FAILURES, 1);
		return SK_PASS;
	}
	count(KM_ACCEL_MESSAGES_REDIRECTED, 1);
	count(KM_ACCEL_BYTES_REDIRECTED, size);
	offset = __sync_fetch_and_add(&st->bytes_out, size);
	/* TCP's counters never see these bytes: credit them to the receiving end for telemetry. */
	rx = bpf_map_lookup_elem(&km_accel_rx_bytes, &peer);
	if (rx)
		__sync_fetch_and_add(rx, size);
	cap = bpf_map_lookup_elem(&km_capture_config, &zero);
	if (cap && cap->enabled)
		capture(msg, cap, &peer, offset, size);
	return SK_PASS;
}
