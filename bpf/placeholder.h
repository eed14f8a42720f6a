/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * From a candidate position to a verified placeholder: the marker is really
 * there, the key after it names a loaded placeholder, and every byte of that
 * placeholder matches the write. Each step is a global function of scalars,
 * checked once by the verifier.
 */
#ifndef KLOAK_PLACEHOLDER_H
#define KLOAK_PLACEHOLDER_H

static __always_inline bool is_marker(struct scratch *s, __u64 start)
{
	char m[KLOAK_MARKER_LEN];

	if (bpf_probe_read_user(m, sizeof(m), (void *)(s->buf + start)))
		return false;
	return m[0] == 'k' && m[1] == 'l' && m[2] == 'o' && m[3] == 'a' && m[4] == 'k' && m[5] == ':';
}

/* The secret whose placeholder starts at buf+start; 0 when none. */
__noinline __u32 kloak_lookup_placeholder(__u32 slot, __u64 start)
{
	struct kloak_ph_key key = {};
	__u8 head[KLOAK_MARKER_LEN + KLOAK_KEY_LEN] = {};
	struct scratch *s = scratch(slot);
	__u32 tail, t, i, *id;
	__u64 avail;

	if (!s || start >= s->len)
		return 0;
	avail = s->len - start;
	if (avail < KLOAK_VALUE_MIN)
		return 0;
	/* A short write may end inside the key: read only what is there. */
	tail = avail - KLOAK_MARKER_LEN > KLOAK_KEY_LEN ? KLOAK_KEY_LEN : avail - KLOAK_MARKER_LEN;
	if (bpf_probe_read_user(head, KLOAK_MARKER_LEN + BOUNDED(tail, KLOAK_KEY_LEN), (void *)(s->buf + start)))
		return 0;
	/* Longest key first: keys are prefix-free, so at most one matches. The
	 * loop runs over constants so that every verifier sees it end. */
	for (t = KLOAK_KEY_LEN; t >= KLOAK_VALUE_MIN - KLOAK_MARKER_LEN; t--) {
		if (t > tail)
			continue;
		for (i = 0; i < KLOAK_KEY_LEN; i++)
			key.tail[i] = i < t ? head[KLOAK_MARKER_LEN + i] : 0;
		key.tail_len = t;
		id = bpf_map_lookup_elem(&kloak_placeholders, &key);
		if (id)
			return *id;
	}
	return 0;
}

#define MATCH_BLOCK 64 /* bytes compared per bpf_loop step */

/*
 * bpf_loop callback: block blk of the placeholder in s->cmp equals the loaded
 * one. Word offsets are clamped to len - 8, so the last word may overlap the
 * one before (len >= 8) and no byte loop is needed.
 */
static long match_block(__u32 blk, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct scratch *s = scratch(slot);
	struct kloak_bytes *ph;
	__u64 off;
	__u32 w;

	if (!s)
		return 1;
	ph = bpf_map_lookup_elem(&kloak_secrets, &s->match_id);
	if (!ph || ph->len != s->match_len) {
		s->match_ok = 0;
		return 1;
	}
	for (w = 0; w < MATCH_BLOCK / 8; w++) {
		off = (__u64)blk * MATCH_BLOCK + w * 8;
		if (off > s->match_len - 8)
			off = s->match_len - 8;
		off = BOUNDED(off, KLOAK_VALUE_MAX - 1);
		if (off > KLOAK_VALUE_MAX - 8 ||
		    *(__u64 *)&s->cmp[off] != *(__u64 *)&ph->data[off]) {
			s->match_ok = 0;
			return 1;
		}
	}
	return 0;
}

/* Every byte at buf+start equals the loaded placeholder of secret id. */
__noinline int kloak_placeholder_matches(__u32 slot, __u64 start, __u32 id)
{
	struct scratch *s = scratch(slot);
	struct kloak_bytes *ph = bpf_map_lookup_elem(&kloak_secrets, &id);
	__u32 len;

	if (!s || !ph)
		return 0;
	len = ph->len;
	if (len < KLOAK_VALUE_MIN || len > KLOAK_VALUE_MAX)
		return 0;
	if (bpf_probe_read_user(s->cmp, BOUNDED(len - 1, KLOAK_VALUE_MAX - 1) + 1, (void *)(s->buf + start)))
		return 0;
	s->match_id = id;
	s->match_len = len;
	s->match_ok = 1;
	bpf_loop((len + MATCH_BLOCK - 1) / MATCH_BLOCK, match_block, &slot, 0);
	return s->match_ok;
}

#endif /* KLOAK_PLACEHOLDER_H */
