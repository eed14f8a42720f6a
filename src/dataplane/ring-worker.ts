/**
 * The data plane's fast path, on its own thread: it waits on both rings in
 * epoll_wait (a blocking wait here never freezes the main thread's servers),
 * serves stop mode's requests itself (kloak_writes: patch the held writer
 * with process_vm_writev, restore it, or shut a blocked connection down, then
 * let it go), forwards everything else (tls_events) to the main thread, which
 * owns libbpf, and is the tracer of the protected processes (tracer.ts: ptrace
 * binds tracees to this thread), so every hold ends here.
 *
 * Safety rules of stop mode:
 *  - touch a thread only once it is seen held (a traced thread in its hold's
 *    ptrace stop, an untraced one stopped in /proc): the writer cannot be
 *    reading the buffer then, and only this thread resumes it;
 *  - untraced processes stop as a whole, so the kernel lets one thread per
 *    process at a time hold a stop (from its substitution to its restore); the
 *    worker releases that claim only after the restore's SIGCONT, so a SIGCONT
 *    never cancels another thread's stop (traced threads are held one by one);
 *  - a value that cannot be written whole is undone: the placeholder goes out;
 *  - a placeholder that cannot be put back kills the writer: no value is left
 *    behind in a process that runs on.
 */
import { fstatSync } from "node:fs";
import { RingBufferReader } from "../../lib/ringbuf.ts";
import {
  close,
  epollAdd,
  epollCreate,
  epollWait,
  eventfdDrain,
  kill,
  pidfdGetfd,
  pidfdOpen,
  procMemRead,
  procMemWrite,
  processVmRead,
  processVmWrite,
  SHUT_RDWR,
  shutdown,
  SIGCONT,
  SIGKILL,
} from "../../lib/libc.ts";
import { inPrivateAnonymousMapping, isStopped, threadState } from "../../lib/proc.ts";
import { BPF_EXIST, mapLookupRaw, mapUpdateRaw } from "../../lib/libbpf.ts";
import { decodeEvent, encodeU32, EventType, LAYOUT, ProcFlags, type BlockEvent, type DataplaneEvent, type WriteEvent } from "./abi.ts";
import { noWorkerStats, type ToWorker, type WorkerStats } from "./ring-protocol.ts";
import { Tracer } from "./tracer.ts";
import { codeOf, holdsCode, spliceCode } from "./hpack-splice.ts";

declare const self: Worker;

const values = new Map<number, Uint8Array>();
const placeholders = new Map<number, Uint8Array>();
/** Huffman codes of each secret's placeholder and value, for items in HTTP/2 header blocks. */
const codes = new Map<number, { ph: { code: Uint8Array; bits: number }; value: { code: Uint8Array; bits: number } }>();
let writes: RingBufferReader | undefined;
let events: RingBufferReader | undefined;
let epfd = -1;
let bellFd = -1;
let running = true;
let stopWaitMs = 500;
let stopReleasedFd = -1;
let procsFd = -1;
let tracer: Tracer | undefined;
/** Writes left unread (init paused: a handover's requests wait for their values); pids to adopt when serving starts. */
let paused = false;
const adoptLater = new Set<number>();
let writesFd = -1;
let handingOver = false;

const stats: WorkerStats = noWorkerStats();

/** kloak_procs[tgid].flags TRACED: the kernel holds one thread of it, not the group. */
function markTraced(tgid: number, on: boolean): void {
  const key = encodeU32(tgid);
  const value = new Uint8Array(LAYOUT.kloak_proc.size);
  if (!mapLookupRaw(procsFd, key, value)) return; // left its scope or exited
  const v = new DataView(value.buffer);
  const f = LAYOUT.kloak_proc.fields.flags;
  v.setUint32(f, on ? v.getUint32(f, true) | ProcFlags.TRACED : v.getUint32(f, true) & ~ProcFlags.TRACED, true);
  mapUpdateRaw(procsFd, key, value, BPF_EXIST); // never re-add a process that exited meanwhile
}

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

type Item = WriteEvent["items"][number];

/** The item's bytes as they are now, or undefined when they cannot be read. */
function readSpan(tgid: number, item: Item): Uint8Array | undefined {
  const span = new Uint8Array(item.len);
  try {
    if (processVmRead(tgid, item.addr, span) === span.length) return span;
  } catch {
    // fall through to /proc/<pid>/mem
  }
  try {
    return procMemRead(tgid, item.addr, span) === span.length ? span : undefined;
  } catch {
    return undefined;
  }
}

/** What the item's bytes become: the value, or for a Huffman-coded placeholder
 * its bytes with the value's code spliced into exactly the placeholder's bits
 * (which must still hold the placeholder's code). undefined: not possible. */
function substituted(tgid: number, item: Item): Uint8Array | undefined {
  const value = values.get(item.secretId);
  if (!value) return undefined;
  if (item.hbits === 0) return value.length === item.len ? value : undefined;
  const c = codes.get(item.secretId);
  if (!c || c.ph.bits !== item.hbits || c.value.bits !== item.hbits || item.len !== (item.hshift + item.hbits + 7) >> 3) return undefined;
  const span = readSpan(tgid, item);
  if (!span || !holdsCode(span, item.hshift, c.ph.code, item.hbits)) return undefined;
  return spliceCode(span, item.hshift, c.value.code, item.hbits);
}

/** What the item's bytes become at the restore: the placeholder (its code put back bit for bit). */
function restored(tgid: number, item: Item): Uint8Array | undefined {
  const ph = placeholders.get(item.secretId);
  if (!ph) return undefined;
  if (item.hbits === 0) return ph.length === item.len ? ph : undefined;
  const c = codes.get(item.secretId);
  if (!c || c.ph.bits !== item.hbits || item.len !== (item.hshift + item.hbits + 7) >> 3) return undefined;
  const span = readSpan(tgid, item);
  return span && spliceCode(span, item.hshift, c.ph.code, item.hbits);
}

/**
 * Items the kernel could not check (its trylock on the writer's memory map
 * failed) and the worker found outside private anonymous memory: left as
 * placeholders, so their restore is skipped too. Keyed by thread, write
 * (the restore record is the substitution's own, seq included) and address,
 * so an entry left by a thread that died mid-write can never match a later
 * write of a thread that reuses its number.
 */
const leftUnpatched = new Set<string>();
const itemKey = (ev: WriteEvent, item: Item) => `${ev.tid}:${ev.seq}:${item.addr}`;

/**
 * The kernel's buffer check, done here for an item it could not check: the
 * value goes only into private, writable, anonymous memory of the writer
 * (never a shared or file-backed mapping), as bpf/rewrite.h requires. Like
 * the kernel's check in stop mode it precedes the write: other threads of a
 * traced writer run on meanwhile (ptrace holds the one thread).
 */
function bufferAllowed(ev: WriteEvent, item: Item): boolean {
  if (!item.unchecked) return true;
  stats.buffersChecked++;
  if (inPrivateAnonymousMapping(ev.tgid, item.addr, item.len)) return true;
  stats.bufferRefused++;
  leftUnpatched.add(itemKey(ev, item));
  return false;
}

/** Write every item's value (but those the buffer check refuses); on any failure put placeholders back where written. Returns how many were written, or -1. */
function substitute(ev: WriteEvent): number {
  const done: typeof ev.items = [];
  const wanted = ev.items.filter((item) => bufferAllowed(ev, item));
  for (const item of wanted) {
    const bytes = substituted(ev.tgid, item);
    if (!bytes || bytes.length !== item.len) {
      stats.noValue++;
      break;
    }
    try {
      if (processVmWrite(ev.tgid, item.addr, bytes) !== bytes.length) throw new Error("short write");
      done.push(item);
    } catch {
      stats.patchFailed++;
      break;
    }
  }
  if (done.length === wanted.length) return done.length;
  for (const item of done.reverse()) if (!putBack(ev.tgid, item)) return -1;
  return -1;
}

/** Put one placeholder back, through read-only protections if need be. */
function putBack(tgid: number, item: WriteEvent["items"][number]): boolean {
  const ph = restored(tgid, item);
  if (!ph || ph.length !== item.len) return false;
  try {
    if (processVmWrite(tgid, item.addr, ph) === ph.length) return true;
  } catch {
    // read-only now (the process changed it during the call), or unmapped
  }
  try {
    return procMemWrite(tgid, item.addr, ph) === ph.length;
  } catch {
    return false; // unmapped or moved: the value may live on elsewhere
  }
}

/** The restore must happen; a writer whose buffer cannot be restored dies. */
function restore(ev: WriteEvent): void {
  let ok = true;
  let n = 0;
  for (const item of [...ev.items].reverse()) {
    if (leftUnpatched.delete(itemKey(ev, item))) continue; // never written: nothing to put back
    ok = putBack(ev.tgid, item) && ok;
    n++;
  }
  if (ok) {
    stats.restored += n;
    return;
  }
  stats.killedNoRestore++;
  kill(ev.tgid, SIGKILL);
}

/** Violation policy "block": shut the writer's socket down before its write runs. */
function block(ev: BlockEvent): boolean {
  let pidfd = -1;
  let fd = -1;
  try {
    pidfd = pidfdOpen(ev.tgid);
    fd = pidfdGetfd(pidfd, ev.fd);
    if (BigInt(fstatSync(fd).ino) !== ev.ino) return false;
    shutdown(fd, SHUT_RDWR);
    return true;
  } catch {
    return false;
  } finally {
    if (fd >= 0) close(fd);
    if (pidfd >= 0) close(pidfd);
  }
}

/**
 * A request of kloak_writes read before its writer was held: it is served
 * once the writer is (kloak_switch wakes the worker when the writer is off its
 * CPU in the stop), never by spinning on the stop, which held up every other
 * writer's request meanwhile.
 */
interface Waiting {
  ev: WriteEvent | BlockEvent;
  traced: boolean;
  since: number;
}
let waiting: Waiting[] = [];

/**
 * How long a traced writer's request waits for its stop. Only kloak's tracer
 * can end that stop, so a writer seen running is one the machine has not
 * scheduled yet, not one that ran on: it may wait long. An untraced writer
 * waits stopWaitMs: its group stop can be ended by anyone's SIGCONT.
 */
const TRACED_STOP_WAIT_MS = 10_000;

/** held: serve it now; waiting: look again at the next wake; lost: the writer is gone or never stopped in time. */
function holdState(w: Waiting): "held" | "waiting" | "lost" {
  const { tgid, tid } = w.ev;
  const waited = performance.now() - w.since;
  if (w.traced) {
    if (tracer!.isHeld(tid)) return "held";
    if (!tracer!.tracesThread(tid)) return "lost";
    return waited < TRACED_STOP_WAIT_MS ? "waiting" : "lost";
  }
  if (isStopped(tgid, tid)) return "held";
  const state = threadState(tgid, tid);
  if (state === null || state === "Z" || state === "X") return "lost";
  return waited < stopWaitMs ? "waiting" : "lost";
}

/** Wait (polling) for the writer's hold, up to stopWaitMs: the worker is stopping, or must serve this request before it goes on. */
function awaitHold(w: Waiting): boolean {
  return w.traced ? tracer!.waitHeld(w.ev.tid, stopWaitMs) : waitStopped(w.ev.tgid, w.ev.tid);
}

/**
 * Serve one request of kloak_writes. The writer is held (or lost): a traced
 * thread in its ptrace hold (let go here), an untraced process stopped as a
 * whole (added to `resume`: SIGCONT once none of its requests waits, then its
 * claim released).
 */
function handle(w: Waiting, stopped: boolean, resume: Set<number>, release: Map<number, bigint>): void {
  const { ev, traced } = w;
  if (!traced) {
    resume.add(ev.tgid);
    if (ev.type !== EventType.SUBSTITUTE) release.set(ev.tgid, ev.seq);
  }
  switch (ev.type) {
    case EventType.SUBSTITUTE:
      // Fail closed: never touch a buffer the writer may be encrypting.
      if (!stopped) stats.notStopped++;
      else stats.patched += Math.max(0, substitute(ev));
      break;
    case EventType.RESTORE:
      if (stopped) restore(ev);
      else if (threadState(ev.tgid, ev.tid) !== null) {
        // Running on with the value in its buffer is the one outcome kloak must not allow.
        stats.notStopped++;
        stats.killedNoRestore++;
        kill(ev.tgid, SIGKILL);
      }
      break;
    case EventType.BLOCK:
      if (stopped && block(ev)) stats.blocked++;
      else {
        resume.delete(ev.tgid);
        kill(ev.tgid, SIGKILL);
        return;
      }
      break;
  }
  if (traced) tracer!.release(ev.tid);
}

/**
 * A hold the main thread ends: at exec once the new image is attached, at a
 * new SNI once its name is known, at the open of a TLS library once it is
 * attached (bpf/libopen.h). An untraced process held at exec is adopted
 * first (it is stopped, single-threaded and in no write), so everything it
 * does from now on is held where its parent cannot see.
 */
function endHold(m: Extract<ToWorker, { type: "release" }>): void {
  // A fork child may not have reported its first stop yet (then it is not tracked, but its hold is expected).
  if (tracer && (m.reason === "fork" || tracer.traces(m.tgid))) {
    tracer.release(m.tid);
    return;
  }
  // Paused: a traced thread's write hold would look unannounced (its request unread) and be let go.
  if (m.reason === "exec" && !paused) tracer?.adopt(m.tgid);
  kill(m.tgid, SIGCONT);
  if (m.reason !== "exec") releaseClaim(m.tgid, m.seq); // an exec hold takes no claim
}

/** Only now may another thread of the process take the stop. Naming the claim's seq frees exactly that claim, never one taken since. */
function releaseClaim(tgid: number, seq: bigint): void {
  const key = new Uint8Array(4);
  const value = new Uint8Array(8);
  new DataView(key.buffer).setUint32(0, tgid, true);
  new DataView(value.buffer).setBigUint64(0, seq, true);
  mapUpdateRaw(stopReleasedFd, key, value);
}

/** Holds the kernel announces on tls_events, which the main thread will end. */
function announce(ev: DataplaneEvent): void {
  if (!tracer) return;
  if (ev.type === EventType.EXEC && tracer.traces(ev.tgid)) tracer.expect(ev.tgid, "exec");
  else if (ev.type === EventType.FORK && (tracer.traces(ev.ppid) || tracer.traces(ev.tgid))) {
    // ptrace attached the child as it was created: it waits at its first stop to be attached itself.
    tracer.expect(ev.tgid, "fork");
    ev.held = true;
  } else if (ev.type === EventType.SNI && ev.hold && tracer.traces(ev.tgid)) tracer.expect(ev.tid, "sni");
  else if (ev.type === EventType.LIB_OPEN && ev.hold && tracer.traces(ev.tgid)) tracer.expect(ev.tid, "lib");
}

/** Read tls_events: holds it announces are noted, the rest goes to the main thread. */
function readEvents(forward: DataplaneEvent[]): void {
  events?.drain((rec) => {
    const ev = decodeEvent(rec);
    if (ev?.type === EventType.WAKE) tracer?.woken(); // a wake only asks for a poll
    if (!ev || ev.type === EventType.WAKE) return;
    announce(ev);
    forward.push(ev);
  });
}

/** Read kloak_writes until it is empty; each request waits for its writer's hold. */
function readWrites(): void {
  for (let round = 0; ; round++) {
    writes!.drain((rec) => {
      const ev = decodeEvent(rec);
      if (ev?.type !== EventType.SUBSTITUTE && ev?.type !== EventType.RESTORE && ev?.type !== EventType.BLOCK) return;
      const traced = tracer?.traces(ev.tgid) === true;
      if (traced) tracer!.expect(ev.tid, "write");
      waiting.push({ ev, traced, since: performance.now() });
    });
    // A record still being written may be another thread's request.
    if (!writes!.pending() || round >= 1000) break;
  }
}

/**
 * Serve the requests whose writers are held; the rest wait for the next wake.
 * `final`: the worker is stopping, so every request is served now, waiting
 * for its writer's stop as long as the deadlines allow.
 */
function serveWrites(final = false): void {
  if (!writes || paused) return;
  readWrites();
  if (waiting.length === 0) return;
  const resume = new Set<number>();
  const release = new Map<number, bigint>();
  let polled = false;
  const still: Waiting[] = [];
  for (const w of waiting) {
    let state = holdState(w);
    if (state === "waiting" && !polled && tracer) {
      tracer.poll(); // a stop reported since drain() polled
      polled = true;
      state = holdState(w);
    }
    if (state === "waiting" && final) state = awaitHold(w) ? "held" : "lost";
    if (state === "waiting") still.push(w);
    else handle(w, state === "held", resume, release);
  }
  waiting = still;
  // An untraced process is resumed only when none of its threads still waits for a patch.
  const stillWaits = (tgid: number) => still.some((w) => w.ev.tgid === tgid);
  for (const tgid of resume) if (!stillWaits(tgid)) kill(tgid, SIGCONT);
  for (const [tgid, seq] of release) if (!stillWaits(tgid)) releaseClaim(tgid, seq);
}

/** Read both rings and serve what they hold; `final`: serve every write request now (see serveWrites). */
function drain(final = false): void {
  const forward: DataplaneEvent[] = [];
  tracer?.beginRead();
  readEvents(forward);
  tracer?.poll();
  serveWrites(final);
  if (tracer) {
    // Every hold is announced on a ring before its signal is sent: a stop
    // seen unannounced has its record in a ring by the next read pass. Read
    // both again (serving what they hold); a stop seen before that pass and
    // still unannounced is nobody's hold.
    for (let i = 0; i < 3 && tracer.hasUnannounced(); i++) {
      tracer.beginRead();
      readEvents(forward);
      serveWrites(final);
    }
    tracer.settle();
  }
  if (forward.length) postMessage({ type: "events", events: forward });
}

/** Longest the worker goes without letting its event loop run (timers, a message whose bell was missed). */
const YIELD_MS = 50;

async function loop(): Promise<void> {
  let yielded = performance.now();
  while (running) {
    // A request waiting for its writer's stop is looked at again within a millisecond,
    // should the stop's wake (kloak_switch) not come.
    const ready = epollWait(epfd, tracer?.busy() || waiting.length > 0 ? 1 : 50);
    const rang = ready.includes(bellFd);
    if (rang) eventfdDrain(bellFd);
    drain();
    // Let queued messages (secret updates, stop) in: every message comes with the bell (Dataplane.post).
    // A wake for ring records alone goes straight back to epoll: a turn of the event loop costs
    // 7-11 µs here, paid twice per substituted write.
    const now = performance.now();
    if (rang || now - yielded >= YIELD_MS) {
      yielded = now;
      await new Promise((r) => setImmediate(r));
    }
  }
  drain(true);
  if (handingOver) {
    // The probes stay (handover.ts): holds of traced threads become group stops, served now where
    // their requests are in the ring; those made from here on wait for the successor.
    tracer?.detachAll(500, true);
    drain(true);
  } else {
    // The probes are gone: no new hold can start. Held threads go on.
    tracer?.detachAll();
  }
  writes?.close();
  events?.close();
  postMessage({ type: "stopped", stats: takeStats() });
}

function takeStats(): WorkerStats {
  if (tracer) {
    stats.traced = tracer.stats.adopted;
    stats.traceFailed = tracer.stats.adoptFailed;
    stats.holdsEnded = tracer.stats.holds;
    tracer.stats.adopted = tracer.stats.adoptFailed = tracer.stats.holds = 0;
  }
  const out = { ...stats };
  for (const k of Object.keys(stats) as (keyof WorkerStats)[]) stats[k] = 0;
  return out;
}

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "init":
      stopWaitMs = m.stopWaitMs;
      stopReleasedFd = m.stopReleasedFd;
      procsFd = m.procsFd;
      if (m.trace) tracer = new Tracer(markTraced);
      events = new RingBufferReader(m.eventsFd, m.eventsSize);
      writes = new RingBufferReader(m.writesFd, m.writesSize);
      epfd = epollCreate();
      epollAdd(epfd, m.eventsFd);
      writesFd = m.writesFd;
      paused = m.paused === true;
      // Paused, a non-empty ring would wake the loop at once, again and again.
      if (!paused) epollAdd(epfd, m.writesFd);
      bellFd = m.bellFd;
      epollAdd(epfd, bellFd);
      postMessage({ type: "ready" });
      void loop();
      break;
    case "secret":
      values.set(m.id, m.value);
      placeholders.set(m.id, m.placeholder);
      codes.set(m.id, { ph: codeOf(m.placeholder), value: codeOf(m.value) });
      postMessage({ type: "ack", seq: m.seq });
      break;
    case "delete":
      // Requests the ring already holds were made while the secret existed:
      // a restore among them must still find the placeholder.
      drain(true);
      values.delete(m.id);
      placeholders.delete(m.id);
      codes.delete(m.id);
      postMessage({ type: "ack", seq: m.seq });
      break;
    case "release":
      endHold(m);
      break;
    case "adopt":
      if (paused) adoptLater.add(m.tgid);
      else tracer?.adopt(m.tgid);
      break;
    case "serve":
      if (!paused) break;
      paused = false;
      epollAdd(epfd, writesFd);
      drain();
      for (const tgid of adoptLater) tracer?.adopt(tgid);
      adoptLater.clear();
      break;
    case "disown":
      adoptLater.delete(m.tgid);
      // Its requests are served while kloak still traces it (a waiting restore must not look lost).
      if (waiting.some((w) => w.ev.tgid === m.tgid)) drain(true);
      tracer?.disown(m.tgid);
      break;
    case "stats":
      // Everything the rings hold now goes out before the answer: the asker
      // sees every event recorded before it asked (exec's summary at exit).
      drain(true);
      postMessage({ type: "stats", stats: takeStats() });
      break;
    case "stop":
      handingOver = m.handover === true;
      running = false;
      break;
  }
};
