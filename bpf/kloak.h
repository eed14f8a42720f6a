/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every struct and constant shared between the eBPF programs and user space.
 * scripts/gen-abi.ts generates src/dataplane/abi.generated.ts, the TypeScript
 * view, from the compiled object's BTF: bun run gen:abi after a change here
 * (test/dataplane/abi.test.ts fails while it is stale).
 *
 * Only fixed-width types: this header is included by the BPF program (with
 * vmlinux.h) and parsed by nothing else.
 */
#ifndef KLOAK_H
#define KLOAK_H

#define KLOAK_MARKER_LEN 6 /* "kloak:" */
#define KLOAK_VALUE_MIN 8
#define KLOAK_VALUE_MAX 4096
/* Placeholders are found by the first KLOAK_KEY_LEN bytes after the marker.
 * User space keeps those keys prefix-free, so at most one key can match. */
#define KLOAK_KEY_LEN 8
#define KLOAK_MAX_SUBST 16     /* placeholders substituted in one write */
#define KLOAK_MAX_CANDIDATES 32 /* "kloak:" occurrences examined in one write */
#define KLOAK_CHUNK 2048       /* bytes copied and scanned per loop step */
#define KLOAK_MAX_SCAN (16u << 20) /* hard ceiling of the configurable scan cap */
#define KLOAK_MAX_RULES 16     /* destination rules per secret */
#define KLOAK_NAME_MAX 256     /* host names and SNI, NUL padded (DNS names are <= 253) */
/* cgroup v2 levels searched for a registered ancestor of a task's cgroup */
#define KLOAK_CGROUP_DEPTH 16

/*
 * A probe's bpf_cookie: which function it sits on (enum kloak_fn) in bits
 * 0-15, a Go binary's layout id (kloak_go_layouts) in bits 16-31, and the
 * process it was attached for (its tgid) in bits 32-63. Probes are attached
 * per process (src/dataplane/probe-attacher.ts); the kernel's own pid filter
 * differs across versions (uprobe_multi before 6.12 ran every link's program
 * for a hit in any process whose memory has the breakpoint, and a fork
 * child's copied text keeps its parent's breakpoints), so the programs check
 * the owner themselves.
 */
#define KLOAK_COOKIE_LAYOUT_SHIFT 16
#define KLOAK_COOKIE_OWNER_SHIFT 32

/* Which TLS library function a uprobe sits on (the cookie's low bits). */
enum kloak_fn {
	KLOAK_FN_SSL_WRITE = 0,        /* int SSL_write(SSL *, const void *, int) */
	KLOAK_FN_SSL_WRITE_EX = 1,     /* int SSL_write_ex(SSL *, const void *, size_t, size_t *) */
	KLOAK_FN_SSL_DO_HANDSHAKE = 2, /* int SSL_do_handshake(SSL *); SSL_connect calls it */
	KLOAK_FN_SSL_SET_FD = 3,       /* int SSL_set_fd(SSL *, int) */
	KLOAK_FN_SSL_CTRL = 4,         /* long SSL_ctrl(SSL *, int cmd, long, void *): SNI */
	KLOAK_FN_SSL_FREE = 5,         /* void SSL_free(SSL *) */
	KLOAK_FN_SSL_SET_BIO = 6,      /* void SSL_set_bio(SSL *, BIO *rbio, BIO *wbio) */
	KLOAK_FN_SSL_SET0_WBIO = 7,    /* void SSL_set0_wbio(SSL *, BIO *wbio) */
	KLOAK_FN_SSL_SET_WFD = 8,      /* int SSL_set_wfd(SSL *, int) */
	/* 9..15: memory-BIO connections (bpf/membio.h) */
	KLOAK_FN_SSL_READ = 9,         /* int SSL_read(SSL *, void *, int): node's handshake runs in it */
	KLOAK_FN_SSL_READ_EX = 10,     /* int SSL_read_ex(SSL *, void *, size_t, size_t *) */
	/* GnuTLS (bpf/gnutls.h); the session plays the SSL*'s part, and
	 * gnutls_handshake is probed as KLOAK_FN_SSL_DO_HANDSHAKE */
	KLOAK_FN_GNUTLS_RECORD_SEND = 16,  /* ssize_t gnutls_record_send(session, const void *, size_t); also _send2 */
	KLOAK_FN_GNUTLS_RECORD_CORK = 17,  /* void gnutls_record_cork(session): sends are buffered from now on */
	KLOAK_FN_GNUTLS_RECORD_UNCORK = 18, /* int gnutls_record_uncork(session, flags): sends the buffer */
	KLOAK_FN_GNUTLS_SERVER_NAME_SET = 19, /* int gnutls_server_name_set(session, type, const void *name, size_t len) */
	KLOAK_FN_GNUTLS_SET_INT2 = 20,     /* void gnutls_transport_set_int2(session, int recv_fd, int send_fd) */
	KLOAK_FN_GNUTLS_APP_TRANSPORT = 21, /* gnutls_transport_set_ptr/ptr2/push_function/vec_push_function/fastopen */
	KLOAK_FN_GNUTLS_DEINIT = 22,       /* void gnutls_deinit(session) */
	KLOAK_FN_GNUTLS_INIT = 23,         /* int gnutls_init(session *, flags): sets the default transport itself */
	/* Go (bpf/golang.h); the cookie's high 32 bits name the binary's kloak_go_layout */
	KLOAK_FN_GO_WRITE = 32,        /* crypto/tls.(*Conn).Write entry (register ABI) */
	KLOAK_FN_GO_WRITE_RET = 33,    /* a RET instruction of crypto/tls.(*Conn).Write */
	/* Bun's static BoringSSL, found by signature (src/dataplane/bun-boringssl.ts) */
	KLOAK_FN_BSSL_SET_HOSTNAME = 40, /* int SSL_set_tlsext_host_name(SSL *, const char *): SNI */
	KLOAK_FN_BUN_SSL_NEW = 41,       /* SSL *SSL_new(SSL_CTX *), at return: a new connection */
};

enum kloak_mode {
	KLOAK_MODE_KERNEL = 0, /* bpf_probe_write_user in the probe */
	KLOAK_MODE_STOP = 1,   /* SIGSTOP the writer, the agent patches, SIGCONT */
};

/* Index of kloak_counters (a per-CPU array of u64). Refusals are counted by
 * reason in kloak_refusals instead. */
enum kloak_counter {
	KC_WRITES_SEEN = 0,        /* TLS writes of enabled processes */
	KC_BYTES_SCANNED,
	KC_SUBSTITUTED,            /* placeholders replaced by their value */
	KC_RESTORED,               /* placeholders put back at return */
	KC_BYTES_UNSCANNED,        /* bytes beyond the scan cap */
	KC_CANDIDATES_DROPPED,     /* "kloak:" beyond KLOAK_MAX_CANDIDATES */
	KC_EVENTS_LOST,            /* process/refusal events the ring could not take */
	KC_NESTED_WRITE,           /* write entered while one is in flight on the thread, or
	                            * while preempted programs hold every work slot of the CPU */
	KC_UNRESTRICTED,           /* substitutions of secrets that have no rules */
	KC_CONNS_BOUND,            /* TLS connections tied to their socket */
	KC_BIND_CONFLICT,          /* a connection seen on two sockets: never substituted */
	KC_CONNS_UNTRACKED,        /* connections kloak could not track (table or per-process quota full) */
	KC_SNI_HELD,               /* new SNI names the client was held for until resolved */
	KC_SNI_UNHELD,             /* ... not held: another thread had a stop in flight */
	KC_CGROUP_JOINED,          /* processes that joined a scope through their cgroup */
	KC_PROCS_FULL,             /* ... could not: kloak_procs is full (they run unprotected) */
	KC_KILLED_NO_RESTORE,      /* writers killed because their placeholder could not be put back */
	KC_VIOLATION_KILLS,        /* processes killed by the violation policy */
	KC_VIOLATION_BLOCKS,       /* connections shut down by the violation policy */
	KC_EXEC_HELD,              /* execs in a scope held until their image was attached */
	KC_EXEC_KNOWN,             /* execs of a traced process into a known image: not held */
	KC_UNHOOKED_HELLO,         /* TLS ClientHellos of scoped processes no hooked TLS library made */
	KC_SUBST_NOT_TAKEN,        /* substituted placeholders of writes the library returned as not
	                            * done (SSL_write <= 0): the app retries the same bytes */
	KC_LIB_OPEN_HELD,          /* opens of a TLS library held until kloak had its programs loaded */
	KC_LIB_OPEN_UNHELD,        /* ... not held: another thread had a stop in flight */
	KC_LIB_OPEN_UNREAD,        /* opens watched whose path was not resident: held while kloak read it */
	KC_SYSCALL_RUNS_RECOVERED, /* watched syscalls kloak_sys_enter was skipped for, run by its backup */
	KC__COUNT
};

/*
 * Why a placeholder was left in place: the index of kloak_refusals and the
 * reason of refusal events. src/dataplane/refusals.ts is the one table of
 * reasons (names, meaning, violation or not), by these generated values;
 * test/dataplane/refusals.test.ts checks every value has its reason.
 */
enum kloak_refusal {
	KR_UNKNOWN_PLACEHOLDER = 0,   /* "kloak:" with a tail that is no loaded placeholder */
	KR_TRUNCATED,                 /* runs past the end of the write */
	KR_NOT_ENTITLED,              /* the scope may not use this secret */
	KR_TOO_MANY,                  /* more than KLOAK_MAX_SUBST in one write */
	KR_WRITE_FAILED,              /* kernel mode: bpf_probe_write_user failed */
	KR_RINGBUF_FULL,              /* stop mode: no room for the request and its restore */
	KR_BEYOND_SCAN_CAP,           /* the write is longer than the scan cap */
	KR_CONCURRENT_WRITE,          /* stop mode: another thread of the process holds the stop */
	KR_DESTINATION_NOT_ALLOWED,   /* the peer (IP, port, name) matches no rule */
	KR_SNI_MISMATCH,              /* the peer is allowed but the SNI names another host */
	KR_UNKNOWN_PEER,              /* the write's socket or peer could not be established */
	KR_INFLIGHT_FULL,             /* no room to record the restore before a byte changes */
	KR_BINDING_CHANGED,           /* the connection's BIO or fd changed after it was bound */
	KR_SNI_CHANGED,               /* the SNI was set again after the handshake began */
	KR_SHARED_FD_TABLE,           /* the process shares its fd table with another process */
	KR_FOREIGN_NETNS,             /* the socket is in another network namespace than the scope's */
	KR_BUFFER_NOT_PRIVATE,        /* the placeholder lies in shared, file-backed or read-only memory */
	KR_APP_BIO,                   /* strict binding: the connection writes through the app's own BIO */
	KR_BUFFER_UNCHECKED,          /* the writer's memory map was busy: the buffer could not be checked */
	KR_HPACK_KERNEL_MODE,         /* kernel mode: Huffman-coded (HTTP/2 header), and the value's code is not loaded */
	KR_HPACK_CODE_LENGTH,         /* Huffman-coded, but the value's code is not as long as the placeholder's */
	KR_GO_STACK_BUFFER,           /* Go: the buffer is on a goroutine stack, which may move during the call */
	KR__COUNT
};

/* What a violation (a refusal that only an attempt to misuse a secret
 * causes) does to the writer. */
enum kloak_action {
	KLOAK_ACTION_PASS = 0,  /* the placeholder goes out; counted and reported */
	KLOAK_ACTION_BLOCK = 1, /* the connection is shut down before the write leaves */
	KLOAK_ACTION_KILL = 2,  /* the process is killed */
};

/* kloak_scopes[scope_id]: how a scope is protected. */
enum kloak_scope_flags {
	KLOAK_SCOPE_STRICT_BINDING = 1, /* refuse connections bound only by observed sends (app BIOs) */
};

struct kloak_scope {
	__u64 netns;        /* inode of the network namespace its sockets must be in; 0: not set (refused) */
	__u32 flags;        /* enum kloak_scope_flags */
	__u32 on_violation; /* enum kloak_action, for secrets without their own */
};

/* kloak_stop_owner[tgid] in stop mode: the one thread whose substitution is in
 * flight. A group stop cannot be undone per thread, so one SIGCONT could
 * release another thread's fresh stop; one owner per process rules that out.
 * The agent frees a claim after the restore's SIGCONT by writing its seq to
 * kloak_stop_released[tgid], which can never free a newer claim. */
struct kloak_stop_owner {
	__u32 tid;
	__u32 _pad;
	__u64 seq; /* the write event's seq (ktime at entry) */
};

enum kloak_event_type {
	KE_SUBSTITUTE = 1, /* stop mode: patch values in, then SIGCONT */
	KE_RESTORE = 2,    /* stop mode: patch placeholders back, then SIGCONT */
	KE_EXEC = 3,       /* process in a scope exec'd; held stopped until attached */
	KE_FORK = 4,       /* new process in a scope */
	KE_EXIT = 5,       /* last thread of a process in a scope exited */
	KE_REFUSED = 6,    /* a placeholder was left in place */
	KE_SNI = 7,        /* a process in a scope set the SNI of a connection */
	KE_BLOCK = 8,      /* violation policy "block": shut this socket down, then resume */
	KE_WAKE = 9,       /* a traced thread will stop for kloak's tracer (signal, clone, exit) */
	KE_EXEC_KNOWN = 10, /* a traced process in a scope exec'd a known image: not held */
	KE_UNHOOKED_TLS = 11, /* a scoped process does TLS through a library kloak has no probes in */
	KE_LIB_OPEN = 12,  /* a scoped process opens a TLS library by name; held until attached (libopen.h) */
};

/* Key of kloak_images: an executable, in the mount namespace that decides
 * which libraries it loads. */
struct kloak_image {
	__u64 ino;
	__u32 dev;   /* the kernel's dev_t of its filesystem */
	__u32 mntns; /* inode of the exec'ing process's mount namespace */
};

/* Key of kloak_placeholders: the bytes after the marker, zero padded. */
struct kloak_ph_key {
	__u8 tail[KLOAK_KEY_LEN];
	__u32 tail_len; /* min(KLOAK_KEY_LEN, placeholder length - marker) */
	__u32 _pad;
};

/* kloak_secrets[secret_id] and, in kernel mode only, kloak_values[secret_id]. */
struct kloak_bytes {
	__u32 len;
	__u32 _pad;
	__u8 data[KLOAK_VALUE_MAX];
};

enum kloak_proc_flags {
	/* kloak traces every thread of the process (ptrace): a hold is a stop
	 * of the one thread, reported to kloak alone, never seen by the
	 * process's parent. Children and threads inherit it (ptrace attaches
	 * them as they are created). */
	KLOAK_PROC_TRACED = 1,
};

/* kloak_procs[tgid]: the process belongs to a scope. */
struct kloak_proc {
	__u32 scope_id;
	__u32 flags; /* enum kloak_proc_flags */
};

/* Per-process cap on tracked connections: one process cannot push another's
 * connections out of kloak_conns (which never evicts). */
#define KLOAK_CONNS_PER_PROCESS 4096

/* kloak_entitled[{scope_id, secret_id}] exists when the scope may use it. */
struct kloak_grant {
	__u32 scope_id;
	__u32 secret_id;
};

struct kloak_item {
	__u64 addr; /* where the placeholder starts in the writer's memory */
	__u32 secret_id;
	__u32 len;    /* bytes at addr the item covers */
	__u32 hbits;  /* 0: the placeholder's bytes; else its HPACK Huffman code, hbits long, */
	__u32 hshift; /* ... starting at bit hshift (from the top) of the byte at addr; | KLOAK_ITEM_UNCHECKED */
};

/* In kloak_item.hshift (stop mode): the kernel could not check the buffer's
 * mapping (the writer's memory map was locked: bpf_find_vma's trylock), so
 * user space checks it, while the writer is stopped, before it writes. */
#define KLOAK_ITEM_UNCHECKED (1u << 16)

/* kloak_hcodes[secret_id]: the placeholder's HPACK Huffman code (bpf/hpack.h). */
struct kloak_hcode {
	__u32 bits; /* code length */
	__u32 fits; /* 1: the value's code is exactly as long (issuance makes it so) */
	__u8 code[KLOAK_VALUE_MAX + 8]; /* MSB first, zero padded; 8 spare bytes for whole-word reads */
};

/* KE_SUBSTITUTE / KE_RESTORE; also kloak_inflight[tid] between entry and return. */
struct kloak_write_event {
	__u32 type;
	__u32 tgid;
	__u32 tid;
	__u32 count;
	__u64 seq;
	struct kloak_item items[KLOAK_MAX_SUBST];
};

/* KE_WAKE */
struct kloak_wake_event {
	__u32 type;
	__u32 tgid;
	__u32 tid;
	__u32 _pad;
};

/* KE_EXEC / KE_FORK / KE_EXIT */
struct kloak_proc_event {
	__u32 type;
	__u32 tgid;
	__u32 ppid;
	__u32 scope_id;
};

/* A peer as kloak compares it: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). */
struct kloak_peer {
	__u8 addr[16];
	__u16 port;   /* host byte order; 0 when unknown */
	__u16 family; /* AF_INET, AF_INET6; 0 when unknown */
	__u32 _pad;
};

/* kloak_conns[{ssl, tgid}]: one TLS connection, tied to its socket. */
struct kloak_conn_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

enum kloak_conn_flags {
	KLOAK_CONN_BOUND = 1,         /* fd and ino are set */
	KLOAK_CONN_BY_FD = 2,         /* bound by SSL_set_fd/SSL_set_wfd: the library's own socket BIO */
	KLOAK_CONN_CONFLICT = 4,      /* seen on two sockets: never substituted */
	KLOAK_CONN_APP_BIO = 8,       /* the app installed its own BIO: bound by observed sends only */
	KLOAK_CONN_BIO_REPLACED = 16, /* the BIO was replaced after binding: never substituted */
	KLOAK_CONN_HANDSHAKE = 32,    /* a TLS call ran: the SNI on the wire is fixed */
	KLOAK_CONN_SNI_CHANGED = 64,  /* the SNI was set again after that: never substituted */
	KLOAK_CONN_LATE = 128,        /* first seen mid-connection (setup unseen): never substituted */
	KLOAK_CONN_CORKED = 256,      /* GnuTLS: corked, sends only fill the library's buffer (bpf/gnutls.h) */
};

struct kloak_conn {
	__s32 fd;
	__u32 flags;    /* enum kloak_conn_flags */
	__u64 ino;      /* the socket's inode: a reused fd number has another */
	__u64 bound_ns; /* ktime when bound; resolved addresses must have been valid then */
	__u32 sni_len;  /* 0: the client sent no SNI */
	__u32 _pad;
	char sni[KLOAK_NAME_MAX]; /* lowercase, no trailing dot, NUL padded */
};

enum kloak_rule_kind {
	KLOAK_RULE_CIDR = 1,     /* addr/prefix (literals are /128 or ::ffff:0:0/96 + 32) */
	KLOAK_RULE_HOST = 2,     /* exact name */
	KLOAK_RULE_WILDCARD = 3, /* "*." + name: one or more labels in front of name */
};

struct kloak_rule {
	__u8 kind;   /* enum kloak_rule_kind */
	__u8 prefix; /* CIDR: leading bits of addr that must match, over 128 */
	__u16 port;  /* 0: any port */
	__u32 name_len;
	__u8 addr[16];
	char name[KLOAK_NAME_MAX]; /* HOST/WILDCARD: lowercase, NUL padded */
};

/* kloak_policy[secret_id]; a secret without an entry may go anywhere. */
struct kloak_policy {
	__u32 nrules;
	__u32 _pad;
	struct kloak_rule rules[KLOAK_MAX_RULES];
};

/* kloak_resolved key: an address kloak resolved for a name. */
struct kloak_name_addr {
	char name[KLOAK_NAME_MAX];
	__u8 addr[16];
};

/* kloak_resolved value. An address that left the DNS answers stays valid for
 * connections bound before it left, until the agent deletes it. */
struct kloak_resolved {
	__u64 valid_until_ns; /* ktime; ~0 while the name still resolves to it */
};

/* KE_REFUSED */
struct kloak_refusal_event {
	__u32 type;
	__u32 tgid;
	__u32 scope_id;
	__u32 secret_id; /* 0 when no secret could be identified */
	__u32 reason;    /* enum kloak_refusal */
	__u32 sni_len;
	__u64 offset; /* offset in the write where the placeholder starts */
	struct kloak_peer peer;
	__u32 action; /* enum kloak_action taken (a violation); PASS otherwise */
	__u32 _pad;
	char sni[KLOAK_NAME_MAX];
};

/* KE_BLOCK: the writer is held until user space has shut down the socket
 * (fd, checked against ino) and resumed it; the write then fails. */
struct kloak_block_event {
	__u32 type;
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u64 ino;
	__u64 seq;
};

/* KE_SNI. With hold set, the process is stopped (and holds the stop claim
 * with seq) until the agent has resolved the name and added it to
 * kloak_names: the first write to a name under a wildcard rule must not race
 * its resolution. */
struct kloak_sni_event {
	__u32 type;
	__u32 tgid;
	__u32 scope_id;
	__u32 sni_len;
	__u32 hold;
	__u32 tid; /* the held thread */
	__u64 seq;
	char sni[KLOAK_NAME_MAX];
};

/* KE_LIB_OPEN: the path as the process gave it to open(2)/openat(2) */
struct kloak_lib_open_event {
	__u32 type;
	__u32 tgid;
	__u32 scope_id;
	__u32 path_len; /* bytes of path, without the NUL */
	__u32 hold;     /* the opening thread is held until kloak releases it */
	__u32 tid;      /* the held thread */
	__u64 seq;      /* its stop claim (untraced processes) */
	__s32 dirfd;    /* openat's dirfd (AT_FDCWD for open): a relative path is relative to it */
	__u32 unread;   /* the path was not resident: path_len is 0, kloak reads it at upath */
	__u64 upath;    /* the path's address in the process */
	char path[KLOAK_NAME_MAX];
};

/* KE_UNHOOKED_TLS: once per process (bpf/unhooked.h) */
struct kloak_unhooked_event {
	__u32 type;
	__u32 tgid;
	__u32 scope_id;
	__s32 fd;
	__u64 ino;
	struct kloak_peer peer;
};

/* kloak_go_layouts[id]: what bpf/golang.h needs of one Go binary. Addresses
 * are link-time; the probe adds the load bias (PIE). */
struct kloak_go_layout {
	__u64 write_entry; /* crypto/tls.(*Conn).Write */
	__u64 tcp_write;   /* net.(*TCPConn).Write: the itab method a bound conn writes through */
	__u32 conn_conn;   /* offsetof(tls.Conn, conn): a net.Conn interface */
	__u32 conn_config; /* offsetof(tls.Conn, config): *tls.Config */
	__u32 config_server_name; /* offsetof(tls.Config, ServerName): a string */
	__u32 tcpconn_fd;  /* offsetof(net.TCPConn, conn.fd): *netFD */
	__u32 netfd_sysfd; /* offsetof(net.netFD, pfd.Sysfd): int */
	__u32 _pad;
};

/* Knobs user space sets in .rodata before load. */
struct kloak_config {
	__u32 mode;       /* enum kloak_mode */
	__u32 scan_cap;   /* bytes of each write that are scanned */
	__u32 violations; /* bit (1 << enum kloak_refusal) set: that refusal is a violation */
	__u32 backup_syscalls; /* 1: kloak_sys_enter_backup runs after kloak_sys_enter (bpf/sysruns.h) */
};

#endif /* KLOAK_H */
