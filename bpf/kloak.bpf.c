// SPDX-License-Identifier: GPL-2.0-only
/*
 * kloak data plane: find placeholders in TLS write buffers of enabled
 * processes, verify them in full, and have them replaced by the real value for
 * exactly the duration of the write call.
 *
 * Two substitution modes, chosen by user space at load time (autoload):
 *  - kernel: bpf_probe_write_user in the probe itself (needs lockdown=none);
 *  - stop:   the probe queues a request on tls_events and stops the writer's
 *            thread group; the agent patches with process_vm_writev and
 *            sends SIGCONT. The return probe does the same to restore.
 * Every failure leaves the placeholder in place and is counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kloak.h"

#define SIGSTOP 19
#define COLONS 0x3a3a3a3a3a3a3a3aULL
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

char LICENSE[] SEC("license") = "GPL";

/* Set by user space before load; its own section so it is the only variable
 * in that map and sits at offset 0. */
const volatile struct kloak_config kloak_cfg SEC(".rodata.config") = {
	.mode = KLOAK_MODE_STOP,
	.scan_cap = 65536,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} tls_events SEC(".maps");

/* placeholder key -> secret id */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_ph_key);
	__type(value, __u32);
} kloak_placeholders SEC(".maps");

/* secret id -> full placeholder, for byte-for-byte verification and restore */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kloak_bytes);
} kloak_secrets SEC(".maps");

/* secret id -> real value; filled in kernel mode only, so that in stop mode
 * real values never enter kernel memory */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kloak_bytes);
} kloak_values SEC(".maps");

/* tgid -> scope: the processes kloak protects */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct kloak_proc);
} kloak_procs SEC(".maps");

/* tgid -> scope: processes whose children join a scope (the kloak exec
 * launcher itself, which is never attached) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} kloak_launchers SEC(".maps");

/* cgroup v2 id -> scope: the cgroups of a pod's containers (cluster agent).
 * Processes that appear in a container without being the child of a
 * protected process join the container's scope here: `kubectl exec` (runc,
 * crun and CRI-O's conmon start the process from outside the container and
 * move it into its cgroup) and processes started while the agent was
 * attaching. The id is the cgroup directory's inode number in cgroup2. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} kloak_cgroups SEC(".maps");

/* {scope, secret} present when the scope may redeem the secret */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct kloak_grant);
	__type(value, __u8);
} kloak_entitled SEC(".maps");

/* tid -> what was substituted, so the return probe can restore it */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct kloak_write_event);
} kloak_inflight SEC(".maps");

/* tgid -> the thread whose stop-mode substitution is in flight; the agent
 * deletes it after the restore's SIGCONT */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct kloak_stop_owner);
} kloak_stop_owner SEC(".maps");

/* tgid -> seq of the last claim the agent finished with */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} kloak_stop_released SEC(".maps");

/* {ssl, tgid} -> the TLS connection's socket and SNI. LRU: a connection
 * evicted from here is simply unknown, which fails closed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);
	__type(value, struct kloak_conn);
} kloak_conns SEC(".maps");

/* tid -> SSL* while the thread is inside a TLS call (handshake or write):
 * sends it makes then are that connection's, which ties SSL* to socket. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} kloak_active SEC(".maps");

/* secret id -> destination rules; no entry: the secret may go anywhere */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kloak_policy);
} kloak_policy SEC(".maps");

/* {name, address}: kloak itself resolved name to address */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_name_addr);
	__type(value, struct kloak_resolved);
} kloak_resolved SEC(".maps");

/* SNI names the agent has seen (and resolved, if under a wildcard rule) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, char[KLOAK_NAME_MAX]);
	__type(value, __u8);
} kloak_names SEC(".maps");

/* [0] != 0 while some secret has a wildcard rule: only then are clients held
 * at a new SNI name */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} kloak_sni_hold SEC(".maps");

/* An owner older than this lost its restore (thread died, event lost). */
#define STOP_OWNER_STALE_NS 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KC__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} kloak_counters SEC(".maps");

/* Per-CPU work area: kprobe-type programs never nest on one CPU
 * (bpf_prog_active), so one slot per CPU is enough. */
struct scratch {
	__u8 chunk[KLOAK_CHUNK];
	__u8 cmp[KLOAK_VALUE_MAX];
	__u64 cand[KLOAK_MAX_CANDIDATES];
	__u32 ncand;
	__u32 _pad;
	__u64 buf;
	__u64 len;      /* whole write */
	__u64 scan_len; /* min(len, scan cap) */
	__u32 tgid;
	__u32 scope_id;
	struct kloak_write_event ev;
	/* the write's connection, loaded on first need (peer_state) */
	__u64 ssl;
	__u32 peer_state;
	__u32 sni_len;
	__u64 bound_ns;
	struct kloak_peer peer;
	char sni[KLOAK_NAME_MAX];
	/* destination check of one secret */
	__u32 check_id;
	__u32 verdict;
	struct kloak_name_addr rkey;
	/* set while a program uses this slot: a uprobe program preempted on a
	 * preemptible kernel must not have its slot reused under it */
	__u32 busy;
};

#define PEER_UNSET 0
#define PEER_KNOWN 1
#define PEER_UNKNOWN 2

#define VERDICT_NONE 0
#define VERDICT_SNI_MISMATCH 1
#define VERDICT_ALLOW 2

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} kloak_scratch SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&kloak_scratch, &zero);
}

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&kloak_counters, &idx);
	if (c)
		*c += n;
}

static __always_inline bool peer_known(struct scratch *s);

static __always_inline void refuse(struct scratch *s, __u32 reason, __u32 counter,
				   __u32 secret_id, __u64 offset)
{
	struct kloak_refusal_event *e;

	count(counter, 1);
	peer_known(s); /* loads the destination for the report */
	e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);
	if (!e) {
		count(KC_EVENTS_LOST, 1);
		return;
	}
	e->type = KE_REFUSED;
	e->tgid = s->tgid;
	e->scope_id = s->scope_id;
	e->secret_id = secret_id;
	e->reason = reason;
	e->offset = offset;
	e->peer = s->peer;
	e->sni_len = s->sni_len;
	__builtin_memcpy(e->sni, s->sni, KLOAK_NAME_MAX);
	bpf_ringbuf_submit(e, 0);
}

/*
 * A word of the current chunk holds a ':'; note every position where a
 * marker could start. Global (verified once) to keep the scan loop small.
 */
__noinline int kloak_note_colons(__u32 chunk_off, __u32 word, __u32 n)
{
	struct scratch *s = scratch();
	__u32 b, p, i;

	if (!s)
		return 0;
	for (b = 0; b < 8; b++) {
		p = word * 8 + b;
		if (p >= n || p >= KLOAK_CHUNK)
			break;
		if (s->chunk[p] != ':')
			continue;
		if (chunk_off + p < KLOAK_MARKER_LEN - 1)
			continue;
		/* Cheap pre-check when the marker lies inside this chunk; a marker
		 * straddling two chunks is checked against user memory later. */
		if (p >= KLOAK_MARKER_LEN - 1 &&
		    (s->chunk[p - 5] != 'k' || s->chunk[p - 4] != 'l' || s->chunk[p - 3] != 'o' ||
		     s->chunk[p - 2] != 'a' || s->chunk[p - 1] != 'k'))
			continue;
		i = s->ncand;
		if (i >= KLOAK_MAX_CANDIDATES) {
			count(KC_CANDIDATES_DROPPED, 1);
			continue;
		}
		s->cand[i] = chunk_off + p - (KLOAK_MARKER_LEN - 1);
		s->ncand = i + 1;
	}
	return 0;
}

static long scan_chunk(__u32 idx, void *unused)
{
	struct scratch *s = scratch();
	__u64 off, n, x;
	__u32 w;

	if (!s)
		return 1;
	off = (__u64)idx * KLOAK_CHUNK;
	if (off >= s->scan_len)
		return 1;
	n = s->scan_len - off;
	if (n > KLOAK_CHUNK)
		n = KLOAK_CHUNK;
	if (n == 0 || bpf_probe_read_user(s->chunk, n, (void *)(s->buf + off)))
		return 1;
	/* SWAR: a word has a ':' byte iff (w ^ COLONS) has a zero byte. */
	for (w = 0; w < KLOAK_CHUNK / 8; w++) {
		if (w * 8 >= n)
			break;
		x = *(__u64 *)&s->chunk[w * 8] ^ COLONS;
		if ((x - ONES) & ~x & HIGHS)
			kloak_note_colons(off, w, n);
	}
	return 0;
}

static __always_inline struct kloak_bytes *secret_placeholder(__u32 id)
{
	return bpf_map_lookup_elem(&kloak_secrets, &id);
}

/* Find the secret whose placeholder starts at buf+start; 0 when none. */
static __always_inline __u32 lookup_placeholder(struct scratch *s, __u64 start)
{
	struct kloak_ph_key key = {};
	__u8 head[KLOAK_MARKER_LEN + KLOAK_KEY_LEN] = {};
	__u64 avail = s->len - start;
	__u32 tail, i, *id;

	if (avail < KLOAK_VALUE_MIN)
		return 0;
	tail = avail - KLOAK_MARKER_LEN > KLOAK_KEY_LEN ? KLOAK_KEY_LEN : avail - KLOAK_MARKER_LEN;
	if (bpf_probe_read_user(head, sizeof(head) - KLOAK_KEY_LEN + tail, (void *)(s->buf + start)))
		return 0;
	/* Longest key first: keys are prefix-free, so at most one matches. */
	for (; tail >= KLOAK_VALUE_MIN - KLOAK_MARKER_LEN; tail--) {
		for (i = 0; i < KLOAK_KEY_LEN; i++)
			key.tail[i] = i < tail ? head[KLOAK_MARKER_LEN + i] : 0;
		key.tail_len = tail;
		id = bpf_map_lookup_elem(&kloak_placeholders, &key);
		if (id)
			return *id;
	}
	return 0;
}

static __always_inline bool is_marker(struct scratch *s, __u64 start)
{
	char m[KLOAK_MARKER_LEN];

	if (bpf_probe_read_user(m, sizeof(m), (void *)(s->buf + start)))
		return false;
	return m[0] == 'k' && m[1] == 'l' && m[2] == 'o' && m[3] == 'a' && m[4] == 'k' && m[5] == ':';
}

/* Byte-for-byte comparison of the write against the loaded placeholder. */
static __always_inline bool matches(struct scratch *s, __u64 start, struct kloak_bytes *ph)
{
	__u32 len = ph->len, i;

	if (len < KLOAK_VALUE_MIN || len > KLOAK_VALUE_MAX)
		return false;
	if (bpf_probe_read_user(s->cmp, len, (void *)(s->buf + start)))
		return false;
	for (i = 0; i < KLOAK_VALUE_MAX / 8; i++) {
		if (i * 8 + 8 > len)
			break;
		if (*(__u64 *)&s->cmp[i * 8] != *(__u64 *)&ph->data[i * 8])
			return false;
	}
	for (i = i * 8; i < len && i < KLOAK_VALUE_MAX; i++)
		if (s->cmp[i] != ph->data[i])
			return false;
	return true;
}

/* ---- connections: SSL* -> socket -> peer ---------------------------------- */

static __always_inline struct file *fd_file(__s32 fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	struct file **arr, *f = NULL;

	if (!fdt || fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	arr = BPF_CORE_READ(fdt, fd);
	if (!arr || bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]))
		return NULL;
	return f;
}

/* The TCP (IPv4/IPv6) socket behind f, and its inode number; NULL otherwise. */
static __always_inline struct sock *inet_stream(struct file *f, __u64 *ino)
{
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!inode || (BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	*ino = BPF_CORE_READ(inode, i_ino);
	return sk;
}

/* The connection entry of {ssl, tgid}, created empty (no socket, no SNI) when new. */
static __always_inline struct kloak_conn *conn_of(struct kloak_conn_key *k)
{
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, k), fresh = { .fd = -1 };

	if (c)
		return c;
	bpf_map_update_elem(&kloak_conns, k, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&kloak_conns, k);
}

/*
 * Tie ssl to the socket behind fd. SSL_set_fd is authoritative (the library
 * writes to that fd from now on); a send during a TLS call binds a connection
 * that has no socket yet, and a send to another socket marks it conflicting.
 */
static __always_inline void bind_conn(__u64 ssl, __u32 tgid, __s32 fd, bool by_fd)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c;
	struct file *f;
	__u64 ino = 0;

	c = bpf_map_lookup_elem(&kloak_conns, &k);
	/* The common case, every send of a bound connection: same fd, nothing to
	 * learn (a socket swapped under that fd number fails the inode check at
	 * the next write). */
	if (c && !by_fd && (c->flags & KLOAK_CONN_BOUND) && c->fd == fd)
		return;
	f = fd_file(fd);
	if (!f || !inet_stream(f, &ino))
		return;
	if (!c && !(c = conn_of(&k)))
		return;
	if (by_fd || !(c->flags & KLOAK_CONN_BOUND)) {
		c->fd = fd;
		c->ino = ino;
		c->bound_ns = bpf_ktime_get_ns();
		c->flags = KLOAK_CONN_BOUND | (by_fd ? KLOAK_CONN_BY_FD : 0);
		count(KC_CONNS_BOUND, 1);
	} else if (c->ino != ino && !(c->flags & KLOAK_CONN_CONFLICT)) {
		c->flags |= KLOAK_CONN_CONFLICT;
		count(KC_BIND_CONFLICT, 1);
	}
}

/* Load the write's connection into the scratch slot once per write. */
static __always_inline bool peer_known(struct scratch *s)
{
	struct kloak_conn_key k = { .ssl = s->ssl, .tgid = s->tgid };
	struct kloak_conn *c;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;

	if (s->peer_state != PEER_UNSET)
		return s->peer_state == PEER_KNOWN;
	s->peer_state = PEER_UNKNOWN;
	c = bpf_map_lookup_elem(&kloak_conns, &k);
	if (!c)
		return false;
	s->sni_len = c->sni_len;
	__builtin_memcpy(s->sni, c->sni, KLOAK_NAME_MAX);
	s->bound_ns = c->bound_ns;
	if ((c->flags & (KLOAK_CONN_BOUND | KLOAK_CONN_CONFLICT)) != KLOAK_CONN_BOUND)
		return false;
	f = fd_file(c->fd);
	if (!f)
		return false;
	sk = inet_stream(f, &ino);
	if (!sk || ino != c->ino)
		return false; /* closed, or the fd number now names another socket */
	s->peer.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s->peer.port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (s->peer.family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memset(s->peer.addr, 0, 10);
		s->peer.addr[10] = 0xff;
		s->peer.addr[11] = 0xff;
		__builtin_memcpy(&s->peer.addr[12], &a, 4);
	} else {
		BPF_CORE_READ_INTO(&s->peer.addr, sk, __sk_common.skc_v6_daddr);
	}
	if (s->peer.port == 0)
		return false; /* not connected */
	s->peer_state = PEER_KNOWN;
	return true;
}

/* ---- destination policy ---------------------------------------------------- */

static __always_inline bool cidr_match(const __u8 *net, __u32 prefix, const __u8 *addr)
{
	__u32 i, bits;
	__u8 mask;

	for (i = 0; i < 16; i++) {
		if (prefix <= i * 8)
			break;
		bits = prefix - i * 8;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((net[i] ^ addr[i]) & mask)
			return false;
	}
	return true;
}

static __always_inline bool names_equal(const char *a, const char *b)
{
	__u32 i;

	for (i = 0; i < KLOAK_NAME_MAX / 8; i++)
		if (((const __u64 *)a)[i] != ((const __u64 *)b)[i])
			return false;
	return true;
}

/* sni is "<one or more labels>." + suffix */
static __always_inline bool under_suffix(struct scratch *s, struct kloak_rule *r)
{
	__u32 n = s->sni_len, m = r->name_len, off, j;

	if (m == 0 || m >= KLOAK_NAME_MAX || n >= KLOAK_NAME_MAX || n < m + 2)
		return false;
	off = n - m;
	if (s->sni[(off - 1) & (KLOAK_NAME_MAX - 1)] != '.')
		return false;
	for (j = 0; j < KLOAK_NAME_MAX; j++) {
		if (j >= m)
			break;
		if (s->sni[(off + j) & (KLOAK_NAME_MAX - 1)] != r->name[j])
			return false;
	}
	return true;
}

/* Did kloak resolve name to the peer, and was that answer current when the
 * connection was bound? */
static __always_inline bool resolved_to_peer(struct scratch *s, const char *name)
{
	struct kloak_resolved *r;

	__builtin_memcpy(s->rkey.name, name, KLOAK_NAME_MAX);
	__builtin_memcpy(s->rkey.addr, s->peer.addr, 16);
	r = bpf_map_lookup_elem(&kloak_resolved, &s->rkey);
	return r && s->bound_ns <= r->valid_until_ns;
}

static long check_rule(__u32 idx, void *unused)
{
	struct scratch *s = scratch();
	struct kloak_policy *pol;
	struct kloak_rule *r;

	if (!s || idx >= KLOAK_MAX_RULES)
		return 1;
	pol = bpf_map_lookup_elem(&kloak_policy, &s->check_id);
	if (!pol)
		return 1;
	r = &pol->rules[idx];
	if (r->port && r->port != s->peer.port)
		return 0;
	switch (r->kind) {
	case KLOAK_RULE_CIDR:
		if (cidr_match(r->addr, r->prefix, s->peer.addr))
			s->verdict = VERDICT_ALLOW;
		break;
	case KLOAK_RULE_HOST:
		if (!s->sni_len || (s->sni_len == r->name_len && names_equal(s->sni, r->name))) {
			if (resolved_to_peer(s, r->name))
				s->verdict = VERDICT_ALLOW;
		} else if (resolved_to_peer(s, r->name)) {
			/* The right server, asked for another name: on a shared IP
			 * (CDN, ingress) that name is another destination. */
			s->verdict = VERDICT_SNI_MISMATCH;
		}
		break;
	case KLOAK_RULE_WILDCARD:
		/* Only the SNI can say which name under the suffix is meant. */
		if (s->sni_len && under_suffix(s, r) && resolved_to_peer(s, s->sni))
			s->verdict = VERDICT_ALLOW;
		break;
	}
	return s->verdict == VERDICT_ALLOW;
}

/* The secret may go to this write's peer (any peer when it has no rules:
 * counted); refuses, and says why, otherwise. */
static __always_inline bool destination_allowed(struct scratch *s, __u32 id, __u64 start)
{
	struct kloak_policy *pol = bpf_map_lookup_elem(&kloak_policy, &id);
	__u32 n;

	if (!pol) {
		count(KC_UNRESTRICTED, 1);
		return true;
	}
	if (!peer_known(s)) {
		refuse(s, KR_UNKNOWN_PEER, KC_REFUSED_UNKNOWN_PEER, id, start);
		return false;
	}
	n = pol->nrules < KLOAK_MAX_RULES ? pol->nrules : KLOAK_MAX_RULES;
	s->check_id = id;
	s->verdict = VERDICT_NONE;
	bpf_loop(n, check_rule, NULL, 0);
	if (s->verdict == VERDICT_ALLOW)
		return true;
	if (s->verdict == VERDICT_SNI_MISMATCH)
		refuse(s, KR_SNI_MISMATCH, KC_REFUSED_SNI, id, start);
	else
		refuse(s, KR_DESTINATION_NOT_ALLOWED, KC_REFUSED_DESTINATION, id, start);
	return false;
}

static long verify_candidate(__u32 idx, void *unused)
{
	struct scratch *s = scratch();
	struct kloak_grant grant;
	struct kloak_bytes *ph;
	struct kloak_item *item;
	__u64 start;
	__u32 id, n;

	if (!s || idx >= KLOAK_MAX_CANDIDATES)
		return 1;
	start = s->cand[idx];
	if (start >= s->len || !is_marker(s, start))
		return 0;
	id = lookup_placeholder(s, start);
	ph = id ? secret_placeholder(id) : NULL;
	if (!ph) {
		refuse(s, KR_UNKNOWN_PLACEHOLDER, KC_REFUSED_UNKNOWN, 0, start);
		return 0;
	}
	if (start + ph->len > s->len) {
		refuse(s, KR_TRUNCATED, KC_REFUSED_TRUNCATED, id, start);
		return 0;
	}
	if (!matches(s, start, ph)) {
		refuse(s, KR_UNKNOWN_PLACEHOLDER, KC_REFUSED_UNKNOWN, id, start);
		return 0;
	}
	grant.scope_id = s->scope_id;
	grant.secret_id = id;
	if (!bpf_map_lookup_elem(&kloak_entitled, &grant)) {
		refuse(s, KR_NOT_ENTITLED, KC_REFUSED_NOT_ENTITLED, id, start);
		return 0;
	}
	if (!destination_allowed(s, id, start))
		return 0;
	n = s->ev.count;
	if (n >= KLOAK_MAX_SUBST) {
		refuse(s, KR_TOO_MANY, KC_REFUSED_TOO_MANY, id, start);
		return 0;
	}
	item = &s->ev.items[n];
	item->addr = s->buf + start;
	item->secret_id = id;
	item->len = ph->len;
	s->ev.count = n + 1;
	return 0;
}

/* Kernel mode: write value (or placeholder back) into the writer's buffer. */
static __always_inline int poke(struct kloak_item *item, void *map)
{
	__u32 id = item->secret_id, len = item->len;
	struct kloak_bytes *src = bpf_map_lookup_elem(map, &id);

	if (!src || src->len != len || len < KLOAK_VALUE_MIN || len > KLOAK_VALUE_MAX)
		return -1;
	return bpf_probe_write_user((void *)item->addr, src->data, len);
}

/* Take the process's one stop claim; false while another thread holds it. */
static __always_inline bool claim_stop(__u32 tgid, __u32 tid, __u64 seq)
{
	struct kloak_stop_owner me = { .tid = tid, .seq = seq }, *cur;
	__u64 *released;

	if (bpf_map_update_elem(&kloak_stop_owner, &tgid, &me, BPF_NOEXIST) == 0)
		return true;
	cur = bpf_map_lookup_elem(&kloak_stop_owner, &tgid);
	released = bpf_map_lookup_elem(&kloak_stop_released, &tgid);
	/* Held unless: this very thread's earlier claim (it runs, so its
	 * restore is done), released by the agent, or stale. */
	if (cur && cur->tid != tid && !(released && *released == cur->seq) && seq - cur->seq < STOP_OWNER_STALE_NS)
		return false;
	bpf_map_update_elem(&kloak_stop_owner, &tgid, &me, BPF_ANY);
	return true;
}

static __always_inline int stop_with(const struct kloak_write_event *ev, __u32 type)
{
	struct kloak_write_event *e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);

	if (!e)
		return -1;
	__builtin_memcpy(e, ev, sizeof(*e));
	e->type = type;
	bpf_ringbuf_submit(e, 0);
	/* The group stops before the thread runs another instruction of
	 * SSL_write; the agent resumes it once the buffer is patched. */
	bpf_send_signal(SIGSTOP);
	return 0;
}

static __always_inline int on_write(struct pt_regs *ctx, struct scratch *s, __u64 fn, const int mode)
{
	__u64 id = bpf_get_current_pid_tgid(), ssl = PT_REGS_PARM1(ctx);
	__u32 tgid = id >> 32, tid = (__u32)id, i;
	struct kloak_proc *proc;
	__u64 len;

	proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!proc)
		return 0;
	bpf_map_update_elem(&kloak_active, &tid, &ssl, BPF_ANY);
	if (fn == KLOAK_FN_SSL_WRITE) {
		int num = (int)PT_REGS_PARM3(ctx);
		len = num > 0 ? (__u64)num : 0;
	} else {
		len = PT_REGS_PARM3(ctx);
	}
	if (len == 0)
		return 0;
	count(KC_WRITES_SEEN, 1);
	if (bpf_map_lookup_elem(&kloak_inflight, &tid)) {
		/* Nested TLS write (one API implemented on the other): the outer
		 * call already substituted; never clobber its restore record. */
		count(KC_NESTED_WRITE, 1);
		return 0;
	}

	s->ssl = ssl;
	s->peer_state = PEER_UNSET;
	s->sni_len = 0;
	__builtin_memset(&s->peer, 0, sizeof(s->peer));
	s->buf = PT_REGS_PARM2(ctx);
	s->len = len;
	s->scan_len = len < kloak_cfg.scan_cap ? len : kloak_cfg.scan_cap;
	s->tgid = tgid;
	s->scope_id = proc->scope_id;
	s->ncand = 0;
	s->ev.count = 0;
	s->ev.tgid = tgid;
	s->ev.tid = tid;
	s->ev.seq = bpf_ktime_get_ns();

	count(KC_BYTES_SCANNED, s->scan_len);
	if (len > s->scan_len) {
		count(KC_BYTES_UNSCANNED, len - s->scan_len);
		refuse(s, KR_BEYOND_SCAN_CAP, KC_SCAN_TRUNCATED, 0, s->scan_len);
	}
	bpf_loop((s->scan_len + KLOAK_CHUNK - 1) / KLOAK_CHUNK, scan_chunk, NULL, 0);
	if (s->ncand == 0)
		return 0;
	bpf_loop(s->ncand, verify_candidate, NULL, 0);
	if (s->ev.count == 0)
		return 0;

	if (mode == KLOAK_MODE_KERNEL) {
		for (i = 0; i < KLOAK_MAX_SUBST; i++) {
			if (i >= s->ev.count)
				break;
			if (poke(&s->ev.items[i], &kloak_values)) {
				/* A failed write may be partial: keep the item so the
				 * return probe puts the placeholder back regardless. */
				refuse(s, KR_WRITE_FAILED, KC_REFUSED_WRITE_FAILED, s->ev.items[i].secret_id,
				       s->ev.items[i].addr - s->buf);
			} else {
				count(KC_SUBSTITUTED, 1);
			}
		}
	} else {
		if (!claim_stop(tgid, tid, s->ev.seq)) {
			for (i = 0; i < KLOAK_MAX_SUBST; i++) {
				if (i >= s->ev.count)
					break;
				refuse(s, KR_CONCURRENT_WRITE, KC_REFUSED_CONCURRENT, s->ev.items[i].secret_id,
				       s->ev.items[i].addr - s->buf);
			}
			return 0;
		}
		if (stop_with(&s->ev, KE_SUBSTITUTE)) {
			bpf_map_delete_elem(&kloak_stop_owner, &tgid);
			for (i = 0; i < KLOAK_MAX_SUBST; i++) {
				if (i >= s->ev.count)
					break;
				count(KC_REFUSED_RINGBUF_FULL, 1);
			}
			return 0;
		}
		count(KC_SUBSTITUTED, s->ev.count);
	}
	bpf_map_update_elem(&kloak_inflight, &tid, &s->ev, BPF_ANY);
	return 0;
}

/* Works on the inflight record itself, not the per-CPU slot: a restore must
 * never be skipped because the slot is busy. */
static __always_inline int on_write_return(const int mode)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), i;
	struct kloak_write_event *ev;

	ev = bpf_map_lookup_elem(&kloak_inflight, &tid);
	if (!ev)
		return 0;
	if (mode == KLOAK_MODE_KERNEL) {
		for (i = 0; i < KLOAK_MAX_SUBST; i++) {
			if (i >= ev->count)
				break;
			if (poke(&ev->items[i], &kloak_secrets) == 0)
				count(KC_RESTORED, 1);
		}
	} else if (stop_with(ev, KE_RESTORE)) {
		count(KC_EVENTS_LOST, 1);
		bpf_map_delete_elem(&kloak_stop_owner, &ev->tgid);
	}
	bpf_map_delete_elem(&kloak_inflight, &tid);
	return 0;
}

/* SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, type, name): the SNI. */
static __always_inline int on_ctrl(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(), ssl = PT_REGS_PARM1(ctx);
	struct kloak_conn_key k = { .ssl = ssl, .tgid = id >> 32 };
	struct kloak_conn *c;
	struct kloak_sni_event *e;
	struct kloak_proc *proc;
	__u32 i, zero = 0, *want;
	__u64 seq = bpf_ktime_get_ns();
	const char *name;
	bool hold;
	long n;

	if ((int)PT_REGS_PARM2(ctx) != SSL_CTRL_SET_TLSEXT_HOSTNAME)
		return 0;
	proc = bpf_map_lookup_elem(&kloak_procs, &k.tgid);
	if (!proc)
		return 0;
	c = conn_of(&k);
	if (!c)
		return 0;
	__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
	c->sni_len = 0;
	name = (const char *)PT_REGS_PARM4(ctx);
	if (!name)
		return 0; /* SNI cleared */
	n = bpf_probe_read_user_str(c->sni, KLOAK_NAME_MAX, name);
	if (n <= 1) {
		__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
		return 0;
	}
	n--; /* the NUL */
	for (i = 0; i < KLOAK_NAME_MAX; i++) {
		if (i >= n)
			break;
		if (c->sni[i] >= 'A' && c->sni[i] <= 'Z')
			c->sni[i] += 'a' - 'A';
	}
	if (c->sni[(n - 1) & (KLOAK_NAME_MAX - 1)] == '.') {
		n--;
		c->sni[n & (KLOAK_NAME_MAX - 1)] = 0;
	}
	c->sni_len = n;
	/* The agent resolves names under wildcard rules as clients use them; a
	 * name it has not seen yet holds the client until it has. */
	want = bpf_map_lookup_elem(&kloak_sni_hold, &zero);
	hold = want && *want && !bpf_map_lookup_elem(&kloak_names, c->sni);
	if (hold && !claim_stop(k.tgid, (__u32)id, seq)) {
		hold = false;
		count(KC_SNI_UNHELD, 1);
	}
	e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);
	if (!e) {
		if (hold)
			bpf_map_delete_elem(&kloak_stop_owner, &k.tgid);
		count(KC_EVENTS_LOST, 1);
		return 0;
	}
	e->type = KE_SNI;
	e->tgid = k.tgid;
	e->scope_id = proc->scope_id;
	e->sni_len = n;
	e->hold = hold;
	e->_pad = 0;
	e->seq = seq;
	__builtin_memcpy(e->sni, c->sni, KLOAK_NAME_MAX);
	bpf_ringbuf_submit(e, 0);
	if (hold) {
		count(KC_SNI_HELD, 1);
		bpf_send_signal(SIGSTOP);
	}
	return 0;
}

static __always_inline int on_entry(struct pt_regs *ctx, const int mode)
{
	__u64 fn = bpf_get_attach_cookie(ctx), id, ssl;
	__u32 tid, tgid;
	struct scratch *s;
	int ret;

	switch (fn) {
	case KLOAK_FN_SSL_WRITE:
	case KLOAK_FN_SSL_WRITE_EX:
		s = scratch();
		if (!s)
			return 0;
		/* A preempted program keeps its slot: the newcomer fails closed. */
		if (__sync_fetch_and_add(&s->busy, 1)) {
			__sync_fetch_and_add(&s->busy, -1);
			count(KC_NESTED_WRITE, 1);
			return 0;
		}
		ret = on_write(ctx, s, fn, mode);
		__sync_fetch_and_add(&s->busy, -1);
		return ret;
	case KLOAK_FN_SSL_DO_HANDSHAKE:
		id = bpf_get_current_pid_tgid();
		tid = (__u32)id;
		tgid = id >> 32;
		ssl = PT_REGS_PARM1(ctx);
		if (bpf_map_lookup_elem(&kloak_procs, &tgid))
			bpf_map_update_elem(&kloak_active, &tid, &ssl, BPF_ANY);
		return 0;
	case KLOAK_FN_SSL_SET_FD:
		id = bpf_get_current_pid_tgid();
		tgid = id >> 32;
		if (bpf_map_lookup_elem(&kloak_procs, &tgid))
			bind_conn(PT_REGS_PARM1(ctx), tgid, (__s32)PT_REGS_PARM2(ctx), true);
		return 0;
	case KLOAK_FN_SSL_CTRL:
		return on_ctrl(ctx);
	case KLOAK_FN_SSL_FREE: {
		struct kloak_conn_key k = { .ssl = PT_REGS_PARM1(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };

		bpf_map_delete_elem(&kloak_conns, &k);
		return 0;
	}
	}
	return 0;
}

static __always_inline int on_return(struct pt_regs *ctx, const int mode)
{
	__u64 fn = bpf_get_attach_cookie(ctx);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&kloak_active, &tid);
	if (fn != KLOAK_FN_SSL_WRITE && fn != KLOAK_FN_SSL_WRITE_EX)
		return 0;
	return on_write_return(mode);
}

SEC("uprobe")
int kloak_tls_stop(struct pt_regs *ctx)
{
	return on_entry(ctx, KLOAK_MODE_STOP);
}

SEC("uretprobe")
int kloak_tls_ret_stop(struct pt_regs *ctx)
{
	return on_return(ctx, KLOAK_MODE_STOP);
}

SEC("uprobe")
int kloak_tls_kernel(struct pt_regs *ctx)
{
	return on_entry(ctx, KLOAK_MODE_KERNEL);
}

SEC("uretprobe")
int kloak_tls_ret_kernel(struct pt_regs *ctx)
{
	return on_return(ctx, KLOAK_MODE_KERNEL);
}

/* Sends made inside a TLS call tie its connection to the socket. */
static __always_inline int on_send(__s64 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 *ssl = bpf_map_lookup_elem(&kloak_active, &tid);

	if (ssl)
		bind_conn(*ssl, id >> 32, (__s32)fd, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int kloak_send_write(struct trace_event_raw_sys_enter *ctx)
{
	return on_send(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int kloak_send_writev(struct trace_event_raw_sys_enter *ctx)
{
	return on_send(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int kloak_send_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return on_send(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int kloak_send_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return on_send(ctx->args[0]);
}

static __always_inline void proc_event(__u32 type, __u32 tgid, __u32 ppid, __u32 scope_id)
{
	struct kloak_proc_event *e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);

	if (!e) {
		count(KC_EVENTS_LOST, 1);
		return;
	}
	e->type = type;
	e->tgid = tgid;
	e->ppid = ppid;
	e->scope_id = scope_id;
	bpf_ringbuf_submit(e, 0);
}

/*
 * The scope of the current task's cgroup: its own or the nearest registered
 * ancestor's (a container may create sub-cgroups of its own). NULL when none.
 * Runs at every exec and fork of an unprotected process on the node: a
 * handful of map lookups, nothing on the TLS path.
 */
static __always_inline __u32 *cgroup_scope(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u32 *scope = bpf_map_lookup_elem(&kloak_cgroups, &id);
	int level;

	if (scope)
		return scope;
	/* Deepest first; levels below the task's own return 0. Level 0 is the root. */
	for (level = KLOAK_CGROUP_DEPTH - 1; level > 0; level--) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			continue;
		scope = bpf_map_lookup_elem(&kloak_cgroups, &id);
		if (scope)
			return scope;
	}
	return NULL;
}

/* Children join their parent's scope in the kernel, before they can run. */
SEC("raw_tp/sched_process_fork")
int BPF_PROG(kloak_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct kloak_proc *pp, np = {};
	__u32 *launcher, *scope;

	if (ctgid != (__u32)BPF_CORE_READ(child, pid))
		return 0; /* a new thread, not a new process */
	pp = bpf_map_lookup_elem(&kloak_procs, &ptgid);
	if (pp) {
		np.scope_id = pp->scope_id;
	} else if ((launcher = bpf_map_lookup_elem(&kloak_launchers, &ptgid))) {
		np.scope_id = *launcher;
	} else {
		/* An unprotected process inside a pod's container (moved into its
		 * cgroup from outside, e.g. by the runtime for `kubectl exec`):
		 * its children are the pod's. The current task is the parent; the
		 * child shares its cgroup unless created with CLONE_INTO_CGROUP,
		 * and then it is caught at its exec, which a runtime always does. */
		scope = cgroup_scope();
		if (!scope)
			return 0;
		np.scope_id = *scope;
		if (bpf_map_update_elem(&kloak_procs, &ctgid, &np, BPF_NOEXIST)) {
			count(KC_PROCS_FULL, 1);
			return 0;
		}
		count(KC_CGROUP_JOINED, 1);
		proc_event(KE_FORK, ctgid, ptgid, np.scope_id);
		return 0;
	}
	bpf_map_update_elem(&kloak_procs, &ctgid, &np, BPF_ANY);
	proc_event(KE_FORK, ctgid, ptgid, np.scope_id);
	return 0;
}

/* A process in a scope exec'd: hold it before its first instruction until
 * the agent has attached to the new image. */
SEC("raw_tp/sched_process_exec")
int kloak_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct kloak_proc *p = bpf_map_lookup_elem(&kloak_procs, &tgid), np = {};
	struct kloak_proc_event *e;
	__u32 *scope = NULL;

	if (!p) {
		/* Not a descendant of a protected process, but inside a pod's
		 * container: the runtime's `exec` into a running container (runc,
		 * crun, conmon) forks outside the container, moves the child into
		 * the container's cgroup and execs the command there. It joins
		 * the pod's scope now and is held like any scoped exec. */
		scope = cgroup_scope();
		if (!scope)
			return 0;
		np.scope_id = *scope;
	}
	e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);
	if (!e) {
		/* Without the event nobody would resume it: run unheld (a joiner
		 * stays out of the scope, so it runs unprotected, never attached). */
		count(KC_EVENTS_LOST, 1);
		return 0;
	}
	if (!p) {
		if (bpf_map_update_elem(&kloak_procs, &tgid, &np, BPF_NOEXIST)) {
			bpf_ringbuf_discard(e, 0);
			count(KC_PROCS_FULL, 1);
			return 0;
		}
		count(KC_CGROUP_JOINED, 1);
	}
	e->type = KE_EXEC;
	e->tgid = tgid;
	e->ppid = 0;
	e->scope_id = p ? p->scope_id : np.scope_id;
	bpf_ringbuf_submit(e, 0);
	bpf_send_signal(SIGSTOP);
	return 0;
}

/* The thread-group leader's exit ends the process for kloak (portable across
 * kernels whose exit tracepoint lacks group_dead). */
SEC("raw_tp/sched_process_exit")
int kloak_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct kloak_proc *p;
	__u32 scope;

	p = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!p)
		return 0;
	bpf_map_delete_elem(&kloak_inflight, &tid);
	if (tgid != tid)
		return 0;
	scope = p->scope_id;
	bpf_map_delete_elem(&kloak_procs, &tgid);
	bpf_map_delete_elem(&kloak_stop_owner, &tgid);
	bpf_map_delete_elem(&kloak_stop_released, &tgid);
	proc_event(KE_EXIT, tgid, 0, scope);
	return 0;
}

/* Keeps every type shared with user space in the object's BTF, where
 * test/dataplane/abi.test.ts checks the TypeScript mirror. Never called, so
 * never loaded. */
struct kloak_abi_anchor {
	struct kloak_proc_event proc_event;
	struct kloak_stop_owner stop_owner;
	struct kloak_refusal_event refusal_event;
	struct kloak_sni_event sni_event;
	struct kloak_conn conn;
	struct kloak_conn_key conn_key;
	struct kloak_policy policy;
	struct kloak_name_addr name_addr;
	struct kloak_resolved resolved;
	enum kloak_counter counter;
	enum kloak_conn_flags conn_flags;
	enum kloak_rule_kind rule_kind;
	enum kloak_refusal refusal;
	enum kloak_event_type event_type;
	enum kloak_fn fn;
	enum kloak_mode mode;
};

__noinline int kloak_abi_types(struct kloak_abi_anchor *a)
{
	return a != 0;
}
