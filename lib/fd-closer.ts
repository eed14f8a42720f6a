/**
 * Closes file descriptors on background threads. Some closes are slow in the
 * kernel (a uprobe's release waits for an RCU grace period); callers that must
 * stay responsive hand their fds here instead.
 *
 * One thread closes one fd at a time, so a backlog of slow closes takes a
 * grace period each; closes that wait on several threads at once share their
 * grace periods. So a backlog (more fds waiting than BACKLOG_PER_THREAD per
 * thread) starts another thread, up to `maxThreads`; a process that only
 * ever closes a few at a time keeps one.
 */
import { workerSpec } from "./worker-spec.ts";

const BACKLOG_PER_THREAD = 4;

export class FdCloser {
  /** Started at the first close: a process that never detaches never pays for a thread. */
  private readonly workers: { worker: Worker; pending: number }[] = [];
  private pending = 0;
  private idle: (() => void)[] = [];

  constructor(private readonly maxThreads = 8) {}

  close(fds: number[]): void {
    if (!fds.length) return;
    this.pending += fds.length;
    const w = this.pick();
    w.pending += fds.length;
    w.worker.postMessage(fds);
  }

  /** threads started so far */
  get threads(): number {
    return this.workers.length;
  }

  /** The least busy thread, or a new one when every thread has a backlog. */
  private pick(): { worker: Worker; pending: number } {
    let best = this.workers[0];
    for (const w of this.workers) if (w.pending < best!.pending) best = w;
    if (best && (best.pending < BACKLOG_PER_THREAD || this.workers.length >= this.maxThreads)) return best;
    const w = { worker: new Worker(workerSpec(new URL("./fd-closer-worker.ts", import.meta.url), "./lib/fd-closer-worker.ts")), pending: 0 };
    w.worker.onmessage = (e: MessageEvent<number>) => {
      w.pending -= e.data;
      this.pending -= e.data;
      if (this.pending === 0) for (const f of this.idle.splice(0)) f();
    };
    this.workers.push(w);
    return w;
  }

  /** Resolves once every fd handed over so far is closed. */
  drain(): Promise<void> {
    return this.pending === 0 ? Promise.resolve() : new Promise((r) => this.idle.push(r));
  }

  async stop(): Promise<void> {
    await this.drain();
    for (const w of this.workers) w.worker.terminate();
  }
}
