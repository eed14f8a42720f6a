/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Scopes: which processes kloak protects. Children join their parent's scope
 * in the kernel before they run; processes that appear in a registered pod
 * cgroup join that pod's scope; an exec in a scope is held until the agent
 * has attached to the new image; the leader's exit ends the process.
 */
#ifndef KLOAK_SCOPE_H
#define KLOAK_SCOPE_H

/* The function a probe sits on (kloak.h: the cookie). */
static __always_inline __u32 cookie_fn(__u64 cookie)
{
	return cookie & ((1u << KLOAK_COOKIE_LAYOUT_SHIFT) - 1);
}

/* Was the probe attached for the current process? Only then may it act:
 * another process's probe can fire here (kloak.h). */
static __always_inline bool cookie_owner(__u64 cookie, __u32 tgid)
{
	return (__u32)(cookie >> KLOAK_COOKIE_OWNER_SHIFT) == tgid;
}

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

	if (ctgid != (__u32)BPF_CORE_READ(child, pid)) {
		/* A new thread: of a traced process, it starts stopped for the tracer. */
		if (traced(ctgid))
			wake_event(ctgid, BPF_CORE_READ(child, pid));
		return 0;
	}
	pp = bpf_map_lookup_elem(&kloak_procs, &ptgid);
	if (pp) {
		np.scope_id = pp->scope_id;
		/* ptrace attaches a traced parent's children as they are created */
		np.flags = pp->flags & KLOAK_PROC_TRACED;
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
	if (bpf_map_update_elem(&kloak_procs, &ctgid, &np, BPF_ANY))
		count(KC_PROCS_FULL, 1); /* runs unprotected; the tracer still has to hear of the fork */
	else
		proc_event(KE_FORK, ctgid, ptgid, np.scope_id);
	/* The traced parent stops at ptrace's fork event, the child at its first stop. */
	if (np.flags & KLOAK_PROC_TRACED)
		wake_event(ptgid, BPF_CORE_READ(parent, pid));
	return 0;
}

/* The image the current task just exec'd, as kloak_images keys it. */
static __always_inline void current_image(struct kloak_image *img)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	img->ino = BPF_CORE_READ(t, mm, exe_file, f_inode, i_ino);
	img->dev = BPF_CORE_READ(t, mm, exe_file, f_inode, i_sb, s_dev);
	img->mntns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
}

/* sched_process_exec: hold a scoped process before its first instruction
 * until the agent has attached to the new image — unless kloak traces it and
 * has attached every TLS file of that image already. */
static __always_inline int on_exec(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct kloak_proc *p = bpf_map_lookup_elem(&kloak_procs, &tgid), np = {};
	struct kloak_proc_event *e;
	struct kloak_image img = {};
	__u32 *scope = NULL;

	/* The old image's memory-BIO state is gone with it (membio.h). */
	if (p) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();

		bpf_map_delete_elem(&kloak_membio_pending, &tid);
	}
	/* Only a traced process: an untraced one is adopted while held. */
	if (p && (p->flags & KLOAK_PROC_TRACED)) {
		current_image(&img);
		if (bpf_map_lookup_elem(&kloak_images, &img)) {
			count(KC_EXEC_KNOWN, 1);
			proc_event(KE_EXEC_KNOWN, tgid, 0, p->scope_id);
			return 0;
		}
	}

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
	/* Without the event nobody would resume it: run unheld (a joiner stays
	 * out of the scope, so it runs unprotected, never attached). */
	e = reserve_record(&tls_events, sizeof(*e));
	if (!e)
		return 0;
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
	count(KC_EXEC_HELD, 1);
	hold_writer(tgid);
	return 0;
}

static long drop_conn(struct bpf_map *map, struct kloak_conn_key *k, struct kloak_conn *c, __u32 *tgid)
{
	if (k->tgid == *tgid)
		bpf_map_delete_elem(map, k);
	return 0;
}

/* sched_process_exit: a thread's state goes with it; the thread-group
 * leader's exit ends the process for kloak (portable across kernels whose
 * exit tracepoint lacks group_dead). */
static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct kloak_proc *p;
	__s64 *o;
	__u32 scope;

	p = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!p)
		return 0;
	/* A traced thread's exit waits to be reaped by the tracer (and the
	 * leader's, before its real parent hears of it). */
	if (p->flags & KLOAK_PROC_TRACED)
		wake_event(tgid, tid);
	/* A thread that dies mid-write owes no restore any more. */
	if (bpf_map_delete_elem(&kloak_inflight, &tid) == 0 && kloak_cfg.mode == KLOAK_MODE_STOP && (o = owed()))
		__sync_fetch_and_add(o, -1);
	bpf_map_delete_elem(&kloak_active, &tid);
	bpf_map_delete_elem(&kloak_setfd, &tid);
	bpf_map_delete_elem(&kloak_membio_pending, &tid);
	bpf_map_delete_elem(&kloak_stop_wake, &tid);
	if (tgid != tid)
		return 0;
	scope = p->scope_id;
	if (bpf_map_lookup_elem(&kloak_conn_count, &tgid)) {
		bpf_for_each_map_elem(&kloak_conns, drop_conn, &tgid, 0);
		bpf_map_delete_elem(&kloak_conn_count, &tgid);
	}
	bpf_map_delete_elem(&kloak_procs, &tgid);
	bpf_map_delete_elem(&kloak_stop_owner, &tgid);
	bpf_map_delete_elem(&kloak_stop_released, &tgid);
	proc_event(KE_EXIT, tgid, 0, scope);
	return 0;
}

#endif /* KLOAK_SCOPE_H */
