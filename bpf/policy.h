/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Destination policy: may this secret go to this write's peer? A secret
 * without a kloak_policy entry may go anywhere (counted). Otherwise one of its
 * rules must allow the peer (IP, port) and, for names, the SNI the client set
 * and an address kloak itself resolved for the name.
 */
#ifndef KLOAK_POLICY_H
#define KLOAK_POLICY_H

#define VERDICT_NONE 0
#define VERDICT_SNI_MISMATCH 1
#define VERDICT_ALLOW 2

static __always_inline bool cidr_match(const __u8 *net, __u32 prefix, const __u8 *addr)
{
	__u32 i, bits;
	__u8 mask;

	for (i = 0; i < 16; i++) {
		if (prefix <= i * 8)
			break;
		bits = prefix - i * 8;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((net[i] ^ addr[i]) & mask)
			return false;
	}
	return true;
}

static __always_inline bool names_equal(const char *a, const char *b)
{
	__u32 i;

	for (i = 0; i < KLOAK_NAME_MAX / 8; i++)
		if (((const __u64 *)a)[i] != ((const __u64 *)b)[i])
			return false;
	return true;
}

/* bpf_loop callback: byte j of the rule's suffix equals the SNI's at s->sfx_off + j. */
static long suffix_byte(__u32 j, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct scratch *s = scratch(slot);
	struct kloak_policy *pol;
	__u64 at;

	if (!s)
		return 1;
	pol = bpf_map_lookup_elem(&kloak_policy, &s->check_id);
	if (!pol) {
		s->sfx_ok = 0;
		return 1;
	}
	at = BOUNDED(s->sfx_off + j, KLOAK_NAME_MAX - 1);
	if (s->sni[at] != pol->rules[BOUNDED(s->sfx_rule, KLOAK_MAX_RULES - 1)].name[BOUNDED(j, KLOAK_NAME_MAX - 1)]) {
		s->sfx_ok = 0;
		return 1;
	}
	return 0;
}

/* sni is "<one or more labels>." + the suffix of rule idx */
static __always_inline bool under_suffix(__u32 slot, struct scratch *s, struct kloak_rule *r, __u32 idx)
{
	__u32 n = s->sni_len, m = r->name_len, off;

	if (m == 0 || m >= KLOAK_NAME_MAX || n >= KLOAK_NAME_MAX || n < m + 2)
		return false;
	off = n - m;
	if (s->sni[(off - 1) & (KLOAK_NAME_MAX - 1)] != '.')
		return false;
	s->sfx_off = off;
	s->sfx_rule = idx;
	s->sfx_ok = 1;
	bpf_loop(m, suffix_byte, &slot, 0);
	return s->sfx_ok;
}

/* Did kloak resolve name to the peer, and was that answer current when the
 * connection was bound? */
static __always_inline bool resolved_to_peer(struct scratch *s, const char *name)
{
	struct kloak_resolved *r;

	__builtin_memcpy(s->rkey.name, name, KLOAK_NAME_MAX);
	__builtin_memcpy(s->rkey.addr, s->peer.addr, 16);
	r = bpf_map_lookup_elem(&kloak_resolved, &s->rkey);
	return r && s->bound_ns <= r->valid_until_ns;
}

/* Rule idx of secret s->check_id against the loaded peer; raises s->verdict. */
__noinline int kloak_match_rule(__u32 slot, __u32 idx)
{
	struct scratch *s = scratch(slot);
	struct kloak_policy *pol;
	struct kloak_rule *r;

	if (!s || idx >= KLOAK_MAX_RULES)
		return 0;
	pol = bpf_map_lookup_elem(&kloak_policy, &s->check_id);
	if (!pol)
		return 0;
	r = &pol->rules[BOUNDED(idx, KLOAK_MAX_RULES - 1)];
	if (r->port && r->port != s->peer.port)
		return 0;
	switch (r->kind) {
	case KLOAK_RULE_CIDR:
		if (cidr_match(r->addr, r->prefix, s->peer.addr))
			s->verdict = VERDICT_ALLOW;
		break;
	case KLOAK_RULE_HOST:
		if (!s->sni_len || (s->sni_len == r->name_len && names_equal(s->sni, r->name))) {
			if (resolved_to_peer(s, r->name))
				s->verdict = VERDICT_ALLOW;
		} else if (resolved_to_peer(s, r->name)) {
			/* The right server, asked for another name: on a shared IP
			 * (CDN, ingress) that name is another destination. */
			s->verdict = VERDICT_SNI_MISMATCH;
		}
		break;
	case KLOAK_RULE_WILDCARD:
		/* Only the SNI can say which name under the suffix is meant. */
		if (s->sni_len && under_suffix(slot, s, r, idx) && resolved_to_peer(s, s->sni))
			s->verdict = VERDICT_ALLOW;
		break;
	}
	return s->verdict == VERDICT_ALLOW;
}

/* bpf_loop callback: stop at the first rule that allows. */
static long check_rule(__u32 idx, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	return kloak_match_rule(slot, idx) ? 1 : 0;
}

/* The secret may go to this write's peer (any peer when it has no rules:
 * counted); refuses, and says why, otherwise. */
__noinline int kloak_destination_allowed(__u32 slot, __u32 id, __u64 start)
{
	struct kloak_policy *pol = bpf_map_lookup_elem(&kloak_policy, &id);
	struct scratch *s;
	__u32 n;

	if (!pol) {
		count(KC_UNRESTRICTED, 1);
		return 1;
	}
	n = pol->nrules < KLOAK_MAX_RULES ? pol->nrules : KLOAK_MAX_RULES;
	s = scratch(slot);
	if (!s)
		return 0;
	if (!kloak_load_peer(slot)) {
		kloak_refuse(slot, s->peer_state, id, start);
		return 0;
	}
	s->check_id = id;
	s->verdict = VERDICT_NONE;
	bpf_loop(n, check_rule, &slot, 0);
	if (s->verdict == VERDICT_ALLOW)
		return 1;
	if (s->verdict == VERDICT_SNI_MISMATCH)
		kloak_refuse(slot, KR_SNI_MISMATCH, id, start);
	else
		kloak_refuse(slot, KR_DESTINATION_NOT_ALLOWED, id, start);
	return 0;
}

/*
 * A verified placeholder of secret id, nb bytes at start of the write: may
 * it become the value here? The scope must be entitled to the secret, the
 * write's destination allowed for it, and its bytes in memory the value may
 * be written to (*unchecked: item_buffer_check). 1 if so; else 0, refused.
 * One decision for plaintext placeholders and HPACK-coded ones alike.
 */
static __always_inline int item_allowed(__u32 slot, struct scratch *s, __u32 id, __u64 start, __u32 nb, __u32 *unchecked)
{
	struct kloak_grant grant = { .scope_id = s->scope_id, .secret_id = id };
	__u32 why;

	if (!bpf_map_lookup_elem(&kloak_entitled, &grant)) {
		kloak_refuse(slot, KR_NOT_ENTITLED, id, start);
		return 0;
	}
	if (!kloak_destination_allowed(slot, id, start))
		return 0;
	why = item_buffer_check(s->buf + start, nb, unchecked);
	if (why) {
		kloak_refuse(slot, why, id, start);
		return 0;
	}
	return 1;
}

#endif /* KLOAK_POLICY_H */
