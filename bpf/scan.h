/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The scan: find where a "kloak:" marker may start in the first scan_cap
 * bytes of a write. The buffer is copied in KLOAK_CHUNK-byte chunks
 * (bpf_loop, so the verifier checks one chunk, not the whole cap) and tested a
 * word at a time for ':'; a word with one is looked at byte by byte.
 */
#ifndef KLOAK_SCAN_H
#define KLOAK_SCAN_H

/* "kloak" ends right before chunk[p] (KLOAK_MARKER_LEN - 1 <= p < KLOAK_CHUNK). */
static __always_inline bool marker_before(const __u8 *chunk, __u32 p)
{
	/* q + 4 < KLOAK_CHUNK + 4 stays inside the scratch slot (cmp follows chunk). */
	__u64 q = BOUNDED(p - (KLOAK_MARKER_LEN - 1), KLOAK_CHUNK - 1);

	return chunk[q] == 'k' && chunk[q + 1] == 'l' && chunk[q + 2] == 'o' && chunk[q + 3] == 'a' &&
	       chunk[q + 4] == 'k';
}

/* Words tested together: one branch per group. */
#define SCAN_GROUP 4

/*
 * Group `word` (SCAN_GROUP words from word `word`) of the current chunk (n
 * valid bytes, at chunk_off in the write) holds a ':'; note every position
 * where a marker could start. Global: the verifier checks it once, not once
 * per group of the scan loop.
 */
__noinline int kloak_note_colons(__u32 slot, __u32 chunk_off, __u32 word, __u32 n)
{
	struct scratch *s = scratch(slot);
	__u32 b, p, i;

	if (!s)
		return 0;
	for (b = 0; b < 8 * SCAN_GROUP; b++) {
		p = word * 8 + b;
		if (p >= n || p >= KLOAK_CHUNK)
			break;
		p = BOUNDED(p, KLOAK_CHUNK - 1);
		if (s->chunk[p] != ':')
			continue;
		if (chunk_off + p < KLOAK_MARKER_LEN - 1)
			continue;
		/* Cheap pre-check when the marker lies inside this chunk (a JSON
		 * body has a ':' in every member); a marker straddling two chunks
		 * is checked against the writer's memory later. */
		if (p >= KLOAK_MARKER_LEN - 1 && !marker_before(s->chunk, p))
			continue;
		i = s->ncand;
		if (i >= KLOAK_MAX_CANDIDATES) {
			count(KC_CANDIDATES_DROPPED, 1);
			continue;
		}
		s->cand[BOUNDED(i, KLOAK_MAX_CANDIDATES - 1)] = chunk_off + p - (KLOAK_MARKER_LEN - 1);
		s->ncand = i + 1;
	}
	return 0;
}

/* Copy the write's bytes from off (< s->scan_len), at most cap (a power of
 * two), to dst; how many, or 0 when the read fails. */
static __always_inline __u64 copy_chunk(void *dst, const struct scratch *s, __u64 off, __u64 cap)
{
	__u64 n = s->scan_len - off;

	if (n > cap)
		n = cap;
	/* n is in [1, cap]; say so on the register passed as the size */
	n = BOUNDED(n - 1, cap - 1) + 1;
	if (bpf_probe_read_user(dst, n, (void *)(s->buf + off)))
		return 0;
	return n;
}

/* bpf_loop callback: copy chunk idx of the write and test it word by word. */
static long scan_chunk(__u32 idx, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct scratch *s = scratch(slot);
	__u64 off, n;
	__u32 w;

	if (!s)
		return 1;
	off = (__u64)idx * KLOAK_CHUNK;
	if (off >= s->scan_len)
		return 1;
	n = copy_chunk(s->chunk, s, off, KLOAK_CHUNK);
	if (!n)
		return 1;
	/* Every word is tested, with no exit: a short last chunk's tail holds
	 * stale bytes, which kloak_note_colons ignores (p >= n), and a loop
	 * without exits costs the verifier one pass. */
#pragma unroll
	for (w = 0; w < KLOAK_CHUNK / 8; w += SCAN_GROUP)
		if (has_byte_any4(s->words[w], s->words[w + 1], s->words[w + 2], s->words[w + 3], ':'))
			kloak_note_colons(slot, off, w, n);
	return 0;
}

/* Fill s->cand with where markers may start in the first s->scan_len
 * bytes of the write; returns how many. */
__noinline __u32 kloak_scan(__u32 slot)
{
	struct scratch *s = scratch(slot);

	if (!s)
		return 0;
	s->ncand = 0;
	bpf_loop((s->scan_len + KLOAK_CHUNK - 1) / KLOAK_CHUNK, scan_chunk, &slot, 0);
	return s->ncand;
}

#endif /* KLOAK_SCAN_H */
