import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as k8s from "@kubernetes/client-node";
import { UsageError } from "../../src/errors.ts";
import { LeaseElector, type LeaseElectorOptions } from "../../src/kube/lease.ts";
import type { LogFn } from "../../src/log.ts";
import { startKubeApiServer, type KubeApiServer } from "../support/kube-api-server.ts";
import { startBlackHole } from "../support/black-hole.ts";

const NS = "kloak";
/** Short timings keep the suite fast; the ratios are the defaults' (15 s / 10 s / 2 s) squeezed. */
const FAST = { leaseDurationSeconds: 2, renewDeadlineMs: 1200, retryPeriodMs: 200 } as const;
const MICRO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

let server: KubeApiServer;
let coord: k8s.CoordinationV1Api;
let leaseSeq = 0;

beforeAll(async () => {
  server = await startKubeApiServer();
  server.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });
  coord = server.kubeConfig().makeApiClient(k8s.CoordinationV1Api);
});

afterAll(async () => {
  await server?.stop();
});

interface Spec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

function leaseSpec(name: string): Spec {
  const lease = server.get("Lease", NS, name) as { spec?: Spec } | undefined;
  if (!lease) throw new Error(`no Lease ${name}`);
  return lease.spec ?? {};
}

function freshName(): string {
  return `kloak-leader-${++leaseSeq}`;
}

interface Candidate {
  elector: LeaseElector;
  id: string;
  changes: boolean[];
  logs: { level: string; msg: string }[];
}

function candidate(name: string, id: string, extra: Partial<LeaseElectorOptions> = {}): Candidate {
  const logs: Candidate["logs"] = [];
  const log: LogFn = (level, msg) => logs.push({ level, msg });
  const elector = new LeaseElector(coord, { namespace: NS, name, identity: id, ...FAST, log, ...extra });
  const changes: boolean[] = [];
  elector.onChange((l) => changes.push(l));
  return { elector, id, changes, logs };
}

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(10);
  }
  return Date.now() - t0;
}

/** Sample every 50 ms for ms; fail if two candidates ever lead at once. Returns the samples' leader ids. */
async function neverTwo(cs: Candidate[], ms: number): Promise<(string | undefined)[]> {
  const seen: (string | undefined)[] = [];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const leaders = cs.filter((c) => c.elector.isLeader()).map((c) => c.id);
    expect(leaders.length).toBeLessThanOrEqual(1);
    seen.push(leaders[0]);
    await Bun.sleep(50);
  }
  return seen;
}

async function stopAll(cs: Candidate[]): Promise<void> {
  await Promise.all(cs.map((c) => c.elector.stop()));
}

describe("LeaseElector options", () => {
  test("rejects timings that would let a leader act after its lease expired", () => {
    const base = { namespace: NS, name: "x", identity: "a" };
    expect(() => new LeaseElector(coord, { ...base, leaseDurationSeconds: 2, renewDeadlineMs: 2000, retryPeriodMs: 100 })).toThrow(UsageError);
    expect(() => new LeaseElector(coord, { ...base, leaseDurationSeconds: 2, renewDeadlineMs: 1000, retryPeriodMs: 1000 })).toThrow(
      /retryPeriodMs \(1000\) must be less than renewDeadlineMs \(1000\)/,
    );
    expect(() => new LeaseElector(coord, { ...base, leaseDurationSeconds: 1.5, renewDeadlineMs: 1000, retryPeriodMs: 100 })).toThrow(
      /whole number/,
    );
    expect(() => new LeaseElector(coord, { ...base, identity: "" })).toThrow(/identity/);
    // defaults are valid: 15 s / 10 s / 2 s
    expect(() => new LeaseElector(coord, base)).not.toThrow();
  });
});

describe("LeaseElector against the API server double", () => {
  test(
    "a lone candidate creates the Lease, leads, renews, and releases on stop",
    async () => {
      const name = freshName();
      const a = candidate(name, "node-a");
      a.elector.onChange(() => {
        throw new Error("a broken listener must not break the election");
      });
      a.elector.start();
      try {
        await waitFor("a to lead", () => a.elector.isLeader(), 2000);
        expect(a.changes).toEqual([true]);
        expect(a.elector.holder()).toBe("node-a");
        const first = leaseSpec(name);
        expect(first.holderIdentity).toBe("node-a");
        expect(first.leaseDurationSeconds).toBe(2);
        expect(first.leaseTransitions).toBe(0);
        expect(first.renewTime).toMatch(MICRO_TIME);
        expect(first.acquireTime).toMatch(MICRO_TIME);

        const mark = server.requests.length;
        await Bun.sleep(3 * FAST.retryPeriodMs);
        const later = leaseSpec(name);
        // a leader renews from the Lease it last wrote: PUTs only, no reads
        const calls = server.requests.slice(mark).filter((r) => r.path === `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/${name}`);
        expect(calls.length).toBeGreaterThanOrEqual(2);
        expect(calls.every((r) => r.method === "PUT")).toBe(true);
        expect(Date.parse(later.renewTime!)).toBeGreaterThan(Date.parse(first.renewTime!));
        // a renewal keeps the acquire time and the transition count
        expect(later.acquireTime).toBe(first.acquireTime!);
        expect(later.leaseTransitions).toBe(0);
        expect(a.elector.isLeader()).toBe(true);
      } finally {
        await a.elector.stop();
      }
      expect(a.changes).toEqual([true, false]);
      expect(a.elector.isLeader()).toBe(false);
      const released = leaseSpec(name);
      expect(released.holderIdentity ?? "").toBe("");
      expect(released.leaseTransitions).toBe(0);
      expect(a.elector.holder()).toBeUndefined();
      expect(a.logs.some((l) => l.level === "error" && /listener threw/.test(l.msg))).toBe(true);
    },
    30_000,
  );

  test(
    "two candidates: never both leading, and the leader stays put",
    async () => {
      const name = freshName();
      const cs = [candidate(name, "node-a"), candidate(name, "node-b")];
      for (const c of cs) c.elector.start();
      try {
        await waitFor("a leader", () => cs.some((c) => c.elector.isLeader()), 3000);
        const seen = await neverTwo(cs, 3000);
        // exactly one led throughout: no gaps, no hand-over while both are healthy
        expect(new Set(seen).size).toBe(1);
        expect(seen[0]).toBeDefined();
        const leader = cs.find((c) => c.elector.isLeader())!;
        const follower = cs.find((c) => c !== leader)!;
        expect(follower.changes).toEqual([]);
        expect(follower.elector.holder()).toBe(leader.id);
        expect(leaseSpec(name).holderIdentity).toBe(leader.id);
      } finally {
        await stopAll(cs);
      }
    },
    30_000,
  );

  test(
    "stop() of the leader hands over at once, well under the lease duration",
    async () => {
      const name = freshName();
      const cs = [candidate(name, "node-a"), candidate(name, "node-b")];
      for (const c of cs) c.elector.start();
      try {
        await waitFor("a leader", () => cs.some((c) => c.elector.isLeader()), 3000);
        // let the follower see the record at least once
        await Bun.sleep(3 * FAST.retryPeriodMs);
        const leader = cs.find((c) => c.elector.isLeader())!;
        const other = cs.find((c) => c !== leader)!;
        const t0 = Date.now();
        const stopping = leader.elector.stop();
        const [tookOver] = await Promise.all([
          waitFor("the other to lead", () => other.elector.isLeader(), FAST.leaseDurationSeconds * 1000),
          stopping,
        ]);
        expect(leader.elector.isLeader()).toBe(false);
        // followers poll every retryPeriod * (1 + up to 1.2): ~440 ms at worst, plus requests
        expect(tookOver).toBeLessThan(1000);
        expect(Date.now() - t0).toBeLessThan(FAST.leaseDurationSeconds * 1000);
        const spec = leaseSpec(name);
        expect(spec.holderIdentity).toBe(other.id);
        expect(spec.leaseTransitions).toBe(1);
        expect(other.elector.holder()).toBe(other.id);
      } finally {
        await stopAll(cs);
      }
    },
    30_000,
  );

  test(
    "a leader that cannot reach the API server steps down within the renew deadline",
    async () => {
      const name = freshName();
      const cs = [candidate(name, "node-a"), candidate(name, "node-b")];
      for (const c of cs) c.elector.start();
      try {
        await waitFor("a leader", () => cs.some((c) => c.elector.isLeader()), 3000);
        await Bun.sleep(3 * FAST.retryPeriodMs);
        const leader = cs.find((c) => c.elector.isLeader())!;
        const transitions = leaseSpec(name).leaseTransitions;

        server.pause();
        let steppedDown: number;
        try {
          // The deadline counts from the last successful renewal, which is
          // before the pause: stepping down must come no later than
          // renewDeadline after the pause (plus timer slack).
          steppedDown = await waitFor("the leader to step down", () => !leader.elector.isLeader(), FAST.renewDeadlineMs + 300);
          // isLeader() turns false at the deadline by itself; listeners hear it when the
          // renewal loop next runs (its request to the paused server times out first).
          await waitFor("the step-down reported to listeners", () => leader.changes.length >= 2, 3000);
          expect(leader.changes).toEqual([true, false]);
          // nobody can take over while the API server is away
          const seen = await neverTwo(cs, 1500);
          expect(seen.every((s) => s === undefined)).toBe(true);
        } finally {
          server.resume();
        }
        expect(steppedDown).toBeLessThanOrEqual(FAST.renewDeadlineMs + 300);

        // whoever renews first afterwards holds it; still never two
        await waitFor("a leader after resume", () => cs.some((c) => c.elector.isLeader()), 4000);
        await neverTwo(cs, 1000);
        const now = cs.find((c) => c.elector.isLeader())!;
        const spec = leaseSpec(name);
        expect(spec.holderIdentity).toBe(now.id);
        // the old leader taking its own Lease back is not a transition; the other taking it is
        expect(spec.leaseTransitions).toBe(now === leader ? transitions : transitions! + 1);

        // one warning per error streak, then a single recovery line
        for (const c of cs) {
          const warns = c.logs.filter((l) => l.level === "warn");
          expect(warns.length).toBeGreaterThanOrEqual(1);
          expect(warns.length).toBeLessThanOrEqual(2);
          expect(c.logs.some((l) => /reachable again/.test(l.msg))).toBe(true);
        }
      } finally {
        server.resume();
        await stopAll(cs);
      }
    },
    30_000,
  );

  test(
    "a leader that dies without releasing is replaced after the lease duration, not before",
    async () => {
      const name = freshName();
      const cs = [candidate(name, "node-a"), candidate(name, "node-b")];
      for (const c of cs) c.elector.start();
      try {
        await waitFor("a leader", () => cs.some((c) => c.elector.isLeader()), 3000);
        await Bun.sleep(3 * FAST.retryPeriodMs);
        const dead = cs.find((c) => c.elector.isLeader())!;
        const heir = cs.find((c) => c !== dead)!;
        const t0 = Date.now();
        dead.elector.abandon();
        expect(dead.elector.isLeader()).toBe(false);
        // let a renewal that was in flight land, then note the last one
        await Bun.sleep(100);
        const lastRenew = Date.parse(leaseSpec(name).renewTime!);
        expect(leaseSpec(name).holderIdentity).toBe(dead.id);
        expect(heir.elector.isLeader()).toBe(false);

        await waitFor("the heir to lead", () => heir.elector.isLeader(), 5000);
        const tookOverAt = Date.now();
        // not before: the heir saw the last renewal no earlier than it was
        // written, and waits a full lease duration from then by its own clock
        expect(tookOverAt - lastRenew).toBeGreaterThanOrEqual(FAST.leaseDurationSeconds * 1000 - 5);
        // the last renewal was at most a retry period (plus a request) before the death
        expect(tookOverAt - t0).toBeGreaterThanOrEqual(FAST.leaseDurationSeconds * 1000 - FAST.retryPeriodMs - 100);
        // not much after: one lease duration plus two follower polls (~440 ms each) and slack
        expect(tookOverAt - t0).toBeLessThan(FAST.leaseDurationSeconds * 1000 + 1500);
        const spec = leaseSpec(name);
        expect(spec.holderIdentity).toBe(heir.id);
        expect(spec.leaseTransitions).toBe(1);
        expect(Date.parse(spec.acquireTime!)).toBeGreaterThan(lastRenew);
        expect(heir.logs.some((l) => l.level === "info" && /took over/.test(l.msg))).toBe(true);
      } finally {
        await stopAll(cs);
      }
    },
    30_000,
  );

  test(
    "three candidates racing to create the Lease: one leader",
    async () => {
      const name = freshName();
      const cs = [candidate(name, "node-a"), candidate(name, "node-b"), candidate(name, "node-c")];
      for (const c of cs) c.elector.start();
      try {
        await waitFor("a leader", () => cs.some((c) => c.elector.isLeader()), 3000);
        const seen = await neverTwo(cs, 1500);
        expect(new Set(seen).size).toBe(1);
        const leader = cs.find((c) => c.elector.isLeader())!;
        for (const c of cs) expect(c.elector.holder()).toBe(leader.id);
        expect(leaseSpec(name).leaseTransitions).toBe(0);
        const creates = server.requests.filter((r) => r.method === "POST" && r.path.endsWith(`/namespaces/${NS}/leases`));
        expect(creates.length).toBeGreaterThanOrEqual(1);
      } finally {
        await stopAll(cs);
      }
    },
    30_000,
  );

  test(
    "expiry is judged by the candidate's own clock, not the holder's renewTime",
    async () => {
      const name = freshName();
      // A holder whose clock runs far ahead: its renewTime is in 2100.
      server.create({
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name, namespace: NS },
        spec: {
          holderIdentity: "skewed-node",
          leaseDurationSeconds: 2,
          acquireTime: "2100-01-01T00:00:00.000000Z",
          renewTime: "2100-01-01T00:00:00.000000Z",
          leaseTransitions: 4,
        },
      });
      let clock = 1_000_000;
      const b = candidate(name, "node-b", { now: () => clock });
      b.elector.start();
      try {
        await Bun.sleep(600);
        expect(b.elector.isLeader()).toBe(false);
        expect(b.elector.holder()).toBe("skewed-node");
        clock += 1_990;
        await Bun.sleep(600);
        // 1.99 s of silence by b's clock: not yet
        expect(b.elector.isLeader()).toBe(false);
        clock += 20;
        await waitFor("b to take over the silent lease", () => b.elector.isLeader(), 2000);
        const spec = leaseSpec(name);
        expect(spec.holderIdentity).toBe("node-b");
        expect(spec.leaseTransitions).toBe(5);
        // Lease timestamps come from the injected clock
        expect(spec.renewTime).toBe(new Date(clock).toISOString().replace("Z", "000Z"));
      } finally {
        await b.elector.stop();
      }
    },
    30_000,
  );

  test(
    "isLeader() turns false at the renew deadline even before the loop notices",
    async () => {
      const name = freshName();
      let clock = 5_000_000;
      const a = candidate(name, "node-a", { now: () => clock });
      a.elector.start();
      try {
        await waitFor("a to lead", () => a.elector.isLeader(), 2000);
        // as if the event loop had been blocked for the whole renew deadline
        clock += FAST.renewDeadlineMs;
        expect(a.elector.isLeader()).toBe(false);
        // the loop then steps down and, the Lease still being its own, takes it back
        await waitFor("a to step down", () => a.changes.length >= 2, 2000);
        await waitFor("a to lead again", () => a.elector.isLeader(), 2000);
        expect(a.changes.slice(0, 3)).toEqual([true, false, true]);
        expect(leaseSpec(name).leaseTransitions).toBe(0);
      } finally {
        await a.elector.stop();
      }
    },
    30_000,
  );

});

describe("LeaseElector and a hung API server", () => {
  test(
    "requests are cut off at the deadline, so stop() and the loop never hang",
    async () => {
      const blackHole = startBlackHole();
      try {
        const kc = blackHole.kc;
        const logs: { msg: string; error?: unknown }[] = [];
        const e = new LeaseElector(kc.makeApiClient(k8s.CoordinationV1Api), {
          namespace: NS,
          name: "hung",
          identity: "node-a",
          ...FAST,
          log: (_l, msg, fields) => logs.push({ msg, error: fields?.error }),
        });
        e.start();
        await Bun.sleep(100); // the first read is now hanging
        const t0 = Date.now();
        await e.stop();
        const took = Date.now() - t0;
        // the hanging read was aborted at its deadline (renewDeadline after it began)
        expect(took).toBeGreaterThanOrEqual(FAST.renewDeadlineMs - 200);
        expect(took).toBeLessThan(FAST.renewDeadlineMs + 300);
        expect(logs.length).toBe(1);
        expect(logs[0]!.msg).toMatch(/lease read failed/);
        expect(String(logs[0]!.error)).toMatch(/timed out/i);
        expect(e.isLeader()).toBe(false);
      } finally {
        blackHole.stop();
      }
    },
    30_000,
  );
});
