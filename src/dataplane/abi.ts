/**
 * TypeScript mirror of bpf/kloak.h. test/dataplane/abi.test.ts checks every
 * size, offset, enum value and #define here against the compiled object's BTF
 * and the header, so a drift fails the suite instead of corrupting a map.
 */

export const MARKER_LEN = 6;
export const VALUE_MIN = 8;
export const VALUE_MAX = 4096;
export const KEY_LEN = 8;
export const MAX_SUBST = 16;
export const MAX_CANDIDATES = 32;
export const CHUNK = 512;
export const MAX_SCAN = 16 << 20;

export const Fn = { SSL_WRITE: 0, SSL_WRITE_EX: 1 } as const;
export const Mode = { KERNEL: 0, STOP: 1 } as const;

/** enum kloak_counter, in order; the names become metric label values. */
export const COUNTERS = [
  "writes_seen",
  "bytes_scanned",
  "substituted",
  "restored",
  "refused_unknown",
  "refused_truncated",
  "refused_not_entitled",
  "refused_too_many",
  "refused_no_value",
  "refused_write_failed",
  "refused_ringbuf_full",
  "scan_truncated",
  "bytes_unscanned",
  "candidates_dropped",
  "events_lost",
  "nested_write",
  "refused_concurrent",
] as const;
export type CounterName = (typeof COUNTERS)[number];

/** enum kloak_refusal; the names are the `reason` label of refusals. */
export const REFUSAL_REASONS: Record<number, string> = {
  1: "unknown_placeholder",
  2: "truncated",
  3: "scope_not_entitled",
  4: "too_many_placeholders",
  5: "no_value",
  6: "write_failed",
  7: "ringbuf_full",
  8: "beyond_scan_cap",
  9: "concurrent_write",
};

export const EventType = {
  SUBSTITUTE: 1,
  RESTORE: 2,
  EXEC: 3,
  FORK: 4,
  EXIT: 5,
  REFUSED: 6,
} as const;

/** Struct sizes and field offsets, exactly as in kloak.h. */
export const LAYOUT = {
  kloak_ph_key: { size: 16, fields: { tail: 0, tail_len: 8, _pad: 12 } },
  kloak_bytes: { size: 8 + VALUE_MAX, fields: { len: 0, _pad: 4, data: 8 } },
  kloak_proc: { size: 8, fields: { scope_id: 0, flags: 4 } },
  kloak_grant: { size: 8, fields: { scope_id: 0, secret_id: 4 } },
  kloak_item: { size: 16, fields: { addr: 0, secret_id: 8, len: 12 } },
  kloak_write_event: {
    size: 24 + 16 * MAX_SUBST,
    fields: { type: 0, tgid: 4, tid: 8, count: 12, seq: 16, items: 24 },
  },
  kloak_proc_event: { size: 16, fields: { type: 0, tgid: 4, ppid: 8, scope_id: 12 } },
  kloak_refusal_event: {
    size: 32,
    fields: { type: 0, tgid: 4, scope_id: 8, secret_id: 12, reason: 16, _pad: 20, offset: 24 },
  },
  kloak_config: { size: 8, fields: { mode: 0, scan_cap: 4 } },
  kloak_stop_owner: { size: 16, fields: { tid: 0, _pad: 4, seq: 8 } },
} as const;

const u32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
};
export const encodeU32 = u32;

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

export interface WriteItem {
  addr: bigint;
  secretId: number;
  len: number;
}
export interface WriteEvent {
  type: typeof EventType.SUBSTITUTE | typeof EventType.RESTORE;
  tgid: number;
  tid: number;
  seq: bigint;
  items: WriteItem[];
}
export interface ProcEvent {
  type: typeof EventType.EXEC | typeof EventType.FORK | typeof EventType.EXIT;
  tgid: number;
  ppid: number;
  scopeId: number;
}
export interface RefusalEvent {
  type: typeof EventType.REFUSED;
  tgid: number;
  scopeId: number;
  secretId: number;
  reason: string;
  offset: bigint;
}
export type DataplaneEvent = WriteEvent | ProcEvent | RefusalEvent;

/** Decode one tls_events record; null for a type this build does not know. */
export function decodeEvent(v: DataView): DataplaneEvent | null {
  const type = v.getUint32(0, true);
  switch (type) {
    case EventType.SUBSTITUTE:
    case EventType.RESTORE: {
      const count = Math.min(v.getUint32(12, true), MAX_SUBST);
      const items: WriteItem[] = [];
      for (let i = 0; i < count; i++) {
        const o = 24 + i * 16;
        items.push({ addr: v.getBigUint64(o, true), secretId: v.getUint32(o + 8, true), len: v.getUint32(o + 12, true) });
      }
      return { type, tgid: v.getUint32(4, true), tid: v.getUint32(8, true), seq: v.getBigUint64(16, true), items };
    }
    case EventType.EXEC:
    case EventType.FORK:
    case EventType.EXIT:
      return { type, tgid: v.getUint32(4, true), ppid: v.getUint32(8, true), scopeId: v.getUint32(12, true) };
    case EventType.REFUSED:
      return {
        type,
        tgid: v.getUint32(4, true),
        scopeId: v.getUint32(8, true),
        secretId: v.getUint32(12, true),
        reason: REFUSAL_REASONS[v.getUint32(16, true)] ?? "unknown",
        offset: v.getBigUint64(24, true),
      };
    default:
      return null;
  }
}
