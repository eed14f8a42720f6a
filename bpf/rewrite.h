/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Putting bytes into the writer's buffer, by one of two modes:
 *  - kernel: bpf_probe_write_user in the probe (needs lockdown=none);
 *  - stop:   a request on tls_events, then SIGSTOP to the writer's thread
 *            group; the agent patches with process_vm_writev and sends
 *            SIGCONT. One thread per process holds the stop at a time.
 */
#ifndef KLOAK_REWRITE_H
#define KLOAK_REWRITE_H

#define SIGSTOP 19

/* An owner older than this lost its restore (thread died, event lost). */
#define STOP_OWNER_STALE_NS 1000000000ULL

/*
 * Kernel mode: write secret id's value (restore: its placeholder) of len
 * bytes to addr in the writer's memory. 0 on success.
 */
__noinline int kloak_poke(__u64 addr, __u32 id, __u32 len, __u32 restore)
{
	struct kloak_bytes *src = restore ? bpf_map_lookup_elem(&kloak_secrets, &id)
					  : bpf_map_lookup_elem(&kloak_values, &id);

	if (!src || src->len != len || len < KLOAK_VALUE_MIN || len > KLOAK_VALUE_MAX)
		return -1;
	/* The helper needs the size proven in [1, KLOAK_VALUE_MAX] on the very
	 * register it gets; for len in [8, 4096] this is len itself. */
	return bpf_probe_write_user((void *)addr, src->data, BOUNDED(len - 1, KLOAK_VALUE_MAX - 1) + 1);
}

/* Take the process's one stop claim; false while another thread holds it. */
static __always_inline bool claim_stop(__u32 tgid, __u32 tid, __u64 seq)
{
	struct kloak_stop_owner me = { .tid = tid, .seq = seq }, *cur;
	__u64 *released;

	if (bpf_map_update_elem(&kloak_stop_owner, &tgid, &me, BPF_NOEXIST) == 0)
		return true;
	cur = bpf_map_lookup_elem(&kloak_stop_owner, &tgid);
	released = bpf_map_lookup_elem(&kloak_stop_released, &tgid);
	/* Held unless: this very thread's earlier claim (it runs, so its
	 * restore is done), released by the agent, or stale. */
	if (cur && cur->tid != tid && !(released && *released == cur->seq) && seq - cur->seq < STOP_OWNER_STALE_NS)
		return false;
	bpf_map_update_elem(&kloak_stop_owner, &tgid, &me, BPF_ANY);
	return true;
}

/* Stop mode: queue the request and stop the thread group; -1 when the ring is full. */
static __always_inline int stop_with(const struct kloak_write_event *ev, __u32 type)
{
	struct kloak_write_event *e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);

	if (!e)
		return -1;
	__builtin_memcpy(e, ev, sizeof(*e));
	e->type = type;
	bpf_ringbuf_submit(e, 0);
	/* The group stops before the thread runs another instruction of
	 * SSL_write; the agent resumes it once the buffer is patched. */
	bpf_send_signal(SIGSTOP);
	return 0;
}

#endif /* KLOAK_REWRITE_H */
