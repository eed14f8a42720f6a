/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Go's crypto/tls: func (c *Conn) Write(b []byte) (int, error), in Go
 * executables (found through their pclntab by user space).
 *
 * Go's register ABI (1.17+, amd64): RAX = c, RBX = b.ptr, RCX = b.len, and
 * R14 holds the running goroutine (g) throughout Go code. No uretprobe: its
 * return-address swap breaks Go's stack unwinding and moving stacks. User
 * space puts a plain uprobe on every RET of Write instead (decoded, and
 * checked to be the function's only way out), and the restore record is
 * keyed by the goroutine, since a goroutine may return on another thread than
 * the one it entered on.
 *
 * The connection is bound to its socket through Go's own structures, read at
 * every write: c.conn must be a net.Conn whose itab's Write is
 * net.(*TCPConn).Write of this very binary (anything else, a wrapper or a
 * custom net.Conn, may send the ciphertext anywhere: unknown peer), then
 * *TCPConn -> conn.fd (*netFD) -> pfd.Sysfd. The SNI is c.config.ServerName,
 * as the handshake (which Write runs first if needed) puts it on the wire.
 * Field offsets differ by Go version: kloak_go_layouts holds those of each
 * attached binary (src/dataplane/go-offsets.ts), named by the cookie's
 * layout bits (kloak.h).
 */
#ifndef KLOAK_GOLANG_H
#define KLOAK_GOLANG_H

/* Go 1.17+ amd64: itab {inter, _type, hash, _, fun[]}; net.Conn's methods
 * sorted by name make Write the 8th. */
#define GO_ITAB_FUN 24
#define GO_NETCONN_WRITE 7

KLOAK_HASH(kloak_go_layouts, __u32, struct kloak_go_layout, 1024);

/* A Go write's restore, from entry to a RET: by goroutine (g). */
KLOAK_HASH(kloak_go_inflight, __u64, struct kloak_write_event, 16384);

/* The *tls.Conn a goroutine's write is on: its kloak_conns entry lives for
 * the call only (Go has no SSL_free to forget it by). */
KLOAK_HASH(kloak_go_active, __u64, __u64, 16384);

struct go_call {
	__u64 conn; /* *tls.Conn */
	__u64 buf;
	__u64 len;
	__u64 g;
};

/* The buffer lies on the goroutine's stack, which Go moves when it grows:
 * a restore at the old address would leave the value in the new stack. */
static __always_inline bool go_buffer_may_move(const struct go_call *go, __u64 buf, __u64 len)
{
	__u64 stack[2] = {}; /* g.stack.lo, g.stack.hi: offset 0 in every Go version */

	if (bpf_probe_read_user(stack, sizeof(stack), (void *)go->g))
		return true;
	return buf < stack[1] && buf + len > stack[0];
}

/* Names Go's hostnameInSNI sends no SNI for: IP literals. */
static __always_inline bool go_ip_literal(const char *name, __u32 n)
{
	__u32 i;
	bool digits_dots = true;

	for (i = 0; i < KLOAK_NAME_MAX; i++) {
		char ch;

		if (i >= n)
			break;
		ch = name[BOUNDED(i, KLOAK_NAME_MAX - 1)];
		if (ch == ':')
			return true;
		if (!((ch >= '0' && ch <= '9') || ch == '.'))
			digits_dots = false;
	}
	return digits_dots;
}

/*
 * Bind conn's kloak_conns entry to its socket and SNI, from Go's structures,
 * for this write (the entry is forgotten at return). A connection that is not
 * a plain *net.TCPConn is left unbound: unknown peer.
 */
__noinline int kloak_go_bind(__u64 conn, __u64 ip, __u32 layout_id, __u32 tgid)
{
	struct kloak_go_layout *l = bpf_map_lookup_elem(&kloak_go_layouts, &layout_id);
	struct kloak_conn_key k = { .ssl = conn, .tgid = tgid };
	struct kloak_conn *c;
	__u64 iface[2] = {}, fn = 0, netfd = 0, bias, cfg = 0, name[2] = {};
	__s64 sysfd = -1;
	struct file *f;
	__u64 ino = 0;
	__u32 n;

	if (!l)
		return 0;
	c = conn_of(&k, 0);
	if (!c)
		return 0;
	c->flags = KLOAK_CONN_HANDSHAKE;
	c->fd = -1;
	c->ino = 0;
	c->sni_len = 0;
	__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
	/* PIE: the load bias is page aligned, and the probe's ip is the entry
	 * (or one byte past it, the breakpoint). */
	bias = (ip - l->write_entry) & ~0xfffULL;
	if (bpf_probe_read_user(iface, sizeof(iface), (void *)(conn + l->conn_conn)) || !iface[0] || !iface[1])
		return 0;
	if (bpf_probe_read_user(&fn, sizeof(fn), (void *)(iface[0] + GO_ITAB_FUN + GO_NETCONN_WRITE * 8)) ||
	    fn != l->tcp_write + bias)
		return 0;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(iface[1] + l->tcpconn_fd)) || !netfd)
		return 0;
	if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + l->netfd_sysfd)) || sysfd < 0 || sysfd > 0x7fffffff)
		return 0;
	f = fd_file((__s32)sysfd);
	if (!f || !inet_stream(f, &ino))
		return 0;
	if (bpf_probe_read_user(&cfg, sizeof(cfg), (void *)(conn + l->conn_config)) || !cfg)
		return 0;
	if (bpf_probe_read_user(name, sizeof(name), (void *)(cfg + l->config_server_name)))
		return 0;
	if (name[1] > KLOAK_NAME_MAX - 1)
		return 0; /* no DNS name: nothing to match it to */
	n = (__u32)name[1];
	if (n && bpf_probe_read_user(c->sni, BOUNDED(n - 1, KLOAK_NAME_MAX - 2) + 1, (void *)name[0]))
		return 0;
	lowercase(c->sni);
	if (n && c->sni[BOUNDED(n - 1, KLOAK_NAME_MAX - 1)] == '.') {
		n--;
		c->sni[BOUNDED(n, KLOAK_NAME_MAX - 1)] = 0;
	}
	if (n && go_ip_literal(c->sni, n)) {
		__builtin_memset(c->sni, 0, KLOAK_NAME_MAX);
		n = 0;
	}
	c->sni_len = n;
	c->fd = (__s32)sysfd;
	c->ino = ino;
	c->bound_ns = bpf_ktime_get_ns();
	c->flags = KLOAK_CONN_HANDSHAKE | KLOAK_CONN_BOUND | KLOAK_CONN_BY_FD;
	count(KC_CONNS_BOUND, 1);
	return 0;
}

static __always_inline int on_write(struct pt_regs *ctx, __u32 slot, struct scratch *s, __u64 fn, const int mode,
				    const struct go_call *go);
static __always_inline int on_write_return(const int mode, bool taken, const __u64 *g);

static __always_inline int go_probe(struct pt_regs *ctx, const int mode)
{
	__u64 cookie = bpf_get_attach_cookie(ctx), id = bpf_get_current_pid_tgid(), *conn;
	__u32 fn = cookie_fn(cookie), tgid = id >> 32, slot;
	struct go_call go = { .conn = ctx->ax, .buf = ctx->bx, .len = ctx->cx, .g = ctx->r14 };
	struct kloak_conn_key k = { .tgid = tgid };
	struct scratch *s;
	int ret;

	if (!cookie_owner(cookie, tgid) || !bpf_map_lookup_elem(&kloak_procs, &tgid))
		return 0;
	if (fn == KLOAK_FN_GO_WRITE_RET) {
		on_write_return(mode, true, &go.g); /* Write does not return to be retried with the same bytes */
		conn = bpf_map_lookup_elem(&kloak_go_active, &go.g);
		if (conn) {
			k.ssl = *conn;
			forget_conn(&k);
			bpf_map_delete_elem(&kloak_go_active, &go.g);
		}
		return 0;
	}
	if (fn != KLOAK_FN_GO_WRITE)
		return 0;
	kloak_go_bind(go.conn, PT_REGS_IP(ctx), (__u16)(cookie >> KLOAK_COOKIE_LAYOUT_SHIFT), tgid);
	bpf_map_update_elem(&kloak_go_active, &go.g, &go.conn, BPF_ANY);
	s = take_slot(&slot);
	if (!s)
		return 0;
	ret = on_write(ctx, slot, s, fn, mode, &go);
	release_slot(s);
	return ret;
}

/* kloak_go_stop, kloak_go_kernel */
KLOAK_MODE_PROGRAMS("uprobe", kloak_go, go_probe)

#endif /* KLOAK_GOLANG_H */
