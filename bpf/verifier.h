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

/*
 * Keep a program's frames on the task's own kernel stack.
 *
 * Since 6.13 the verifier puts every frame of 64 bytes or more of a
 * kprobe-type program on a per-CPU "private stack", on the assumption that
 * the kernel never runs such a program twice at once on one CPU. Uprobe
 * programs break it: they run preemptible (migration disabled only), so on a
 * PREEMPT_LAZY or RT kernel a second writer's program runs on the same CPU
 * while the first is preempted, on the same private stack, and the first
 * resumes with the second's locals (seen on Debian's 7.3: a write took one
 * work slot and released another). A program that contains a tail call never
 * gets a private stack (check_max_stack_depth), so every uprobe program
 * starts with one that cannot go anywhere: the prog array stays empty, and a
 * tail call to an empty slot falls through.
 */
KLOAK_MAP(BPF_MAP_TYPE_PROG_ARRAY, kloak_own_stack, __u32, __u32, 1);

static __always_inline void keep_task_stack(void *ctx)
{
	bpf_tail_call(ctx, &kloak_own_stack, 0);
}

/* One uprobe-type program per rewrite mode (user space loads the pair of the
 * mode it runs in): name_stop and name_kernel, in section sec, each keeping
 * its frames on the task's stack and returning body(ctx, mode). */
#define KLOAK_MODE_PROGRAMS(sec, name, body)               \
	SEC(sec)                                           \
	int name##_stop(struct pt_regs *ctx)               \
	{                                                  \
		keep_task_stack(ctx);                      \
		return body(ctx, KLOAK_MODE_STOP);         \
	}                                                  \
	SEC(sec)                                           \
	int name##_kernel(struct pt_regs *ctx)             \
	{                                                  \
		keep_task_stack(ctx);                      \
		return body(ctx, KLOAK_MODE_KERNEL);       \
	}

#endif /* KLOAK_VERIFIER_H */
