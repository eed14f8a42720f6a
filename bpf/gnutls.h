/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * GnuTLS: a gnutls_session_t is tracked like an SSL* (same kloak_conns key),
 * and the OpenSSL rules of conn.h carry over:
 *
 *  - gnutls_transport_set_int2(session, recv_fd, send_fd) with the library's
 *    own push functions: the library writes to send_fd, bound like
 *    SSL_set_fd. (gnutls_transport_set_int is a macro over it.)
 *  - gnutls_transport_set_ptr/ptr2, set_push_function, set_vec_push_function,
 *    set_fastopen: what the transport pointer means, or the code that writes
 *    the ciphertext, is the app's (wget passes its fd as a pointer, curl its
 *    connection filter): bound by the sends the thread makes inside TLS
 *    calls, like an app BIO, and refused under strict binding. A transport
 *    set after the binding means the ciphertext may go elsewhere: never
 *    substituted again. set_int2 does not replace an app's push function,
 *    so after one it binds nothing by fd either.
 *  - gnutls_init installs the default push function through the exported
 *    setter on the new session: that call is the library's, not the app's.
 *  - gnutls_server_name_set: the SNI, a counted name (not NUL-terminated).
 *  - gnutls_record_send is a jump to gnutls_record_send2 in GnuTLS >= 3.6.3:
 *    both are probed (either may be the one an app or a static build calls),
 *    and the inner one of the same session is not a second write.
 */
#ifndef KLOAK_GNUTLS_H
#define KLOAK_GNUTLS_H

#define GNUTLS_NAME_DNS 1
/* kloak_setfd[tid].fd while the thread is inside gnutls_init; .ssl then holds
 * the gnutls_session_t * the library fills in. */
#define GNUTLS_IN_INIT (-2)

/* gnutls_record_send2 entered from gnutls_record_send of the same session. */
static __always_inline bool gnutls_inner_send(__u64 session, __u32 tid)
{
	__u64 *outer = bpf_map_lookup_elem(&kloak_active, &tid);

	return outer && *outer == session;
}

/* The transport setter runs inside gnutls_init on the session it creates. */
static __always_inline bool gnutls_initialising(__u64 session, __u32 tid)
{
	struct kloak_setfd *inside = bpf_map_lookup_elem(&kloak_setfd, &tid);
	__u64 created = 0;

	if (!inside || inside->fd != GNUTLS_IN_INIT)
		return false;
	if (bpf_probe_read_user(&created, sizeof(created), (const void *)inside->ssl))
		return false;
	return created == session;
}

static __always_inline void gnutls_bind_fd(__u64 session, __u32 tgid, __s32 send_fd)
{
	struct kloak_conn_key k = { .ssl = session, .tgid = tgid };
	struct kloak_conn *c = bpf_map_lookup_elem(&kloak_conns, &k);

	if (c && (c->flags & KLOAK_CONN_APP_BIO))
		return; /* the app's push function gets the fd: sends bind */
	bind_by_fd(session, tgid, send_fd);
}

/* Entry of every GnuTLS setup function (not the writes, not the handshake). */
static __always_inline int gnutls_entry(struct pt_regs *ctx, __u64 fn, __u64 session, __u32 tgid, __u32 tid)
{
	struct kloak_proc *proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
	struct kloak_conn_key k = { .ssl = session, .tgid = tgid };
	struct kloak_setfd init;

	if (fn == KLOAK_FN_GNUTLS_DEINIT) {
		forget_conn(&k);
		return 0;
	}
	if (!proc)
		return 0;
	switch (fn) {
	case KLOAK_FN_GNUTLS_INIT:
		init.ssl = session; /* gnutls_session_t *, filled in before the setter runs */
		init.fd = GNUTLS_IN_INIT;
		bpf_map_update_elem(&kloak_setfd, &tid, &init, BPF_ANY);
		return 0;
	case KLOAK_FN_GNUTLS_SET_INT2:
		gnutls_bind_fd(session, tgid, (__s32)PT_REGS_PARM3(ctx));
		return 0;
	case KLOAK_FN_GNUTLS_APP_TRANSPORT:
		if (!gnutls_initialising(session, tid))
			app_bio(session, tgid);
		return 0;
	case KLOAK_FN_GNUTLS_SERVER_NAME_SET:
		if ((__u32)PT_REGS_PARM2(ctx) == GNUTLS_NAME_DNS)
			kloak_set_sni(session, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), proc->scope_id);
		return 0;
	}
	return 0;
}

static __always_inline int gnutls_init_return(__u32 tid)
{
	struct kloak_setfd *inside = bpf_map_lookup_elem(&kloak_setfd, &tid);

	if (inside && inside->fd == GNUTLS_IN_INIT)
		bpf_map_delete_elem(&kloak_setfd, &tid);
	return 0;
}

#endif /* KLOAK_GNUTLS_H */
