/**
 * Holds that no parent can see. kloak traces (PTRACE_SEIZE) every thread of
 * the processes it protects, so a hold — at exec until the probes are
 * attached, around a stop-mode write, at a new SNI — is a SIGSTOP sent to the
 * one thread (bpf_send_signal_thread), which the kernel reports to kloak's
 * tracer as a signal-delivery stop and never to the thread's parent: an
 * interactive shell's waitpid(WUNTRACED) sees nothing, a job's exit status is
 * its own. The tracer ends the hold without delivering the signal.
 *
 * A new process (fork) is held at the first stop ptrace gives it, until the
 * main thread has attached its probes (they are per process, and a child
 * has none of its parent's); its FORK record announces that hold.
 *
 * Everything else a tracee reports is passed on at once, as if untraced: its
 * signals are delivered, fork/clone events continue, a real group stop (^Z,
 * kill -STOP) is left in place with PTRACE_LISTEN so the parent sees it and
 * SIGCONT ends it. ptrace attaches children and threads as they are created
 * (TRACEFORK/VFORK/CLONE), so a process adopted once stays traced with its
 * descendants.
 *
 * Which hold a stop is: the kernel announces each hold on a ring before it
 * sends the signal (a write request, an exec or SNI event naming the thread),
 * and a thread is in at most one hold at a time, so the worker calls expect()
 * for the announcement and release() when the hold is over, in either order
 * with the stop itself. A SIGSTOP from the kernel that nothing announced is let
 * go after the rings were read once more (counted).
 *
 * ptrace ties a tracee to the thread that seized it: every method must run on
 * the ring worker's thread.
 */
import { readdirSync, readFileSync } from "node:fs";
import * as pt from "../../lib/ptrace.ts";
import { SIGSTOP } from "../../lib/libc.ts";
import { parentPid } from "../../lib/proc.ts";

const OPTIONS = pt.PTRACE_O_TRACEFORK | pt.PTRACE_O_TRACEVFORK | pt.PTRACE_O_TRACECLONE;
/** How long after a tracee's last report the worker keeps looking every millisecond. */
const BUSY_MS = 20;
const STOP_SIGNALS = new Set([19 /* SIGSTOP */, 20 /* SIGTSTP */, 21 /* SIGTTIN */, 22 /* SIGTTOU */]);

export type HoldReason = "write" | "exec" | "fork" | "sni" | "lib";

interface Hold {
  reason: HoldReason;
  /** the thread is in the hold's stop now */
  stopped: boolean;
  /** the hold is over; the thread goes on as soon as it is stopped */
  released: boolean;
}

export interface TracerStats {
  /** processes adopted (every thread seized) */
  adopted: number;
  /** processes kloak could not trace (already traced by another, or gone): held with group stops */
  adoptFailed: number;
  /** holds ended (the thread went on without the signal) */
  holds: number;
  /** kernel SIGSTOPs that no ring announced, let go */
  unexplained: number;
}

export class Tracer {
  /** tid -> tgid of every traced thread */
  private readonly threads = new Map<number, number>();
  /** tgid -> how many of its threads are traced */
  private readonly processes = new Map<number, number>();
  private readonly holds = new Map<number, Hold>();
  /** kernel SIGSTOP stops not announced yet -> the read pass during which each was seen */
  private readonly unannounced = new Map<number, number>();
  /** new processes in their first stop (a fork hold, announced or not): no SIGSTOP of theirs to keep at a handover */
  private readonly firstStops = new Set<number>();
  /** read passes of the rings begun (beginRead) */
  private readPass = 0;
  private lastActivity = 0;
  readonly stats: TracerStats = { adopted: 0, adoptFailed: 0, holds: 0, unexplained: 0 };

  constructor(
    /** sets or clears kloak_procs[tgid].flags TRACED, so the kernel holds a thread rather than the group */
    private readonly markTraced: (tgid: number, on: boolean) => void,
  ) {}

  traces(tgid: number): boolean {
    return this.processes.has(tgid);
  }

  tracesThread(tid: number): boolean {
    return this.threads.has(tid);
  }

  get size(): number {
    return this.threads.size;
  }

  /**
   * Trace every thread of tgid (running or group-stopped). False when it
   * cannot be traced: another tracer has it (a debugger, or a sandbox using
   * ptrace), or it is gone. Threads it creates meanwhile are attached by
   * ptrace itself; those of threads not seized yet appear in the next pass.
   */
  adopt(tgid: number): boolean {
    if (this.traces(tgid)) return true;
    // A child of this very process: ptrace would make the tracer its parent
    // too and reap its exit before the code that started it can (kloak exec
    // starts CMD from its guardian for this reason). Held with group stops.
    if (parentPid(tgid) === process.pid) {
      this.stats.adoptFailed++;
      return false;
    }
    const seized: number[] = [];
    for (let pass = 0; pass < 10; pass++) {
      const fresh = listThreads(tgid).filter((t) => !this.threads.has(t));
      if (fresh.length === 0) break;
      for (const tid of fresh) {
        try {
          pt.seize(tid, OPTIONS);
          this.track(tid, tgid);
          seized.push(tid);
        } catch (e) {
          if ((e as { errno?: number }).errno === 3 /* ESRCH: thread exited */) continue;
          // Partly traced is worse than untraced: give back what was taken.
          for (const t of seized) this.gone(t);
          this.detachStopped(seized.filter((t) => pt.interrupt(t)));
          this.stats.adoptFailed++;
          return false;
        }
      }
    }
    if (seized.length === 0) {
      this.stats.adoptFailed++;
      return false;
    }
    this.markTraced(tgid, true);
    this.stats.adopted++;
    return true;
  }

  /** Stop tracing tgid (it left its scope): its threads go on, a group stop stays. */
  disown(tgid: number): void {
    const tids = [...this.threads].filter(([, g]) => g === tgid).map(([t]) => t);
    const stopped = (t: number) => this.holds.get(t)?.stopped || this.unannounced.has(t);
    const toDetach = tids.filter((t) => stopped(t) || pt.interrupt(t));
    this.detachStopped(toDetach);
    for (const t of tids) this.gone(t);
    this.markTraced(tgid, false);
  }

  /** The kernel announced a hold of tid (a ring record naming it). */
  expect(tid: number, reason: HoldReason): void {
    const h = this.holds.get(tid);
    // A hold announced but never taken (the signal was not sent) is replaced.
    if (h?.stopped) return;
    this.holds.set(tid, { reason, stopped: false, released: false });
    if (this.unannounced.delete(tid)) this.holds.get(tid)!.stopped = true;
  }

  /** Is tid in its announced hold now? */
  isHeld(tid: number): boolean {
    return this.holds.get(tid)?.stopped === true;
  }

  /** Wait (polling the tracees) until tid is in its hold; false at the deadline or if it is gone. */
  waitHeld(tid: number, ms: number): boolean {
    const deadline = performance.now() + ms;
    for (let spins = 0; ; spins++) {
      // Usually held already: the worker is woken once the writer is off its CPU in the stop (kloak_switch).
      if (this.isHeld(tid)) return true;
      this.poll();
      if (this.isHeld(tid)) return true;
      if (!this.threads.has(tid) || performance.now() > deadline) return false;
      if (spins > 50) Bun.sleepSync(0.05);
    }
  }

  /** The hold of tid is over: the thread goes on (now, or as soon as it stops). */
  release(tid: number): void {
    const h = this.holds.get(tid);
    if (!h) {
      if (this.unannounced.delete(tid)) this.resume(tid);
      return;
    }
    if (h.stopped) {
      this.holds.delete(tid);
      this.resume(tid);
    } else h.released = true;
  }

  hasUnannounced(): boolean {
    return this.unannounced.size > 0;
  }

  /** The worker starts reading both rings from where they are now. */
  beginRead(): void {
    this.readPass++;
  }

  /**
   * A kernel SIGSTOP seen before the last read pass began, and still
   * unannounced, is nobody's hold (its record would have been read): let it go.
   * One seen since waits for the next pass.
   */
  settle(): void {
    for (const [tid, pass] of this.unannounced) {
      if (pass >= this.readPass) continue;
      this.unannounced.delete(tid);
      this.stats.unexplained++;
      this.resume(tid);
    }
  }

  /**
   * Whether tracees were active in the last few ms. The kernel's wake (a
   * signal generated, a fork) comes before the tracee reaches its stop, and
   * the tracee waits for the tracer there: while busy, the worker looks again
   * within a millisecond instead of sleeping to its next timeout.
   */
  busy(): boolean {
    return performance.now() - this.lastActivity < BUSY_MS;
  }

  /** A wake was read: a tracee is about to stop. */
  woken(): void {
    this.lastActivity = performance.now();
  }

  /** Handle every pending report of the tracees. */
  poll(): void {
    for (let r = pt.waitAny(); r; r = pt.waitAny()) {
      this.lastActivity = performance.now();
      if (r.kind !== "stopped") {
        this.gone(r.tid);
        continue;
      }
      const tid = r.tid;
      const fresh = !this.threads.has(tid);
      if (fresh) this.track(tid, tgidOf(tid) ?? tid);
      if (r.event === 0) this.onSignal(tid, r.sig);
      else if (r.event === pt.PTRACE_EVENT_STOP) {
        // A group stop (^Z, kill -STOP) stays for the parent to see; SIGCONT
        // ends it. A new process's first stop is its fork hold (its FORK
        // record announces it): it has no probes of its own until attached.
        // Otherwise it is a new thread's first stop or an interrupt.
        if (STOP_SIGNALS.has(r.sig)) pt.listen(tid);
        else if (fresh && this.threads.get(tid) === tid) {
          this.firstStops.add(tid);
          this.holdStopped(tid);
        } else pt.cont(tid);
      } else pt.cont(tid); // fork, vfork, clone: the new tracee reports on its own
    }
  }

  private onSignal(tid: number, sig: number): void {
    if (sig === SIGSTOP && pt.signalInfo(tid)?.code === pt.SI_KERNEL) this.holdStopped(tid);
    else if (!pt.cont(tid, sig)) this.gone(tid);
  }

  /** tid stopped where a hold keeps it: its hold's, or unannounced until a read pass names it. */
  private holdStopped(tid: number): void {
    const h = this.holds.get(tid);
    if (!h) {
      this.unannounced.set(tid, this.readPass);
      return;
    }
    h.stopped = true;
    if (h.released) {
      this.holds.delete(tid);
      this.resume(tid);
    }
  }

  private resume(tid: number): void {
    this.firstStops.delete(tid);
    this.stats.holds++;
    if (!pt.cont(tid, 0)) this.gone(tid);
  }

  private track(tid: number, tgid: number): void {
    this.threads.set(tid, tgid);
    this.processes.set(tgid, (this.processes.get(tgid) ?? 0) + 1);
  }

  private gone(tid: number): void {
    const tgid = this.threads.get(tid);
    if (tgid !== undefined) {
      const n = (this.processes.get(tgid) ?? 1) - 1;
      if (n > 0) this.processes.set(tgid, n);
      else this.processes.delete(tgid);
    }
    this.threads.delete(tid);
    this.holds.delete(tid);
    this.unannounced.delete(tid);
    this.firstStops.delete(tid);
  }

  /**
   * Let every tracee go (kloak is stopping; its probes are detached already):
   * held threads resume, threads in a group stop stay stopped, the rest run
   * on. Interrupts running tracees to detach them (ptrace needs a stop).
   */
  detachAll(ms = 500, keepHolds = false): void {
    const tgids = [...this.processes.keys()];
    // A thread that cannot be interrupted is gone (or a stale number after a thread's exec).
    const all = [...this.threads.keys()].filter((tid) => this.holds.get(tid)?.stopped || this.unannounced.has(tid) || pt.interrupt(tid));
    this.detachStopped(all, ms, keepHolds);
    for (const tgid of tgids) this.markTraced(tgid, false);
    this.threads.clear();
    this.processes.clear();
    this.holds.clear();
    this.unannounced.clear();
    this.firstStops.clear();
  }

  /**
   * Wait for each tid to report a stop, then detach it; a group stop is kept
   * by the kernel. keepHolds (a handover, handover.ts): a thread in a hold is
   * detached with its SIGSTOP delivered, so the hold becomes a group stop that
   * whoever serves its request next (this worker's last pass, or a successor)
   * ends with SIGCONT, as for an untraced process.
   */
  private detachStopped(tids: number[], ms = 500, keepHolds = false): void {
    const left = new Set(tids);
    for (const tid of tids) {
      // Already in a hold or unannounced stop: detach now, without the signal (or with it, keepHolds).
      if (this.holds.get(tid)?.stopped || this.unannounced.has(tid)) {
        // A fork hold has no request to serve: the child runs on (unattached: its placeholders go out).
        pt.detach(tid, keepHolds && !this.firstStops.has(tid) ? SIGSTOP : 0);
        left.delete(tid);
      }
    }
    const deadline = performance.now() + ms;
    while (left.size && performance.now() < deadline) {
      const r = pt.waitAny();
      if (!r) {
        Bun.sleepSync(1);
        continue;
      }
      if (!left.has(r.tid)) {
        // Another tracee's report meanwhile: pass it on as poll() would.
        if (r.kind === "stopped") pt.cont(r.tid, r.event === 0 ? r.sig : 0);
        continue;
      }
      left.delete(r.tid);
      if (r.kind !== "stopped") continue;
      // A signal caught in the way is delivered with the detach; the kernel's
      // own SIGSTOP (a hold) is dropped.
      const hold = r.event === 0 && r.sig === SIGSTOP && pt.signalInfo(r.tid)?.code === pt.SI_KERNEL;
      const sig = r.event === 0 && !hold ? r.sig : hold && keepHolds ? SIGSTOP : 0;
      pt.detach(r.tid, sig);
    }
  }
}

function listThreads(tgid: number): number[] {
  try {
    return readdirSync(`/proc/${tgid}/task`).map(Number);
  } catch {
    return [];
  }
}

function tgidOf(tid: number): number | null {
  try {
    const m = /^Tgid:\s+(\d+)/m.exec(readFileSync(`/proc/${tid}/status`, "latin1"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}
