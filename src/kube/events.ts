/**
 * Kubernetes Events that tell operators why kloak did or refused something
 * (a Secret got no shadow, a pod's substitution was refused), after
 * client-go's EventRecorder and EventCorrelator.
 *
 * What triggers an Event can happen thousands of times a second (every
 * refused write of a misbehaving pod), so recording is fire-and-forget and
 * bounded: repeats of the same Event update one object's count instead of
 * creating new ones, and token buckets per involved object and overall cap
 * what reaches the API server. Whatever a limit or an API failure keeps from
 * the API server is counted in dropped().
 */
import { PatchStrategy, setHeaderOptions, type CoreV1Api, type CoreV1Event } from "@kubernetes/client-node";
import { UsageError } from "../errors.ts";
import { noLog, type LogFn } from "../log.ts";
import { describeError, FailureStreak, requestTimeout, statusOf } from "./http.ts";

export interface InvolvedObject {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid?: string;
}

export type EventType = "Normal" | "Warning";

export interface EventRecorderOptions {
  /** source.component, e.g. "kloak" */
  component: string;
  /** node name: source.host and reportingInstance */
  host?: string;
  /** Events (new or repeated) one object may get at once; default 5 */
  perObjectBurst?: number;
  /** ms to earn back one per-object token; default 60_000 */
  perObjectRefillMs?: number;
  /** Events per second over all objects (also the burst); default 10 */
  globalPerSecond?: number;
  /** per API request; default 10_000 */
  requestTimeoutMs?: number;
  /** ms clock for rate limits, aggregation and timestamps */
  now?: () => number;
  log?: LogFn;
}

export const REPORTING_COMPONENT = "getkloak.io/kloak";
/** Longer messages are cut (the API server's limit for events.k8s.io is 1 KiB; core/v1 has none, but Events are not logs). */
export const MESSAGE_MAX = 1024;
/** Repeats within this long of the previous occurrence update the same Event. */
export const AGGREGATE_WINDOW_MS = 10 * 60_000;
/** Bound on remembered Events and per-object buckets, like client-go's LRU of 4096. */
const CACHE_MAX = 4096;
/** reportingInstance is validated to at most 128 characters. */
const REPORTING_INSTANCE_MAX = 128;

/** Fractional token bucket: `burst` tokens, one back every `refillMs`. */
class Bucket {
  private tokens: number;
  constructor(
    private readonly burst: number,
    private readonly refillMs: number,
    private at: number,
  ) {
    this.tokens = burst;
  }

  available(now: number): boolean {
    this.refill(now);
    // tolerance: refills summed from fractions may land a hair under 1
    return this.tokens >= 1 - 1e-9;
  }

  take(): void {
    this.tokens -= 1;
  }

  /** Refilled to burst: indistinguishable from a fresh bucket, so it may be forgotten. */
  full(now: number): boolean {
    this.refill(now);
    return this.tokens >= this.burst;
  }

  private refill(now: number): void {
    if (now > this.at) this.tokens = Math.min(this.burst, this.tokens + (now - this.at) / this.refillMs);
    this.at = now;
  }
}

/** One Event in the API server and the occurrences folded into it. */
interface Aggregate {
  name: string;
  namespace: string;
  body: CoreV1Event;
  /** occurrences recorded */
  count: number;
  /** occurrences the API server's Event reflects */
  written: number;
  created: boolean;
  busy: boolean;
  first: number;
  last: number;
}

export class EventRecorder {
  private readonly component: string;
  private readonly host: string | undefined;
  private readonly perObjectBurst: number;
  private readonly perObjectRefillMs: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly log: LogFn;
  private readonly global: Bucket;
  /** per involved object, least recently used first */
  private readonly buckets = new Map<string, Bucket>();
  /** per (object, type, reason, message), least recently used first */
  private readonly aggregates = new Map<string, Aggregate>();
  private readonly inflight = new Set<Promise<void>>();
  private droppedCount = 0;
  /** random start: recorders on different nodes naming Events in the same ms should not collide */
  private seq = Math.floor(Math.random() * 1_000_000);
  private readonly errors: FailureStreak;

  constructor(
    private readonly core: CoreV1Api,
    opts: EventRecorderOptions,
  ) {
    this.component = opts.component;
    this.host = opts.host || undefined;
    this.perObjectBurst = opts.perObjectBurst ?? 5;
    this.perObjectRefillMs = opts.perObjectRefillMs ?? 60_000;
    const globalPerSecond = opts.globalPerSecond ?? 10;
    this.timeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.errors = new FailureStreak(this.now);
    this.log = opts.log ?? noLog;
    for (const [k, v] of [
      ["perObjectBurst", this.perObjectBurst],
      ["perObjectRefillMs", this.perObjectRefillMs],
      ["globalPerSecond", globalPerSecond],
      ["requestTimeoutMs", this.timeoutMs],
    ] as const) {
      if (!(v > 0)) throw new UsageError(`event recorder: ${k} must be > 0, got ${v}`);
    }
    this.global = new Bucket(globalPerSecond, 1000 / globalPerSecond, this.now());
  }

  /**
   * Record an Event about obj. Returns at once; the API calls run in the
   * background. Never throws: an Event is worth less than the caller's work.
   */
  record(obj: InvolvedObject, type: EventType, reason: string, message: string): void {
    try {
      this.recordUnsafe(obj, type, reason, message);
    } catch (e) {
      this.droppedCount++;
      this.log("error", "event recorder: could not record an event", { reason, error: describeError(e) });
    }
  }

  /** Occurrences that never reached the API server: refused by a rate limit or lost to an API failure. */
  dropped(): number {
    return this.droppedCount;
  }

  /** Wait for the API calls started so far (and their follow-ups) to finish. */
  async flush(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  private recordUnsafe(obj: InvolvedObject, type: EventType, reason: string, message: string): void {
    const now = this.now();
    const objKey = JSON.stringify([obj.apiVersion, obj.kind, obj.namespace, obj.name, obj.uid ?? ""]);
    let bucket = touch(this.buckets, objKey);
    // Take a token only when both limits have one, so a refusal costs nothing.
    if (!(bucket?.available(now) ?? true) || !this.global.available(now)) {
      this.droppedCount++;
      return;
    }
    if (!bucket) {
      bucket = new Bucket(this.perObjectBurst, this.perObjectRefillMs, now);
      this.buckets.set(objKey, bucket);
      this.trimBuckets(now);
    }
    bucket.take();
    this.global.take();

    const text = truncate(message, MESSAGE_MAX);
    const key = JSON.stringify([objKey, type, reason, text]);
    let agg = touch(this.aggregates, key);
    if (agg && now - agg.last > AGGREGATE_WINDOW_MS) {
      this.aggregates.delete(key);
      agg = undefined;
    }
    if (agg) {
      agg.count++;
      agg.last = Math.max(agg.last, now);
    } else {
      agg = this.newAggregate(obj, type, reason, text, now);
      this.aggregates.set(key, agg);
      if (this.aggregates.size > CACHE_MAX) this.aggregates.delete(this.aggregates.keys().next().value as string);
    }
    this.pump(agg, key);
  }

  private newAggregate(obj: InvolvedObject, type: EventType, reason: string, message: string, now: number): Aggregate {
    const name = this.eventName(obj.name, now);
    const host = this.host;
    const body: CoreV1Event = {
      apiVersion: "v1",
      kind: "Event",
      metadata: { name, namespace: obj.namespace },
      involvedObject: {
        apiVersion: obj.apiVersion,
        kind: obj.kind,
        namespace: obj.namespace,
        name: obj.name,
        ...(obj.uid ? { uid: obj.uid } : {}),
      },
      reason,
      message,
      type,
      source: { component: this.component, ...(host ? { host } : {}) },
      reportingComponent: REPORTING_COMPONENT,
      ...(host ? { reportingInstance: host.slice(0, REPORTING_INSTANCE_MAX) } : {}),
    };
    return { name, namespace: obj.namespace, body, count: 1, written: 0, created: false, busy: false, first: now, last: now };
  }

  /**
   * Bring the API server's Event up to the aggregate's count. One writer per
   * Event at a time: a patch must not overtake the create, and occurrences
   * recorded while a write is in flight ride on the next single patch.
   */
  private pump(agg: Aggregate, key: string): void {
    if (agg.busy) return;
    agg.busy = true;
    const run = (async () => {
      try {
        while (agg.count > agg.written) {
          const ok = agg.created ? await this.patch(agg) : await this.create(agg);
          if (!ok) {
            // Lost: forget the unwritten occurrences, and a never-created Event entirely.
            this.droppedCount += agg.count - agg.written;
            agg.count = agg.written;
            if (!agg.created && this.aggregates.get(key) === agg) this.aggregates.delete(key);
            break;
          }
        }
      } finally {
        agg.busy = false;
      }
    })();
    this.inflight.add(run);
    void run.finally(() => this.inflight.delete(run));
  }

  /** Create the Event with the occurrences so far; on success agg.written says how many it shows. */
  private async create(agg: Aggregate): Promise<boolean> {
    const count = agg.count;
    const body: CoreV1Event = {
      ...agg.body,
      metadata: { ...agg.body.metadata, name: agg.name },
      count,
      firstTimestamp: new Date(agg.first),
      lastTimestamp: new Date(agg.last),
    };
    try {
      await this.core.createNamespacedEvent({ namespace: agg.namespace, body }, requestTimeout(this.timeoutMs));
      agg.created = true;
      agg.written = count;
      this.succeeded();
      return true;
    } catch (e) {
      this.failed("create", e, agg);
      return false;
    }
  }

  /** Merge-patch count and lastTimestamp, as client-go does for a repeat. */
  private async patch(agg: Aggregate): Promise<boolean> {
    const count = agg.count;
    const last = agg.last;
    const body = { count, lastTimestamp: new Date(last).toISOString() };
    try {
      await this.core.patchNamespacedEvent(
        { name: agg.name, namespace: agg.namespace, body },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch, requestTimeout(this.timeoutMs)),
      );
      agg.written = count;
      this.succeeded();
      return true;
    } catch (e) {
      if (statusOf(e) !== 404) {
        this.failed("patch", e, agg);
        return false;
      }
    }
    // The Event is gone (expired, deleted): start a new one with the
    // occurrences it did not yet show.
    agg.count -= agg.written;
    agg.written = 0;
    agg.created = false;
    agg.first = last;
    agg.name = this.eventName(agg.body.involvedObject.name ?? "", last);
    return this.create(agg);
  }

  /** Like client-go: the object's name and a hex timestamp (ns), unique per recorder. */
  private eventName(objName: string, now: number): string {
    const ns = BigInt(Math.max(0, Math.floor(now))) * 1_000_000n + BigInt(this.seq++ % 1_000_000);
    const suffix = ns.toString(16).padStart(16, "0");
    // metadata.name is at most 253 characters.
    return `${objName.slice(0, 253 - 1 - suffix.length)}.${suffix}`;
  }

  private trimBuckets(now: number): void {
    if (this.buckets.size <= CACHE_MAX) return;
    // Forget refilled buckets first (no loss), then the least recently used.
    for (const [k, b] of this.buckets) {
      if (this.buckets.size <= CACHE_MAX / 2) break;
      if (b.full(now)) this.buckets.delete(k);
    }
    while (this.buckets.size > CACHE_MAX) this.buckets.delete(this.buckets.keys().next().value as string);
  }

  private failed(op: string, e: unknown, agg: Aggregate): void {
    this.errors.failed((failures) =>
      this.log("warn", `event recorder: event ${op} failed; events are dropped until the API server accepts them`, {
        event: `${agg.namespace}/${agg.name}`,
        reason: agg.body.reason,
        error: describeError(e),
        failures,
      }),
    );
  }

  private succeeded(): void {
    this.errors.succeeded((failures) =>
      this.log("info", "event recorder: API server accepts events again", { failures, dropped: this.droppedCount }),
    );
  }
}

/** Get and mark as most recently used. */
function touch<V>(m: Map<string, V>, k: string): V | undefined {
  const v = m.get(k);
  if (v !== undefined) {
    m.delete(k);
    m.set(k, v);
  }
  return v;
}

/** At most max characters, ending in "..." when cut, without splitting a surrogate pair. */
export function truncate(s: string, max: number): string {
  if (s.length <= max) return s;
  let end = max - 3;
  const c = s.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return s.slice(0, end) + "...";
}
