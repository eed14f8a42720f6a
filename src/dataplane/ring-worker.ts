/**
 * The data plane's fast path, on its own thread: it waits on the tls_events
 * ring in epoll_wait (a blocking wait here never freezes the main thread's
 * servers), serves stop-mode substitutions itself (patch the stopped writer
 * with process_vm_writev, then SIGCONT) and forwards everything else to the
 * main thread, which owns libbpf.
 *
 * Safety rules of stop mode:
 *  - patch a thread only once /proc shows it stopped: the writer cannot be
 *    reading the buffer then, and only this thread resumes it;
 *  - the kernel lets one thread per process at a time hold a stop (from its
 *    substitution to its restore); the worker releases that claim only after
 *    the restore's SIGCONT, so a SIGCONT never cancels another thread's stop;
 *  - a value that cannot be written whole is undone: the placeholder goes out.
 */
import { RingBufferReader } from "../../lib/ringbuf.ts";
import { epollAdd, epollCreate, epollWait, eventfdDrain, kill, processVmWrite, SIGCONT } from "../../lib/libc.ts";
import { isStopped, threadState } from "../../lib/proc.ts";
import { mapUpdateRaw } from "../../lib/uprobe.ts";
import { decodeEvent, EventType, type DataplaneEvent, type WriteEvent } from "./abi.ts";
import type { ToWorker, WorkerStats } from "./ring-protocol.ts";

declare const self: Worker;

const values = new Map<number, Uint8Array>();
const placeholders = new Map<number, Uint8Array>();
let ring: RingBufferReader | undefined;
let epfd = -1;
let bellFd = -1;
let running = true;
let stopWaitMs = 500;
let stopReleasedFd = -1;

const stats: WorkerStats = {
  patched: 0,
  restored: 0,
  patchFailed: 0,
  notStopped: 0,
  noValue: 0,
};

function waitStopped(tgid: number, tid: number): boolean {
  const deadline = performance.now() + stopWaitMs;
  for (let spins = 0; ; spins++) {
    if (isStopped(tgid, tid)) return true;
    const state = threadState(tgid, tid);
    if (state === null || state === "Z" || state === "X") return false;
    if (performance.now() > deadline) return false;
    if (spins > 50) Bun.sleepSync(0.05);
  }
}

/** Write every item's bytes; on any failure put placeholders back where written. */
function patch(ev: WriteEvent, source: Map<number, Uint8Array>, undo: Map<number, Uint8Array> | null): boolean {
  const done: typeof ev.items = [];
  for (const item of ev.items) {
    const bytes = source.get(item.secretId);
    if (!bytes || bytes.length !== item.len) {
      stats.noValue++;
      if (undo) break;
      continue;
    }
    try {
      if (processVmWrite(ev.tgid, item.addr, bytes) !== bytes.length) throw new Error("short write");
      done.push(item);
    } catch {
      stats.patchFailed++;
      if (undo) break;
    }
  }
  if (undo && done.length !== ev.items.length) {
    for (const item of done) {
      const ph = undo.get(item.secretId);
      if (ph)
        try {
          processVmWrite(ev.tgid, item.addr, ph);
        } catch {
          // the process went away
        }
    }
    return false;
  }
  return true;
}

function handle(ev: WriteEvent, resume: Set<number>, release: Map<number, bigint>): void {
  resume.add(ev.tgid);
  if (!waitStopped(ev.tgid, ev.tid)) {
    // Fail closed: never touch a buffer the writer may be encrypting.
    stats.notStopped++;
    if (ev.type === EventType.RESTORE) release.set(ev.tgid, ev.seq);
    return;
  }
  if (ev.type === EventType.SUBSTITUTE) {
    if (patch(ev, values, placeholders)) stats.patched += ev.items.length;
  } else if (patch(ev, placeholders, null)) {
    stats.restored += ev.items.length;
  }
  if (ev.type === EventType.RESTORE) release.set(ev.tgid, ev.seq);
}

function drain(): void {
  if (!ring) return;
  const forward: DataplaneEvent[] = [];
  const resume = new Set<number>();
  const release = new Map<number, bigint>();
  // Read until the ring is empty, so a process is resumed only when none of
  // its threads still waits for a patch.
  for (let round = 0; ; round++) {
    ring.drain((rec) => {
      const ev = decodeEvent(rec);
      if (!ev) return;
      if (ev.type === EventType.SUBSTITUTE || ev.type === EventType.RESTORE) handle(ev, resume, release);
      else forward.push(ev);
    });
    // A record still being written may be another thread's request.
    if (resume.size === 0 || !ring.pending() || round >= 1000) break;
  }
  for (const tgid of resume) kill(tgid, SIGCONT);
  // Only now may another thread of the process take the stop. Naming the
  // claim's seq frees exactly that claim, never one taken since.
  const key = new Uint8Array(4);
  const value = new Uint8Array(8);
  for (const [tgid, seq] of release) {
    new DataView(key.buffer).setUint32(0, tgid, true);
    new DataView(value.buffer).setBigUint64(0, seq, true);
    mapUpdateRaw(stopReleasedFd, key, value);
  }
  if (forward.length) postMessage({ type: "events", events: forward });
}

async function loop(): Promise<void> {
  while (running) {
    const ready = epollWait(epfd, 50);
    if (ready.includes(bellFd)) eventfdDrain(bellFd);
    drain();
    // Let queued messages (secret updates, stop) in.
    await new Promise((r) => setImmediate(r));
  }
  drain();
  ring?.close();
  postMessage({ type: "stopped", stats: takeStats() });
}

function takeStats(): WorkerStats {
  const out = { ...stats };
  stats.patched = stats.restored = stats.patchFailed = stats.notStopped = stats.noValue = 0;
  return out;
}

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "init":
      stopWaitMs = m.stopWaitMs;
      stopReleasedFd = m.stopReleasedFd;
      ring = new RingBufferReader(m.ringFd, m.ringSize);
      epfd = epollCreate();
      epollAdd(epfd, m.ringFd);
      bellFd = m.bellFd;
      epollAdd(epfd, bellFd);
      postMessage({ type: "ready" });
      void loop();
      break;
    case "secret":
      values.set(m.id, m.value);
      placeholders.set(m.id, m.placeholder);
      postMessage({ type: "ack", seq: m.seq });
      break;
    case "delete":
      // Requests the ring already holds were made while the secret existed:
      // a restore among them must still find the placeholder.
      drain();
      values.delete(m.id);
      placeholders.delete(m.id);
      postMessage({ type: "ack", seq: m.seq });
      break;
    case "stats":
      postMessage({ type: "stats", stats: takeStats() });
      break;
    case "stop":
      running = false;
      break;
  }
};
