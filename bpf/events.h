/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Refusals (why a placeholder was left in place, and what a violation did)
 * and process lifecycle records on the tls_events ring.
 */
#ifndef KLOAK_EVENTS_H
#define KLOAK_EVENTS_H

__noinline int kloak_load_peer(__u32 slot);

/* Room for one record of size bytes on ring; NULL when it is full (counted:
 * KC_EVENTS_LOST). */
static __always_inline void *reserve_record(void *ring, __u64 size)
{
	void *e = bpf_ringbuf_reserve(ring, size, 0);

	if (!e)
		count(KC_EVENTS_LOST, 1);
	return e;
}

/* The action for a violation with secret id in the write's scope: the
 * secret's own, else the scope's default. */
static __always_inline __u32 violation_action(struct scratch *s, __u32 secret_id)
{
	struct kloak_scope *sc;
	__u32 *a;

	if (secret_id && (a = bpf_map_lookup_elem(&kloak_on_violation, &secret_id)))
		return *a;
	sc = bpf_map_lookup_elem(&kloak_scopes, &s->scope_id);
	return sc ? sc->on_violation : KLOAK_ACTION_PASS;
}

/*
 * Count a refusal and report it with the write's destination. A refusal that
 * is a violation (kloak_cfg.violations) raises the write's action; the write
 * path carries it out once every candidate is checked. Global, so the verifier
 * checks it once however many places refuse.
 */
__noinline int kloak_refuse(__u32 slot, __u32 reason, __u32 secret_id, __u64 offset)
{
	struct kloak_refusal_event *e;
	struct scratch *s;
	__u32 action = KLOAK_ACTION_PASS;
	__u64 *c;

	if (reason >= KR__COUNT)
		return 0;
	c = bpf_map_lookup_elem(&kloak_refusals, &reason);
	if (c)
		*c += 1;
	kloak_load_peer(slot); /* the destination, for the report */
	s = scratch(slot);
	if (!s)
		return 0;
	if (kloak_cfg.violations & (1u << reason)) {
		action = violation_action(s, secret_id);
		/* Block shuts the write's socket down; with none known it kills. */
		if (action == KLOAK_ACTION_BLOCK && s->conn_fd < 0)
			action = KLOAK_ACTION_KILL;
		if (action > s->violation)
			s->violation = action;
	}
	e = reserve_record(&tls_events, sizeof(*e));
	if (!e)
		return 0;
	e->type = KE_REFUSED;
	e->tgid = s->tgid;
	e->scope_id = s->scope_id;
	e->secret_id = secret_id;
	e->reason = reason;
	e->offset = offset;
	e->peer = s->peer;
	e->action = action;
	e->_pad = 0;
	e->sni_len = s->sni_len;
	__builtin_memcpy(e->sni, s->sni, KLOAK_NAME_MAX);
	/* A refusal is a report, not a hold: it waits for the worker's next wake
	 * (at most its 50 ms timeout) instead of waking it, and through it the
	 * main thread, once per refused write: a write longer than the scan cap
	 * cost ~100 µs more in wake-ups than its whole scan. */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

/* KE_WAKE: a traced thread is about to stop for the tracer. */
static __always_inline void wake_event(__u32 tgid, __u32 tid)
{
	struct kloak_wake_event *e = reserve_record(&tls_events, sizeof(*e));

	if (!e)
		return;
	e->type = KE_WAKE;
	e->tgid = tgid;
	e->tid = tid;
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void proc_event(__u32 type, __u32 tgid, __u32 ppid, __u32 scope_id)
{
	struct kloak_proc_event *e = reserve_record(&tls_events, sizeof(*e));

	if (!e)
		return;
	e->type = type;
	e->tgid = tgid;
	e->ppid = ppid;
	e->scope_id = scope_id;
	bpf_ringbuf_submit(e, 0);
}

#endif /* KLOAK_EVENTS_H */
