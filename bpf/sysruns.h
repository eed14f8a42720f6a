/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Runs of kloak_sys_enter the kernel skips, and the backup program that makes
 * them (kernels 7.0+, where user space sets kloak_cfg.backup_syscalls).
 *
 * From 7.0 programs on syscall tracepoints run preemptibly, and the kernel's
 * recursion guard is per program and CPU, taken before the program runs and
 * released after it: while a task is preempted inside kloak_sys_enter, or in
 * the kernel's code around it, every other run of kloak_sys_enter on that CPU
 * is skipped. A skipped send can leave a connection unbound (its placeholders
 * are refused).
 *
 * A second program on the same tracepoint, attached after it, has a guard of
 * its own, and runs right after kloak_sys_enter on each syscall (same task,
 * same CPU). kloak_sys_enter notes, per CPU, the thread it last ran for
 * (`ran_for`, set first thing). The backup finds its own thread there when
 * kloak_sys_enter ran for this syscall: it clears the note and does nothing.
 * Anything else means kloak_sys_enter did not run for it: another task holds
 * the guard (preempted before the program began, in it, or after it ended),
 * so the backup does the syscall's work.
 *
 * What this cannot see: both programs held at once; the backup of the
 * thread's previous syscall skipped and kloak_sys_enter skipped now (a stale
 * note of its own); a task preempted or moved to another CPU between the two
 * programs. These leave one syscall unhandled or handled twice (a send
 * handled twice can only mark its connection as conflicting: refused, never
 * substituted wrongly). kloak_syscall_runs_recovered_total counts the
 * syscalls the backup handled.
 */
#ifndef KLOAK_SYSRUNS_H
#define KLOAK_SYSRUNS_H

/* Per CPU: the thread kloak_sys_enter last ran for, until its backup saw it (0: none). */
KLOAK_PERCPU_ARRAY(kloak_sys_ran_for, __u32, 1);

/* kloak_sys_enter runs for the current thread's syscall. */
static __always_inline void sys_run_note(void)
{
	__u32 zero = 0, *ran = bpf_map_lookup_elem(&kloak_sys_ran_for, &zero);

	if (ran)
		*ran = (__u32)bpf_get_current_pid_tgid();
}

/* The backup: was kloak_sys_enter skipped for this syscall? */
static __always_inline bool sys_run_skipped(void)
{
	__u32 zero = 0, tid = (__u32)bpf_get_current_pid_tgid(), *ran = bpf_map_lookup_elem(&kloak_sys_ran_for, &zero);

	if (!ran)
		return false;
	if (*ran != tid)
		return true;
	*ran = 0;
	return false;
}

#endif /* KLOAK_SYSRUNS_H */
