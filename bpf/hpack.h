/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Placeholders in HTTP/2 header blocks. HPACK (RFC 7541) sends most header
 * values Huffman-coded: a placeholder there is a bit string, the code of
 * "kloak:" (37 bits) followed by its tail characters' codes, and it starts at
 * any bit of a byte (after "Bearer ", say). Raw literals and DATA frames hold
 * the placeholder's own bytes, which the byte scan (scan.h) finds.
 *
 * Only connections that speak HTTP/2 pay for this: a write that starts with
 * the client preface marks its connection (kloak_h2). Writes of marked
 * connections have their frame headers walked (a frame may continue into the
 * next write), and only header-block payload is scanned again, for the
 * marker's code at each of the 8 bit alignments: one byte wholly inside the
 * code is looked for a word at a time, and a hit is checked against the whole
 * 37 bits. A connection whose frames stop parsing is scanned whole from then. A candidate is
 * verified bit for bit against the loaded placeholder's code (kloak_hcodes,
 * which user space fills from the placeholder) and goes through the same
 * checks as a byte placeholder: entitlement, destination, buffer. An
 * accepted one becomes an item with hbits/hshift set; stop mode's user space
 * (src/dataplane/hpack-splice.ts) splices the value's code into those bits,
 * keeping the neighbouring bits, and the placeholder's code back at return.
 * Issuance guarantees the value's code has the placeholder's length
 * (src/secrets/placeholder.ts); a secret loaded without (fits == 0) is
 * refused. Kernel mode splices in the probe (kloak_item_poke), a word at a
 * time: each 8-byte word of the span is read, its covered bits replaced, and
 * written back, so no buffer is needed and a restore never waits for a slot.
 */
#ifndef KLOAK_HPACK_H
#define KLOAK_HPACK_H

#define HP_CHUNK 512
/* Chunks overlap by 8 bytes, so a marker's code (at most 6 bytes) lies
 * wholly in some chunk. */
#define HP_STRIDE (HP_CHUNK - 8)
#define HP_MAX_CAND 16
#define HP_CMP (2 * KLOAK_VALUE_MAX) /* power of two >= the longest span (4097 bytes) */
/* "PRI * HT", the client preface's first 8 bytes, as a little-endian u64 */
#define HP_PREFACE 0x5448202a20495250ULL

/* BEGIN generated: bun src/dataplane/hpack.ts --bpf-tables */
#define HP_MARKER_BITS 37
#define HP_MARKER 0x1d6838fadcULL
#define HP_CORE0 0xc7
#define HP_AT0 2
#define HP_CORE1 0xa0
#define HP_AT1 1
#define HP_CORE2 0xd0
#define HP_AT2 1
#define HP_CORE3 0xfa
#define HP_AT3 3
#define HP_CORE4 0xb4
#define HP_AT4 1
#define HP_CORE5 0x0e
#define HP_AT5 2
#define HP_CORE6 0xad
#define HP_AT6 1
#define HP_CORE7 0xd6
#define HP_AT7 1
static const __u16 hp_sym[256] = {
	0x530, 0x530, 0x530, 0x530, 0x530, 0x530, 0x530, 0x530,
	0x531, 0x531, 0x531, 0x531, 0x531, 0x531, 0x531, 0x531,
	0x532, 0x532, 0x532, 0x532, 0x532, 0x532, 0x532, 0x532,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x633, 0x633, 0x633, 0x633,
	0x634, 0x634, 0x634, 0x634, 0x635, 0x635, 0x635, 0x635,
	0x636, 0x636, 0x636, 0x636, 0x637, 0x637, 0x637, 0x637,
	0x638, 0x638, 0x638, 0x638, 0x639, 0x639, 0x639, 0x639,
	0x000, 0x000, 0x000, 0x000, 0x641, 0x641, 0x641, 0x641,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x742, 0x742, 0x743, 0x743, 0x744, 0x744,
	0x745, 0x745, 0x746, 0x746, 0x747, 0x747, 0x748, 0x748,
	0x000, 0x000, 0x74a, 0x74a, 0x74b, 0x74b, 0x000, 0x000,
	0x74d, 0x74d, 0x74e, 0x74e, 0x000, 0x000, 0x750, 0x750,
	0x751, 0x751, 0x752, 0x752, 0x753, 0x753, 0x754, 0x754,
	0x000, 0x000, 0x756, 0x756, 0x757, 0x757, 0x759, 0x759,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000, 0x000,
	0x000, 0x000, 0x000, 0x000, 0x858, 0x85a, 0x000, 0x000,
};
/* END generated */

/*
 * Where a connection's frames stand between writes: the frame headers are
 * walked so that only header blocks (HEADERS, PUSH_PROMISE, CONTINUATION
 * payloads) are scanned for Huffman codes, not DATA. A frame that goes on
 * into the next write is carried. Anything that does not parse as frames (a
 * frame header cut by a write, a partial write the app repeats, more frames
 * than one walk takes) ends the walking for the connection: its writes are
 * then scanned whole, which finds the same placeholders at a higher cost.
 */
struct h2_state {
	__u32 carry;    /* bytes of the current frame still to come */
	__u8 carry_hb;  /* ... and they are header block */
	__u8 unframed;  /* lost track: scan whole writes */
	__u8 _pad[2];
};

/* {ssl, tgid} of connections that sent the HTTP/2 client preface. An LRU:
 * an evicted connection only stops being scanned for Huffman codes (its
 * placeholders go out), which fails closed. */
KLOAK_LRU_HASH(kloak_h2, struct kloak_conn_key, struct h2_state, 65536);

#define HP_MAX_RANGES 8  /* header-block pieces scanned in one write */
#define HP_MAX_FRAMES 128 /* frame headers walked in one write */
#define HP_PREFACE_LEN 24

/* secret id -> its placeholder's Huffman code */
KLOAK_HASH_ON_USE(kloak_hcodes, __u32, struct kloak_hcode, 65536);

/* secret id -> its value's Huffman code; kernel mode only (as kloak_values) */
KLOAK_HASH_ON_USE(kloak_hvalues, __u32, struct kloak_hcode, 65536);

struct hpack_scratch {
	/* 8 bytes of slack: a window read at any chunk byte stays inside;
	 * words: aligned 64-bit loads (see struct scratch) */
	union {
		__u8 chunk[HP_CHUNK + 8];
		__u64 words[HP_CHUNK / 8 + 1];
	};
	__u8 cmp[HP_CMP + 16];
	__u64 cand[HP_MAX_CAND]; /* offset in the write << 3 | bit where the code starts */
	__u32 rstart[HP_MAX_RANGES]; /* header-block bytes of the write: [rstart, rend) */
	__u32 rend[HP_MAX_RANGES];
	__u32 nranges;
	__u32 whole;   /* scan the whole write (not walking frames) */
	__u32 off;     /* frame walk: next frame header */
	__u32 walk_end; /* frame walk: 1 done, 2 lost track */
	__u32 carry;    /* frame walk: what the write leaves open for the next */
	__u32 carry_hb;
	__u32 ncand;
	/* bit-for-bit check of one candidate */
	__u32 id;
	__u32 bits;
	__u32 shift;
	__u32 ok;
	__u32 _pad;
};

/* One per work slot of struct scratch (same slot number). */
KLOAK_PERCPU_ARRAY(kloak_hpack_scratch, struct hpack_scratch, KLOAK_SCRATCH_SLOTS);

static __always_inline struct hpack_scratch *hscratch(__u32 slot)
{
	return bpf_map_lookup_elem(&kloak_hpack_scratch, &slot);
}

static __always_inline __u64 be64_at(const __u8 *p)
{
	return __builtin_bswap64(*(const __u64 *)p);
}

/* Whether byte pos of the write is header block. */
static __always_inline bool in_ranges(struct hpack_scratch *h, __u32 pos)
{
	__u32 r;

	for (r = 0; r < HP_MAX_RANGES; r++) {
		if (r >= h->nranges)
			break;
		if (pos >= h->rstart[r] && pos < h->rend[r])
			return true;
	}
	return false;
}

/* Whether [off, off + HP_CHUNK) meets header block. */
static __always_inline bool chunk_in_ranges(struct hpack_scratch *h, __u32 off)
{
	__u32 r;

	for (r = 0; r < HP_MAX_RANGES; r++) {
		if (r >= h->nranges)
			break;
		if (off < h->rend[r] && off + HP_CHUNK > h->rstart[r])
			return true;
	}
	return false;
}

/* The marker's code starts at bit a of chunk byte b: note it, once. */
static __always_inline void hpack_try(struct hpack_scratch *h, __u32 off, __u32 b, __u32 a, __u32 n)
{
	__u64 w;
	__u32 i;

	/* Starting in the 8 bytes the next chunk repeats: that chunk notes it. */
	if (b >= HP_STRIDE || b + ((a + HP_MARKER_BITS + 7) >> 3) > n)
		return;
	if (!h->whole && !in_ranges(h, off + b))
		return;
	w = be64_at(&h->chunk[BOUNDED(b, HP_CHUNK - 1)]);
	if (((w << a) >> (64 - HP_MARKER_BITS)) != HP_MARKER)
		return;
	i = h->ncand;
	if (i >= HP_MAX_CAND) {
		count(KC_CANDIDATES_DROPPED, 1);
		return;
	}
	h->cand[BOUNDED(i, HP_MAX_CAND - 1)] = ((__u64)(off + b) << 3) | a;
	h->ncand = i + 1;
}

#define HP_TRY(a)                                  \
	if (x == HP_CORE##a && p >= HP_AT##a)      \
		hpack_try(h, off, p - HP_AT##a, a, n);

/* Word `word` of the chunk (n valid bytes, at off in the write) holds some
 * HP_COREa: check each byte that equals one against the whole marker. */
__noinline int kloak_hpack_note(__u32 slot, __u32 off, __u32 word, __u32 n)
{
	struct hpack_scratch *h = hscratch(slot);
	__u32 b, p;
	__u8 x;

	if (!h)
		return 0;
	for (b = 0; b < 8; b++) {
		p = word * 8 + b;
		if (p >= n || p >= HP_CHUNK)
			break;
		x = h->chunk[BOUNDED(p, HP_CHUNK - 1)];
		HP_TRY(0)
		HP_TRY(1)
		HP_TRY(2)
		HP_TRY(3)
		HP_TRY(4)
		HP_TRY(5)
		HP_TRY(6)
		HP_TRY(7)
	}
	return 0;
}

static __always_inline __u64 hp_any_core(__u64 x)
{
	return has_byte(x, HP_CORE0) | has_byte(x, HP_CORE1) | has_byte(x, HP_CORE2) | has_byte(x, HP_CORE3) |
	       has_byte(x, HP_CORE4) | has_byte(x, HP_CORE5) | has_byte(x, HP_CORE6) | has_byte(x, HP_CORE7);
}

/* bpf_loop callback: copy chunk idx (HP_STRIDE apart) and test it word by word. */
static long hpack_chunk(__u32 idx, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct scratch *s = scratch(slot);
	struct hpack_scratch *h = hscratch(slot);
	__u64 off, n;
	__u32 w;

	if (!s || !h)
		return 1;
	off = (__u64)idx * HP_STRIDE;
	if (off >= s->scan_len)
		return 1;
	if (!h->whole && !chunk_in_ranges(h, off))
		return 0;
	n = copy_chunk(h->chunk, s, off, HP_CHUNK);
	if (!n)
		return 1;
	/* As in scan.h: every word, no exit; stale bytes past n are ignored. */
#pragma unroll
	for (w = 0; w < HP_CHUNK / 8; w++)
		if (hp_any_core(h->words[w]))
			kloak_hpack_note(slot, off, w, n);
	return 0;
}

static __always_inline void add_range(struct hpack_scratch *h, __u64 from, __u64 to)
{
	__u32 r = h->nranges;

	if (from >= to)
		return;
	if (r >= HP_MAX_RANGES) {
		h->whole = 1;
		return;
	}
	h->rstart[BOUNDED(r, HP_MAX_RANGES - 1)] = from;
	h->rend[BOUNDED(r, HP_MAX_RANGES - 1)] = to;
	h->nranges = r + 1;
}

#define H2_DATA 0
#define H2_HEADERS 1
#define H2_PUSH_PROMISE 5
#define H2_CONTINUATION 9

/* bpf_loop callback: one frame header at h->off. */
static long walk_frame(__u32 idx, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct scratch *s = scratch(slot);
	struct hpack_scratch *h = hscratch(slot);
	__u8 fh[9];
	__u64 off, flen, end;
	__u32 type, stream;
	bool hb;

	if (!s || !h)
		return 1;
	off = h->off;
	if (off >= s->len) {
		h->walk_end = 1;
		return 1;
	}
	if (off + sizeof(fh) > s->len || bpf_probe_read_user(fh, sizeof(fh), (void *)(s->buf + off))) {
		h->walk_end = 2; /* a frame header cut by the write */
		return 1;
	}
	flen = (__u64)fh[0] << 16 | (__u64)fh[1] << 8 | fh[2];
	type = fh[3];
	stream = (__u32)fh[5] << 24 | (__u32)fh[6] << 16 | (__u32)fh[7] << 8 | fh[8];
	/* Not a frame a client sends (types 0-9; the reserved bit clear;
	 * stream frames on a stream): the walk is off track. */
	if (type > H2_CONTINUATION || (stream & 0x80000000) ||
	    ((type <= 3 || type == H2_PUSH_PROMISE || type == H2_CONTINUATION) && stream == 0) ||
	    ((type == 4 || type == 6 || type == 7) && stream != 0)) {
		h->walk_end = 2;
		return 1;
	}
	hb = type == H2_HEADERS || type == H2_PUSH_PROMISE || type == H2_CONTINUATION;
	end = off + sizeof(fh) + flen;
	if (hb)
		add_range(h, off + sizeof(fh), end < s->len ? end : s->len);
	h->off = end;
	if (end >= s->len) {
		h->walk_end = 1;
		h->carry = end - s->len;
		h->carry_hb = hb;
		return 1;
	}
	return 0;
}

/*
 * Fill the hpack candidates of this write; returns how many. Writes of
 * connections not (yet) seen to speak HTTP/2 cost one map lookup and, for the
 * ones that could be a preface, an 8-byte read; writes of HTTP/2 connections
 * have their frame headers walked and only their header blocks scanned.
 */
__noinline __u32 kloak_hpack_scan(__u32 slot)
{
	struct scratch *s = scratch(slot);
	struct hpack_scratch *h = hscratch(slot);
	struct kloak_conn_key k = {};
	struct h2_state fresh = {}, *st;
	__u64 head = 0, c;

	if (!s || !h)
		return 0;
	h->ncand = 0;
	h->nranges = 0;
	h->whole = 0;
	h->off = 0;
	h->walk_end = 0;
	h->carry = 0;
	h->carry_hb = 0;
	k.ssl = s->ssl;
	k.tgid = s->tgid;
	st = bpf_map_lookup_elem(&kloak_h2, &k);
	if (!st) {
		/* A preface cut short by its write is carried like a frame. */
		if (s->len < sizeof(head) || bpf_probe_read_user(&head, sizeof(head), (void *)s->buf) || head != HP_PREFACE)
			return 0;
		bpf_map_update_elem(&kloak_h2, &k, &fresh, BPF_ANY);
		st = bpf_map_lookup_elem(&kloak_h2, &k);
		if (!st)
			return 0;
		h->off = HP_PREFACE_LEN;
	}
	if (st->unframed) {
		h->whole = 1;
	} else {
		c = st->carry;
		if (c) {
			/* The frame the last write left open goes on here. */
			if (st->carry_hb)
				add_range(h, 0, c < s->len ? c : s->len);
			h->off = c;
		}
		if (h->off >= s->len) {
			h->carry = h->off - s->len;
			h->carry_hb = st->carry_hb;
			h->walk_end = 1;
		} else {
			bpf_loop(HP_MAX_FRAMES, walk_frame, &slot, 0);
		}
		if (h->walk_end == 1) {
			st->carry = h->carry;
			st->carry_hb = h->carry_hb;
		} else {
			/* Lost track (or more frames than one walk takes): from now
			 * on this connection's writes are scanned whole. */
			st->unframed = 1;
			st->carry = 0;
			h->whole = 1;
		}
	}
	if (!h->whole && !h->nranges)
		return 0;
	bpf_loop((s->scan_len + HP_STRIDE - 1) / HP_STRIDE, hpack_chunk, &slot, 0);
	return h->ncand;
}

/* The secret whose placeholder's code starts at bit shift of buf+start: the
 * tail characters after the marker are decoded (up to KLOAK_KEY_LEN) and
 * looked up as in kloak_lookup_placeholder. 0 when none. */
__noinline __u32 kloak_hpack_lookup(__u32 slot, __u64 start, __u32 shift)
{
	struct kloak_ph_key key = {};
	__u8 head[16] = {};
	__u8 tail[KLOAK_KEY_LEN] = {};
	struct scratch *s = scratch(slot);
	__u32 got, pos, i, n = 0, k, v, sym, len, t, *id;
	__u64 avail;

	if (!s || start >= s->len || shift > 7)
		return 0;
	avail = s->len - start;
	got = avail > sizeof(head) ? sizeof(head) : avail;
	if (bpf_probe_read_user(head, BOUNDED(got - 1, 15) + 1, (void *)(s->buf + start)))
		return 0;
	pos = shift + HP_MARKER_BITS;
	for (i = 0; i < KLOAK_KEY_LEN; i++) {
		k = pos >> 3;
		if (k + 1 >= sizeof(head))
			break;
		v = ((((__u32)head[k & 15] << 8) | head[(k + 1) & 15]) << (pos & 7)) >> 8;
		sym = hp_sym[v & 0xff];
		len = sym >> 8;
		if (!len || pos + len > got * 8)
			break;
		tail[i] = sym & 0xff;
		pos += len;
		n++;
	}
	for (t = KLOAK_KEY_LEN; t >= KLOAK_VALUE_MIN - KLOAK_MARKER_LEN; t--) {
		if (t > n)
			continue;
		for (i = 0; i < KLOAK_KEY_LEN; i++)
			key.tail[i] = i < t ? tail[i] : 0;
		key.tail_len = t;
		id = bpf_map_lookup_elem(&kloak_placeholders, &key);
		if (id)
			return *id;
	}
	return 0;
}

/* bpf_loop callback: bits [64 i, 64 i + 64) of the candidate equal the code. */
static long hpack_match_word(__u32 i, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct hpack_scratch *h = hscratch(slot);
	struct kloak_hcode *hc;
	__u64 x, y, mask = ~0ULL, o;
	__u32 shift, left;

	if (!h)
		return 1;
	hc = bpf_map_lookup_elem(&kloak_hcodes, &h->id);
	if (!hc || hc->bits != h->bits || (__u64)i * 64 >= h->bits) {
		h->ok = 0;
		return 1;
	}
	o = BOUNDED((__u64)i * 8, KLOAK_VALUE_MAX - 1);
	shift = h->shift & 7;
	x = be64_at(&h->cmp[o]);
	if (shift)
		x = (x << shift) | (h->cmp[o + 8] >> (8 - shift));
	y = be64_at(&hc->code[o]);
	left = h->bits - i * 64;
	if (left < 64)
		mask = ~0ULL << (64 - left);
	if ((x ^ y) & mask) {
		h->ok = 0;
		return 1;
	}
	return 0;
}

/* Every bit of the candidate equals secret id's placeholder code. */
__noinline int kloak_hpack_matches(__u32 slot, __u64 start, __u32 shift, __u32 id)
{
	struct scratch *s = scratch(slot);
	struct hpack_scratch *h = hscratch(slot);
	struct kloak_hcode *hc = bpf_map_lookup_elem(&kloak_hcodes, &id);
	__u32 bits, nb;

	if (!s || !h || !hc || shift > 7)
		return 0;
	bits = hc->bits;
	if (bits < HP_MARKER_BITS || bits > 8 * KLOAK_VALUE_MAX)
		return 0;
	nb = (shift + bits + 7) >> 3;
	if (start + nb > s->len)
		return 0;
	if (bpf_probe_read_user(h->cmp, BOUNDED(nb - 1, HP_CMP - 1) + 1, (void *)(s->buf + start)))
		return 0;
	h->id = id;
	h->bits = bits;
	h->shift = shift;
	h->ok = 1;
	bpf_loop((bits + 63) / 64, hpack_match_word, &slot, 0);
	return h->ok;
}

/*
 * Hpack candidate idx: verified, entitled, allowed, in private memory, and a
 * value whose code fits: added to s->ev as a bit splice; else refused.
 */
__noinline int kloak_hpack_check(__u32 slot, __u32 idx, __u32 mode)
{
	struct scratch *s = scratch(slot);
	struct hpack_scratch *h = hscratch(slot);
	struct kloak_hcode *hc;
	__u32 shift, id, nb, bits, fits, unchecked;
	__u64 c, start;

	if (!s || !h || idx >= HP_MAX_CAND)
		return 0;
	c = h->cand[BOUNDED(idx, HP_MAX_CAND - 1)];
	start = c >> 3;
	shift = c & 7;
	if (start >= s->len)
		return 0;
	id = kloak_hpack_lookup(slot, start, shift);
	hc = id ? bpf_map_lookup_elem(&kloak_hcodes, &id) : NULL;
	if (!hc) {
		kloak_refuse(slot, KR_UNKNOWN_PLACEHOLDER, 0, start);
		return 0;
	}
	bits = hc->bits;
	fits = hc->fits;
	nb = (shift + bits + 7) >> 3;
	if (start + nb > s->len) {
		kloak_refuse(slot, KR_TRUNCATED, id, start);
		return 0;
	}
	if (!kloak_hpack_matches(slot, start, shift, id)) {
		kloak_refuse(slot, KR_UNKNOWN_PLACEHOLDER, id, start);
		return 0;
	}
	if (!item_allowed(slot, s, id, start, nb, &unchecked))
		return 0;
	if (!fits) {
		kloak_refuse(slot, KR_HPACK_CODE_LENGTH, id, start);
		return 0;
	}
	/* Kernel mode needs the value's code, loaded with the value itself. */
	if (mode == KLOAK_MODE_KERNEL && !bpf_map_lookup_elem(&kloak_hvalues, &id)) {
		kloak_refuse(slot, KR_HPACK_KERNEL_MODE, id, start);
		return 0;
	}
	add_item(slot, s, id, start, nb, bits, shift | unchecked);
	return 0;
}

struct hpack_verify_ctx {
	__u32 slot;
	__u32 mode;
};

static long hpack_verify_one(__u32 idx, void *ctx)
{
	struct hpack_verify_ctx *v = ctx;

	kloak_hpack_check(v->slot, idx, v->mode);
	return 0;
}

/* Check every hpack candidate of the write (after the byte candidates). */
static __always_inline void kloak_hpack_verify(__u32 slot, __u32 mode)
{
	struct hpack_scratch *h = hscratch(slot);
	struct hpack_verify_ctx v = { .slot = slot, .mode = mode };

	if (h && h->ncand)
		bpf_loop(h->ncand, hpack_verify_one, &v, 0);
}

/* ---- kernel mode: the splice in the probe ---------------------------------- */

struct hpack_poke {
	__u64 addr;
	__u32 id;
	__u32 nb;    /* bytes the code's bits touch */
	__u32 bits;
	__u32 shift;
	__u32 restore;
	__u32 failed;
};

/* bpf_loop callback: span word w (bytes 8w..8w+7, fewer at the end) gets the
 * code's bits that fall into it; the bits around the code keep theirs. */
static long hpack_poke_word(__u32 w, void *ctx)
{
	struct hpack_poke *p = ctx;
	struct kloak_hcode *hc = p->restore ? bpf_map_lookup_elem(&kloak_hcodes, &p->id)
					    : bpf_map_lookup_elem(&kloak_hvalues, &p->id);
	__u64 cur = 0, code, mask = ~0ULL, first, end, o = (__u64)w * 8;
	__u32 n, shift = p->shift & 7;
	__u8 b[8] = {};

	if (!hc || hc->bits != p->bits || o >= p->nb) {
		p->failed = 1;
		return 1;
	}
	n = p->nb - o > 8 ? 8 : p->nb - o;
	n = BOUNDED(n - 1, 7) + 1;
	if (bpf_probe_read_user(b, n, (void *)(p->addr + o))) {
		p->failed = 1;
		return 1;
	}
	cur = be64_at(b);
	o = BOUNDED(o, KLOAK_VALUE_MAX - 1);
	/* The code's bits as they lie in this word: shifted right by shift,
	 * with the low bits of the byte before carried in. */
	code = be64_at(&hc->code[o]) >> shift;
	if (shift && o > 0)
		code |= (__u64)hc->code[o - 1] << (64 - shift);
	/* Bits of the word inside [shift, shift + bits) of the span. */
	first = (__u64)w * 64;
	end = shift + (__u64)p->bits;
	if (first < shift)
		mask &= ~0ULL >> (shift - first);
	if (end < first + 64)
		mask &= ~(~0ULL >> (end - first));
	cur = (cur & ~mask) | (code & mask);
	*(__u64 *)b = __builtin_bswap64(cur);
	if (bpf_probe_write_user((void *)(p->addr + (__u64)w * 8), b, n)) {
		p->failed = 1;
		return 1;
	}
	return 0;
}

/*
 * Kernel mode: write an item's value in (restore: its placeholder back). A
 * byte item is kloak_poke's; a Huffman item is spliced word by word. 0 on
 * success; a failure may leave part written, which the restore undoes.
 */
__noinline int kloak_item_poke(__u64 addr, __u32 id, __u32 len, __u32 hbits, __u32 how)
{
	struct hpack_poke p = { .addr = addr, .id = id, .nb = len, .bits = hbits, .shift = how & 7, .restore = how >> 8 };

	if (hbits == 0)
		return kloak_poke(addr, id, len, how >> 8);
	if (hbits < HP_MARKER_BITS || hbits > 8 * KLOAK_VALUE_MAX || len != ((how & 7) + hbits + 7) >> 3)
		return -1;
	bpf_loop((len + 7) / 8, hpack_poke_word, &p, 0);
	return p.failed ? -1 : 0;
}

#endif /* KLOAK_HPACK_H */
