/**
 * The work queue's contract: dedupe, one worker per key, a key added while
 * processed runs again after, per-key backoff that grows to a cap and is
 * forgotten on success, clear and shutdown. Retry delays are checked under
 * fake timers (what is due when), never against the wall clock.
 */
import { afterEach, describe, expect, jest, test } from "bun:test";
import { exponentialBackoff, WorkQueue } from "../../src/kube/work-queue.ts";

/** A promise with its resolve, to hold a key in process() until the test lets go. */
function gate() {
  let open!: () => void;
  const p = new Promise<void>((r) => (open = r));
  return { p, open };
}

/** Let microtasks (the queue hands keys out from one) and settled awaits run. */
async function settle() {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

describe("work queue", () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  test("a key queued several times before it is handed out is processed once; keys go out in order", async () => {
    const seen: string[] = [];
    const q = new WorkQueue<string>((k) => void seen.push(k));
    const adds = [q.add("a"), q.add("b"), q.add("a"), q.add("c"), q.add("b")];
    expect(q.length).toBe(3);
    expect(seen).toEqual([]); // never inside add()
    await Promise.all(adds);
    await q.idle();
    expect(seen).toEqual(["a", "b", "c"]);
  });

  test("a key is never processed twice at once; added while processed, it runs once more after", async () => {
    const g = gate();
    let inA = 0;
    let maxInA = 0;
    const runs: string[] = [];
    const q = new WorkQueue<string>(
      async (k) => {
        runs.push(k);
        if (k !== "a") return;
        inA++;
        maxInA = Math.max(maxInA, inA);
        if (runs.filter((r) => r === "a").length === 1) await g.p;
        inA--;
      },
      { concurrency: 4 },
    );
    const first = q.add("a");
    await settle();
    expect(runs).toEqual(["a"]);
    // Other keys are not held up by a; a itself waits for its run to finish.
    let secondDone = false;
    const second = q.add("a").then(() => (secondDone = true));
    void q.add("a");
    await q.add("b");
    expect(runs).toEqual(["a", "b"]);
    expect(secondDone).toBe(false);
    g.open();
    await first;
    await second;
    await q.idle();
    expect(runs).toEqual(["a", "b", "a"]);
    expect(maxInA).toBe(1);
  });

  test("concurrency bounds the keys in flight", async () => {
    const gates = new Map<string, ReturnType<typeof gate>>();
    let inFlight = 0;
    let most = 0;
    const q = new WorkQueue<string>(
      async (k) => {
        inFlight++;
        most = Math.max(most, inFlight);
        const g = gate();
        gates.set(k, g);
        await g.p;
        inFlight--;
      },
      { concurrency: 2 },
    );
    for (const k of ["a", "b", "c", "d"]) void q.add(k);
    await settle();
    expect([...gates.keys()]).toEqual(["a", "b"]);
    gates.get("a")!.open();
    await settle();
    expect([...gates.keys()]).toEqual(["a", "b", "c"]);
    for (const k of ["b", "c"]) gates.get(k)!.open();
    await settle();
    gates.get("d")!.open();
    await q.idle();
    expect(most).toBe(2);
    expect(() => new WorkQueue(() => {}, { concurrency: 0 })).toThrow(RangeError);
  });

  test("failures retry after a per-key backoff that grows to its cap; each failure is reported", async () => {
    jest.useFakeTimers({ now: 0 });
    const calls: { key: string; at: number }[] = [];
    const failures: { key: string; error: string; retryInMs: number }[] = [];
    const q = new WorkQueue<string>(
      (k) => {
        calls.push({ key: k, at: Date.now() });
        throw new Error(`no ${k}`);
      },
      {
        backoff: exponentialBackoff({ baseMs: 100, maxMs: 400 }),
        onFailure: (key, e, retryInMs) => failures.push({ key, error: (e as Error).message, retryInMs }),
      },
    );
    void q.add("a");
    await settle();
    for (let t = 0; t < 1500; t += 50) {
      jest.advanceTimersByTime(50);
      await settle();
    }
    // 0, then +100, +200, +400, +400 (capped) ...
    expect(calls.map((c) => c.at)).toEqual([0, 100, 300, 700, 1100, 1500]);
    expect(failures.slice(0, 5).map((f) => f.retryInMs)).toEqual([100, 200, 400, 400, 400]);
    expect(failures[0]).toEqual({ key: "a", error: "no a", retryInMs: 100 });
    expect(q.failures("a")).toBe(6);
    // Another key starts from the base: the backoff is per key.
    void q.add("b");
    await settle();
    expect(failures.at(-1)).toEqual({ key: "b", error: "no b", retryInMs: 100 });
    await q.shutdown();
  });

  test("a success forgets the key's failures; the next failure starts from the base again", async () => {
    jest.useFakeTimers({ now: 0 });
    let fail = 2;
    const delays: number[] = [];
    const q = new WorkQueue<string>(
      () => {
        if (fail-- > 0) throw new Error("not yet");
      },
      { backoff: exponentialBackoff({ baseMs: 10, maxMs: 1000 }), onFailure: (_k, _e, ms) => delays.push(ms) },
    );
    void q.add("a");
    await settle();
    expect(q.failures("a")).toBe(1);
    jest.advanceTimersByTime(10);
    await settle();
    expect(q.failures("a")).toBe(2);
    jest.advanceTimersByTime(20);
    await settle();
    expect(q.failures("a")).toBe(0);
    fail = 1;
    void q.add("a");
    await settle();
    expect(delays).toEqual([10, 20, 10]);
    await q.shutdown();
  });

  test("the backoff may depend on the error; a synchronous throw counts as a failure", async () => {
    jest.useFakeTimers({ now: 0 });
    class Slow extends Error {}
    const delays: number[] = [];
    const q = new WorkQueue<string>(
      (k) => {
        throw k === "slow" ? new Slow() : new Error();
      },
      { backoff: (n, e) => (e instanceof Slow ? 5000 : n * 10), onFailure: (_k, _e, ms) => delays.push(ms) },
    );
    void q.add("fast");
    void q.add("slow");
    await q.idle();
    expect(delays).toEqual([10, 5000]);
    await q.shutdown();
  });

  test("addAfter queues a key later; a later call replaces the key's timer", async () => {
    jest.useFakeTimers({ now: 0 });
    const seen: number[] = [];
    const q = new WorkQueue<string>(() => void seen.push(Date.now()));
    q.addAfter("a", 100);
    q.addAfter("a", 300);
    jest.advanceTimersByTime(200);
    await settle();
    expect(seen).toEqual([]);
    jest.advanceTimersByTime(100);
    await settle();
    expect(seen).toEqual([300]);
    q.addAfter("a", 0);
    await settle();
    expect(seen).toEqual([300, 300]);
    await q.shutdown();
  });

  test("clear drops what is queued and waiting; the key in flight finishes and is not retried", async () => {
    jest.useFakeTimers({ now: 0 });
    const g = gate();
    const runs: string[] = [];
    const q = new WorkQueue<string>(async (k) => {
      runs.push(k);
      if (k === "a") {
        await g.p;
        throw new Error("a failed");
      }
    });
    void q.add("a");
    await settle();
    const b = q.add("b");
    const again = q.add("a");
    q.addAfter("c", 50);
    q.clear();
    await b; // dropped: its waiter is let go
    await again;
    g.open();
    await q.idle();
    jest.advanceTimersByTime(10_000);
    await settle();
    expect(runs).toEqual(["a"]);
    expect(q.failures("a")).toBe(1);
    // The queue still works after a clear.
    await q.add("b");
    expect(runs).toEqual(["a", "b"]);
    await q.shutdown();
  });

  test("shutdown drops what is queued, cancels retries, ignores adds and resolves once the key in flight is done", async () => {
    const g = gate();
    const runs: string[] = [];
    let finished = false;
    const q = new WorkQueue<string>(async (k) => {
      runs.push(k);
      if (k === "a") {
        await g.p;
        finished = true;
        throw new Error("a failed");
      }
    });
    void q.add("a");
    await settle();
    void q.add("b");
    q.addAfter("c", 1);
    let stopped = false;
    const stopping = q.shutdown().then(() => (stopped = true));
    await q.add("d"); // resolves at once: nothing is taken after shutdown
    await Bun.sleep(5);
    expect(stopped).toBe(false);
    g.open();
    await stopping;
    expect(finished).toBe(true);
    await Bun.sleep(5);
    expect(runs).toEqual(["a"]);
    expect(q.length).toBe(0);
  });

  test("shutdown with drain processes what is queued, retrying nothing", async () => {
    const runs: string[] = [];
    const q = new WorkQueue<string>((k) => {
      runs.push(k);
      throw new Error("fails");
    });
    for (const k of ["a", "b", "c"]) void q.add(k);
    await q.shutdown({ drain: true });
    expect(runs).toEqual(["a", "b", "c"]);
    await Bun.sleep(5);
    expect(runs).toEqual(["a", "b", "c"]);
  });

  test("exponentialBackoff: base, factor, cap", () => {
    const b = exponentialBackoff({ baseMs: 200, maxMs: 30_000, factor: 5 });
    expect([1, 2, 3, 4, 5].map((n) => b(n, undefined))).toEqual([200, 1000, 5000, 25_000, 30_000]);
    expect(exponentialBackoff({ baseMs: 5, maxMs: 20 })(1, undefined)).toBe(5);
    expect(exponentialBackoff({ baseMs: 5, maxMs: 20 })(10, undefined)).toBe(20);
  });
});
