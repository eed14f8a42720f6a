/**
 * Which files of a process hold TLS write functions, and where. Libraries are
 * attached by path before the process maps them (a uprobe is on the inode), so
 * a program that loads libssl late is covered from its first write.
 */
import { readdirSync, readlinkSync, statSync } from "node:fs";
import { functionOffsets } from "../../lib/elf.ts";
import { exePath, mappedFiles } from "../../lib/proc.ts";
import { Fn } from "./abi.ts";
import { bunTlsFunctions } from "./bun-boringssl.ts";
import { gnutlsLinkedBy } from "./gnutls-discovery.ts";
import { fileCode, placeProbes } from "./probe-sites.ts";
import { goTargetOf, type GoTarget } from "./go-targets.ts";

/**
 * The probed functions of a TLS library: the writes, where placeholders are
 * substituted, and what ties a connection to its socket and name (the fd
 * setters, the BIO setters, the SNI, the handshake and the reads that may run
 * it). `ret`: the return is
 * probed as well.
 */
export const TLS_FUNCTIONS = [
  { name: "SSL_write", cookie: Fn.SSL_WRITE, ret: true },
  { name: "SSL_write_ex", cookie: Fn.SSL_WRITE_EX, ret: true },
  // OpenSSL 3.3+: SSL_write_ex is SSL_write_ex2 without flags; apps may call either.
  { name: "SSL_write_ex2", cookie: Fn.SSL_WRITE_EX, ret: true },
  { name: "SSL_do_handshake", cookie: Fn.SSL_DO_HANDSHAKE, ret: true },
  { name: "SSL_set_fd", cookie: Fn.SSL_SET_FD, ret: true },
  { name: "SSL_set_wfd", cookie: Fn.SSL_SET_WFD, ret: true },
  { name: "SSL_set_bio", cookie: Fn.SSL_SET_BIO, ret: false },
  { name: "SSL_set0_wbio", cookie: Fn.SSL_SET0_WBIO, ret: false },
  { name: "SSL_ctrl", cookie: Fn.SSL_CTRL, ret: false },
  { name: "SSL_free", cookie: Fn.SSL_FREE, ret: false },
  // Memory-BIO clients (bpf/membio.h): node's handshake runs inside SSL_read.
  { name: "SSL_read", cookie: Fn.SSL_READ, ret: true },
  { name: "SSL_read_ex", cookie: Fn.SSL_READ_EX, ret: true },
  // GnuTLS (bpf/gnutls.h). gnutls_transport_set_int is a macro over set_int2; the handshake
  // is one like OpenSSL's.
  { name: "gnutls_record_send", cookie: Fn.GNUTLS_RECORD_SEND, ret: true },
  { name: "gnutls_record_send2", cookie: Fn.GNUTLS_RECORD_SEND, ret: true },
  { name: "gnutls_record_cork", cookie: Fn.GNUTLS_RECORD_CORK, ret: false },
  { name: "gnutls_record_uncork", cookie: Fn.GNUTLS_RECORD_UNCORK, ret: true },
  { name: "gnutls_handshake", cookie: Fn.SSL_DO_HANDSHAKE, ret: true },
  { name: "gnutls_server_name_set", cookie: Fn.GNUTLS_SERVER_NAME_SET, ret: false },
  { name: "gnutls_transport_set_int2", cookie: Fn.GNUTLS_SET_INT2, ret: false },
  { name: "gnutls_transport_set_ptr", cookie: Fn.GNUTLS_APP_TRANSPORT, ret: false },
  { name: "gnutls_transport_set_ptr2", cookie: Fn.GNUTLS_APP_TRANSPORT, ret: false },
  { name: "gnutls_transport_set_push_function", cookie: Fn.GNUTLS_APP_TRANSPORT, ret: false },
  { name: "gnutls_transport_set_vec_push_function", cookie: Fn.GNUTLS_APP_TRANSPORT, ret: false },
  { name: "gnutls_transport_set_fastopen", cookie: Fn.GNUTLS_APP_TRANSPORT, ret: false },
  { name: "gnutls_init", cookie: Fn.GNUTLS_INIT, ret: true },
  { name: "gnutls_deinit", cookie: Fn.GNUTLS_DEINIT, ret: false },
] as const;
/** A file is a target when it can write TLS through either library. */
const WRITE_COOKIES: ReadonlySet<number> = new Set([Fn.SSL_WRITE, Fn.SSL_WRITE_EX, Fn.GNUTLS_RECORD_SEND]);

export interface TlsFunction {
  name: string;
  offset: number;
  /** enum kloak_fn; the probe's bpf_cookie adds the process and a Go layout id to it (abi.ts probeCookie) */
  cookie: number;
  ret: boolean;
}
export interface TlsTarget {
  /** dev:ino, so one file reached by several paths is attached once */
  id: string;
  path: string;
  functions: TlsFunction[];
  /** a Go executable: its probes go to the Go programs (register ABI, RETs probed as entries) */
  go?: GoTarget;
}

/** A file kloak will not probe, and why (a Go binary it cannot handle). */
export interface RefusedTarget {
  path: string;
  reason: string;
  detail: string;
}

const LIB_DIRS = [
  "/lib",
  "/lib64",
  "/usr/lib",
  "/usr/lib64",
  "/usr/local/lib",
  "/lib/x86_64-linux-gnu",
  "/usr/lib/x86_64-linux-gnu",
  "/lib/aarch64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
];
const LIBSSL = /^libssl\.so(\.[0-9.]+)?$/;

/** A Bun binary whose BoringSSL kloak has no signature for: nothing of it is probed. */
export interface UnrecognisedBun {
  pid: number;
  path: string;
  version: string;
  why: string;
}

export class TlsTargetFinder {
  private readonly byFile = new Map<string, TlsFunction[] | null>();
  private readonly goByFile = new Map<string, GoTarget | RefusedTarget | null>();
  /** the files of the last targetsFor() that are refused (reported, counted by the caller) */
  refused: RefusedTarget[] = [];
  private readonly libsByRoot = new Map<string, string[]>();
  private readonly unrecognisedBun = new Map<string, { version: string; why: string }>();

  constructor(private readonly onUnrecognisedBun?: (b: UnrecognisedBun) => void) {}

  /**
   * Files that define TLS write functions, for this process: its exe, its
   * mappings, the GnuTLS its exe links, the system's libssl (for what it may
   * dlopen; unless `systemLibssl` is false), and `extra` (host paths, e.g.
   * /proc/<pid>/root/..., of files it is opening).
   */
  targetsFor(pid: number, o: { systemLibssl?: boolean; extra?: string[] } = {}): TlsTarget[] {
    const root = processRoot(pid);
    if (root === null) return [];
    const exe = exePath(pid);
    const candidates = [
      ...(exe ? [exe] : []),
      ...(mappedFiles(pid) ?? []),
      ...(o.systemLibssl === false ? [] : this.systemLibssl(root)),
      ...(exe ? gnutlsLinkedBy(root, exe, LIB_DIRS) : []),
    ].map((p) => root + p);
    const targets = new Map<string, TlsTarget>();
    this.refused = [];
    for (const path of [...candidates, ...(o.extra ?? [])]) {
      const p = path.startsWith(root) ? path.slice(root.length) : path; // as the process names it
      let id: string;
      try {
        const st = statSync(path);
        if (!st.isFile()) continue;
        id = `${st.dev}:${st.ino}`;
        if (targets.has(id)) continue;
        const key = `${id}:${st.mtimeMs}:${st.size}`;
        const functions = this.functionsOf(path, key);
        if (functions) targets.set(id, { id, path, functions });
        else {
          const go = this.goOf(path, key);
          if (go && "reason" in go) this.refused.push(go);
          else if (go) targets.set(id, { id, path, functions: go.functions, go });
        }
        const bun = this.unrecognisedBun.get(key);
        if (bun) this.onUnrecognisedBun?.({ pid, path: p, ...bun });
      } catch {
        continue; // vanished or unreadable: nothing to attach to
      }
    }
    return [...targets.values()];
  }

  private functionsOf(path: string, cacheKey: string): TlsFunction[] | null {
    if (this.byFile.has(cacheKey)) return this.byFile.get(cacheKey)!;
    let fns: TlsFunction[] | null = null;
    try {
      const offsets = functionOffsets(
        path,
        TLS_FUNCTIONS.map((f) => f.name),
      );
      const list = TLS_FUNCTIONS.filter((f) => offsets.has(f.name)).map((f) => ({
        name: f.name,
        offset: offsets.get(f.name)!,
        cookie: f.cookie,
        ret: f.ret,
      }));
      // A file is a target when it can write TLS; the rest only helps the writes.
      fns = list.some((f) => WRITE_COOKIES.has(f.cookie)) ? placedProbes(path, list) : null;
      if (!fns) {
        // Bun: BoringSSL linked in without symbols, found by signature
        const bun = bunTlsFunctions(path);
        if (bun && "functions" in bun) fns = bun.functions;
        else if (bun) this.unrecognisedBun.set(cacheKey, bun.unrecognised);
      }
    } catch {
      fns = null; // not ELF (scripts, data files)
    }
    this.byFile.set(cacheKey, fns);
    return fns;
  }

  private goOf(path: string, cacheKey: string): GoTarget | RefusedTarget | null {
    if (!this.goByFile.has(cacheKey)) this.goByFile.set(cacheKey, goTargetOf(path));
    return this.goByFile.get(cacheKey)!;
  }

  /** Ids (dev:ino) of the system's libssl files as pid's root has them. */
  systemLibsslIds(pid: number): string[] {
    const root = processRoot(pid);
    if (root === null) return [];
    const ids: string[] = [];
    for (const p of this.systemLibssl(root)) {
      try {
        const st = statSync(root + p);
        ids.push(`${st.dev}:${st.ino}`);
      } catch {
        // vanished
      }
    }
    return ids;
  }

  private systemLibssl(root: string): string[] {
    let libs = this.libsByRoot.get(root);
    if (!libs) {
      libs = [];
      for (const dir of LIB_DIRS) {
        try {
          for (const f of readdirSync(root + dir)) if (LIBSSL.test(f)) libs.push(`${dir}/${f}`);
        } catch {
          // directory absent in this root
        }
      }
      this.libsByRoot.set(root, libs);
    }
    return libs;
  }
}

/** The library's probes on instructions the kernel emulates where that is safe (probe-sites.ts). */
function placedProbes(path: string, fns: TlsFunction[]): TlsFunction[] {
  const code = fileCode(path);
  try {
    return placeProbes(fns, code.codeAt);
  } finally {
    code.close();
  }
}

const ownRoot = readlinkSync("/proc/self/root");

/** "" for processes that share our root, else /proc/<pid>/root (a container's filesystem). */
function processRoot(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/root`) === ownRoot ? "" : `/proc/${pid}/root`;
  } catch {
    return null;
  }
}
