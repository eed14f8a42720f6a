/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Putting bytes into the writer's buffer, by one of two modes:
 *  - kernel: bpf_probe_write_user in the probe (needs lockdown=none);
 *  - stop:   a request on kloak_writes, then SIGSTOP to the writer's thread
 *            group; the agent patches with process_vm_writev and sends
 *            SIGCONT. One thread per process holds the stop at a time.
 * Before a byte changes, the restore is made certain: its record is stored
 * (kloak_inflight) and, in stop mode, the ring has room for the restore.
 * A placeholder that cannot be put back costs the writer its life, never the
 * value its place in memory.
 */
#ifndef KLOAK_REWRITE_H
#define KLOAK_REWRITE_H

#define SIGKILL 9
#define SIGSTOP 19

/* An owner older than this lost its restore (thread died, event lost). */
#define STOP_OWNER_STALE_NS 1000000000ULL

/* Room one write request takes on kloak_writes: the record and its header,
 * 8-byte aligned. */
#define WRITE_REC (((sizeof(struct kloak_write_event) + 8) + 7) & ~7ULL)
/* Requests that may race between the room check and the reservation. */
#define WRITE_MARGIN 64

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

/* kloak traces the process: a hold is a stop of this thread, for kloak alone. */
static __always_inline bool traced(__u32 tgid)
{
	struct kloak_proc *p = bpf_map_lookup_elem(&kloak_procs, &tgid);

	return p && (p->flags & KLOAK_PROC_TRACED);
}

/*
 * Hold the writer until user space lets it go. A traced thread gets a
 * thread-directed SIGSTOP: it stops in ptrace's signal-delivery stop, which
 * only kloak's tracer sees, and which it ends without delivering the signal.
 * An untraced process stops as a whole (a group stop, which its parent can
 * see), ended by SIGCONT.
 */
static __always_inline void hold_writer(__u32 tgid)
{
	if (traced(tgid))
		bpf_send_signal_thread(SIGSTOP);
	else
		bpf_send_signal(SIGSTOP);
}

/* Take the process's one stop claim; false while another thread holds it.
 * Only group stops need one: a traced thread is held on its own. */
static __always_inline bool claim_stop(__u32 tgid, __u32 tid, __u64 seq)
{
	struct kloak_stop_owner me = { .tid = tid, .seq = seq }, *cur;
	__u64 *released;

	if (traced(tgid))
		return true;
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

static __always_inline __s64 *owed(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&kloak_owed, &zero);
}

/* Stop mode: is there room on kloak_writes for a request, its restore and
 * every restore owed already? */
static __always_inline bool room_for_substitution(void)
{
	__u64 used = bpf_ringbuf_query(&kloak_writes, BPF_RB_AVAIL_DATA);
	__s64 *o = owed(), n = o ? *o : 0;

	if (!o || n < 0)
		n = 0;
	return used + ((__u64)n + 2 + WRITE_MARGIN) * WRITE_REC <= KLOAK_WRITES_RING;
}

/*
 * How a request on kloak_writes is submitted: without a wake-up when the
 * worker will be woken at the stop itself (kloak_switch, once this thread is
 * off its CPU in the hold). Woken at the request, the worker ran ahead of the
 * stop: it polled for it, or, scheduled on the writer's CPU, took the CPU the
 * writer needed to reach it. If the mark cannot be stored, the request wakes
 * the worker as before.
 */
static __always_inline __u64 wake_at_stop(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), one = 1;

	if (kloak_cfg.mode != KLOAK_MODE_STOP) /* kloak_switch is not loaded */
		return 0;
	return bpf_map_update_elem(&kloak_stop_wake, &tid, &one, BPF_ANY) == 0 ? BPF_RB_NO_WAKEUP : 0;
}

/* Stop mode: queue the request and stop the thread group; -1 when the ring
 * is full. A substitution makes one restore owed; a restore pays it. */
static __always_inline int stop_with(const struct kloak_write_event *ev, __u32 type)
{
	struct kloak_write_event *e = bpf_ringbuf_reserve(&kloak_writes, sizeof(*e), 0);
	__s64 *o = owed();

	if (!e)
		return -1;
	__builtin_memcpy(e, ev, sizeof(*e));
	e->type = type;
	bpf_ringbuf_submit(e, wake_at_stop());
	if (o && type == KE_SUBSTITUTE)
		__sync_fetch_and_add(o, 1);
	else if (o && type == KE_RESTORE)
		__sync_fetch_and_add(o, -1);
	/* The writer stops before it runs another instruction of SSL_write;
	 * user space resumes it once the buffer is patched. */
	hold_writer(ev->tgid);
	return 0;
}

#define VM_WRITE 0x2
#define VM_SHARED 0x8

struct vma_check {
	__u64 end;
	__u32 ok;
};

static long vma_private(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct vma_check *v = data;
	__u64 flags = BPF_CORE_READ(vma, vm_flags);

	v->ok = (flags & (VM_WRITE | VM_SHARED)) == VM_WRITE && !BPF_CORE_READ(vma, vm_file) &&
		v->end <= BPF_CORE_READ(vma, vm_end);
	return 0;
}

#define EBUSY 16

/*
 * Whether the len bytes at addr lie in one private, writable, anonymous
 * mapping of the writer (heap, stack, anonymous mmap): 0 if so, else the
 * refusal. A value written into a shared or file-backed mapping would reach
 * another process or a file; a read-only one could not be restored. The
 * mapping is looked up under a trylock: a busy memory map is no violation.
 */
__noinline int kloak_buffer_refusal(__u64 addr, __u32 len)
{
	struct vma_check v = { .end = addr + len, .ok = 0 };
	long err = bpf_find_vma(bpf_get_current_task_btf(), addr, vma_private, &v, 0);

	if (err == -EBUSY)
		return KR_BUFFER_UNCHECKED;
	if (err || !v.ok)
		return KR_BUFFER_NOT_PRIVATE;
	return 0;
}

/*
 * The buffer check of one item: 0, or the refusal. A busy memory map is no
 * refusal in stop mode: user space writes the value anyway, and checks the
 * mapping itself first (*flag = KLOAK_ITEM_UNCHECKED, in the item's hshift);
 * kernel mode writes from here and must refuse.
 */
static __always_inline __u32 item_buffer_check(__u64 addr, __u32 len, __u32 *flag)
{
	__u32 why = kloak_buffer_refusal(addr, len);

	*flag = 0;
	if (why == KR_BUFFER_UNCHECKED && kloak_cfg.mode == KLOAK_MODE_STOP) {
		*flag = KLOAK_ITEM_UNCHECKED;
		return 0;
	}
	return why;
}

/* A restore that can never happen: the writer dies with the value rather
 * than go on holding it. */
static __always_inline void kill_holder(void)
{
	count(KC_KILLED_NO_RESTORE, 1);
	bpf_send_signal(SIGKILL);
}

/* Add an accepted item to the write's substitutions (refused beyond KLOAK_MAX_SUBST). */
static __always_inline void add_item(__u32 slot, struct scratch *s, __u32 id, __u64 start, __u32 len, __u32 hbits, __u32 hshift)
{
	struct kloak_item *item;
	__u32 n = s->ev.count;

	if (n >= KLOAK_MAX_SUBST) {
		kloak_refuse(slot, KR_TOO_MANY, id, start);
		return;
	}
	item = &s->ev.items[BOUNDED(n, KLOAK_MAX_SUBST - 1)];
	item->addr = s->buf + start;
	item->secret_id = id;
	item->len = len;
	item->hbits = hbits;
	item->hshift = hshift;
	s->ev.count = n + 1;
}

#endif /* KLOAK_REWRITE_H */
