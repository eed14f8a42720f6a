/**
 * TypeScript mirror of bpf/kloak.h. test/dataplane/abi.test.ts checks every
 * size, offset, enum value and #define here against the compiled object's BTF
 * and the header, so a drift fails the suite instead of corrupting a map.
 */
import ipaddr from "ipaddr.js";
import { actionName, refusalName, type ViolationAction } from "./refusals.ts";

export const MARKER_LEN = 6;
export const VALUE_MIN = 8;
export const VALUE_MAX = 4096;
export const KEY_LEN = 8;
export const MAX_SUBST = 16;
export const MAX_CANDIDATES = 32;
/** kloak_item.hshift flag: the kernel could not check the buffer's mapping; the worker checks it (bpf/kloak.h) */
export const ITEM_UNCHECKED = 1 << 16;
export const CHUNK = 2048;
export const MAX_SCAN = 16 << 20;
export const MAX_RULES = 16;
export const NAME_MAX = 256;
/** cgroup v2 levels the kernel searches for a registered ancestor (kloak_cgroups) */
export const CGROUP_DEPTH = 16;

export const Fn = {
  SSL_WRITE: 0,
  SSL_WRITE_EX: 1,
  SSL_DO_HANDSHAKE: 2,
  SSL_SET_FD: 3,
  SSL_CTRL: 4,
  SSL_FREE: 5,
  SSL_SET_BIO: 6,
  SSL_SET0_WBIO: 7,
  SSL_SET_WFD: 8,
  SSL_READ: 9,
  SSL_READ_EX: 10,
  GNUTLS_RECORD_SEND: 16,
  GNUTLS_RECORD_CORK: 17,
  GNUTLS_RECORD_UNCORK: 18,
  GNUTLS_SERVER_NAME_SET: 19,
  GNUTLS_SET_INT2: 20,
  GNUTLS_APP_TRANSPORT: 21,
  GNUTLS_DEINIT: 22,
  GNUTLS_INIT: 23,
  GO_WRITE: 32,
  GO_WRITE_RET: 33,
  BSSL_SET_HOSTNAME: 40,
  BUN_SSL_NEW: 41,
} as const;
export const ConnFlags = {
  BOUND: 1,
  BY_FD: 2,
  CONFLICT: 4,
  APP_BIO: 8,
  BIO_REPLACED: 16,
  HANDSHAKE: 32,
  SNI_CHANGED: 64,
  LATE: 128,
  CORKED: 256,
} as const;
export const ScopeFlags = { STRICT_BINDING: 1 } as const;
/** Connections one process may have tracked at a time. */
export const CONNS_PER_PROCESS = 4096;
export const RuleKind = { CIDR: 1, HOST: 2, WILDCARD: 3 } as const;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const Mode = { KERNEL: 0, STOP: 1 } as const;

/** enum kloak_counter, in order. Refusals are counted by reason (refusals.ts). */
export const COUNTERS = [
  "writes_seen",
  "bytes_scanned",
  "substituted",
  "restored",
  "bytes_unscanned",
  "candidates_dropped",
  "events_lost",
  "nested_write",
  "unrestricted",
  "conns_bound",
  "bind_conflict",
  "conns_untracked",
  "sni_held",
  "sni_unheld",
  "cgroup_joined",
  "procs_full",
  "killed_no_restore",
  "violation_kills",
  "violation_blocks",
  "exec_held",
  "exec_known",
  "unhooked_hello",
  "subst_not_taken",
  "lib_open_held",
  "lib_open_unheld",
] as const;
export type CounterName = (typeof COUNTERS)[number];

export const EventType = {
  SUBSTITUTE: 1,
  RESTORE: 2,
  EXEC: 3,
  FORK: 4,
  EXIT: 5,
  REFUSED: 6,
  SNI: 7,
  BLOCK: 8,
  WAKE: 9,
  EXEC_KNOWN: 10,
  UNHOOKED_TLS: 11,
  LIB_OPEN: 12,
} as const;

/** enum kloak_proc_flags: kloak_procs[tgid].flags */
export const ProcFlags = {
  TRACED: 1,
} as const;

/** Struct sizes and field offsets, exactly as in kloak.h. */
export const LAYOUT = {
  kloak_ph_key: { size: 16, fields: { tail: 0, tail_len: 8, _pad: 12 } },
  kloak_bytes: { size: 8 + VALUE_MAX, fields: { len: 0, _pad: 4, data: 8 } },
  kloak_proc: { size: 8, fields: { scope_id: 0, flags: 4 } },
  kloak_grant: { size: 8, fields: { scope_id: 0, secret_id: 4 } },
  kloak_item: { size: 24, fields: { addr: 0, secret_id: 8, len: 12, hbits: 16, hshift: 20 } },
  kloak_hcode: { size: 8 + VALUE_MAX + 8, fields: { bits: 0, fits: 4, code: 8 } },
  kloak_write_event: {
    size: 24 + 24 * MAX_SUBST,
    fields: { type: 0, tgid: 4, tid: 8, count: 12, seq: 16, items: 24 },
  },
  kloak_proc_event: { size: 16, fields: { type: 0, tgid: 4, ppid: 8, scope_id: 12 } },
  kloak_wake_event: { size: 16, fields: { type: 0, tgid: 4, tid: 8, _pad: 12 } },
  kloak_image: { size: 16, fields: { ino: 0, dev: 8, mntns: 12 } },
  kloak_peer: { size: 24, fields: { addr: 0, port: 16, family: 18, _pad: 20 } },
  kloak_conn_key: { size: 16, fields: { ssl: 0, tgid: 8, _pad: 12 } },
  kloak_conn: {
    size: 32 + NAME_MAX,
    fields: { fd: 0, flags: 4, ino: 8, bound_ns: 16, sni_len: 24, _pad: 28, sni: 32 },
  },
  kloak_rule: { size: 24 + NAME_MAX, fields: { kind: 0, prefix: 1, port: 2, name_len: 4, addr: 8, name: 24 } },
  kloak_policy: { size: 8 + (24 + NAME_MAX) * MAX_RULES, fields: { nrules: 0, _pad: 4, rules: 8 } },
  kloak_name_addr: { size: NAME_MAX + 16, fields: { name: 0, addr: NAME_MAX } },
  kloak_resolved: { size: 8, fields: { valid_until_ns: 0 } },
  kloak_refusal_event: {
    size: 64 + NAME_MAX,
    fields: { type: 0, tgid: 4, scope_id: 8, secret_id: 12, reason: 16, sni_len: 20, offset: 24, peer: 32, action: 56, _pad: 60, sni: 64 },
  },
  kloak_block_event: { size: 32, fields: { type: 0, tgid: 4, tid: 8, fd: 12, ino: 16, seq: 24 } },
  kloak_scope: { size: 16, fields: { netns: 0, flags: 8, on_violation: 12 } },
  kloak_sni_event: {
    size: 32 + NAME_MAX,
    fields: { type: 0, tgid: 4, scope_id: 8, sni_len: 12, hold: 16, tid: 20, seq: 24, sni: 32 },
  },
  kloak_lib_open_event: {
    size: 40 + NAME_MAX,
    fields: { type: 0, tgid: 4, scope_id: 8, path_len: 12, hold: 16, tid: 20, seq: 24, dirfd: 32, _pad: 36, path: 40 },
  },
  kloak_config: { size: 16, fields: { mode: 0, scan_cap: 4, violations: 8, _pad: 12 } },
  kloak_stop_owner: { size: 16, fields: { tid: 0, _pad: 4, seq: 8 } },
  kloak_unhooked_event: { size: 48, fields: { type: 0, tgid: 4, scope_id: 8, fd: 12, ino: 16, peer: 24 } },
  kloak_go_layout: {
    size: 40,
    fields: { write_entry: 0, tcp_write: 8, conn_conn: 16, conn_config: 20, config_server_name: 24, tcpconn_fd: 28, netfd_sysfd: 32, _pad: 36 },
  },
} as const;

const u32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
};
export const encodeU32 = u32;

/** struct kloak_image: an executable in a mount namespace. */
export function encodeImage(ino: bigint, dev: number, mntns: number): Uint8Array {
  const b = new Uint8Array(LAYOUT.kloak_image.size);
  const v = new DataView(b.buffer);
  v.setBigUint64(LAYOUT.kloak_image.fields.ino, ino, true);
  v.setUint32(LAYOUT.kloak_image.fields.dev, dev, true);
  v.setUint32(LAYOUT.kloak_image.fields.mntns, mntns, true);
  return b;
}

/** A __u64 map key or value (kloak_cgroups: the cgroup v2 id). */
export function encodeU64(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, n, true);
  return b;
}

export function encodePhKey(tail: Uint8Array, tailLen: number): Uint8Array {
  const b = new Uint8Array(LAYOUT.kloak_ph_key.size);
  b.set(tail.subarray(0, KEY_LEN), 0);
  new DataView(b.buffer).setUint32(8, tailLen, true);
  return b;
}

export function encodeBytes(data: Uint8Array): Uint8Array {
  if (data.length > VALUE_MAX) throw new RangeError(`kloak_bytes holds at most ${VALUE_MAX} bytes`);
  const b = new Uint8Array(LAYOUT.kloak_bytes.size);
  new DataView(b.buffer).setUint32(0, data.length, true);
  b.set(data, 8);
  return b;
}

export function encodeProc(scopeId: number, flags = 0): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, scopeId, true);
  v.setUint32(4, flags, true);
  return b;
}

export function encodeGrant(scopeId: number, secretId: number): Uint8Array {
  return encodeProc(scopeId, secretId);
}

export function encodeScope(s: { netns: bigint; flags: number; onViolation: number }): Uint8Array {
  const F = LAYOUT.kloak_scope.fields;
  const b = new Uint8Array(LAYOUT.kloak_scope.size);
  const v = new DataView(b.buffer);
  v.setBigUint64(F.netns, s.netns, true);
  v.setUint32(F.flags, s.flags, true);
  v.setUint32(F.on_violation, s.onViolation, true);
  return b;
}

export interface WriteItem {
  addr: bigint;
  secretId: number;
  len: number;
  /** 0: the placeholder's bytes; else its HPACK Huffman code of hbits bits, from bit hshift of addr's byte */
  hbits: number;
  hshift: number;
  /** stop mode: the writer's memory map was locked when the kernel looked; the worker checks the mapping before it writes */
  unchecked: boolean;
}
export interface WriteEvent {
  type: typeof EventType.SUBSTITUTE | typeof EventType.RESTORE;
  tgid: number;
  tid: number;
  seq: bigint;
  items: WriteItem[];
}
export interface ProcEvent {
  type: typeof EventType.EXEC | typeof EventType.EXEC_KNOWN | typeof EventType.FORK | typeof EventType.EXIT;
  tgid: number;
  ppid: number;
  scopeId: number;
}
/** A TLS peer as the kernel saw it; address "" when unknown. */
export interface Peer {
  address: string;
  port: number;
}
export interface RefusalEvent {
  type: typeof EventType.REFUSED;
  tgid: number;
  scopeId: number;
  secretId: number;
  reason: string;
  offset: bigint;
  peer: Peer;
  /** what the violation policy did ("pass" for refusals that are no violation) */
  action: ViolationAction;
  /** the client's SNI; "" when it sent none (or the connection is unknown) */
  sni: string;
}
/** Violation policy "block": the writer is held until its socket (fd, inode ino) is shut down. */
export interface BlockEvent {
  type: typeof EventType.BLOCK;
  tgid: number;
  tid: number;
  fd: number;
  ino: bigint;
  seq: bigint;
}
export interface SniEvent {
  type: typeof EventType.SNI;
  tgid: number;
  scopeId: number;
  sni: string;
  /** thread tid is held (untraced: the whole process, holding the stop claim `seq`) until kloak releases it */
  hold: boolean;
  tid: number;
  seq: bigint;
}
/** A traced thread is about to stop for kloak's tracer: the ring worker should look. */
export interface WakeEvent {
  type: typeof EventType.WAKE;
  tgid: number;
  tid: number;
}
/** A scoped process sent a TLS ClientHello that no hooked TLS library made (bpf/unhooked.h). */
export interface UnhookedEvent {
  type: typeof EventType.UNHOOKED_TLS;
  tgid: number;
  scopeId: number;
  fd: number;
  peer: Peer;
}
/** A scoped process opens a TLS library by name while the TLS programs are not loaded (bpf/libopen.h). */
export interface LibOpenEvent {
  type: typeof EventType.LIB_OPEN;
  tgid: number;
  scopeId: number;
  /** as given to open(2): relative to dirfd when it does not start with "/" */
  path: string;
  dirfd: number;
  /** held like SniEvent.hold, until kloak releases it */
  hold: boolean;
  tid: number;
  seq: bigint;
}
export type DataplaneEvent = WriteEvent | ProcEvent | RefusalEvent | SniEvent | BlockEvent | WakeEvent | UnhookedEvent | LibOpenEvent;

function peerAddress(addr: Uint8Array, family: number): string {
  if (family === AF_INET) return ipaddr.fromByteArray([...addr.subarray(12, 16)]).toString();
  if (family === AF_INET6) {
    const a = ipaddr.IPv6.parse(ipaddr.fromByteArray([...addr]).toString());
    return a.isIPv4MappedAddress() ? a.toIPv4Address().toString() : a.toString();
  }
  return "";
}

const latin1 = new TextDecoder("latin1");
function name(v: DataView, off: number, len: number): string {
  const text = latin1.decode(new Uint8Array(v.buffer, v.byteOffset + off, Math.min(len, NAME_MAX)));
  // NAME_MAX: a counted SNI (GnuTLS) with a NUL inside, or too long: shown up to the NUL, marked.
  return len >= NAME_MAX ? `${text.split("\0")[0]}\\0… (not one host name)` : text;
}

function encodeName(b: Uint8Array, off: number, text: string): number {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length >= NAME_MAX) throw new RangeError(`name longer than ${NAME_MAX - 1} bytes`);
  b.set(bytes, off);
  return bytes.length;
}

export type KernelRule =
  | { kind: "cidr"; addr: Uint8Array; prefix: number; port: number }
  | { kind: "host" | "wildcard"; name: string; port: number };

/** struct kloak_policy for one secret (port 0: any). */
export function encodePolicy(rules: readonly KernelRule[]): Uint8Array {
  if (rules.length > MAX_RULES) throw new RangeError(`at most ${MAX_RULES} rules per secret`);
  const L = LAYOUT.kloak_rule;
  const b = new Uint8Array(LAYOUT.kloak_policy.size);
  const v = new DataView(b.buffer);
  v.setUint32(0, rules.length, true);
  rules.forEach((r, i) => {
    const o = LAYOUT.kloak_policy.fields.rules + i * L.size;
    v.setUint16(o + L.fields.port, r.port, true);
    if (r.kind === "cidr") {
      b[o + L.fields.kind] = RuleKind.CIDR;
      b[o + L.fields.prefix] = r.prefix;
      b.set(r.addr, o + L.fields.addr);
    } else {
      b[o + L.fields.kind] = r.kind === "host" ? RuleKind.HOST : RuleKind.WILDCARD;
      v.setUint32(o + L.fields.name_len, encodeName(b, o + L.fields.name, r.name), true);
    }
  });
  return b;
}

export function encodeName256(hostname: string): Uint8Array {
  const b = new Uint8Array(NAME_MAX);
  encodeName(b, 0, hostname);
  return b;
}

export function encodeNameAddr(hostname: string, addr: Uint8Array): Uint8Array {
  const b = new Uint8Array(LAYOUT.kloak_name_addr.size);
  encodeName(b, 0, hostname);
  b.set(addr, LAYOUT.kloak_name_addr.fields.addr);
  return b;
}

export const VALID_FOREVER = 0xffff_ffff_ffff_ffffn;
export function encodeResolved(validUntilNs: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, validUntilNs, true);
  return b;
}

/** Decode one tls_events record; null for a type this build does not know. */
export function decodeEvent(v: DataView): DataplaneEvent | null {
  const type = v.getUint32(0, true);
  switch (type) {
    case EventType.SUBSTITUTE:
    case EventType.RESTORE: {
      const count = Math.min(v.getUint32(12, true), MAX_SUBST);
      const items: WriteItem[] = [];
      for (let i = 0; i < count; i++) {
        const o = LAYOUT.kloak_write_event.fields.items + i * LAYOUT.kloak_item.size;
        items.push({
          addr: v.getBigUint64(o, true),
          secretId: v.getUint32(o + 8, true),
          len: v.getUint32(o + 12, true),
          hbits: v.getUint32(o + 16, true),
          hshift: v.getUint32(o + 20, true) & ~ITEM_UNCHECKED,
          unchecked: (v.getUint32(o + 20, true) & ITEM_UNCHECKED) !== 0,
        });
      }
      return { type, tgid: v.getUint32(4, true), tid: v.getUint32(8, true), seq: v.getBigUint64(16, true), items };
    }
    case EventType.EXEC:
    case EventType.EXEC_KNOWN:
    case EventType.FORK:
    case EventType.EXIT:
      return { type, tgid: v.getUint32(4, true), ppid: v.getUint32(8, true), scopeId: v.getUint32(12, true) };
    case EventType.REFUSED: {
      const F = LAYOUT.kloak_refusal_event.fields;
      const addr = new Uint8Array(v.buffer, v.byteOffset + F.peer, 16);
      return {
        type,
        tgid: v.getUint32(F.tgid, true),
        scopeId: v.getUint32(F.scope_id, true),
        secretId: v.getUint32(F.secret_id, true),
        reason: refusalName(v.getUint32(F.reason, true)),
        offset: v.getBigUint64(F.offset, true),
        peer: { address: peerAddress(addr, v.getUint16(F.peer + 18, true)), port: v.getUint16(F.peer + 16, true) },
        action: actionName(v.getUint32(F.action, true)),
        sni: name(v, F.sni, v.getUint32(F.sni_len, true)),
      };
    }
    case EventType.BLOCK: {
      const F = LAYOUT.kloak_block_event.fields;
      return {
        type,
        tgid: v.getUint32(F.tgid, true),
        tid: v.getUint32(F.tid, true),
        fd: v.getInt32(F.fd, true),
        ino: v.getBigUint64(F.ino, true),
        seq: v.getBigUint64(F.seq, true),
      };
    }
    case EventType.SNI:
      return {
        type,
        tgid: v.getUint32(4, true),
        scopeId: v.getUint32(8, true),
        sni: name(v, 32, v.getUint32(12, true)),
        hold: v.getUint32(16, true) !== 0,
        tid: v.getUint32(20, true),
        seq: v.getBigUint64(24, true),
      };
    case EventType.WAKE:
      return { type, tgid: v.getUint32(4, true), tid: v.getUint32(8, true) };
    case EventType.LIB_OPEN: {
      const F = LAYOUT.kloak_lib_open_event.fields;
      const len = Math.min(v.getUint32(F.path_len, true), NAME_MAX - 1);
      return {
        type,
        tgid: v.getUint32(F.tgid, true),
        scopeId: v.getUint32(F.scope_id, true),
        path: latin1.decode(new Uint8Array(v.buffer, v.byteOffset + F.path, len)),
        dirfd: v.getInt32(F.dirfd, true),
        hold: v.getUint32(F.hold, true) !== 0,
        tid: v.getUint32(F.tid, true),
        seq: v.getBigUint64(F.seq, true),
      };
    }
    case EventType.UNHOOKED_TLS: {
      const F = LAYOUT.kloak_unhooked_event.fields;
      const addr = new Uint8Array(v.buffer, v.byteOffset + F.peer, 16);
      return {
        type,
        tgid: v.getUint32(F.tgid, true),
        scopeId: v.getUint32(F.scope_id, true),
        fd: v.getInt32(F.fd, true),
        peer: { address: peerAddress(addr, v.getUint16(F.peer + 18, true)), port: v.getUint16(F.peer + 16, true) },
      };
    }
    default:
      return null;
  }
}
