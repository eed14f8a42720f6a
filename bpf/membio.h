/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Memory-BIO connections (node's TLSWrap, Python's SSLObject under asyncio,
 * uvloop, aiohttp, httpx): SSL_write only encrypts into a memory BIO, and the
 * app moves the ciphertext to its socket itself, after the TLS call returned,
 * on the same thread (node: EncOut -> libuv write/writev; asyncio:
 * transport.write -> send). No send happens inside a TLS call, so conn.h's
 * bind_by_send never sees one.
 *
 * Such a connection is bound by the first send its thread makes to a TCP
 * socket after a TLS call on it returned, when everything that can be checked
 * cheaply says it is this connection's ciphertext:
 *  - the bytes are a TLS handshake record holding a ClientHello
 *    (16 03 0x LL LL 01): the connection's first flight;
 *  - the socket never had a data byte queued before (nothing sent, nothing
 *    waiting): a ClientHello on a fresh TCP connection, so a socket that
 *    already carries another TLS connection (or a proxy CONNECT) never binds;
 *  - any TLS call in between replaces the pending connection, a send to a
 *    non-TCP fd leaves it pending, any other TCP send consumes it.
 * After binding, each write's next TLS-record send must go to the bound
 * socket, else the connection is marked conflicting and never substituted
 * again. Anything else leaves it unbound (unknown_peer): fail closed.
 *
 * What this holds: without code execution in the tree (threat model A) the
 * app's own code sends a connection's ciphertext to that connection's socket,
 * and the checks above tie the binding to that socket. It does not hold
 * against code in the tree (model B): a process that drives its own memory
 * BIO can bind the connection with a real ClientHello on an allowed socket and
 * run the handshake and the writes with anyone else; the conflict is only seen
 * after a write was encrypted. Strict binding refuses every app-BIO connection
 * (KR_APP_BIO), these included (test/security/membio.test.ts).
 */
#ifndef KLOAK_MEMBIO_H
#define KLOAK_MEMBIO_H

/* tid -> the SSL* whose TLS call returned last on that thread, while its
 * ciphertext may still be waiting in a memory BIO */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} kloak_membio_pending SEC(".maps");

#define TLS_RECORD_HANDSHAKE 0x16
#define TLS_HANDSHAKE_CLIENT_HELLO 0x01

/* A TLS call on ssl returned on this thread. `wrote`: it was a write, whose
 * ciphertext must follow the binding; other calls matter only until the
 * connection is bound (they produce the handshake flights). */
static __always_inline void membio_after_call(__u64 ssl, __u32 tgid, __u32 tid, bool wrote)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);
	__u32 flags;

	if (!c) {
		bpf_map_delete_elem(&kloak_membio_pending, &tid);
		return;
	}
	flags = c->flags;
	if (!(flags & KLOAK_CONN_APP_BIO) ||
	    (flags & (KLOAK_CONN_BY_FD | KLOAK_CONN_LATE | KLOAK_CONN_CONFLICT | KLOAK_CONN_BIO_REPLACED)) ||
	    ((flags & KLOAK_CONN_BOUND) && !wrote)) {
		bpf_map_delete_elem(&kloak_membio_pending, &tid);
		return;
	}
	bpf_map_update_elem(&kloak_membio_pending, &tid, &ssl, BPF_ANY);
}

/* The return of a TLS call (kloak_active still holds its SSL*, set at entry
 * for processes in a scope). */
static __always_inline void membio_return(__u64 id, bool wrote)
{
	__u32 tid = (__u32)id;
	__u64 *ssl = bpf_map_lookup_elem(&kloak_active, &tid);

	if (ssl)
		membio_after_call(*ssl, id >> 32, tid, wrote);
}

/* The first bytes a send syscall is about to write; 0 when unreadable or
 * shorter than a record header and a handshake type. */
static __always_inline int send_head(__u8 *head, __u64 buf, __u64 len)
{
	if (!buf || len < 6)
		return 0;
	return bpf_probe_read_user(head, 6, (const void *)buf) == 0;
}

static __always_inline int iov_head(__u8 *head, __u64 iov, __u64 iovcnt)
{
	struct iovec v;

	if (!iov || iovcnt < 1 || bpf_probe_read_user(&v, sizeof(v), (const void *)iov))
		return 0;
	return send_head(head, (__u64)v.iov_base, v.iov_len);
}

/* A TLS record header: content type 20..23, version 3.x (x <= 4). */
static __always_inline bool tls_record(const __u8 *h)
{
	return h[0] >= 0x14 && h[0] <= 0x17 && h[1] == 3 && h[2] <= 4;
}

/* The socket never had a data byte queued: nothing sent (bytes_sent counts
 * data only; bytes_acked would count the SYN), nothing waiting to be. */
static __always_inline bool tcp_fresh(struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 queued = BPF_CORE_READ(tp, write_seq);

	return BPF_CORE_READ(tp, bytes_sent) == 0 && queued == BPF_CORE_READ(tp, snd_nxt) && queued == BPF_CORE_READ(tp, snd_una);
}

/* A send on fd outside any TLS call, while a memory-BIO connection of this
 * thread is pending; `head` holds the first 6 bytes (valid when have_head). */
static __always_inline void membio_send(__u32 tgid, __u32 tid, __s32 fd, const __u8 *head, int have_head)
{
	__u64 *pending = bpf_map_lookup_elem(&kloak_membio_pending, &tid);
	struct kloak_conn_key k = { .tgid = tgid };
	struct kloak_conn *c;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;

	if (!pending)
		return;
	f = fd_file(fd);
	sk = f ? inet_stream(f, &ino) : NULL;
	if (!sk)
		return; /* a pipe, a file, UDP (DNS): not where ciphertext goes */
	k.ssl = *pending;
	bpf_map_delete_elem(&kloak_membio_pending, &tid);
	if (!have_head || !tls_record(head))
		return; /* plain bytes to some socket: not this connection's */
	c = bpf_map_lookup_elem(&kloak_conns, &k);
	if (!c || !(c->flags & KLOAK_CONN_APP_BIO) || (c->flags & (KLOAK_CONN_BY_FD | KLOAK_CONN_LATE)))
		return;
	if (c->flags & KLOAK_CONN_BOUND) {
		if (c->ino != ino && !(c->flags & KLOAK_CONN_CONFLICT)) {
			c->flags |= KLOAK_CONN_CONFLICT;
			count(KC_BIND_CONFLICT, 1);
		}
		return;
	}
	if (head[0] != TLS_RECORD_HANDSHAKE || head[5] != TLS_HANDSHAKE_CLIENT_HELLO || !tcp_fresh(sk))
		return;
	c->fd = fd;
	c->ino = ino;
	c->bound_ns = bpf_ktime_get_ns();
	c->flags |= KLOAK_CONN_BOUND;
	count(KC_CONNS_BOUND, 1);
}

#endif /* KLOAK_MEMBIO_H */
