/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Records on the tls_events ring that are not write requests: refusals (why a
 * placeholder was left in place) and process lifecycle.
 */
#ifndef KLOAK_EVENTS_H
#define KLOAK_EVENTS_H

__noinline int kloak_peer_known(void);

/*
 * Count a refusal and report it with the write's destination. Global, so the
 * verifier checks it once however many places refuse.
 */
__noinline int kloak_refuse(__u32 reason, __u32 counter, __u32 secret_id, __u64 offset)
{
	struct kloak_refusal_event *e;
	struct scratch *s;

	count(counter, 1);
	kloak_peer_known(); /* loads the destination for the report */
	s = scratch();
	if (!s)
		return 0;
	e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);
	if (!e) {
		count(KC_EVENTS_LOST, 1);
		return 0;
	}
	e->type = KE_REFUSED;
	e->tgid = s->tgid;
	e->scope_id = s->scope_id;
	e->secret_id = secret_id;
	e->reason = reason;
	e->offset = offset;
	e->peer = s->peer;
	e->sni_len = s->sni_len;
	__builtin_memcpy(e->sni, s->sni, KLOAK_NAME_MAX);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline void proc_event(__u32 type, __u32 tgid, __u32 ppid, __u32 scope_id)
{
	struct kloak_proc_event *e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);

	if (!e) {
		count(KC_EVENTS_LOST, 1);
		return;
	}
	e->type = type;
	e->tgid = tgid;
	e->ppid = ppid;
	e->scope_id = scope_id;
	bpf_ringbuf_submit(e, 0);
}

#endif /* KLOAK_EVENTS_H */
