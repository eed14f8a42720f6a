/**
 * Closes file descriptors on a background thread. Some closes are slow in the
 * kernel (a uprobe's release waits for an RCU grace period); callers that must
 * stay responsive hand their fds here instead.
 */
import { workerSpec } from "./worker-spec.ts";

export class FdCloser {
  /** Started at the first close: a process that never detaches never pays for the thread. */
  private worker?: Worker;
  private pending = 0;
  private idle: (() => void)[] = [];

  close(fds: number[]): void {
    if (!fds.length) return;
    this.pending += fds.length;
    if (!this.worker) {
      this.worker = new Worker(workerSpec(new URL("./fd-closer-worker.ts", import.meta.url), "./lib/fd-closer-worker.ts"));
      this.worker.onmessage = (e: MessageEvent<number>) => {
        this.pending -= e.data;
        if (this.pending === 0) for (const f of this.idle.splice(0)) f();
      };
    }
    this.worker.postMessage(fds);
  }

  /** Resolves once every fd handed over so far is closed. */
  drain(): Promise<void> {
    return this.pending === 0 ? Promise.resolve() : new Promise((r) => this.idle.push(r));
  }

  async stop(): Promise<void> {
    await this.drain();
    this.worker?.terminate();
  }
}
