/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Connections: which socket an SSL* writes to, its peer, and the SNI the
 * client set. A connection is tied to its socket at SSL_set_fd, or by the
 * sends its thread makes inside a TLS call (handshake or write); every write
 * re-reads that socket from the kernel and requires the same inode.
 */
#ifndef KLOAK_CONN_H
#define KLOAK_CONN_H

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55

#define PEER_UNSET 0
#define PEER_KNOWN 1
#define PEER_UNKNOWN 2

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

/* A new connection: no socket, no SNI. Global data, not the stack: the
 * verifier allows 512 bytes of stack across a whole call chain. */
static const struct kloak_conn fresh_conn = { .fd = -1 };

/* The connection entry of {ssl, tgid}, created empty when new. */
static __always_inline struct kloak_conn *conn_of(struct kloak_conn_key *k)
{
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, k);

	if (c)
		return c;
	bpf_map_update_elem(&kloak_conns, k, &fresh_conn, BPF_NOEXIST);
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

/*
 * Load the write's connection (s->ssl) into the scratch slot, once per write:
 * its SNI and, when its socket is still the one it was bound to and is
 * connected, its peer. Returns whether the peer is known.
 */
__noinline int kloak_peer_known(void)
{
	struct scratch *s = scratch();
	struct kloak_conn_key k = {};
	struct kloak_conn *c;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;

	if (!s)
		return 0;
	if (s->peer_state != PEER_UNSET)
		return s->peer_state == PEER_KNOWN;
	s->peer_state = PEER_UNKNOWN;
	k.ssl = s->ssl;
	k.tgid = s->tgid;
	c = bpf_map_lookup_elem(&kloak_conns, &k);
	if (!c)
		return 0;
	s->sni_len = c->sni_len;
	__builtin_memcpy(s->sni, c->sni, KLOAK_NAME_MAX);
	s->bound_ns = c->bound_ns;
	if ((c->flags & (KLOAK_CONN_BOUND | KLOAK_CONN_CONFLICT)) != KLOAK_CONN_BOUND)
		return 0;
	f = fd_file(c->fd);
	if (!f)
		return 0;
	sk = inet_stream(f, &ino);
	if (!sk || ino != c->ino)
		return 0; /* closed, or the fd number now names another socket */
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

/*
 * SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, type, name) in a scoped
 * process: the connection's SNI, lowercased and without a trailing dot. The
 * agent resolves names under wildcard rules as clients use them; a name it
 * has not seen yet holds the client (stop claim + SIGSTOP) until it has.
 */
__noinline int kloak_set_sni(__u64 ssl, __u64 name, __u32 scope_id)
{
	__u64 id = bpf_get_current_pid_tgid(), seq = bpf_ktime_get_ns();
	struct kloak_conn_key k = { .ssl = ssl, .tgid = id >> 32 };
	struct kloak_sni_event *e;
	struct kloak_conn *c;
	__u32 zero = 0, *want;
	bool hold;
	long n;

	c = conn_of(&k);
	if (!c)
		return 0;
	__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
	c->sni_len = 0;
	if (!name)
		return 0; /* SNI cleared */
	n = bpf_probe_read_user_str(c->sni, KLOAK_NAME_MAX, (const char *)name);
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

#endif /* KLOAK_CONN_H */
