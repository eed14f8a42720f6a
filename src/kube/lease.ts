/**
 * Leader election on a coordination.k8s.io/v1 Lease, after client-go's
 * leaderelection package: one agent of the DaemonSet at a time holds the
 * Lease and is the only one that writes shadow Secrets.
 *
 * Safety rests on two rules. A candidate takes a Lease held by someone else
 * only after the Lease record has stayed unchanged for leaseDurationSeconds as
 * measured by the candidate's own clock; and a leader that cannot renew steps
 * down after renewDeadlineMs, which is shorter than leaseDurationSeconds, so it
 * has stopped acting before any peer may take over.
 */
import {
  V1MicroTime,
  type ConfigurationOptions,
  type CoordinationV1Api,
  type V1Lease,
  type V1LeaseSpec,
} from "@kubernetes/client-node";
import { UsageError } from "../errors.ts";
import { noLog, type LogFn } from "../log.ts";
import { describeError, FailureStreak, requestTimeout, statusOf } from "./http.ts";

export interface LeaseElectorOptions {
  namespace: string;
  name: string;
  /** unique per candidate (the agent uses its pod or node name) */
  identity: string;
  /** how long a silent Lease stays held; default 15 */
  leaseDurationSeconds?: number;
  /** a leader that has not renewed for this long steps down; default 10_000 */
  renewDeadlineMs?: number;
  /** time between attempts to acquire or renew; default 2_000 */
  retryPeriodMs?: number;
  /** ms clock for expiry decisions and Lease timestamps; timers still use real time */
  now?: () => number;
  log?: LogFn;
}

/** Followers sleep retryPeriod * (1 + rand * JITTER), like client-go, so candidates spread out. */
const JITTER = 1.2;

type Outcome = "acquired" | "held" | "conflict" | "error";

/** The parts of a Lease that make up the election record (not metadata: a label edit is not a renewal). */
interface Observed {
  key: string;
  holder: string;
  durationMs: number;
  transitions: number;
}

export class LeaseElector {
  private readonly namespace: string;
  private readonly name: string;
  private readonly identity: string;
  private readonly leaseDurationSeconds: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly now: () => number;
  private readonly log: LogFn;

  private leader = false;
  private running = false;
  private abandoned = false;
  private readonly listeners: ((leader: boolean) => void)[] = [];
  private loopDone: Promise<void> | undefined;
  private sleepTimer: ReturnType<typeof setTimeout> | undefined;
  private wake: (() => void) | undefined;

  /** last Lease read or written: carries the resourceVersion for the next update */
  private lease: V1Lease | undefined;
  private observed: Observed | undefined;
  /** my clock when I last saw the record change */
  private observedAt = 0;
  /** my clock when the last successful acquire/renew attempt began */
  private lastRenew = 0;

  private readonly errors: FailureStreak;

  constructor(
    private readonly coord: CoordinationV1Api,
    opts: LeaseElectorOptions,
  ) {
    this.namespace = opts.namespace;
    this.name = opts.name;
    this.identity = opts.identity;
    this.leaseDurationSeconds = opts.leaseDurationSeconds ?? 15;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = opts.retryPeriodMs ?? 2_000;
    this.now = opts.now ?? Date.now;
    this.errors = new FailureStreak(this.now);
    this.log = opts.log ?? noLog;
    if (!this.namespace || !this.name) throw new UsageError("leader election: the Lease namespace and name must not be empty");
    if (!this.identity) throw new UsageError("leader election: the identity must not be empty");
    if (!Number.isInteger(this.leaseDurationSeconds) || this.leaseDurationSeconds < 1) {
      throw new UsageError(`leader election: leaseDurationSeconds must be a whole number >= 1, got ${this.leaseDurationSeconds}`);
    }
    if (!(this.retryPeriodMs > 0)) throw new UsageError(`leader election: retryPeriodMs must be > 0, got ${this.retryPeriodMs}`);
    // The leader must have stopped before a peer may take over, and must get
    // more than one try at renewing before it gives up.
    if (!(this.renewDeadlineMs < this.leaseDurationSeconds * 1000)) {
      throw new UsageError(
        `leader election: renewDeadlineMs (${this.renewDeadlineMs}) must be less than leaseDurationSeconds*1000 (${this.leaseDurationSeconds * 1000})`,
      );
    }
    if (!(this.retryPeriodMs < this.renewDeadlineMs)) {
      throw new UsageError(
        `leader election: retryPeriodMs (${this.retryPeriodMs}) must be less than renewDeadlineMs (${this.renewDeadlineMs})`,
      );
    }
  }

  start(): void {
    if (this.running || this.abandoned) return;
    this.running = true;
    this.loopDone = this.loop();
  }

  /**
   * Stop campaigning. A leader first steps down locally (listeners hear false
   * while the Lease still names it, so nothing acts after a peer takes over),
   * then releases the Lease so a peer takes over at its next attempt instead
   * of waiting out leaseDurationSeconds.
   */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.interruptSleep();
    if (this.leader) this.setLeader(false, "stopping");
    // Bounded: every request in a round is cut off at the renew deadline.
    await this.loopDone;
    if (this.observed?.holder === this.identity) await this.release();
  }

  /**
   * Test hook: halt as if the process had died. The loop ends and this
   * instance reports not-leader, but the Lease is left as it is, so peers
   * must wait for it to expire.
   */
  abandon(): void {
    this.abandoned = true;
    this.running = false;
    this.interruptSleep();
    if (this.leader) this.setLeader(false, "abandoned");
  }

  /**
   * Whether to act as leader now. Also false once the renew deadline has
   * passed, even if the loop has not run since (a blocked event loop): a
   * caller checking before each write never writes after a peer may lead.
   */
  isLeader(): boolean {
    return this.leader && !this.pastDeadline();
  }

  onChange(fn: (leader: boolean) => void): void {
    this.listeners.push(fn);
  }

  /** The holder in the last Lease record seen; undefined if none or released. */
  holder(): string | undefined {
    return this.observed?.holder || undefined;
  }

  private async loop(): Promise<void> {
    while (this.running) {
      try {
        await this.round();
      } catch (e) {
        // round() handles API errors itself; this is a bug, but must not end the election.
        this.log("error", "leader election round failed", { lease: this.leaseId(), error: describeError(e) });
      }
      if (!this.running) break;
      // A leader wakes no later than its deadline, so it steps down on time
      // even when its last attempt failed fast.
      const pause = this.leader
        ? Math.min(this.retryPeriodMs, this.lastRenew + this.renewDeadlineMs - this.now())
        : this.retryPeriodMs * (1 + Math.random() * JITTER);
      await this.sleep(pause);
    }
  }

  /** One acquire-or-renew attempt and what it means for leadership. */
  private async round(): Promise<void> {
    if (this.leader && this.pastDeadline()) {
      this.setLeader(false, "could not renew within the renew deadline", { renewDeadlineMs: this.renewDeadlineMs });
    }
    const startedAt = this.now();
    // Every request is cut off at the deadline: a hung API server must not
    // keep a leader acting past it, nor hold up stop().
    const deadline = (this.leader ? this.lastRenew : startedAt) + this.renewDeadlineMs;
    const outcome = await this.tryAcquireOrRenew(deadline);
    if (this.abandoned) return;
    if (outcome === "acquired") {
      // Measured from when the attempt began: peers start their expiry clocks
      // when they see the write, which is later.
      this.lastRenew = startedAt;
      // Acquired while stop() waits for this round: stop() releases it.
      if (this.running && !this.leader) this.setLeader(true, "acquired");
      return;
    }
    if (!this.leader) return;
    if (outcome === "held") {
      // The Lease names someone else: it is theirs now, whatever our deadline says.
      this.setLeader(false, "lease taken over", { holder: this.observed?.holder });
    } else if (this.pastDeadline()) {
      this.setLeader(false, "could not renew within the renew deadline", { renewDeadlineMs: this.renewDeadlineMs });
    }
  }

  private pastDeadline(): boolean {
    return this.now() - this.lastRenew >= this.renewDeadlineMs;
  }

  /** Read the Lease; create it, take it over or renew it if allowed. Never throws. */
  private async tryAcquireOrRenew(deadline: number): Promise<Outcome> {
    const now = this.now();
    // Fast path, as in client-go: a leader renews from the Lease it last
    // wrote, skipping the read. Any failure (409 included) falls back to
    // reading and deciding afresh within the same deadline.
    if (this.leader && this.lease && this.observed?.holder === this.identity) {
      try {
        const updated = await this.coord.replaceNamespacedLease(
          { name: this.name, namespace: this.namespace, body: this.claim(this.lease, now) },
          this.until(deadline),
        );
        this.observe(updated, this.now());
        this.succeeded();
        return "acquired";
      } catch {
        // the slow path reports what is wrong
      }
    }
    let lease: V1Lease;
    try {
      lease = await this.coord.readNamespacedLease({ name: this.name, namespace: this.namespace }, this.until(deadline));
    } catch (e) {
      if (statusOf(e) !== 404) return this.failed("read", e);
      return this.create(now, deadline);
    }
    this.observe(lease, this.now());
    const holder = lease.spec?.holderIdentity ?? "";
    if (holder !== "" && holder !== this.identity && !this.expired(this.now())) {
      this.succeeded();
      return "held";
    }
    try {
      const updated = await this.coord.replaceNamespacedLease(
        { name: this.name, namespace: this.namespace, body: this.claim(lease, now) },
        this.until(deadline),
      );
      this.observe(updated, this.now());
      this.succeeded();
      if (holder !== this.identity) this.log("info", "took over the lease", { lease: this.leaseId(), from: holder || undefined });
      return "acquired";
    } catch (e) {
      // 409: someone wrote the Lease since we read it; not ours this round.
      if (statusOf(e) === 409) return "conflict";
      return this.failed("update", e);
    }
  }

  /**
   * The Lease as we would write it to hold it from now on. The update carries
   * the resourceVersion we read, so it fails (409) if anyone wrote since.
   * Keeping our own Lease is a renewal; taking it from anyone else (or from
   * nobody, after a release) is a transition.
   */
  private claim(lease: V1Lease, now: number): V1Lease {
    const spec = lease.spec ?? {};
    const mine = spec.holderIdentity === this.identity;
    return {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: this.identity,
        leaseDurationSeconds: this.leaseDurationSeconds,
        acquireTime: mine && spec.acquireTime ? spec.acquireTime : micro(now),
        renewTime: micro(now),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (mine ? 0 : 1),
      },
    };
  }

  private async create(now: number, deadline: number): Promise<Outcome> {
    const body: V1Lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: this.name, namespace: this.namespace },
      spec: {
        holderIdentity: this.identity,
        leaseDurationSeconds: this.leaseDurationSeconds,
        acquireTime: micro(now),
        renewTime: micro(now),
        leaseTransitions: 0,
      },
    };
    try {
      const created = await this.coord.createNamespacedLease({ namespace: this.namespace, body }, this.until(deadline));
      this.observe(created, this.now());
      this.succeeded();
      return "acquired";
    } catch (e) {
      if (statusOf(e) !== 409) return this.failed("create", e);
    }
    // Another candidate created it first: it won. Read it so its expiry clock starts now.
    try {
      const read = await this.coord.readNamespacedLease({ name: this.name, namespace: this.namespace }, this.until(deadline));
      this.observe(read, this.now());
      this.succeeded();
      return "held";
    } catch (e) {
      return this.failed("read", e);
    }
  }

  /** Give up a Lease we hold: no holder, so the next candidate to look takes it at once. */
  private async release(): Promise<void> {
    const lease = this.lease;
    if (!lease) return;
    const now = this.now();
    const spec: V1LeaseSpec = {
      ...lease.spec,
      holderIdentity: undefined,
      leaseDurationSeconds: 1,
      acquireTime: micro(now),
      renewTime: micro(now),
      leaseTransitions: lease.spec?.leaseTransitions ?? 0,
    };
    try {
      const released = await this.coord.replaceNamespacedLease(
        { name: this.name, namespace: this.namespace, body: { ...lease, spec } },
        requestTimeout(this.renewDeadlineMs),
      );
      this.observe(released, this.now());
      this.log("info", "released the lease", { lease: this.leaseId() });
    } catch (e) {
      // 409: someone else wrote it already, so it is no longer ours to release.
      this.log(statusOf(e) === 409 ? "info" : "warn", "could not release the lease; peers take over when it expires", {
        lease: this.leaseId(),
        error: describeError(e),
      });
    }
  }

  /**
   * Note when the record last changed, by our clock. renewTime in the Lease
   * is the holder's clock, and clocks skew between nodes; judging expiry by
   * how long we have watched an unchanged record only needs our clock to run
   * at about the right rate, which is what client-go does too.
   */
  private observe(lease: V1Lease, at: number): void {
    this.lease = lease;
    const s = lease.spec ?? {};
    const key = JSON.stringify([s.holderIdentity ?? "", s.leaseDurationSeconds, stamp(s.acquireTime), stamp(s.renewTime), s.leaseTransitions]);
    if (this.observed?.key === key) return;
    const duration = s.leaseDurationSeconds && s.leaseDurationSeconds > 0 ? s.leaseDurationSeconds : this.leaseDurationSeconds;
    this.observed = { key, holder: s.holderIdentity ?? "", durationMs: duration * 1000, transitions: s.leaseTransitions ?? 0 };
    this.observedAt = at;
  }

  /** Request options that abort the request at deadline (our clock). */
  private until(deadline: number): ConfigurationOptions {
    return requestTimeout(deadline - this.now());
  }

  private expired(now: number): boolean {
    return !this.observed || this.observedAt + this.observed.durationMs <= now;
  }

  private setLeader(leader: boolean, why: string, fields?: Record<string, unknown>): void {
    if (this.leader === leader) return;
    this.leader = leader;
    this.log("info", leader ? "became leader" : "stopped leading", { lease: this.leaseId(), identity: this.identity, reason: why, ...fields });
    for (const fn of this.listeners) {
      try {
        fn(leader);
      } catch (e) {
        this.log("error", "leader election listener threw", { lease: this.leaseId(), error: describeError(e) });
      }
    }
  }

  private failed(op: string, e: unknown): Outcome {
    this.errors.failed((failures) =>
      this.log("warn", `leader election: lease ${op} failed`, { lease: this.leaseId(), error: describeError(e), failures }),
    );
    return "error";
  }

  private succeeded(): void {
    this.errors.succeeded((failures) =>
      this.log("info", "leader election: lease API reachable again", { lease: this.leaseId(), failures }),
    );
  }

  private leaseId(): string {
    return `${this.namespace}/${this.name}`;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.sleepTimer = setTimeout(resolve, Math.max(0, ms));
    });
  }

  private interruptSleep(): void {
    if (this.sleepTimer) clearTimeout(this.sleepTimer);
    this.sleepTimer = undefined;
    this.wake?.();
    this.wake = undefined;
  }
}

/** MicroTime: serialises as RFC 3339 with microseconds, as the API server expects. */
function micro(ms: number): V1MicroTime {
  return new V1MicroTime(ms);
}

/** client-node returns MicroTime fields as the server's strings; normalise either form. */
function stamp(t: unknown): string | undefined {
  if (t instanceof Date) return t.toISOString();
  return t === undefined || t === null ? undefined : String(t);
}
