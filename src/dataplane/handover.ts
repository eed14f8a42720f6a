/**
 * Zero-gap upgrade of the agent: the data plane of a stopping agent is left
 * running in the kernel, pinned in bpffs, for its successor to take over.
 *
 * A handover is one bpffs directory:
 *
 *   /sys/fs/bpf/kloak/handover-<identity>-<mode>-<uprobes>-<scanCap>-<pid>-<deadline ms>/
 *     map-<name>      every map of the object (not libbpf's .rodata/.bss)
 *     state-<map>     the five maps release.ts needs (restore and resume), as for a live kloak
 *     tp-<n>          the process and send tracepoint links
 *     up-<pid>-<file>-<n>  the uprobe links of each TLS file attached for a process (file: dev:ino)
 *
 * built under `partial-<pid>` and renamed into place, so nobody sees half of
 * one. Its name says what a successor must share to take it over
 * (bpf-object.ts handoverIdentity: same object, mode, uprobe kind, scan cap,
 * violation mask) and until when it may. Whoever acts on it first renames it
 * to `claimed-<their pid>-...` (rename is atomic: a successor adopting and a
 * guardian releasing never both act). A claim whose claimant died is released
 * by the next agent start.
 *
 * While nobody serves it, the kernel goes on: a write carrying a placeholder
 * is stopped and its request waits in the reused ring for the successor (stop
 * mode); kernel mode substitutes by itself. A handover nobody adopts before
 * its deadline is released: no process is in a scope any more, every write in
 * flight gets its placeholder back, every stopped process is resumed, and the
 * pins go, which detaches the probes (fail closed: placeholders go out).
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import { mapDelete, mapKeys } from "../../lib/libbpf.ts";
import { kill, SIGCONT } from "../../lib/libc.ts";
import { isStopped } from "../../lib/proc.ts";
import type { UprobeKind } from "./bpf-object.ts";
import type { RewriteMode } from "./kernel-support.ts";
import { PIN_DIR, restoreInFlight, restoreRecord, withPinned } from "./release.ts";
import { RingBufferReader } from "../../lib/ringbuf.ts";
import { EventType, LAYOUT } from "./abi.ts";

/** bpf/maps.h KLOAK_WRITES_RING */
const WRITES_RING = 1 << 20;

/** How long a handover waits for a successor by default (agent --handover-timeout). */
export const HANDOVER_TIMEOUT_MS = 30_000;

export interface Handover {
  /** its directory now */
  path: string;
  identity: string;
  mode: RewriteMode;
  uprobes: UprobeKind;
  scanCap: number;
  /** the agent that handed over */
  pid: number;
  /** epoch ms after which nobody may adopt it */
  deadline: number;
}

const OFFER = /^handover-([0-9a-f]{16})-(kernel|stop)-(multi|single)-(\d+)-(\d+)-(\d+)$/;
const CLAIM = /^claimed-(\d+)-(.*)$/;
const PARTIAL = /^partial-(\d+)$/;

export function handoverName(h: Omit<Handover, "path">): string {
  return `handover-${h.identity}-${h.mode}-${h.uprobes}-${h.scanCap}-${h.pid}-${h.deadline}`;
}

function parse(path: string, name: string): Handover | undefined {
  const m = OFFER.exec(name);
  if (!m) return undefined;
  return {
    path,
    identity: m[1]!,
    mode: m[2] as RewriteMode,
    uprobes: m[3] as UprobeKind,
    scanCap: Number(m[4]),
    pid: Number(m[5]),
    deadline: Number(m[6]),
  };
}

const alive = (pid: number) => existsSync(`/proc/${pid}`);

/**
 * What lies in PIN_DIR: handovers offered (newest first), and directories of
 * dead claimants or half-built handovers of dead agents (to release).
 */
export function listHandovers(): { offered: Handover[]; orphaned: string[] } {
  let names: string[];
  try {
    names = readdirSync(PIN_DIR);
  } catch {
    return { offered: [], orphaned: [] };
  }
  const offered: Handover[] = [];
  const orphaned: string[] = [];
  for (const n of names) {
    const h = parse(`${PIN_DIR}/${n}`, n);
    if (h) offered.push(h);
    const c = CLAIM.exec(n) ?? PARTIAL.exec(n);
    if (c && !alive(Number(c[1]))) orphaned.push(`${PIN_DIR}/${n}`);
  }
  offered.sort((a, b) => b.deadline - a.deadline);
  return { offered, orphaned };
}

/** Take the handover for this process; null when someone else took it first. */
export function claimHandover(h: Handover, by = process.pid): Handover | null {
  const path = `${PIN_DIR}/claimed-${by}-${h.path.slice(PIN_DIR.length + 1)}`;
  try {
    renameSync(h.path, path);
  } catch {
    return null;
  }
  return { ...h, path };
}

/** The directory a handover is built in before it is offered. */
export function partialHandoverDir(pid = process.pid): string {
  const dir = `${PIN_DIR}/partial-${pid}`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** Pins of uprobe links: `up-<attachment>-<n>` (probe-attacher.ts attachmentKey: pid-dev:ino), no dot, which bpffs forbids in names. */
export function uprobePinName(attachment: string, n: number): string {
  return `up-${attachment}-${n}`;
}

export function parseUprobePin(name: string): { attachment: string; n: number } | undefined {
  const m = /^up-(.+)-(\d+)$/.exec(name);
  return m ? { attachment: m[1]!, n: Number(m[2]) } : undefined;
}

const u32 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getUint32(0, true);


/**
 * Nobody takes the handover at dir (expired, another object, or claimed by a
 * kloak that died): end it without leaving a value behind or a writer
 * stopped. First no process is in a scope (no new substitution, exec hold or
 * join); then every write in flight gets its placeholder back and every
 * process of the scopes is resumed, a few times over a second (a probe that
 * ran meanwhile may still stop its writer, e.g. a return probe's restore);
 * then the pins go, and with them the probes; then a last resume.
 */
export async function releaseHandover(dir: string, rounds = [0, 20, 50, 100, 200, 300, 330]): Promise<{ resumed: number; killed: number }> {
  const pids = new Set<number>();
  withPinned(`${dir}/map-kloak_procs`, (fd) => {
    for (const key of mapKeys(fd, 4)) pids.add(u32(key));
    for (const key of mapKeys(fd, 4)) mapDelete(fd, key);
  });
  withPinned(`${dir}/map-kloak_cgroups`, (fd) => {
    for (const key of mapKeys(fd, 8)) mapDelete(fd, key);
  });
  withPinned(`${dir}/map-kloak_launchers`, (fd) => {
    for (const key of mapKeys(fd, 4)) mapDelete(fd, key);
  });
  let resumed = 0;
  let killed = 0;
  const resume = () => {
    for (const pid of pids) if (isStopped(pid) && kill(pid, SIGCONT)) resumed++;
  };
  for (const wait of rounds) {
    if (wait) await Bun.sleep(wait);
    try {
      killed += restoreInFlight(`${dir}/state`).killed;
      killed += restoreRequested(dir);
    } catch {
      // pins gone meanwhile
    }
    resume();
  }
  rmSync(dir, { recursive: true, force: true });
  // The probes are gone once the last reference to their links is: nothing stops a writer any more.
  await Bun.sleep(50);
  resume();
  return { resumed, killed };
}

/**
 * A restore the kernel asked for on kloak_writes has no inflight record any
 * more (the return probe drops it once the request is queued): put those
 * placeholders back from the ring itself. Substitution requests left there
 * wrote nothing. Returns how many writers were killed.
 */
function restoreRequested(dir: string): number {
  let killed = 0;
  withPinned(`${dir}/map-kloak_writes`, (writes) =>
    withPinned(`${dir}/map-kloak_secrets`, (secrets) => {
      const ring = new RingBufferReader(writes, WRITES_RING);
      const stopped = new Set<number>();
      try {
        ring.drain((rec) => {
          if (rec.getUint32(0, true) !== EventType.RESTORE) return;
          const copy = new Uint8Array(LAYOUT.kloak_write_event.size);
          copy.set(new Uint8Array(rec.buffer, rec.byteOffset, Math.min(rec.byteLength, copy.length)));
          if (!restoreRecord(new DataView(copy.buffer), secrets, stopped)) killed++;
        });
      } finally {
        ring.close();
      }
    }),
  );
  return killed;
}
