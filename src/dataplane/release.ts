/**
 * Releasing the processes of a kloak that can no longer serve them, without
 * leaving a value behind.
 *
 * A kloak (exec or agent) pins four of its maps in bpffs: its processes, the
 * writes in flight (what was substituted where), the placeholders, and the
 * stop claims. A guardian process watches it; when kloak dies, or leaves a
 * writer stopped past STUCK_MS (kloak itself stopped or hung), the guardian
 * stops the writers that have a substitution in flight, puts every
 * placeholder back, and only then resumes them. A later kloak start does the
 * same for pins whose owner and guardian are both gone.
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { mapKeys, mapLookup, objGet } from "../../lib/libbpf.ts";
import { close, kill, monotonicNs, procMemRead, procMemWrite, SIGCONT, SIGKILL, SIGSTOP } from "../../lib/libc.ts";
import { isStopped, threadState } from "../../lib/proc.ts";
import { LAYOUT, MAX_SUBST } from "./abi.ts";
import type { MapName } from "./abi.generated.ts";
import { codeOf, spliceCode } from "./hpack-splice.ts";

export const PIN_DIR = "/sys/fs/bpf/kloak";

/** The maps a kloak pins, by the suffix of their pin (`<base>-<suffix>`). */
export const PINNED_MAPS = {
  procs: "kloak_procs",
  inflight: "kloak_inflight",
  secrets: "kloak_secrets",
  stopowner: "kloak_stop_owner",
  released: "kloak_stop_released",
} as const satisfies Record<string, MapName>;
type Pinned = keyof typeof PINNED_MAPS;

/** The pins of a kloak exec (`.../exec-<pid>`) or agent (`.../agent-<pid>`): add `-<map>`. */
export function execPinBase(pid: number): string {
  return `${PIN_DIR}/exec-${pid}`;
}
export function agentPinBase(pid: number): string {
  return `${PIN_DIR}/agent-${pid}`;
}

export function pinPath(base: string, map: Pinned): string {
  return `${base}-${map}`;
}

export function ensurePinDir(): void {
  mkdirSync(PIN_DIR, { recursive: true, mode: 0o700 });
}

/** A writer's stop lasting longer than this means its kloak is stopped, hung or gone. */
export const STUCK_MS = 1500;

const u32 = (b: Uint8Array, off = 0) => new DataView(b.buffer, b.byteOffset).getUint32(off, true);

/** Run fn with an fd of the BPF object pinned at path (closed after); undefined when nothing is pinned there. */
export function withPinned<T>(path: string, fn: (fd: number) => T): T | undefined {
  if (!existsSync(path)) return undefined;
  const fd = objGet(path);
  try {
    return fn(fd);
  } finally {
    close(fd);
  }
}

function waitStopped(pid: number, tid: number, ms: number): boolean {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (isStopped(pid, tid)) return true;
    const st = threadState(pid, tid);
    if (st === null || st === "Z" || st === "X") return false;
    Bun.sleepSync(1);
  }
  return false;
}

/**
 * Put back the placeholders of every write in flight in the given processes
 * (all of them when `only` is absent). Each writer is stopped first: its
 * thread must not be encrypting the buffer meanwhile. A placeholder that
 * cannot be put back kills its process. Returns the pids it left stopped (the
 * caller resumes them) and how many it killed.
 */
export function restoreInFlight(base: string, only?: Set<number>): { stopped: Set<number>; killed: number } {
  const stopped = new Set<number>();
  let killed = 0;
  withPinned(pinPath(base, "inflight"), (inflight) =>
    withPinned(pinPath(base, "secrets"), (secrets) => {
      const rec = new Uint8Array(LAYOUT.kloak_write_event.size);
      for (const key of mapKeys(inflight, 4)) {
        if (!mapLookup(inflight, key, rec)) continue;
        if (!restoreRecord(new DataView(rec.buffer), secrets, stopped, only)) killed++;
      }
    }),
  );
  return { stopped, killed };
}

/**
 * Put back the placeholders of one write record (kloak_write_event: an
 * inflight record, or a restore request still in kloak_writes), its writer
 * stopped first and added to `stopped`. false: it could not be, and the
 * writer was killed.
 */
export function restoreRecord(v: DataView, secrets: number, stopped: Set<number>, only?: Set<number>): boolean {
  const F = LAYOUT.kloak_write_event.fields;
  const I = LAYOUT.kloak_item;
  const ph = new Uint8Array(LAYOUT.kloak_bytes.size);
  const pid = v.getUint32(F.tgid, true);
  const tid = v.getUint32(F.tid, true);
  if (only && !only.has(pid)) return true;
  if (threadState(pid, tid) === null) return true; // gone, and the value with it
  if (!isStopped(pid, tid)) {
    kill(pid, SIGSTOP);
    if (!waitStopped(pid, tid, 500)) {
      kill(pid, SIGKILL);
      return false;
    }
  }
  stopped.add(pid);
  let ok = true;
  const n = Math.min(v.getUint32(F.count, true), MAX_SUBST);
  for (let i = 0; i < n; i++) {
    const o = F.items + i * I.size;
    const addr = v.getBigUint64(o + I.fields.addr, true);
    const len = v.getUint32(o + I.fields.len, true);
    const hbits = v.getUint32(o + I.fields.hbits, true);
    const id = new Uint8Array(4);
    new DataView(id.buffer).setUint32(0, v.getUint32(o + I.fields.secret_id, true), true);
    try {
      if (!mapLookup(secrets, id, ph)) ok = false;
      else if (hbits === 0) ok = u32(ph) === len && procMemWrite(pid, addr, ph.subarray(8, 8 + len)) === len && ok;
      else {
        // An HTTP/2 header's Huffman-coded placeholder: its code back into its bits.
        const shift = v.getUint32(o + I.fields.hshift, true);
        const code = codeOf(ph.subarray(8, 8 + u32(ph)));
        const span = new Uint8Array(len);
        ok =
          code.bits === hbits &&
          len === (shift + hbits + 7) >> 3 &&
          procMemRead(pid, addr, span) === len &&
          procMemWrite(pid, addr, spliceCode(span, shift, code.code, hbits)) === len &&
          ok;
      }
    } catch {
      ok = false;
    }
  }
  if (!ok) {
    kill(pid, SIGKILL);
    stopped.delete(pid);
  }
  return ok;
}

/** Every process of the pin that is stopped gets SIGCONT; returns how many. */
function resumeAll(base: string): number {
  return (
    withPinned(pinPath(base, "procs"), (procs) => {
      let n = 0;
      for (const key of mapKeys(procs, 4)) {
        const pid = u32(key);
        if (isStopped(pid) && kill(pid, SIGCONT)) n++;
      }
      return n;
    }) ?? 0
  );
}

/**
 * The owner is gone: restore every write in flight, resume everything, then
 * keep resuming for a short while (a probe that ran as the owner died may
 * still stop its writer after the first pass; every process is resumed within
 * the last round, 1 s after start). Removes the pins.
 */
export async function releaseDead(base: string, rounds = [0, 20, 50, 100, 200, 300, 330]): Promise<{ resumed: number; killed: number }> {
  let resumed = 0;
  let killed = 0;
  for (const wait of rounds) {
    if (wait) await Bun.sleep(wait);
    if (!existsSync(pinPath(base, "procs"))) break;
    killed += restoreInFlight(base).killed;
    resumed += resumeAll(base);
  }
  unpinState(base);
  return { resumed, killed };
}

/** Remove every pin of base (the owner's clean exit, or after a release). */
export function unpinState(base: string): void {
  for (const m of Object.keys(PINNED_MAPS) as Pinned[]) rmSync(pinPath(base, m), { force: true });
}

/**
 * The owner lives but has left writers stopped past STUCK_MS: put their
 * placeholders back and resume them. (The kernel treats such a claim as stale
 * after 1 s; the owner, should it wake, finds the writer running and fails
 * closed.) `since`: claims older than this (CLOCK_MONOTONIC ns) count from it
 * — an owner that took over a handover serves the requests of the gap only
 * from then on. Returns how many writers were released.
 */
export function releaseStuck(base: string, since = 0n): number {
  const stuck = new Set<number>();
  const now = monotonicNs();
  withPinned(pinPath(base, "stopowner"), (owners) =>
    withPinned(pinPath(base, "released"), (released) => {
      const value = new Uint8Array(LAYOUT.kloak_stop_owner.size);
      const done = new Uint8Array(8);
      for (const key of mapKeys(owners, 4)) {
        if (!mapLookup(owners, key, value)) continue;
        const seq = new DataView(value.buffer).getBigUint64(LAYOUT.kloak_stop_owner.fields.seq, true);
        // A claim the owner released is over: a stop now is someone else's (a user's ^Z).
        if (mapLookup(released, key, done) && new DataView(done.buffer).getBigUint64(0, true) === seq) continue;
        const pid = u32(key);
        // A claim made before `since` (monotonic ns: when its owner began to serve) is as old as since.
        if (now - (seq > since ? seq : since) > BigInt(STUCK_MS) * 1_000_000n && isStopped(pid)) stuck.add(pid);
      }
    }),
  );
  if (stuck.size === 0) return 0;
  restoreInFlight(base, stuck);
  for (const pid of stuck) kill(pid, SIGCONT);
  return stuck.size;
}

/** Pin bases of kloak exec or agent processes that no longer exist. */
export function stalePins(): string[] {
  let names: string[];
  try {
    names = readdirSync(PIN_DIR);
  } catch {
    return [];
  }
  return names
    .map((n) => /^((?:exec|agent)-(\d+))-procs$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null && !existsSync(`/proc/${m[2]}`))
    .map((m) => `${PIN_DIR}/${m[1]}`);
}
