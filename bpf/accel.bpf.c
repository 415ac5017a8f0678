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

static __always_inline int ip_in_prefix(const __u32 *ip, const struct km_accel_rule *r)
{
	int i;

	for (i = 0; i < 4; i++) {
		int bits = (int)r->prefix_len - 32 * i;
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~0U << (32 - bits));
		if ((ip[i] ^ r->addr[i]) & mask)
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
};

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
		if (!ip_in_prefix(s->k.local_ip, r) && !ip_in_prefix(s->k.remote_ip, r))
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

	if (!r)
		return 1;
	if (r->action == KM_ACCEL_ACCEPT)
		s->has_accept = 1;
	if (!rule_matches(r, s))
		return 0;
	if (r->action == KM_ACCEL_RETURN) {
		s->returned = 1;
		return 1;
	}
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

/* A socket that sent one message through the stack stays there: a later redirect could overtake
 * bytes still queued in the peer's TCP receive queue. */
SEC("sk_msg")
int km_accel_redirect(struct sk_msg_md *msg)
{
	struct km_accel_config *cfg = accel_config();
	struct bpf_sock *sk = msg->sk;
	struct km_accel_sock *st;
	struct km_sock_key peer;
	__u64 *rx;
	__u32 size = msg->size;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&km_accel_sock, sk, 0, 0);
	if (!st || (st->state & KM_ACCEL_SOCK_FELL_BACK)) {
		count(KM_ACCEL_MSGS_FALLBACK, 1);
		return SK_PASS;
	}
	if (!cfg || !cfg->enabled) {
		st->state |= KM_ACCEL_SOCK_FELL_BACK;
		count(KM_ACCEL_MSGS_FALLBACK, 1);
		return SK_PASS;
	}
	if (key_from_msg(msg, &peer) ||
	    bpf_msg_redirect_hash(msg, &km_accel_sockhash, &peer, BPF_F_INGRESS) != SK_PASS) {
		st->state |= KM_ACCEL_SOCK_FELL_BACK;
		count(KM_ACCEL_REDIRECT_FAILURES, 1);
		return SK_PASS;
	}
	count(KM_ACCEL_MSGS_REDIRECTED, 1);
	count(KM_ACCEL_BYTES_REDIRECTED, size);
	__sync_fetch_and_add(&st->bytes_out, size);
	/* TCP's counters never see these bytes: credit them to the receiving end for telemetry. */
	rx = bpf_map_lookup_elem(&km_accel_rx_bytes, &peer);
	if (rx)
		__sync_fetch_and_add(rx, size);
	return SK_PASS;
}
