// SPDX-License-Identifier: GPL-2.0-only
/*
 * kloak data plane: find placeholders in TLS write buffers of enabled
 * processes, verify them in full, and have them replaced by the real value for
 * exactly the duration of the write call. Every failure leaves the
 * placeholder in place and is counted.
 *
 * This file holds the programs and the write path that ties the pieces
 * together; each piece has its header:
 *   verifier.h     bounds the verifier can follow on every kernel
 *   bytes.h        word-at-a-time byte tests
 *   maps.h         every map, the counters and the per-CPU work area
 *   events.h       refusal and process records on the ring
 *   rewrite.h      kernel-mode writes, stop-mode claims and requests
 *   scan.h         where markers may start in a write
 *   placeholder.h  marker -> loaded placeholder, verified byte for byte
 *   conn.h         SSL* -> socket -> peer, and the SNI
 *   policy.h       may this secret go to this peer
 *   scope.h        which processes are protected (fork, exec, exit)
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
#include "verifier.h"
#include "bytes.h"
#include "maps.h"
#include "events.h"
#include "rewrite.h"
#include "scan.h"
#include "placeholder.h"
#include "conn.h"
#include "policy.h"
#include "scope.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- the write path -------------------------------------------------------- */

/*
 * Candidate idx: a verified placeholder of a secret the scope may use, going
 * to an allowed destination, is added to s->ev; anything else is refused
 * (counted, reported) and left in place.
 */
__noinline int kloak_check_candidate(__u32 idx)
{
	struct scratch *s = scratch();
	struct kloak_grant grant;
	struct kloak_bytes *ph;
	struct kloak_item *item;
	__u64 start;
	__u32 id, n;

	if (!s || idx >= KLOAK_MAX_CANDIDATES)
		return 0;
	start = s->cand[BOUNDED(idx, KLOAK_MAX_CANDIDATES - 1)];
	if (start >= s->len || !is_marker(s, start))
		return 0;
	id = kloak_lookup_placeholder(start);
	ph = id ? bpf_map_lookup_elem(&kloak_secrets, &id) : NULL;
	if (!ph) {
		kloak_refuse(KR_UNKNOWN_PLACEHOLDER, KC_REFUSED_UNKNOWN, 0, start);
		return 0;
	}
	if (start + ph->len > s->len) {
		kloak_refuse(KR_TRUNCATED, KC_REFUSED_TRUNCATED, id, start);
		return 0;
	}
	if (!kloak_placeholder_matches(start, id)) {
		kloak_refuse(KR_UNKNOWN_PLACEHOLDER, KC_REFUSED_UNKNOWN, id, start);
		return 0;
	}
	grant.scope_id = s->scope_id;
	grant.secret_id = id;
	if (!bpf_map_lookup_elem(&kloak_entitled, &grant)) {
		kloak_refuse(KR_NOT_ENTITLED, KC_REFUSED_NOT_ENTITLED, id, start);
		return 0;
	}
	if (!kloak_destination_allowed(id, start))
		return 0;
	n = s->ev.count;
	if (n >= KLOAK_MAX_SUBST) {
		kloak_refuse(KR_TOO_MANY, KC_REFUSED_TOO_MANY, id, start);
		return 0;
	}
	item = &s->ev.items[BOUNDED(n, KLOAK_MAX_SUBST - 1)];
	item->addr = s->buf + start;
	item->secret_id = id;
	item->len = ph->len;
	s->ev.count = n + 1;
	return 0;
}

static long verify_candidate(__u32 idx, void *unused)
{
	kloak_check_candidate(idx);
	return 0;
}

/* Refuse every item of s->ev for one reason (the write is left as it is). */
static __always_inline void refuse_items(struct scratch *s, __u32 reason, __u32 counter)
{
	__u32 i;

	for (i = 0; i < KLOAK_MAX_SUBST; i++) {
		if (i >= s->ev.count)
			break;
		kloak_refuse(reason, counter, s->ev.items[i].secret_id, s->ev.items[i].addr - s->buf);
	}
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
	s->ev.count = 0;
	s->ev.tgid = tgid;
	s->ev.tid = tid;
	s->ev.seq = bpf_ktime_get_ns();

	count(KC_BYTES_SCANNED, s->scan_len);
	if (len > s->scan_len) {
		count(KC_BYTES_UNSCANNED, len - s->scan_len);
		kloak_refuse(KR_BEYOND_SCAN_CAP, KC_SCAN_TRUNCATED, 0, s->scan_len);
	}
	if (kloak_scan() == 0)
		return 0;
	bpf_loop(s->ncand, verify_candidate, NULL, 0);
	if (s->ev.count == 0)
		return 0;

	if (mode == KLOAK_MODE_KERNEL) {
		for (i = 0; i < KLOAK_MAX_SUBST; i++) {
			if (i >= s->ev.count)
				break;
			if (kloak_poke(s->ev.items[i].addr, s->ev.items[i].secret_id, s->ev.items[i].len, 0)) {
				/* A failed write may be partial: keep the item so the
				 * return probe puts the placeholder back regardless. */
				kloak_refuse(KR_WRITE_FAILED, KC_REFUSED_WRITE_FAILED, s->ev.items[i].secret_id,
					     s->ev.items[i].addr - s->buf);
			} else {
				count(KC_SUBSTITUTED, 1);
			}
		}
	} else {
		if (!claim_stop(tgid, tid, s->ev.seq)) {
			refuse_items(s, KR_CONCURRENT_WRITE, KC_REFUSED_CONCURRENT);
			return 0;
		}
		if (stop_with(&s->ev, KE_SUBSTITUTE)) {
			bpf_map_delete_elem(&kloak_stop_owner, &tgid);
			count(KC_REFUSED_RINGBUF_FULL, s->ev.count);
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
			if (kloak_poke(ev->items[i].addr, ev->items[i].secret_id, ev->items[i].len, 1) == 0)
				count(KC_RESTORED, 1);
		}
	} else if (stop_with(ev, KE_RESTORE)) {
		count(KC_EVENTS_LOST, 1);
		bpf_map_delete_elem(&kloak_stop_owner, &ev->tgid);
	}
	bpf_map_delete_elem(&kloak_inflight, &tid);
	return 0;
}

/* ---- uprobes on the TLS library (the cookie says which function) --------- */

static __always_inline int on_entry(struct pt_regs *ctx, const int mode)
{
	__u64 fn = bpf_get_attach_cookie(ctx), id = bpf_get_current_pid_tgid(), ssl = PT_REGS_PARM1(ctx);
	__u32 tid = (__u32)id, tgid = id >> 32;
	struct kloak_proc *proc;
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
		if (bpf_map_lookup_elem(&kloak_procs, &tgid))
			bpf_map_update_elem(&kloak_active, &tid, &ssl, BPF_ANY);
		return 0;
	case KLOAK_FN_SSL_SET_FD:
		if (bpf_map_lookup_elem(&kloak_procs, &tgid))
			bind_conn(ssl, tgid, (__s32)PT_REGS_PARM2(ctx), true);
		return 0;
	case KLOAK_FN_SSL_CTRL:
		if ((int)PT_REGS_PARM2(ctx) != SSL_CTRL_SET_TLSEXT_HOSTNAME)
			return 0;
		proc = bpf_map_lookup_elem(&kloak_procs, &tgid);
		if (proc)
			kloak_set_sni(ssl, PT_REGS_PARM4(ctx), proc->scope_id);
		return 0;
	case KLOAK_FN_SSL_FREE: {
		struct kloak_conn_key k = { .ssl = ssl, .tgid = tgid };

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

/* ---- sends inside TLS calls tie their connection to the socket ------------- */

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
