/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Scopes: which processes kloak protects. Children join their parent's scope
 * in the kernel before they run; processes that appear in a registered pod
 * cgroup join that pod's scope; an exec in a scope is held until the agent
 * has attached to the new image; the leader's exit ends the process.
 */
#ifndef KLOAK_SCOPE_H
#define KLOAK_SCOPE_H

/*
 * The scope of the current task's cgroup: its own or the nearest registered
 * ancestor's (a container may create sub-cgroups of its own). NULL when none.
 * Runs at every exec and fork of an unprotected process on the node: a
 * handful of map lookups, nothing on the TLS path.
 */
static __always_inline __u32 *cgroup_scope(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u32 *scope = bpf_map_lookup_elem(&kloak_cgroups, &id);
	int level;

	if (scope)
		return scope;
	/* Deepest first; levels below the task's own return 0. Level 0 is the root. */
	for (level = KLOAK_CGROUP_DEPTH - 1; level > 0; level--) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			continue;
		scope = bpf_map_lookup_elem(&kloak_cgroups, &id);
		if (scope)
			return scope;
	}
	return NULL;
}

/* sched_process_fork: the child of a scoped process, of a launcher, or of a
 * process inside a registered cgroup joins that scope. */
static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct kloak_proc *pp, np = {};
	__u32 *launcher, *scope;

	if (ctgid != (__u32)BPF_CORE_READ(child, pid))
		return 0; /* a new thread, not a new process */
	pp = bpf_map_lookup_elem(&kloak_procs, &ptgid);
	if (pp) {
		np.scope_id = pp->scope_id;
	} else if ((launcher = bpf_map_lookup_elem(&kloak_launchers, &ptgid))) {
		np.scope_id = *launcher;
	} else {
		/* An unprotected process inside a pod's container (moved into its
		 * cgroup from outside, e.g. by the runtime for `kubectl exec`):
		 * its children are the pod's. The current task is the parent; the
		 * child shares its cgroup unless created with CLONE_INTO_CGROUP,
		 * and then it is caught at its exec, which a runtime always does. */
		scope = cgroup_scope();
		if (!scope)
			return 0;
		np.scope_id = *scope;
		if (bpf_map_update_elem(&kloak_procs, &ctgid, &np, BPF_NOEXIST)) {
			count(KC_PROCS_FULL, 1);
			return 0;
		}
		count(KC_CGROUP_JOINED, 1);
		proc_event(KE_FORK, ctgid, ptgid, np.scope_id);
		return 0;
	}
	bpf_map_update_elem(&kloak_procs, &ctgid, &np, BPF_ANY);
	proc_event(KE_FORK, ctgid, ptgid, np.scope_id);
	return 0;
}

/* sched_process_exec: hold a scoped process before its first instruction
 * until the agent has attached to the new image. */
static __always_inline int on_exec(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct kloak_proc *p = bpf_map_lookup_elem(&kloak_procs, &tgid), np = {};
	struct kloak_proc_event *e;
	__u32 *scope = NULL;

	if (!p) {
		/* Not a descendant of a protected process, but inside a pod's
		 * container: the runtime's `exec` into a running container (runc,
		 * crun, conmon) forks outside the container, moves the child into
		 * the container's cgroup and execs the command there. It joins
		 * the pod's scope now and is held like any scoped exec. */
		scope = cgroup_scope();
		if (!scope)
			return 0;
		np.scope_id = *scope;
	}
	e = bpf_ringbuf_reserve(&tls_events, sizeof(*e), 0);
	if (!e) {
		/* Without the event nobody would resume it: run unheld (a joiner
		 * stays out of the scope, so it runs unprotected, never attached). */
		count(KC_EVENTS_LOST, 1);
		return 0;
	}
	if (!p) {
		if (bpf_map_update_elem(&kloak_procs, &tgid, &np, BPF_NOEXIST)) {
			bpf_ringbuf_discard(e, 0);
			count(KC_PROCS_FULL, 1);
			return 0;
		}
		count(KC_CGROUP_JOINED, 1);
	}
	e->type = KE_EXEC;
	e->tgid = tgid;
	e->ppid = 0;
	e->scope_id = p ? p->scope_id : np.scope_id;
	bpf_ringbuf_submit(e, 0);
	bpf_send_signal(SIGSTOP);
	return 0;
}

/* sched_process_exit: the thread-group leader's exit ends the process for
 * kloak (portable across kernels whose exit tracepoint lacks group_dead). */
static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct kloak_proc *p;
	__u32 scope;

	p = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!p)
		return 0;
	bpf_map_delete_elem(&kloak_inflight, &tid);
	if (tgid != tid)
		return 0;
	scope = p->scope_id;
	bpf_map_delete_elem(&kloak_procs, &tgid);
	bpf_map_delete_elem(&kloak_stop_owner, &tgid);
	bpf_map_delete_elem(&kloak_stop_released, &tgid);
	proc_event(KE_EXIT, tgid, 0, scope);
	return 0;
}

#endif /* KLOAK_SCOPE_H */
