// SPDX-License-Identifier: GPL-2.0-only
/*
 * kloak data plane: find placeholders in TLS write buffers of enabled
 * processes, verify them in full, and have them replaced by the real value for
 * exactly the duration of the write call. Every failure leaves the
 * placeholder in place and is counted.
 *
 * This file holds the programs and the write path that ties the pieces
 * together; each piece has its header:
 *   mapdefs.h      one macro per kind of map
 *   verifier.h     bounds the verifier can follow on every kernel
 *   bytes.h        word-at-a-time byte tests
 *   maps.h         every map, the counters and the per-CPU work area
 *   events.h       refusal and process records on the ring
 *   rewrite.h      kernel-mode writes, stop-mode claims and requests
 *   scan.h         where markers may start in a write
 *   placeholder.h  marker -> loaded placeholder, verified byte for byte
 *   conn.h         SSL* -> socket -> peer, and the SNI
 *   sends.h        the first bytes of a send syscall (is it a ClientHello?)
 *   membio.h       binding connections whose app moves the ciphertext itself
 *   policy.h       may this secret go to this peer
 *   hpack.h        placeholders Huffman-coded in HTTP/2 header blocks
 *   scope.h        which processes are protected (fork, exec, exit)
 *   gnutls.h       GnuTLS sessions: transport setters, SNI, init
 *   golang.h       Go's crypto/tls: its connection, its calls (programs at the end)
 *
 * Verifier budget: the work of a write is split into global functions of
 * scalars and bpf_loop callbacks, so the verifier checks each piece once
 * instead of once per path into it. Older verifiers prune far less (the same
 * program can cost 3x the instructions on 6.1 that it costs on 6.18), and
 * docs/kernels.md records each program's count per kernel.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kloak.h"
#include "mapdefs.h"
#include "verifier.h"
#include "bytes.h"
#include "maps.h"
#include "events.h"
#include "rewrite.h"
#include "scan.h"
#include "placeholder.h"
#include "conn.h"
#include "sends.h"
#include "membio.h"
#include "policy.h"
#include "hpack.h"
#include "scope.h"
#include "unhooked.h"
#include "gnutls.h"
#include "golang.h"
#include "libopen.h"
#include "sysruns.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- the write path -------------------------------------------------------- */

/*
 * Candidate idx: a verified placeholder of a secret the scope may use, going
 * to an allowed destination, in memory the value may be written to, is added
 * to s->ev; anything else is refused (counted, reported) and left in place.
 */
__noinline int kloak_check_candidate(__u32 slot, __u32 idx)
{
	struct scratch *s = scratch(slot);
	struct kloak_bytes *ph;
	__u64 start;
	__u32 id, unchecked;

	if (!s || idx >= KLOAK_MAX_CANDIDATES)
		return 0;
	start = s->cand[BOUNDED(idx, KLOAK_MAX_CANDIDATES - 1)];
	if (start >= s->len || !is_marker(s, start))
		return 0;
	id = kloak_lookup_placeholder(slot, start);
	ph = id ? bpf_map_lookup_elem(&kloak_secrets, &id) : NULL;
	if (!ph) {
		kloak_refuse(slot, KR_UNKNOWN_PLACEHOLDER, 0, start);
		return 0;
	}
	if (start + ph->len > s->len) {
		kloak_refuse(slot, KR_TRUNCATED, id, start);
		return 0;
	}
	if (!kloak_placeholder_matches(slot, start, id)) {
		kloak_refuse(slot, KR_UNKNOWN_PLACEHOLDER, id, start);
		return 0;
	}
	if (item_allowed(slot, s, id, start, ph->len, &unchecked))
		add_item(slot, s, id, start, ph->len, 0, unchecked);
	return 0;
}

static long verify_candidate(__u32 idx, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	kloak_check_candidate(slot, idx);
	return 0;
}

/* Refuse every item of s->ev for one reason (the write is left as it is). */
static __always_inline void refuse_items(__u32 slot, struct scratch *s, __u32 reason)
{
	__u32 i;

	for (i = 0; i < KLOAK_MAX_SUBST; i++) {
		if (i >= s->ev.count)
			break;
		kloak_refuse(slot, reason, s->ev.items[i].secret_id, s->ev.items[i].addr - s->buf);
	}
}

/*
 * A violation with action block or kill: nothing of this write is
 * substituted. Kill ends the thread group before the write runs; block holds
 * the writer until user space has shut its socket down (the write then
 * fails), or kills it when there is no socket to shut.
 */
static __always_inline void enforce(struct scratch *s, __u32 tgid, __u32 tid)
{
	struct kloak_block_event *e;

	if (s->violation == KLOAK_ACTION_BLOCK && s->conn_fd >= 0 && s->conn_ino &&
	    claim_stop(tgid, tid, s->ev.seq)) {
		e = bpf_ringbuf_reserve(&kloak_writes, sizeof(*e), 0);
		if (e) {
			e->type = KE_BLOCK;
			e->tgid = tgid;
			e->tid = tid;
			e->fd = s->conn_fd;
			e->ino = s->conn_ino;
			e->seq = s->ev.seq;
			bpf_ringbuf_submit(e, wake_at_stop());
			count(KC_VIOLATION_BLOCKS, 1);
			hold_writer(tgid);
			return;
		}
		bpf_map_delete_elem(&kloak_stop_owner, &tgid);
	}
	count(KC_VIOLATION_KILLS, 1);
	bpf_send_signal(SIGKILL);
}

/* The write's length: Go's from its call, SSL_write's int (<= 0: nothing),
 * the others' size_t. */
static __always_inline __u64 write_len(struct pt_regs *ctx, __u64 fn, const struct go_call *go)
{
	int num;

	if (go)
		return go->len;
	if (fn != KLOAK_FN_SSL_WRITE)
		return PT_REGS_PARM3(ctx);
	num = (int)PT_REGS_PARM3(ctx);
	return num > 0 ? (__u64)num : 0;
}

/* The slot's state for one write, before the scan. */
static __always_inline void begin_write(struct scratch *s, __u64 ssl, __u64 buf, __u64 len, __u32 scope_id, __u64 id)
{
	s->ssl = ssl;
	s->peer_state = PEER_UNSET;
	s->sni_len = 0;
	s->conn_fd = -1;
	s->conn_ino = 0;
	s->violation = KLOAK_ACTION_PASS;
	__builtin_memset(&s->peer, 0, sizeof(s->peer));
	s->buf = buf;
	s->len = len;
	s->scan_len = len < kloak_cfg.scan_cap ? len : kloak_cfg.scan_cap;
	s->tgid = id >> 32;
	s->scope_id = scope_id;
	s->ev.count = 0;
	s->ev.tgid = id >> 32;
	s->ev.tid = (__u32)id;
	s->ev.seq = bpf_ktime_get_ns();
}

/* The write's restore record: Go's keyed by goroutine, the others' by thread. */
static __always_inline void *inflight_map(const struct go_call *go)
{
	return go ? (void *)&kloak_go_inflight : (void *)&kloak_inflight;
}

static __always_inline const void *inflight_key(const struct go_call *go, const __u32 *tid)
{
	return go ? (const void *)&go->g : (const void *)tid;
}

/* Kernel mode: the values go in now. A failed write may be partial: the item
 * stays, so the return probe puts the placeholder back regardless. */
static __always_inline void substitute_in_kernel(__u32 slot, struct scratch *s)
{
	__u32 i;

	for (i = 0; i < KLOAK_MAX_SUBST; i++) {
		if (i >= s->ev.count)
			break;
		if (kloak_item_poke(s->ev.items[i].addr, s->ev.items[i].secret_id, s->ev.items[i].len, s->ev.items[i].hbits,
				    s->ev.items[i].hshift))
			kloak_refuse(slot, KR_WRITE_FAILED, s->ev.items[i].secret_id, s->ev.items[i].addr - s->buf);
		else
			count(KC_SUBSTITUTED, 1);
	}
}

/* Stop mode: claim the process's stop, ask the worker for the values and
 * hold the writer; any failure undoes the restore record and refuses. */
static __always_inline void substitute_by_stop(__u32 slot, struct scratch *s, const struct go_call *go, __u32 tgid, __u32 tid)
{
	if (!claim_stop(tgid, tid, s->ev.seq)) {
		bpf_map_delete_elem(inflight_map(go), inflight_key(go, &tid));
		refuse_items(slot, s, KR_CONCURRENT_WRITE);
		return;
	}
	if (!room_for_substitution() || stop_with(&s->ev, KE_SUBSTITUTE)) {
		bpf_map_delete_elem(inflight_map(go), inflight_key(go, &tid));
		bpf_map_delete_elem(&kloak_stop_owner, &tgid);
		refuse_items(slot, s, KR_RINGBUF_FULL);
		return;
	}
	count(KC_SUBSTITUTED, s->ev.count);
}

/* A Go write (golang.h) passes its own call: register ABI, restore record
 * keyed by goroutine. NULL: a C library's write, from the regs. */
static __always_inline int on_write(struct pt_regs *ctx, __u32 slot, struct scratch *s, __u64 fn, const int mode,
				    const struct go_call *go)
{
	__u64 id = bpf_get_current_pid_tgid(), ssl = go ? go->conn : PT_REGS_PARM1(ctx);
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct kloak_proc *proc;
	__u64 len;

	proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!proc)
		return 0;
	if (!go) {
		bpf_map_update_elem(&kloak_active, &tid, &ssl, BPF_ANY);
		membio_before_call(ssl, tgid, tid);
	}
	tls_call(ssl, tgid);
	len = write_len(ctx, fn, go);
	if (len == 0)
		return 0;
	count(KC_WRITES_SEEN, 1);
	if (bpf_map_lookup_elem(inflight_map(go), inflight_key(go, &tid))) {
		/* Nested TLS write (one API implemented on the other): the outer
		 * call already substituted; never clobber its restore record. */
		count(KC_NESTED_WRITE, 1);
		return 0;
	}

	begin_write(s, ssl, go ? go->buf : PT_REGS_PARM2(ctx), len, proc->scope_id, id);
	count(KC_BYTES_SCANNED, s->scan_len);
	if (len > s->scan_len) {
		count(KC_BYTES_UNSCANNED, len - s->scan_len);
		kloak_refuse(slot, KR_BEYOND_SCAN_CAP, 0, s->scan_len);
	}
	if (kloak_scan(slot) + kloak_hpack_scan(slot) == 0)
		return 0;
	bpf_loop(s->ncand, verify_candidate, &slot, 0);
	kloak_hpack_verify(slot, mode);
	if (s->violation != KLOAK_ACTION_PASS) {
		/* Nothing of this write leaves: not even the verified items. */
		enforce(s, tgid, tid);
		return 0;
	}
	if (s->ev.count == 0)
		return 0;
	if (go && go_buffer_may_move(go, s->buf, len)) {
		refuse_items(slot, s, KR_GO_STACK_BUFFER);
		return 0;
	}
	/* The restore is recorded before any byte changes. */
	if (bpf_map_update_elem(inflight_map(go), inflight_key(go, &tid), &s->ev, BPF_NOEXIST)) {
		refuse_items(slot, s, KR_INFLIGHT_FULL);
		return 0;
	}
	if (mode == KLOAK_MODE_KERNEL)
		substitute_in_kernel(slot, s);
	else
		substitute_by_stop(slot, s, go, tgid, tid);
	return 0;
}

/* Works on the inflight record itself, not the per-CPU slot: a restore must
 * never be skipped because the slot is busy. A placeholder that cannot be put
 * back kills the writer. */
static __always_inline int on_write_return(const int mode, bool taken, const __u64 *g)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), i;
	struct kloak_write_event *ev;
	bool lost = false;

	ev = g ? bpf_map_lookup_elem(&kloak_go_inflight, g) : bpf_map_lookup_elem(&kloak_inflight, &tid);
	if (!ev)
		return 0;
	if (!taken)
		count(KC_SUBST_NOT_TAKEN, ev->count);
	/* A goroutine may return on another thread than it entered on: the
	 * hold (and the agent's wait) is for the thread running it now. */
	ev->tid = tid;
	if (mode == KLOAK_MODE_KERNEL) {
		for (i = 0; i < KLOAK_MAX_SUBST; i++) {
			if (i >= ev->count)
				break;
			if (kloak_item_poke(ev->items[i].addr, ev->items[i].secret_id, ev->items[i].len, ev->items[i].hbits,
					    ev->items[i].hshift | 1 << 8) == 0)
				count(KC_RESTORED, 1);
			else
				lost = true;
		}
		if (lost)
			kill_holder();
	} else if (stop_with(ev, KE_RESTORE)) {
		/* Room was reserved with the request; losing it is a bug, and
		 * the writer must not live on with the value. */
		bpf_map_delete_elem(&kloak_stop_owner, &ev->tgid);
		kill_holder();
	}
	if (g)
		bpf_map_delete_elem(&kloak_go_inflight, g);
	else
		bpf_map_delete_elem(&kloak_inflight, &tid);
	return 0;
}

/* ---- uprobes on the TLS library (the cookie says which function) --------- */

static __always_inline int on_entry(struct pt_regs *ctx, const int mode)
{
	__u64 cookie = bpf_get_attach_cookie(ctx), id = bpf_get_current_pid_tgid(), ssl = PT_REGS_PARM1(ctx);
	__u32 tid = (__u32)id, tgid = id >> 32, fn = cookie_fn(cookie);
	struct kloak_setfd setfd;
	struct kloak_proc *proc;
	struct scratch *s;
	__u32 slot;
	int ret;

	if (!cookie_owner(cookie, tgid))
		return 0;
	switch (fn) {
	case KLOAK_FN_GNUTLS_RECORD_SEND:
		if (gnutls_not_a_write(ssl, tgid, tid))
			return 0;
		/* fall through */
	case KLOAK_FN_SSL_WRITE:
	case KLOAK_FN_SSL_WRITE_EX:
		/* Probes are on the file, for every process that maps it. */
		if (!bpf_map_lookup_elem(&kloak_procs, &tgid))
			return 0;
		s = take_slot(&slot);
		if (!s)
			return 0;
		ret = on_write(ctx, slot, s, fn, mode, NULL);
		release_slot(s);
		return ret;
	case KLOAK_FN_SSL_DO_HANDSHAKE:
	case KLOAK_FN_SSL_READ:
	case KLOAK_FN_SSL_READ_EX:
		if (bpf_map_lookup_elem(&kloak_procs, &tgid)) {
			bpf_map_update_elem(&kloak_active, &tid, &ssl, BPF_ANY);
			membio_before_call(ssl, tgid, tid);
			tls_call(ssl, tgid);
		}
		return 0;
	case KLOAK_FN_SSL_SET_FD:
	case KLOAK_FN_SSL_SET_WFD:
		/* Bound at return, once the library's socket BIO is in place. */
		if (bpf_map_lookup_elem(&kloak_procs, &tgid)) {
			setfd.ssl = ssl;
			setfd.fd = (__s32)PT_REGS_PARM2(ctx);
			bpf_map_update_elem(&kloak_setfd, &tid, &setfd, BPF_ANY);
		}
		return 0;
	case KLOAK_FN_SSL_SET_BIO:
	case KLOAK_FN_SSL_SET0_WBIO:
		if (bpf_map_lookup_elem(&kloak_procs, &tgid))
			app_bio(ssl, tgid);
		return 0;
	case KLOAK_FN_SSL_CTRL:
		if ((int)PT_REGS_PARM2(ctx) != SSL_CTRL_SET_TLSEXT_HOSTNAME)
			return 0;
		proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
		if (proc)
			kloak_set_sni(ssl, PT_REGS_PARM4(ctx), KLOAK_SNI_CSTR, proc->scope_id);
		return 0;
	case KLOAK_FN_BSSL_SET_HOSTNAME:
		proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
		if (proc)
			kloak_set_sni(ssl, PT_REGS_PARM2(ctx), KLOAK_SNI_CSTR, proc->scope_id);
		return 0;
	case KLOAK_FN_SSL_FREE:
	case KLOAK_FN_GNUTLS_DEINIT: {
		/* The connection is gone: everything kept about it goes too. */
		struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };

		forget_conn(&k);
		membio_forget(ssl, tid);
		bpf_map_delete_elem(&kloak_h2, &k);
		return 0;
	}
	default:
		return gnutls_entry(ctx, fn, ssl, tgid, tid);
	}
}

static __always_inline int on_return(struct pt_regs *ctx, const int mode)
{
	__u64 cookie = bpf_get_attach_cookie(ctx), id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, fn = cookie_fn(cookie);
	struct kloak_setfd *setfd;

	if (!cookie_owner(cookie, id >> 32))
		return 0;
	switch (fn) {
	case KLOAK_FN_SSL_WRITE:
	case KLOAK_FN_SSL_WRITE_EX:
		membio_return(id, true);
		bpf_map_delete_elem(&kloak_active, &tid);
		/* SSL_write: bytes written (> 0); SSL_write_ex: 1. Otherwise the
		 * library took nothing of the buffer, and the app must retry. */
		return on_write_return(mode, fn == KLOAK_FN_SSL_WRITE ? (int)PT_REGS_RC(ctx) > 0 : (int)PT_REGS_RC(ctx) == 1, NULL);
	case KLOAK_FN_GNUTLS_RECORD_SEND:
		bpf_map_delete_elem(&kloak_active, &tid);
		/* bytes sent (> 0); an error (GNUTLS_E_AGAIN, ...) took nothing, and the app retries */
		return on_write_return(mode, (long)PT_REGS_RC(ctx) > 0, NULL);
	case KLOAK_FN_GNUTLS_INIT:
	case KLOAK_FN_GNUTLS_RECORD_UNCORK:
		return gnutls_return(ctx, fn, tid);
	case KLOAK_FN_SSL_SET_FD:
	case KLOAK_FN_SSL_SET_WFD:
		setfd = bpf_map_lookup_elem(&kloak_setfd, &tid);
		if (setfd) {
			if (PT_REGS_RC(ctx) == 1)
				bind_by_fd(setfd->ssl, id >> 32, (__s32)setfd->fd);
			bpf_map_delete_elem(&kloak_setfd, &tid);
		}
		return 0;
	case KLOAK_FN_BUN_SSL_NEW:
		bun_ssl_new(PT_REGS_RC(ctx), id >> 32);
		return 0;
	default:
		membio_return(id, false);
		bpf_map_delete_elem(&kloak_active, &tid);
		return 0;
	}
}

/* kloak_tls_stop, kloak_tls_kernel */
KLOAK_MODE_PROGRAMS("uprobe", kloak_tls, on_entry)
/* kloak_tls_ret_stop, kloak_tls_ret_kernel */
KLOAK_MODE_PROGRAMS("uretprobe", kloak_tls_ret, on_return)

/* ---- sends tie their connection to the socket ---------------------------------
 * Inside a TLS call: the library's or the app's BIO sending (conn.h). Outside
 * one, after a memory-BIO connection's call returned: the app moving its
 * ciphertext (membio.h); only then is the payload's head read. */

static __always_inline int on_send(__s64 fd, __u64 buf, __u64 len, __u32 how)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32;
	struct membio_pending *p;
	__u8 head[SEND_HEAD_LEN] = {};
	__u64 *ssl;
	int have;

	/* Every write and send on the node comes here: a process outside every
	 * scope costs one lookup (each map below is kept for scoped ones only). */
	if (!bpf_map_lookup_elem(&kloak_procs, &tgid))
		return 0;
	ssl = bpf_map_lookup_elem(&kloak_active, &tid);
	if (ssl) {
		bind_by_send(*ssl, id >> 32, (__s32)fd);
		return 0;
	}
	kloak_unhooked_hello((__s32)fd, buf, len, how); /* TLS kloak does not see? */
	if (!membio_wants(tid))
		return 0;
	p = bpf_map_lookup_elem(&kloak_membio_pending, &tid);
	if (!p)
		return 0;
	have = send_head(head, buf, len, how);
	membio_send(p, id >> 32, (__s32)fd, head, have);
	return 0;
}

/* One raw tracepoint for every syscall kloak looks at, not one tracepoint
 * each: a raw tracepoint attaches and detaches without tracefs and without
 * the perf-event path, whose detach waits for RCU grace periods while it
 * holds the lock every tracepoint attach needs (a `kloak exec` started while
 * the previous one's detach runs waited ~100 ms). The syscall tracepoints
 * are a probe on this same raw tracepoint; the number test comes first, so
 * other syscalls cost a few compares. Numbers: x86-64 (the object's target). */
#define NR_WRITE 1
#define NR_OPEN 2
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_OPENAT 257

static __always_inline bool sys_watched(long nr)
{
	return nr == NR_WRITE || nr == NR_SENDTO || nr == NR_WRITEV || nr == NR_SENDMSG || nr == NR_OPENAT || nr == NR_OPEN;
}

/* The work of one watched syscall. */
static __always_inline int on_sys_enter(struct pt_regs *regs, long nr)
{
	__u32 how;

	switch (nr) {
	case NR_WRITE:
	case NR_SENDTO:
		how = SEND_FLAT;
		break;
	case NR_WRITEV:
		how = SEND_IOVEC;
		break;
	case NR_SENDMSG:
		how = SEND_MSGHDR;
		break;
	case NR_OPENAT:
		return on_lib_open((__s32)PT_REGS_PARM1_CORE(regs), PT_REGS_PARM2_CORE(regs));
	case NR_OPEN:
		return on_lib_open(-100 /* AT_FDCWD */, PT_REGS_PARM1_CORE(regs));
	default:
		return 0;
	}
	return on_send(PT_REGS_PARM1_CORE(regs), PT_REGS_PARM2_CORE(regs), PT_REGS_PARM3_CORE(regs), how);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(kloak_sys_enter, struct pt_regs *regs, long nr)
{
	if (!sys_watched(nr))
		return 0;
	if (kloak_cfg.backup_syscalls)
		sys_run_note();
	return on_sys_enter(regs, nr);
}

/* Kernels 7.0+: the runs kloak_sys_enter was skipped for (bpf/sysruns.h).
 * Attached after it, so it runs after it on each syscall. */
SEC("raw_tp/sys_enter")
int BPF_PROG(kloak_sys_enter_backup, struct pt_regs *regs, long nr)
{
	if (!sys_watched(nr) || !sys_run_skipped())
		return 0;
	count(KC_SYSCALL_RUNS_RECOVERED, 1);
	return on_sys_enter(regs, nr);
}

/* ---- process lifecycle ------------------------------------------------------ */

SEC("raw_tp/sched_process_fork")
int BPF_PROG(kloak_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(parent, child);
}

SEC("raw_tp/sched_process_exec")
int kloak_exec(void *ctx)
{
	return on_exec();
}

SEC("raw_tp/sched_process_exit")
int kloak_exit(void *ctx)
{
	return on_exit();
}

/* A signal for a traced thread: it will stop for kloak's tracer, which must
 * pass the signal on at once. kloak's own holds are not woken for: their
 * SIGSTOP comes from bpf_send_signal*(), which sends it as SEND_SIG_PRIV
 * (info == 1), and each hold was announced on a ring record of its own just
 * before, which woke the tracer already (a second wake per hold cost a ring
 * record and, often, a second wake-up of the worker). */
#define SEND_SIG_PRIV_INFO 1UL

SEC("raw_tp/signal_generate")
int BPF_PROG(kloak_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (sig == SIGSTOP && (unsigned long)info == SEND_SIG_PRIV_INFO)
		return 0;
	if (result == 0 /* TRACE_SIGNAL_DELIVERED */ && traced(tgid))
		wake_event(tgid, BPF_CORE_READ(task, pid));
	return 0;
}

/* Before 5.14 the task's state was `long state`. */
struct task_struct___state_long {
	long state;
} __attribute__((preserve_access_index));

#define TASK_STOPPED_BIT 0x4 /* __TASK_STOPPED: a group stop */
#define TASK_TRACED_BIT 0x8  /* __TASK_TRACED: a ptrace stop */

/*
 * A thread leaves its CPU. When it is a writer that just stopped for a
 * request of kloak_writes (wake_at_stop), wake the ring worker now: the stop
 * is complete (its ptrace report is ready, /proc says "T"), so the worker
 * patches at once instead of polling for it. Every other switch costs a load
 * and a compare.
 */
SEC("raw_tp/sched_switch")
int BPF_PROG(kloak_switch, bool preempt, struct task_struct *prev)
{
	struct kloak_wake_event *e;
	unsigned long state;
	__u32 tid;

	if (preempt)
		return 0;
	if (bpf_core_field_exists(prev->__state))
		state = BPF_CORE_READ(prev, __state);
	else
		state = BPF_CORE_READ((struct task_struct___state_long *)prev, state);
	if (!(state & (TASK_STOPPED_BIT | TASK_TRACED_BIT)))
		return 0;
	tid = BPF_CORE_READ(prev, pid);
	if (!bpf_map_lookup_elem(&kloak_stop_wake, &tid))
		return 0;
	bpf_map_delete_elem(&kloak_stop_wake, &tid);
	e = reserve_record(&kloak_writes, sizeof(*e));
	if (!e) /* the worker finds the request at its next timeout */
		return 0;
	e->type = KE_WAKE;
	e->tgid = BPF_CORE_READ(prev, tgid);
	e->tid = tid;
	e->_pad = 0;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

/* kloak.h's #defines that user space shares, as BTF can carry them:
 * KLOAK_ABI_x = KLOAK_x. */
#define KLOAK_ABI(name) KLOAK_ABI_##name = KLOAK_##name
enum kloak_abi_const {
	KLOAK_ABI(COOKIE_LAYOUT_SHIFT),
	KLOAK_ABI(COOKIE_OWNER_SHIFT),
	KLOAK_ABI(MARKER_LEN),
	KLOAK_ABI(VALUE_MIN),
	KLOAK_ABI(VALUE_MAX),
	KLOAK_ABI(KEY_LEN),
	KLOAK_ABI(MAX_SUBST),
	KLOAK_ABI(MAX_CANDIDATES),
	KLOAK_ABI(CHUNK),
	KLOAK_ABI(MAX_SCAN),
	KLOAK_ABI(MAX_RULES),
	KLOAK_ABI(NAME_MAX),
	KLOAK_ABI(CGROUP_DEPTH),
	KLOAK_ABI(CONNS_PER_PROCESS),
	KLOAK_ABI(ITEM_UNCHECKED),
};
#undef KLOAK_ABI

/* Keeps every type shared with user space in the object's BTF, from which
 * scripts/gen-abi.ts generates src/dataplane/abi.generated.ts. Never called,
 * so never loaded. */
struct kloak_abi_anchor {
	struct kloak_proc_event proc_event;
	struct kloak_stop_owner stop_owner;
	struct kloak_refusal_event refusal_event;
	struct kloak_sni_event sni_event;
	struct kloak_block_event block_event;
	struct kloak_wake_event wake_event;
	struct kloak_unhooked_event unhooked_event;
	struct kloak_lib_open_event lib_open_event;
	struct kloak_image image;
	struct kloak_scope scope;
	struct kloak_conn conn;
	struct kloak_conn_key conn_key;
	struct kloak_policy policy;
	struct kloak_name_addr name_addr;
	struct kloak_resolved resolved;
	struct kloak_hcode hcode;
	struct kloak_go_layout go_layout;
	enum kloak_counter counter;
	enum kloak_conn_flags conn_flags;
	enum kloak_rule_kind rule_kind;
	enum kloak_refusal refusal;
	enum kloak_action action;
	enum kloak_scope_flags scope_flags;
	enum kloak_proc_flags proc_flags;
	enum kloak_event_type event_type;
	enum kloak_fn fn;
	enum kloak_mode mode;
	enum kloak_abi_const abi_const;
};

__noinline int kloak_abi_types(struct kloak_abi_anchor *a)
{
	return a != 0;
}
