/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Memory-BIO connections (node's TLSWrap, Python's SSLObject under asyncio,
 * uvloop, aiohttp, httpx): SSL_write only encrypts into a memory BIO, and the
 * app moves the ciphertext to its socket itself, after the TLS call returned,
 * on the same thread (node: EncOut -> libuv write/writev; asyncio:
 * transport.write -> send). No send happens inside a TLS call, so conn.h's
 * bind_by_send never sees one.
 *
 * Such a connection is bound to the socket its first flight goes to, when
 * everything that can be checked cheaply says the bytes are that flight:
 *  - the send (outside any TLS call, on this thread) starts with a TLS
 *    handshake record holding a ClientHello (16 03 0x LL LL 01);
 *  - the socket never had a data byte queued before (nothing sent, nothing
 *    waiting): a fresh TCP connection, so a socket that already carried
 *    something (another TLS connection, a proxy CONNECT) never binds;
 *  - exactly one connection's first TLS call (the one that makes the
 *    ClientHello) returned on this thread since the last ClientHello.
 *    uvloop and anyio send after other connections ran, in no set order:
 *    with several first calls pending, their ClientHellos bind nothing;
 *  - a ClientHello on a fresh socket that no pending first call can have made
 *    (a TLS stack kloak does not hook) marks the connection the previous one
 *    bound as conflicting: that binding may have been this sender's.
 * After binding, the thread's next TLS record after a write of the connection
 * must go to the bound socket, else the connection is marked conflicting and
 * never substituted again. Anything else leaves it unbound (unknown_peer).
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

/* kloak_membio_pending[tid]: what the thread's next sends may carry. */
struct membio_pending {
	__u64 first_ssl;      /* entered its first TLS call on this thread (set at entry) */
	__u64 bind_ssl;       /* the last connection whose first call returned */
	__u32 bind_n;         /* first calls returned whose ClientHello was not seen yet */
	__u32 bind_ambiguous; /* bind_n went above 1: the pending ClientHellos bind nothing */
	__u64 check_ssl;      /* the last bound connection whose write returned */
	__u32 check_ambiguous; /* another bound connection's call returned since the last send */
	__u32 _pad;
	__u64 hello_ssl;      /* the connection the last ClientHello bound */
};

KLOAK_HASH(kloak_membio_pending, __u32, struct membio_pending, 16384);

static __always_inline struct membio_pending *membio_state(__u32 tid)
{
	static const struct membio_pending none = {};
	struct membio_pending *p = bpf_map_lookup_elem(&kloak_membio_pending, &tid);

	if (p)
		return p;
	bpf_map_update_elem(&kloak_membio_pending, &tid, &none, BPF_NOEXIST);
	return bpf_map_lookup_elem(&kloak_membio_pending, &tid);
}

/* Entry of a TLS call, before tls_call() marks the connection: an app-BIO
 * connection that never had a TLS call is about to make its ClientHello. */
static __always_inline void membio_before_call(__u64 ssl, __u32 tgid, __u32 tid)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);
	struct membio_pending *p;

	if (!c || (c->flags & (KLOAK_CONN_HANDSHAKE | KLOAK_CONN_BOUND | KLOAK_CONN_BY_FD)) || !(c->flags & KLOAK_CONN_APP_BIO))
		return;
	p = membio_state(tid);
	if (p)
		p->first_ssl = ssl;
}

/* A TLS call on ssl returned on this thread. A connection on the library's
 * own socket BIO sent its ciphertext inside the call: nothing waits. */
static __always_inline void membio_after_call(__u64 ssl, __u32 tgid, __u32 tid, bool wrote)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);
	struct membio_pending *p;

	if (!c || (c->flags & KLOAK_CONN_BY_FD))
		return;
	p = membio_state(tid);
	if (!p)
		return;
	if (p->first_ssl == ssl) {
		p->first_ssl = 0;
		/* Bound inside the call (an app BIO that sends, like curl's):
		 * its ClientHello went out already. */
		if (!(c->flags & KLOAK_CONN_BOUND)) {
			if (p->bind_n)
				p->bind_ambiguous = 1;
			p->bind_n++;
			p->bind_ssl = ssl;
			return;
		}
	}
	if (!(c->flags & KLOAK_CONN_BOUND))
		return;
	if (p->check_ssl && p->check_ssl != ssl)
		p->check_ambiguous = 1;
	/* Only a write's send is checked; other calls of a bound connection
	 * (a read answering a key update) only make the check ambiguous. */
	if (wrote)
		p->check_ssl = ssl;
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

/* The socket never had a data byte queued: nothing sent (bytes_sent counts
 * data only; bytes_acked would count the SYN), nothing waiting to be. */
static __always_inline bool tcp_fresh(struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 queued = BPF_CORE_READ(tp, write_seq);

	return BPF_CORE_READ(tp, bytes_sent) == 0 && queued == BPF_CORE_READ(tp, snd_nxt) && queued == BPF_CORE_READ(tp, snd_una);
}

/* SSL_free(ssl) on this thread: a pending first flight of it that never went
 * out (the app gave up) must not leave every later connection ambiguous. Its
 * bytes, if they still went out, would be a ClientHello no call made: the
 * last binding is then marked conflicting, which only fails closed. */
static __always_inline void membio_forget(__u64 ssl, __u32 tid)
{
	struct membio_pending *p = bpf_map_lookup_elem(&kloak_membio_pending, &tid);

	if (!p)
		return;
	if (p->bind_ssl == ssl && p->bind_n == 1 && !p->bind_ambiguous) {
		p->bind_ssl = 0;
		p->bind_n = 0;
	}
	if (p->first_ssl == ssl)
		p->first_ssl = 0;
	if (p->check_ssl == ssl)
		p->check_ssl = 0;
}

/* Whether the thread's next sends can bind or check anything (else their
 * payload is not read). */
static __always_inline bool membio_wants(__u32 tid)
{
	struct membio_pending *p = bpf_map_lookup_elem(&kloak_membio_pending, &tid);

	return p && (p->bind_n || p->check_ssl || p->hello_ssl);
}

/* A send on fd outside any TLS call while this thread has a membio state
 * (p); `head` holds its first 6 bytes when have_head. Sends to non-TCP fds
 * (pipes, files, UDP for DNS) are not where ciphertext goes. */
static __always_inline void membio_send(struct membio_pending *p, __u32 tgid, __s32 fd, const __u8 *head, int have_head)
{
	struct kloak_conn_key k = { .tgid = tgid };
	struct kloak_conn *c;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;

	f = fd_file(fd);
	sk = f ? inet_stream(f, &ino) : NULL;
	if (!sk)
		return;
	if (have_head && client_hello(head) && tcp_fresh(sk)) {
		if (!p->bind_n) {
			/* No first call of ours made it: a TLS stack kloak does not
			 * hook. The last binding may have been this sender's. */
			k.ssl = p->hello_ssl;
			p->hello_ssl = 0;
			c = k.ssl ? bpf_map_lookup_elem(&kloak_conns, &k) : NULL;
			if (c && !(c->flags & KLOAK_CONN_CONFLICT)) {
				c->flags |= KLOAK_CONN_CONFLICT;
				count(KC_BIND_CONFLICT, 1);
			}
			return;
		}
		p->bind_n--;
		if (p->bind_ambiguous) {
			if (!p->bind_n)
				p->bind_ambiguous = 0;
			return; /* one of several connections' first flight: whose is not known */
		}
		k.ssl = p->bind_ssl;
		c = bpf_map_lookup_elem(&kloak_conns, &k);
		if (!c || (c->flags & (KLOAK_CONN_BOUND | KLOAK_CONN_BY_FD | KLOAK_CONN_LATE)) || !(c->flags & KLOAK_CONN_APP_BIO))
			return;
		c->fd = fd;
		c->ino = ino;
		c->bound_ns = bpf_ktime_get_ns();
		c->flags |= KLOAK_CONN_BOUND;
		p->hello_ssl = k.ssl;
		count(KC_CONNS_BOUND, 1);
		return;
	}
	k.ssl = p->check_ambiguous ? 0 : p->check_ssl;
	p->check_ssl = 0;
	p->check_ambiguous = 0;
	/* Bytes that do not start a TLS record (plain text, or the rest of a
	 * record a short send left) are not checked. */
	if (!k.ssl || !have_head || !tls_record(head))
		return;
	c = bpf_map_lookup_elem(&kloak_conns, &k);
	if (c && (c->flags & KLOAK_CONN_BOUND) && c->ino != ino && !(c->flags & KLOAK_CONN_CONFLICT)) {
		/* The write's ciphertext went to another socket. */
		c->flags |= KLOAK_CONN_CONFLICT;
		count(KC_BIND_CONFLICT, 1);
	}
}

#endif /* KLOAK_MEMBIO_H */
