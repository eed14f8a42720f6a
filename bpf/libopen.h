/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TLS libraries opened by name while kloak's TLS programs are not loaded.
 *
 * `kloak exec` verifies its TLS programs (the costliest part of its start)
 * only when a process first needs them, on kernels where every open is seen
 * (from 7.0 a syscall program can skip runs: kernel-support.ts
 * opensWatchable; there they load at start). A process's exec is held until its
 * image is attached, but a dynamically linked program's libraries are not
 * mapped yet at exec: the loader opens them after (and dlopen, much later).
 * So while kloak_lib_watch is set, a scoped process that opens a file whose
 * name starts with libssl.so or libgnutls.so is held at that open, before
 * the library's first instruction can run; kloak loads its TLS programs,
 * attaches the file and lets the process go. Once they are loaded, kloak
 * attaches the system's libssl at every exec (as the agent always does) and
 * clears the flag: opens then cost one array lookup.
 *
 * A claim that fails (another thread of the process holds a stop) is not
 * held and counted: the library may run before it is attached, and its
 * writes then keep their placeholders (fail closed).
 *
 * The path may not be readable here: a path that is a string constant in a
 * program's or library's read-only data (a dlopen of a fixed path) lies in a
 * page this process may never have touched, and a tracing program cannot
 * fault a page in (a Python start under pyenv had ~30 such opens, of libc's
 * and bash's constants, e.g. /usr/lib/locale/locale-archive). Such an
 * open is held all the same (letting it run lets a TLS library opened by it
 * run unattached: test/dataplane/lib-open.test.ts); kloak reads the path from
 * the process, which faults it in, and decides there.
 */
#ifndef KLOAK_LIBOPEN_H
#define KLOAK_LIBOPEN_H

/* What to match: the start of a file name (after the last '/'); a path read
 * by kloak instead (unread) is matched by src/dataplane/lib-open.ts. */
#define LIB_PREFIX_MAX 12

static __always_inline bool has_prefix(const char *name, const char *prefix, __u32 n)
{
	for (__u32 i = 0; i < n && i < LIB_PREFIX_MAX; i++)
		if (name[i] != prefix[i])
			return false;
	return true;
}

struct lib_name_ctx {
	const char *path;
	__u32 len;
	__u32 base; /* index after the last '/' */
};

static long find_base(__u32 i, struct lib_name_ctx *c)
{
	if (i >= c->len)
		return 1;
	if (c->path[i & (KLOAK_NAME_MAX - 1)] == '/')
		c->base = i + 1;
	return 0;
}

/* Hold the current thread at an open of a TLS library by name. */
static __always_inline int on_lib_open(__s32 dirfd, __u64 upath)
{
	__u64 id = bpf_get_current_pid_tgid(), seq;
	__u32 tgid = id >> 32, tid = (__u32)id, zero = 0, *watch;
	struct kloak_lib_open_event *e;
	struct kloak_proc *p;
	struct lib_name_ctx c;
	const char *base;
	bool hold, unread;
	long n;

	watch = bpf_map_lookup_elem(&kloak_lib_watch, &zero);
	if (!watch || !*watch || !upath)
		return 0;
	p = bpf_map_lookup_elem(&kloak_procs, &tgid);
	if (!p)
		return 0;
	e = reserve_record(&tls_events, sizeof(*e));
	if (!e)
		return 0;
	n = bpf_probe_read_user_str(e->path, KLOAK_NAME_MAX, (const char *)upath);
	unread = n < 0;
	c.len = 0;
	if (!unread) {
		if (n <= 1) {
			bpf_ringbuf_discard(e, 0);
			return 0;
		}
		c.path = e->path;
		c.len = n - 1;
		c.base = 0;
		bpf_loop(KLOAK_NAME_MAX, find_base, &c, 0);
		if (c.base > KLOAK_NAME_MAX - LIB_PREFIX_MAX - 1) {
			bpf_ringbuf_discard(e, 0);
			return 0;
		}
		base = e->path + c.base;
		if (!has_prefix(base, "libssl.so", 9) && !has_prefix(base, "libgnutls.so", 12)) {
			bpf_ringbuf_discard(e, 0);
			return 0;
		}
	}
	seq = bpf_ktime_get_ns();
	hold = claim_stop(tgid, tid, seq);
	e->type = KE_LIB_OPEN;
	e->tgid = tgid;
	e->scope_id = p->scope_id;
	e->path_len = c.len;
	e->hold = hold;
	e->tid = tid;
	e->seq = seq;
	e->dirfd = dirfd;
	e->unread = unread;
	e->upath = upath;
	bpf_ringbuf_submit(e, 0);
	if (!hold) {
		count(KC_LIB_OPEN_UNHELD, 1);
		return 0;
	}
	count(unread ? KC_LIB_OPEN_UNREAD : KC_LIB_OPEN_HELD, 1);
	hold_writer(tgid);
	return 0;
}

#endif /* KLOAK_LIBOPEN_H */
