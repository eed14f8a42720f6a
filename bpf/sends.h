/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What a send syscall is about to write: its first bytes, whichever way the
 * syscall passes them, and whether they open a TLS ClientHello record. Read
 * by the send tracepoints only when someone needs them (memory-BIO binding,
 * TLS kloak cannot hook).
 */
#ifndef KLOAK_SENDS_H
#define KLOAK_SENDS_H

/* How the send syscall passes its bytes. */
#define SEND_FLAT 0   /* write, sendto: (fd, buf, len) */
#define SEND_IOVEC 1  /* writev: (fd, iov, iovcnt) */
#define SEND_MSGHDR 2 /* sendmsg: (fd, msg, flags) */

#define SEND_HEAD_LEN 6 /* a record header and the handshake type */

/*
 * The first SEND_HEAD_LEN bytes of the send (of its first iovec for writev
 * and sendmsg: every TLS stack writes a record from its start); 0 when they
 * cannot be read or the first piece is shorter.
 */
static __always_inline int send_head(__u8 *head, __u64 buf, __u64 len, __u32 how)
{
	struct iovec v;

	if (!buf)
		return 0;
	if (how == SEND_MSGHDR) {
		/* struct user_msghdr: msg_iov at 16, msg_iovlen at 24 */
		if (bpf_probe_read_user(&len, sizeof(len), (void *)(buf + 24)) ||
		    bpf_probe_read_user(&buf, sizeof(buf), (void *)(buf + 16)))
			return 0;
		how = SEND_IOVEC;
	}
	if (how == SEND_IOVEC) {
		if (!buf || len < 1 || bpf_probe_read_user(&v, sizeof(v), (const void *)buf))
			return 0;
		buf = (__u64)v.iov_base;
		len = v.iov_len;
	}
	if (!buf || len < SEND_HEAD_LEN)
		return 0;
	return bpf_probe_read_user(head, SEND_HEAD_LEN, (const void *)buf) == 0;
}

/* A TLS record header: content type 20..23, version 3.x (x <= 4). */
static __always_inline bool tls_record(const __u8 *h)
{
	return h[0] >= 0x14 && h[0] <= 0x17 && h[1] == 3 && h[2] <= 4;
}

/* A handshake record (22) that carries a client_hello (1). */
static __always_inline bool client_hello(const __u8 *h)
{
	return h[0] == 0x16 && h[1] == 3 && h[2] <= 4 && h[5] == 0x01;
}

#endif /* KLOAK_SENDS_H */
