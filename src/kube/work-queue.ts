/**
 * The one work queue behind the controllers' retries (the shadow writer, the
 * secret catalog, the pod attacher), after client-go's rate-limited
 * workqueue:
 *
 *  - a key is queued at most once: adding a queued key changes nothing;
 *  - a key is never processed by two workers at once: a key added while it is
 *    being processed is processed once more after that;
 *  - a failed key (process threw) is added again after a per-key backoff that
 *    grows with its consecutive failures; a success forgets them;
 *  - keys are handed out in the order they were queued, up to `concurrency`
 *    at a time (different keys only);
 *  - shutdown() stops handing keys out (or hands out what is queued, with
 *    drain) and resolves once the keys in flight are done.
 *
 * Retry timers are unref'd: a retry alone does not keep the process alive.
 */

/** The delay before a key is retried, from its consecutive failures so far (1 for the first) and the last error. */
export type Backoff = (failures: number, error: unknown) => number;

/** baseMs, then times factor per further failure, never above maxMs. */
export function exponentialBackoff(o: { baseMs: number; maxMs: number; factor?: number }): Backoff {
  const factor = o.factor ?? 2;
  return (failures) => Math.min(o.maxMs, o.baseMs * factor ** Math.max(0, failures - 1));
}

export interface WorkQueueOptions<K> {
  /** keys processed at the same time (never the same key twice); default 1 */
  concurrency?: number;
  /** default: 200 ms doubling up to 30 s */
  backoff?: Backoff;
  /** Told of each failure and the backoff it earned (for logs and metrics). No retry follows for a key dropped meanwhile. */
  onFailure?: (key: K, error: unknown, retryInMs: number) => void;
}

export class WorkQueue<K extends string = string> {
  /** queued and not being processed, in order */
  private readonly ready = new Set<K>();
  private readonly processing = new Set<K>();
  /** being processed and added again meanwhile */
  private readonly again = new Set<K>();
  /** being processed when clear() dropped the queue: not retried */
  private readonly dropped = new Set<K>();
  private readonly timers = new Map<K, ReturnType<typeof setTimeout>>();
  private readonly failureCounts = new Map<K, number>();
  /** add() calls waiting for the key's next processing to finish */
  private readonly waiters = new Map<K, (() => void)[]>();
  private idlers: (() => void)[] = [];
  private pumpDue = false;
  private stopped = false;
  private readonly concurrency: number;
  private readonly backoff: Backoff;

  constructor(
    private readonly process: (key: K) => void | Promise<void>,
    private readonly opts: WorkQueueOptions<K> = {},
  ) {
    this.concurrency = opts.concurrency ?? 1;
    if (!(this.concurrency >= 1)) throw new RangeError(`work queue concurrency must be at least 1, not ${this.concurrency}`);
    this.backoff = opts.backoff ?? exponentialBackoff({ baseMs: 200, maxMs: 30_000 });
  }

  /**
   * Queue the key now. Resolves once a processing of it that starts after
   * this call has finished (whether it failed or not), or once the key is
   * dropped (clear, shutdown); at once after shutdown.
   */
  add(key: K): Promise<void> {
    if (!this.enqueue(key)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.waiters.get(key);
      if (list) list.push(resolve);
      else this.waiters.set(key, [resolve]);
    });
  }

  /** Queue the key after ms. A key waits on one timer: this call replaces an earlier one. */
  addAfter(key: K, ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
    if (ms <= 0) {
      this.enqueue(key);
      return;
    }
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.enqueue(key);
    }, ms);
    t.unref?.();
    this.timers.set(key, t);
  }

  /** Consecutive failures of the key (0 after a success). */
  failures(key: K): number {
    return this.failureCounts.get(key) ?? 0;
  }

  /** Keys queued or being processed (waiting retries not counted). */
  get length(): number {
    return this.ready.size + this.processing.size;
  }

  /**
   * Drop everything queued or waiting for a retry. Keys being processed
   * finish, and are neither processed again nor retried. Failure counts stay.
   */
  clear(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.ready.clear();
    this.again.clear();
    for (const k of this.processing) this.dropped.add(k);
    this.releaseWaiters();
    this.checkIdle();
  }

  /** Resolves when nothing is queued or being processed (retries waiting on their timer do not count). */
  idle(): Promise<void> {
    if (this.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idlers.push(resolve));
  }

  /**
   * Take no more keys and retry nothing; with drain, what is queued is still
   * processed, else it is dropped. Resolves once no key is being processed.
   */
  shutdown(o: { drain?: boolean } = {}): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    if (!o.drain) {
      this.ready.clear();
      this.again.clear();
      this.releaseWaiters();
    }
    return this.idle();
  }

  /** false when the queue is shut down */
  private enqueue(key: K): boolean {
    if (this.stopped) return false;
    // Added after a clear(): whatever the run in flight ends with, it is wanted again.
    this.dropped.delete(key);
    if (this.processing.has(key)) this.again.add(key);
    else {
      this.ready.add(key);
      // Handed out from a microtask: add() never runs process() inside its caller.
      if (!this.pumpDue) {
        this.pumpDue = true;
        void Promise.resolve().then(() => {
          this.pumpDue = false;
          this.pump();
        });
      }
    }
    return true;
  }

  private pump(): void {
    for (const key of this.ready) {
      if (this.processing.size >= this.concurrency) return;
      this.ready.delete(key);
      void this.run(key);
    }
  }

  private async run(key: K): Promise<void> {
    this.processing.add(key);
    const waiters = this.waiters.get(key);
    this.waiters.delete(key);
    try {
      await this.process(key);
      this.failureCounts.delete(key);
    } catch (e) {
      const n = this.failures(key) + 1;
      this.failureCounts.set(key, n);
      const delay = this.backoff(n, e);
      this.opts.onFailure?.(key, e, delay);
      if (!this.dropped.has(key)) this.addAfter(key, delay);
    } finally {
      this.processing.delete(key);
      this.dropped.delete(key);
      for (const resolve of waiters ?? []) resolve();
      if (this.again.delete(key)) this.ready.add(key);
      this.pump();
      this.checkIdle();
    }
  }

  private releaseWaiters(): void {
    for (const [key, list] of this.waiters) {
      // Keys still to be processed (drain, or added again while in flight) keep theirs.
      if (this.ready.has(key) || this.again.has(key)) continue;
      this.waiters.delete(key);
      for (const resolve of list) resolve();
    }
  }

  private checkIdle(): void {
    if (this.length !== 0) return;
    const idlers = this.idlers;
    this.idlers = [];
    for (const resolve of idlers) resolve();
  }
}
