/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Word-at-a-time byte tests (SWAR): eight bytes per instruction sequence and
 * no branch per byte, which is both faster and far cheaper to verify.
 */
#ifndef KLOAK_BYTES_H
#define KLOAK_BYTES_H

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Non-zero iff some byte of x equals c. (Bytes above the first match may
 * report false positives; callers look at the bytes themselves.) */
static __always_inline __u64 has_byte(__u64 x, __u8 c)
{
	x ^= ONES * c;
	return (x - ONES) & ~x & HIGHS;
}

/* Non-zero iff some byte of the four words equals c: one test and one
 * branch for 32 bytes. */
static __always_inline __u64 has_byte_any4(__u64 a, __u64 b, __u64 c4, __u64 d, __u8 c)
{
	__u64 m = ONES * c;

	a ^= m;
	b ^= m;
	c4 ^= m;
	d ^= m;
	return (((a - ONES) & ~a) | ((b - ONES) & ~b) | ((c4 - ONES) & ~c4) | ((d - ONES) & ~d)) & HIGHS;
}

/* x with every ASCII 'A'..'Z' byte turned into 'a'..'z'. */
static __always_inline __u64 lower_word(__u64 x)
{
	__u64 t = x & ~HIGHS;                    /* each byte below 0x80 */
	__u64 ge_a = t + (0x80 - 'A') * ONES;    /* high bit: byte >= 'A' */
	__u64 gt_z = t + (0x80 - 'Z' - 1) * ONES; /* high bit: byte > 'Z' */

	return x | ((ge_a & ~gt_z & ~x & HIGHS) >> 2);
}

#endif /* KLOAK_BYTES_H */
