/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Every map of the data plane, the per-CPU work area and the counters. User
 * space (src/dataplane/) fills and reads these maps by name.
 *
 * Hash maps written at most once per process, connection, scope or secret
 * allocate their entries as they are used (KLOAK_HASH_ON_USE:
 * BPF_F_NO_PREALLOC; safe in tracing programs since 6.1's BPF memory
 * allocator): preallocating 65536 entries costs ~3 ms of every start, and
 * `kloak exec` starts in a few hundred. Maps written on every TLS call
 * (kloak_inflight, kloak_active, …) stay preallocated (KLOAK_HASH). An update that finds no memory fails as one that finds
 * the map full does (a process that cannot join its scope runs unprotected:
 * kloak_procs_full, its placeholders go out as they are).
 */
#ifndef KLOAK_MAPS_H
#define KLOAK_MAPS_H

/* Set by user space before load; its own section so it is the only variable
 * in that map and sits at offset 0. */
const volatile struct kloak_config kloak_cfg SEC(".rodata.config") = {
	.mode = KLOAK_MODE_STOP,
	.scan_cap = 65536,
	.violations = 0,
	.backup_syscalls = 0,
};

/* Refusals, SNI and process events. */
KLOAK_RINGBUF(tls_events, 1 << 20);

#define KLOAK_WRITES_RING (1 << 20)
/* Stop mode's requests (substitute, restore, block): a ring of their own, so
 * no flood of other events can take the room a restore needs. */
KLOAK_RINGBUF(kloak_writes, KLOAK_WRITES_RING);

/* [0]: restores owed on kloak_writes (substitutions whose restore is not yet
 * queued). A substitution needs room for itself, its restore and every
 * restore owed before it. */
KLOAK_ARRAY(kloak_owed, __s64, 1);

/* placeholder key -> secret id */
KLOAK_HASH_ON_USE(kloak_placeholders, struct kloak_ph_key, __u32, 65536);

/* secret id -> full placeholder, for byte-for-byte verification and restore */
KLOAK_HASH_ON_USE(kloak_secrets, __u32, struct kloak_bytes, 65536);

/* secret id -> real value; filled in kernel mode only, so that in stop mode
 * real values never enter kernel memory */
KLOAK_HASH_ON_USE(kloak_values, __u32, struct kloak_bytes, 65536);

/* tgid -> scope: the processes kloak protects */
KLOAK_HASH_ON_USE(kloak_procs, __u32, struct kloak_proc, 65536);

/* Executables whose TLS files are all attached (user space adds them after
 * an exec it held): a traced process that execs one is not held. */
KLOAK_HASH_ON_USE(kloak_images, struct kloak_image, __u8, 16384);

/* tgid -> scope: processes whose children join a scope (the kloak exec
 * launcher itself, which is never attached) */
KLOAK_HASH_ON_USE(kloak_launchers, __u32, __u32, 256);

/* cgroup v2 id -> scope: the cgroups of a pod's containers (cluster agent).
 * Processes that appear in a container without being the child of a
 * protected process join the container's scope here: `kubectl exec` (runc,
 * crun and CRI-O's conmon start the process from outside the container and
 * move it into its cgroup) and processes started while the agent was
 * attaching. The id is the cgroup directory's inode number in cgroup2. */
KLOAK_HASH_ON_USE(kloak_cgroups, __u64, __u32, 16384);

/* {scope, secret} present when the scope may redeem the secret */
KLOAK_HASH_ON_USE(kloak_entitled, struct kloak_grant, __u8, 65536);

/* tid -> what was substituted, so the return probe can restore it */
KLOAK_HASH(kloak_inflight, __u32, struct kloak_write_event, 16384);

/* tid -> 1: the thread's request went to kloak_writes without a wake-up;
 * kloak_switch wakes the worker once the thread is off its CPU in the stop.
 * Written on every held write: preallocated. */
KLOAK_HASH(kloak_stop_wake, __u32, __u32, 16384);

/* tgid -> the thread whose stop-mode substitution is in flight; the agent
 * deletes it after the restore's SIGCONT */
KLOAK_HASH_ON_USE(kloak_stop_owner, __u32, struct kloak_stop_owner, 65536);

/* tgid -> seq of the last claim the agent finished with */
KLOAK_HASH_ON_USE(kloak_stop_released, __u32, __u64, 65536);

/* {ssl, tgid} -> the TLS connection's socket and SNI. Never evicts (an LRU
 * would let a process push a connection out and have it re-learned without
 * its history): a process may track KLOAK_CONNS_PER_PROCESS connections, and
 * a connection kloak cannot track is unknown, which fails closed. */
KLOAK_HASH_ON_USE(kloak_conns, struct kloak_conn_key, struct kloak_conn, 65536);

/* tgid -> connections it has in kloak_conns */
KLOAK_HASH_ON_USE(kloak_conn_count, __u32, __u32, 65536);

/* tid -> {ssl, fd} between the entry and the return of SSL_set_fd/SSL_set_wfd:
 * the binding is made at return, after the library has installed its socket
 * BIO (through SSL_set_bio, which alone would mean a replaced BIO). */
struct kloak_setfd {
	__u64 ssl;
	__s64 fd;
};

KLOAK_HASH(kloak_setfd, __u32, struct kloak_setfd, 16384);

/* scope id -> how the scope is protected (its network namespace, strictness,
 * default violation action) */
KLOAK_HASH_ON_USE(kloak_scopes, __u32, struct kloak_scope, 16384);

/* secret id -> enum kloak_action for its violations (else the scope's) */
KLOAK_HASH_ON_USE(kloak_on_violation, __u32, __u32, 65536);

/* tid -> SSL* while the thread is inside a TLS call (handshake or write):
 * sends it makes then are that connection's, which ties SSL* to socket. */
KLOAK_HASH(kloak_active, __u32, __u64, 16384);

/* secret id -> destination rules; no entry: the secret may go anywhere */
KLOAK_HASH_ON_USE(kloak_policy, __u32, struct kloak_policy, 65536);

/* {name, address}: kloak itself resolved name to address */
KLOAK_HASH_ON_USE(kloak_resolved, struct kloak_name_addr, struct kloak_resolved, 65536);

/* SNI names the agent has seen (and resolved, if under a wildcard rule) */
KLOAK_LRU_HASH(kloak_names, char[KLOAK_NAME_MAX], __u8, 16384);

/* [0] != 0 while some secret has a wildcard rule: only then are clients held
 * at a new SNI name */
KLOAK_ARRAY(kloak_sni_hold, __u32, 1);

/* [0] != 0: hold scoped processes that open a TLS library (libopen.h); set
 * while kloak's TLS programs are not loaded yet */
KLOAK_ARRAY(kloak_lib_watch, __u32, 1);

KLOAK_PERCPU_ARRAY(kloak_counters, __u64, KC__COUNT);

/* Refusals by reason (enum kloak_refusal). */
KLOAK_PERCPU_ARRAY(kloak_refusals, __u64, KR__COUNT);

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&kloak_counters, &idx);
	if (c)
		*c += n;
}

/*
 * Per-CPU work areas of TLS writes. A uprobe program runs with migration
 * disabled but, on a preemptible kernel, can be preempted by another uprobe
 * program on the same CPU (a writer preempted mid-scan is common when several
 * TLS writers share a CPU: measured 8 of 40 writes on a 1-CPU PREEMPT_RT VM
 * with one slot). Each CPU has KLOAK_SCRATCH_SLOTS of them; a write takes the
 * first free one (`busy`), and only a write that finds all of them taken
 * fails closed (KC_NESTED_WRITE). The slot number is passed down as a
 * scalar and every global function of the write path looks the slot up
 * itself (scratch(slot)), so the verifier checks each one once.
 */
#define KLOAK_SCRATCH_SLOTS 8

struct scratch {
	/* words: the same bytes as aligned 64-bit loads. Read through a cast
	 * __u8 pointer, clang cannot prove the alignment and splits each load
	 * into eight byte loads (23 instructions instead of one). */
	union {
		__u8 chunk[KLOAK_CHUNK];
		__u64 words[KLOAK_CHUNK / 8];
	};
	__u8 cmp[KLOAK_VALUE_MAX];
	__u64 cand[KLOAK_MAX_CANDIDATES];
	__u32 ncand;
	__u32 _pad;
	__u64 buf;
	__u64 len;      /* whole write */
	__u64 scan_len; /* min(len, scan cap) */
	__u32 tgid;
	__u32 scope_id;
	struct kloak_write_event ev;
	/* the write's connection, loaded on first need (kloak_load_peer) */
	__u64 ssl;
	__u32 peer_state;
	__u32 sni_len;
	__u64 bound_ns;
	struct kloak_peer peer;
	__s32 conn_fd; /* the bound socket, for a "block" */
	__u32 _pad1;
	__u64 conn_ino;
	char sni[KLOAK_NAME_MAX];
	/* the strongest violation action this write has met */
	__u32 violation;
	/* byte-for-byte check of one placeholder */
	__u32 match_id;
	__u32 match_len;
	__u32 match_ok;
	/* destination check of one secret */
	__u32 check_id;
	__u32 verdict;
	__u32 sfx_off;  /* wildcard rule: where the suffix starts in sni */
	__u32 sfx_rule; /* ... and which rule */
	__u32 sfx_ok;
	__u32 _pad2;
	struct kloak_name_addr rkey;
	__u32 busy;
};

KLOAK_PERCPU_ARRAY(kloak_scratch, struct scratch, KLOAK_SCRATCH_SLOTS);

static __always_inline struct scratch *scratch(__u32 slot)
{
	return bpf_map_lookup_elem(&kloak_scratch, &slot);
}

/* A write's slot: a preempted program keeps its own, so take the first free
 * one (*slot its number). NULL when there is none: all taken is counted as a
 * nested write. Give it back with release_slot. */
static __always_inline struct scratch *take_slot(__u32 *slot)
{
	struct scratch *s = NULL;
	__u32 i;

	for (i = 0; i < KLOAK_SCRATCH_SLOTS; i++) {
		s = scratch(i);
		if (!s)
			return NULL;
		if (__sync_fetch_and_add(&s->busy, 1) == 0)
			break;
		__sync_fetch_and_add(&s->busy, -1);
	}
	if (i >= KLOAK_SCRATCH_SLOTS || !s) {
		count(KC_NESTED_WRITE, 1);
		return NULL;
	}
	*slot = i;
	return s;
}

static __always_inline void release_slot(struct scratch *s)
{
	__sync_fetch_and_add(&s->busy, -1);
}

#endif /* KLOAK_MAPS_H */
