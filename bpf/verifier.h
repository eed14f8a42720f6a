/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Saying things to the verifier that the compiler would otherwise optimise
 * away. Every kernel of the matrix (6.1 to 7.x) must accept the same object,
 * and they differ in how far they follow bounds through register copies and
 * 32-bit arithmetic; these forms work on all of them.
 */
#ifndef KLOAK_VERIFIER_H
#define KLOAK_VERIFIER_H

/* x, proven to lie in [0, mask] (mask = 2^n - 1) on the register the verifier
 * checks: the barrier keeps the compiler from dropping a mask it can prove
 * redundant and from checking a copy instead. */
#define BOUNDED(x, mask)          \
	({                        \
		__u64 __v = (x);  \
		barrier_var(__v); \
		__v & (mask);     \
	})

#endif /* KLOAK_VERIFIER_H */
