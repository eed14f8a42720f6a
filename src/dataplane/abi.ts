/**
 * The TypeScript view of bpf/kloak.h. Every size, offset, enum value and
 * shared #define comes from abi.generated.ts, which scripts/gen-abi.ts
 * generates from the compiled object's BTF (`bun run gen:abi`;
 * test/dataplane/abi.test.ts fails when it is stale). The encoders and
 * decoders here are written by hand.
 */
import ipaddr from "ipaddr.js";
import { ENUMS, STRUCTS } from "./abi.generated.ts";
import { actionName, refusalName, type ViolationAction } from "./refusals.ts";

/** An enum's values under their C names less a common prefix (KLOAK_FN_SSL_WRITE -> SSL_WRITE). */
type Unprefixed<E, P extends string> = { readonly [K in keyof E as K extends `${P}${infer R}` ? R : never]: E[K] };
function unprefixed<E extends Record<string, number>, P extends string>(e: E, prefix: P): Unprefixed<E, P> {
  const entries = Object.entries(e).filter(([k]) => k.startsWith(prefix));
  return Object.fromEntries(entries.map(([k, v]) => [k.slice(prefix.length), v])) as Unprefixed<E, P>;
}

/**
 * kloak.h's shared #defines. ITEM_UNCHECKED: kloak_item.hshift flag, the
 * kernel could not check the buffer's mapping (the worker checks it);
 * CGROUP_DEPTH: cgroup v2 levels the kernel searches for a registered
 * ancestor (kloak_cgroups); CONNS_PER_PROCESS: connections one process may
 * have tracked at a time; COOKIE_*_SHIFT: where a probe's cookie keeps a Go
 * layout id and its owner's tgid (probeCookie).
 */
export const {
  COOKIE_LAYOUT_SHIFT,
  COOKIE_OWNER_SHIFT,
  MARKER_LEN,
  VALUE_MIN,
  VALUE_MAX,
  KEY_LEN,
  MAX_SUBST,
  MAX_CANDIDATES,
  ITEM_UNCHECKED,
  CHUNK,
  MAX_SCAN,
  MAX_RULES,
  NAME_MAX,
  CGROUP_DEPTH,
  CONNS_PER_PROCESS,
} = unprefixed(ENUMS.kloak_abi_const, "KLOAK_ABI_");

export const Fn = unprefixed(ENUMS.kloak_fn, "KLOAK_FN_");

/** A probe's bpf_cookie (kloak.h): function, Go layout id, and the process it is attached for. */
export function probeCookie(fn: number, owner: number, layoutId = 0): bigint {
  if (layoutId >= 2 ** (COOKIE_OWNER_SHIFT - COOKIE_LAYOUT_SHIFT)) throw new Error(`Go layout id ${layoutId} does not fit a probe's cookie`);
  return BigInt(fn) | (BigInt(layoutId) << BigInt(COOKIE_LAYOUT_SHIFT)) | (BigInt(owner) << BigInt(COOKIE_OWNER_SHIFT));
}
export const ConnFlags = unprefixed(ENUMS.kloak_conn_flags, "KLOAK_CONN_");
export const ScopeFlags = unprefixed(ENUMS.kloak_scope_flags, "KLOAK_SCOPE_");
export const RuleKind = unprefixed(ENUMS.kloak_rule_kind, "KLOAK_RULE_");
export const AF_INET = 2;
export const AF_INET6 = 10;
export const Mode = unprefixed(ENUMS.kloak_mode, "KLOAK_MODE_");

const KC = unprefixed(ENUMS.kloak_counter, "KC_");
export type CounterName = Lowercase<Exclude<keyof typeof KC, "_COUNT">>;
/** enum kloak_counter, in order (index = value). Refusals are counted by reason (refusals.ts). */
export const COUNTERS: readonly CounterName[] = Object.entries(KC)
  .filter(([k]) => k !== "_COUNT")
  .sort(([, a], [, b]) => a - b)
  .map(([k, v], i) => {
    if (v !== i) throw new Error(`enum kloak_counter is not dense at ${k}`);
    return k.toLowerCase() as CounterName;
  });

export const EventType = unprefixed(ENUMS.kloak_event_type, "KE_");

/** enum kloak_proc_flags: kloak_procs[tgid].flags */
export const ProcFlags = unprefixed(ENUMS.kloak_proc_flags, "KLOAK_PROC_");

/** Struct sizes and field offsets, exactly as in the object. */
export const LAYOUT = STRUCTS;

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
  const F = LAYOUT.kloak_ph_key.fields;
  const b = new Uint8Array(LAYOUT.kloak_ph_key.size);
  b.set(tail.subarray(0, KEY_LEN), F.tail);
  new DataView(b.buffer).setUint32(F.tail_len, tailLen, true);
  return b;
}

export function encodeBytes(data: Uint8Array): Uint8Array {
  if (data.length > VALUE_MAX) throw new RangeError(`kloak_bytes holds at most ${VALUE_MAX} bytes`);
  const F = LAYOUT.kloak_bytes.fields;
  const b = new Uint8Array(LAYOUT.kloak_bytes.size);
  new DataView(b.buffer).setUint32(F.len, data.length, true);
  b.set(data, F.data);
  return b;
}

/** A struct of __u32 fields, each given by name. */
function encodeU32Struct<F extends Record<string, number>>(s: { size: number; fields: F }, values: Record<keyof F, number>): Uint8Array {
  const b = new Uint8Array(s.size);
  const v = new DataView(b.buffer);
  for (const [name, off] of Object.entries(s.fields)) v.setUint32(off, values[name as keyof F], true);
  return b;
}

export function encodeProc(scopeId: number, flags = 0): Uint8Array {
  return encodeU32Struct(LAYOUT.kloak_proc, { scope_id: scopeId, flags });
}

export function encodeGrant(scopeId: number, secretId: number): Uint8Array {
  return encodeU32Struct(LAYOUT.kloak_grant, { scope_id: scopeId, secret_id: secretId });
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
  /** FORK: the child is held at its first stop until the main thread releases it (ring-worker.ts) */
  held?: boolean;
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
  /** as given to open(2): relative to dirfd when it does not start with "/"; "" when unread */
  path: string;
  dirfd: number;
  /** the path was not resident at the open (bpf/libopen.h): it is at upath in the process, to be read there */
  unread: boolean;
  upath: bigint;
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

/** struct kloak_peer at off: a 16-byte address (IPv4 in its last 4), port, family. */
function decodePeer(v: DataView, off: number): Peer {
  const F = LAYOUT.kloak_peer.fields;
  const addr = new Uint8Array(v.buffer, v.byteOffset + off + F.addr, 16);
  return { address: peerAddress(addr, v.getUint16(off + F.family, true)), port: v.getUint16(off + F.port, true) };
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

export type KernelRule = { kind: "cidr"; addr: Uint8Array; prefix: number; port: number } | { kind: "host" | "wildcard"; name: string; port: number };

/** struct kloak_policy for one secret (port 0: any). */
export function encodePolicy(rules: readonly KernelRule[]): Uint8Array {
  if (rules.length > MAX_RULES) throw new RangeError(`at most ${MAX_RULES} rules per secret`);
  const L = LAYOUT.kloak_rule;
  const b = new Uint8Array(LAYOUT.kloak_policy.size);
  const v = new DataView(b.buffer);
  v.setUint32(LAYOUT.kloak_policy.fields.nrules, rules.length, true);
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
  const b = new Uint8Array(LAYOUT.kloak_resolved.size);
  new DataView(b.buffer).setBigUint64(LAYOUT.kloak_resolved.fields.valid_until_ns, validUntilNs, true);
  return b;
}

/** Decode one tls_events record; null for a type this build does not know. */
export function decodeEvent(v: DataView): DataplaneEvent | null {
  // every event starts with its type (the first field of each kloak_*_event)
  const type = v.getUint32(LAYOUT.kloak_proc_event.fields.type, true);
  switch (type) {
    case EventType.SUBSTITUTE:
    case EventType.RESTORE:
      return decodeWrite(v, type);
    case EventType.EXEC:
    case EventType.EXEC_KNOWN:
    case EventType.FORK:
    case EventType.EXIT: {
      const F = LAYOUT.kloak_proc_event.fields;
      return { type, tgid: v.getUint32(F.tgid, true), ppid: v.getUint32(F.ppid, true), scopeId: v.getUint32(F.scope_id, true) };
    }
    case EventType.REFUSED:
      return decodeRefusal(v, type);
    case EventType.BLOCK:
      return decodeBlock(v, type);
    case EventType.SNI:
      return decodeSni(v, type);
    case EventType.WAKE: {
      const F = LAYOUT.kloak_wake_event.fields;
      return { type, tgid: v.getUint32(F.tgid, true), tid: v.getUint32(F.tid, true) };
    }
    case EventType.LIB_OPEN:
      return decodeLibOpen(v, type);
    case EventType.UNHOOKED_TLS: {
      const F = LAYOUT.kloak_unhooked_event.fields;
      return { type, tgid: v.getUint32(F.tgid, true), scopeId: v.getUint32(F.scope_id, true), fd: v.getInt32(F.fd, true), peer: decodePeer(v, F.peer) };
    }
    default:
      return null;
  }
}

function decodeWrite(v: DataView, type: WriteEvent["type"]): WriteEvent {
  const F = LAYOUT.kloak_write_event.fields;
  const I = LAYOUT.kloak_item.fields;
  const count = Math.min(v.getUint32(F.count, true), MAX_SUBST);
  const items: WriteItem[] = [];
  for (let i = 0; i < count; i++) {
    const o = F.items + i * LAYOUT.kloak_item.size;
    const hshift = v.getUint32(o + I.hshift, true);
    items.push({
      addr: v.getBigUint64(o + I.addr, true),
      secretId: v.getUint32(o + I.secret_id, true),
      len: v.getUint32(o + I.len, true),
      hbits: v.getUint32(o + I.hbits, true),
      hshift: hshift & ~ITEM_UNCHECKED,
      unchecked: (hshift & ITEM_UNCHECKED) !== 0,
    });
  }
  return { type, tgid: v.getUint32(F.tgid, true), tid: v.getUint32(F.tid, true), seq: v.getBigUint64(F.seq, true), items };
}

function decodeRefusal(v: DataView, type: RefusalEvent["type"]): RefusalEvent {
  const F = LAYOUT.kloak_refusal_event.fields;
  return {
    type,
    tgid: v.getUint32(F.tgid, true),
    scopeId: v.getUint32(F.scope_id, true),
    secretId: v.getUint32(F.secret_id, true),
    reason: refusalName(v.getUint32(F.reason, true)),
    offset: v.getBigUint64(F.offset, true),
    peer: decodePeer(v, F.peer),
    action: actionName(v.getUint32(F.action, true)),
    sni: name(v, F.sni, v.getUint32(F.sni_len, true)),
  };
}

function decodeBlock(v: DataView, type: BlockEvent["type"]): BlockEvent {
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

function decodeSni(v: DataView, type: SniEvent["type"]): SniEvent {
  const F = LAYOUT.kloak_sni_event.fields;
  return {
    type,
    tgid: v.getUint32(F.tgid, true),
    scopeId: v.getUint32(F.scope_id, true),
    sni: name(v, F.sni, v.getUint32(F.sni_len, true)),
    hold: v.getUint32(F.hold, true) !== 0,
    tid: v.getUint32(F.tid, true),
    seq: v.getBigUint64(F.seq, true),
  };
}

function decodeLibOpen(v: DataView, type: LibOpenEvent["type"]): LibOpenEvent {
  const F = LAYOUT.kloak_lib_open_event.fields;
  const len = Math.min(v.getUint32(F.path_len, true), NAME_MAX - 1);
  return {
    type,
    tgid: v.getUint32(F.tgid, true),
    scopeId: v.getUint32(F.scope_id, true),
    path: latin1.decode(new Uint8Array(v.buffer, v.byteOffset + F.path, len)),
    dirfd: v.getInt32(F.dirfd, true),
    unread: v.getUint32(F.unread, true) !== 0,
    upath: v.getBigUint64(F.upath, true),
    hold: v.getUint32(F.hold, true) !== 0,
    tid: v.getUint32(F.tid, true),
    seq: v.getBigUint64(F.seq, true),
  };
}
