/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Connections: which socket an SSL* writes to, its peer, and the SNI the
 * client put on the wire. The binding must follow where the ciphertext goes:
 *
 *  - SSL_set_fd/SSL_set_wfd give the library a socket BIO on that fd: the
 *    binding is made when they return (they install the BIO through
 *    SSL_set_bio themselves), and it is the library's own code that writes.
 *  - An app that installs its own BIO (SSL_set_bio, SSL_set0_wbio) before
 *    any binding writes through its own code: such a connection is bound by
 *    the sends its thread makes inside TLS calls (curl). A scope with strict
 *    binding refuses these connections (KR_APP_BIO).
 *  - A BIO set after the binding, a send on a second socket, an SNI set again
 *    after the handshake began, or a connection first seen mid-flight (its
 *    setup unseen: attached late, or state lost) is never substituted.
 *
 * Every write re-reads the socket from the kernel: same inode, in the scope's
 * network namespace, connected, and the fd table not shared with another
 * process (which could swap the socket under the same fd number).
 */
#ifndef KLOAK_CONN_H
#define KLOAK_CONN_H

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55

/* s->peer_state: not loaded yet, known, or the refusal reason why not */
#define PEER_UNSET (KR__COUNT + 1)
#define PEER_KNOWN (KR__COUNT + 2)

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

/* Another process (a thread group other than ours) shares our fd table: it
 * could put another socket under a bound fd number while we write. Each
 * thread holds one reference; a transient extra one (a thread being created)
 * only refuses, which is safe. */
static __always_inline bool fd_table_shared(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	int refs = BPF_CORE_READ(t, files, count.counter);
	int threads = BPF_CORE_READ(t, signal, nr_threads);

	return refs > threads;
}

/* A new connection: no socket, no SNI. Global data, not the stack: the
 * verifier allows 512 bytes of stack across a whole call chain. */
static const struct kloak_conn fresh_conn = { .fd = -1 };

/* The connection entry of {ssl, tgid}; created (with `flags`) when new, if the
 * process is under its quota and the table has room. NULL: not tracked. */
static __always_inline struct kloak_conn *conn_of(struct kloak_conn_key *k, __u32 flags)
{
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, k);
	__u32 one = 1, *n;

	if (c)
		return c;
	n = bpf_map_lookup_elem(&kloak_conn_count, &k->tgid);
	if (n && *n >= KLOAK_CONNS_PER_PROCESS) {
		count(KC_CONNS_UNTRACKED, 1);
		return NULL;
	}
	if (bpf_map_update_elem(&kloak_conns, k, &fresh_conn, BPF_NOEXIST)) {
		count(KC_CONNS_UNTRACKED, 1);
		return NULL;
	}
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&kloak_conn_count, &k->tgid, &one, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&kloak_conns, k);
	if (c)
		c->flags = flags;
	return c;
}

static __always_inline void forget_conn(struct kloak_conn_key *k)
{
	__u32 *n;

	if (bpf_map_delete_elem(&kloak_conns, k))
		return;
	n = bpf_map_lookup_elem(&kloak_conn_count, &k->tgid);
	if (n && *n)
		__sync_fetch_and_add(n, -1);
}

/* SSL_set_fd/SSL_set_wfd returned: the library writes to fd from now on,
 * through its own socket BIO. */
static __always_inline void bind_by_fd(__u64 ssl, __u32 tgid, __s32 fd)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = conn_of(&k, 0);
	struct file *f;
	__u64 ino = 0;

	if (!c)
		return;
	f = fd_file(fd);
	if (!f || !inet_stream(f, &ino)) {
		/* Not a TCP socket: nothing kloak can check the peer of. */
		c->flags &= ~(KLOAK_CONN_BOUND | KLOAK_CONN_BY_FD | KLOAK_CONN_APP_BIO);
		return;
	}
	c->fd = fd;
	c->ino = ino;
	c->bound_ns = bpf_ktime_get_ns();
	/* A socket BIO replaces whatever BIO was there; a conflict stays. */
	c->flags = (c->flags & ~(KLOAK_CONN_APP_BIO | KLOAK_CONN_BIO_REPLACED)) | KLOAK_CONN_BOUND | KLOAK_CONN_BY_FD;
	count(KC_CONNS_BOUND, 1);
}

/* A send on fd while the thread is inside a TLS call of ssl. */
static __always_inline void bind_by_send(__u64 ssl, __u32 tgid, __s32 fd)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);
	struct file *f;
	__u64 ino = 0;

	if (!c)
		return; /* never seen set up: stays unknown */
	f = fd_file(fd);
	if (!f || !inet_stream(f, &ino))
		return;
	if (!(c->flags & KLOAK_CONN_BOUND)) {
		c->fd = fd;
		c->ino = ino;
		c->bound_ns = bpf_ktime_get_ns();
		c->flags |= KLOAK_CONN_BOUND;
		count(KC_CONNS_BOUND, 1);
	} else if (c->ino != ino && !(c->flags & KLOAK_CONN_CONFLICT)) {
		/* Ciphertext went to a second socket. */
		c->flags |= KLOAK_CONN_CONFLICT;
		count(KC_BIND_CONFLICT, 1);
	}
}

/* SSL_set_bio/SSL_set0_wbio, outside SSL_set_fd/SSL_set_wfd: the app's own
 * BIO. Before any binding it is an app-BIO connection; after, the ciphertext
 * may go anywhere and the connection is never substituted again. */
static __always_inline void app_bio(__u64 ssl, __u32 tgid)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_setfd *inside;
	struct kloak_conn *c;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	inside = bpf_map_lookup_elem(&kloak_setfd, &tid);
	if (inside && inside->ssl == ssl)
		return; /* the library installing its socket BIO */
	c = conn_of(&k, 0);
	if (!c)
		return;
	if (c->flags & KLOAK_CONN_BOUND)
		c->flags |= KLOAK_CONN_BIO_REPLACED;
	else
		c->flags |= KLOAK_CONN_APP_BIO;
}

/* A TLS call (handshake or write) on ssl: from now on the SNI on the wire is
 * fixed. A connection first seen here was set up before kloak could see it. */
static __always_inline void tls_call(__u64 ssl, __u32 tgid)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);

	if (c) {
		if (!(c->flags & KLOAK_CONN_HANDSHAKE))
			c->flags |= KLOAK_CONN_HANDSHAKE;
		return;
	}
	conn_of(&k, KLOAK_CONN_HANDSHAKE | KLOAK_CONN_LATE);
}

/*
 * Load the write's connection (s->ssl) into the scratch slot, once per write:
 * its SNI and, when the binding still holds, its peer. Returns whether the
 * peer is known; s->peer_state otherwise holds the refusal reason.
 */
__noinline int kloak_load_peer(__u32 slot)
{
	struct scratch *s = scratch(slot);
	struct kloak_conn_key k = {};
	struct kloak_scope *scope;
	struct kloak_conn *c;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;
	__u32 flags;

	if (!s)
		return 0;
	if (s->peer_state != PEER_UNSET)
		return s->peer_state == PEER_KNOWN;
	s->peer_state = KR_UNKNOWN_PEER;
	k.ssl = s->ssl;
	k.tgid = s->tgid;
	c = bpf_map_lookup_elem(&kloak_conns, &k);
	if (!c)
		return 0;
	s->sni_len = c->sni_len;
	__builtin_memcpy(s->sni, c->sni, KLOAK_NAME_MAX);
	s->bound_ns = c->bound_ns;
	flags = c->flags;
	if (flags & KLOAK_CONN_LATE)
		return 0;
	if (flags & (KLOAK_CONN_BIO_REPLACED | KLOAK_CONN_CONFLICT)) {
		s->peer_state = KR_BINDING_CHANGED;
		return 0;
	}
	if (flags & KLOAK_CONN_SNI_CHANGED) {
		s->peer_state = KR_SNI_CHANGED;
		return 0;
	}
	if (!(flags & KLOAK_CONN_BOUND))
		return 0;
	scope = bpf_map_lookup_elem(&kloak_scopes, &s->scope_id);
	if (!scope)
		return 0;
	if ((flags & KLOAK_CONN_APP_BIO) && (scope->flags & KLOAK_SCOPE_STRICT_BINDING)) {
		s->peer_state = KR_APP_BIO;
		return 0;
	}
	if (fd_table_shared()) {
		s->peer_state = KR_SHARED_FD_TABLE;
		return 0;
	}
	f = fd_file(c->fd);
	if (!f)
		return 0; /* closed */
	sk = inet_stream(f, &ino);
	if (!sk || ino != c->ino) {
		s->peer_state = KR_BINDING_CHANGED; /* the fd number now names something else */
		return 0;
	}
	if (BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != scope->netns || !scope->netns) {
		s->peer_state = KR_FOREIGN_NETNS;
		return 0;
	}
	/* The socket the ciphertext goes to: the one a "block" shuts down. */
	s->conn_fd = c->fd;
	s->conn_ino = ino;
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
		return 0; /* not connected */
	s->peer_state = PEER_KNOWN;
	return 1;
}

/* ASCII A-Z to a-z in a NUL-padded name. */
static __always_inline void lowercase(char *name)
{
	__u32 i;

#pragma unroll
	for (i = 0; i < KLOAK_NAME_MAX / 8; i++)
		((__u64 *)name)[i] = lower_word(((__u64 *)name)[i]);
}

/* kloak_set_sni's name_len for a NUL-terminated name (OpenSSL) */
#define KLOAK_SNI_CSTR ((__u64)-1)

/*
 * SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, type, name) or
 * gnutls_server_name_set(session, type, name, name_len) in a scoped
 * process: the connection's SNI, lowercased and without a trailing dot. A
 * counted name that is no C string of name_len bytes (a NUL inside, or too
 * long) is not what the wire carries as one name: it gets a length no rule's
 * name has, so it matches none. Once a
 * TLS call ran on the connection the SNI on the wire is fixed: a new one is
 * not taken, and the connection is never substituted again. The agent
 * resolves names under wildcard rules as clients use them; a name it has not
 * seen yet holds the client (stop claim + SIGSTOP) until it has.
 */
__noinline int kloak_set_sni(__u64 ssl, __u64 name, __u64 name_len, __u32 scope_id)
{
	__u64 id = bpf_get_current_pid_tgid(), seq = bpf_ktime_get_ns();
	struct kloak_conn_key k = { .ssl = ssl, .tgid = id >> 32 };
	struct kloak_sni_event *e;
	struct kloak_conn *c;
	__u32 zero = 0, *want;
	bool hold;
	long n;

	c = conn_of(&k, 0);
	if (!c)
		return 0;
	if (c->flags & KLOAK_CONN_HANDSHAKE) {
		c->flags |= KLOAK_CONN_SNI_CHANGED;
		return 0;
	}
	__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
	c->sni_len = 0;
	if (!name || !name_len)
		return 0; /* SNI cleared */
	if (name_len == KLOAK_SNI_CSTR) {
		n = bpf_probe_read_user_str(c->sni, KLOAK_NAME_MAX, (const char *)name);
	} else {
		n = bpf_probe_read_user_str(c->sni, BOUNDED(name_len, KLOAK_NAME_MAX - 1) + 1, (const char *)name);
		if (name_len >= KLOAK_NAME_MAX || n != (long)name_len + 1) {
			c->sni_len = KLOAK_NAME_MAX;
			return 0;
		}
	}
	if (n <= 1) {
		__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
		return 0;
	}
	n--; /* the NUL */
	lowercase(c->sni);
	if (c->sni[(n - 1) & (KLOAK_NAME_MAX - 1)] == '.') {
		n--;
		c->sni[n & (KLOAK_NAME_MAX - 1)] = 0;
	}
	c->sni_len = n;
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
	e->scope_id = scope_id;
	e->sni_len = n;
	e->hold = hold;
	e->tid = (__u32)id;
	e->seq = seq;
	__builtin_memcpy(e->sni, c->sni, KLOAK_NAME_MAX);
	bpf_ringbuf_submit(e, 0);
	if (hold) {
		count(KC_SNI_HELD, 1);
		hold_writer(k.tgid);
	}
	return 0;
}

#endif /* KLOAK_CONN_H */
