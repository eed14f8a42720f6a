/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TLS that kloak cannot see: a process in a scope sends a TLS ClientHello
 * record on a TCP socket outside every hooked TLS call, and no TLS library
 * call of it was ever seen (no connection tracked). That is a TLS stack kloak
 * has no probes in (rustls, Java's JSSE, a static build, a Bun version
 * without signature), and its placeholders go out unsubstituted: user space
 * names the process and what it links, once per process.
 *
 * Memory-BIO clients (node, Python's SSLObject) also send their ClientHello
 * outside TLS calls, but only after a hooked handshake call created their
 * connection: the connection count rules them out.
 *
 * Cheap on purpose (this runs on every send of a scoped process): the record
 * header and handshake type must be in the first 6 bytes of the send (the
 * first iovec of writev/sendmsg), as every TLS stack writes a record.
 */
#ifndef KLOAK_UNHOOKED_H
#define KLOAK_UNHOOKED_H

/* tgid -> start time of the process already reported (a reused pid is
 * another process). LRU: a report lost to eviction is only sent again. */
KLOAK_LRU_HASH(kloak_unhooked, __u32, __u64, 4096);

__noinline int kloak_unhooked_hello(__s32 fd, __u64 buf, __u64 len, __u32 how)
{
	__u64 id = bpf_get_current_pid_tgid(), start, *seen;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct kloak_unhooked_event *e;
	struct kloak_proc *proc;
	__u32 tgid = id >> 32, *conns;
	struct file *f;
	struct sock *sk;
	__u64 ino = 0;
	__u8 h[SEND_HEAD_LEN];

	proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!proc)
		return 0;
	if (!send_head(h, buf, len, how) || !client_hello(h))
		return 0;
	conns = bpf_map_lookup_elem(&kloak_conn_count, &tgid);
	if (conns && *conns)
		return 0; /* a hooked library runs TLS in this process */
	f = fd_file(fd);
	sk = f ? inet_stream(f, &ino) : NULL;
	if (!sk)
		return 0;
	count(KC_UNHOOKED_HELLO, 1);
	start = BPF_CORE_READ(task, group_leader, start_time);
	seen = bpf_map_lookup_elem(&kloak_unhooked, &tgid);
	if (seen && *seen == start)
		return 0;
	bpf_map_update_elem(&kloak_unhooked, &tgid, &start, BPF_ANY);
	e = reserve_record(&tls_events, sizeof(*e));
	if (!e)
		return 0;
	e->type = KE_UNHOOKED_TLS;
	e->tgid = tgid;
	e->scope_id = proc->scope_id;
	e->fd = fd;
	e->ino = ino;
	__builtin_memset(&e->peer, 0, sizeof(e->peer));
	e->peer.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->peer.port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->peer.family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		e->peer.addr[10] = 0xff;
		e->peer.addr[11] = 0xff;
		__builtin_memcpy(&e->peer.addr[12], &a, 4);
	} else {
		BPF_CORE_READ_INTO(&e->peer.addr, sk, __sk_common.skc_v6_daddr);
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Bun's SSL_new returned: a new connection at this address, whatever a freed
 * one there left behind (Bun's SSL_free is not probed). uSockets gives every
 * SSL its own custom BIO, which writes to the socket: an app-BIO connection,
 * bound by the sends of its handshake. */
static __always_inline void bun_ssl_new(__u64 ssl, __u32 tgid)
{
	struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };

	if (!ssl || !bpf_map_lookup_elem(&kloak_procs, &tgid))
		return;
	forget_conn(&k);
	conn_of(&k, KLOAK_CONN_APP_BIO);
}

#endif /* KLOAK_UNHOOKED_H */
