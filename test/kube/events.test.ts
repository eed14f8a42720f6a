import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as k8s from "@kubernetes/client-node";
import {
  AGGREGATE_WINDOW_MS,
  EventRecorder,
  MESSAGE_MAX,
  REPORTING_COMPONENT,
  truncate,
  type EventRecorderOptions,
  type InvolvedObject,
} from "../../src/kube/events.ts";
import { startKubeApiServer, type KubeApiServer } from "../support/kube-api-server.ts";
import { startBlackHole } from "../support/black-hole.ts";

const NS = "kloak";

let server: KubeApiServer;
let core: k8s.CoreV1Api;
let podSeq = 0;

beforeAll(async () => {
  server = await startKubeApiServer();
  server.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });
  core = server.kubeConfig().makeApiClient(k8s.CoreV1Api);
});

afterAll(async () => {
  await server?.stop();
});

interface StoredEvent {
  metadata: { name: string; namespace: string };
  involvedObject: Record<string, unknown>;
  reason: string;
  message: string;
  type: string;
  source: { component?: string; host?: string };
  reportingComponent?: string;
  reportingInstance?: string;
  firstTimestamp: string;
  lastTimestamp: string;
  count: number;
}

/** A fresh pod per test, so tests do not share rate-limit buckets or Events. */
function pod(): InvolvedObject {
  const n = ++podSeq;
  return { apiVersion: "v1", kind: "Pod", namespace: NS, name: `web-${n}`, uid: `uid-${n}` };
}

function eventsFor(obj: InvolvedObject): StoredEvent[] {
  return (server.list("Event", NS) as unknown as StoredEvent[]).filter((e) => e.involvedObject.name === obj.name);
}

function eventWrites(since: number): { method: string; path: string; contentType?: string }[] {
  return server.requests.slice(since).filter((r) => r.path.startsWith(`/api/v1/namespaces/${NS}/events`));
}

interface Rig {
  rec: EventRecorder;
  clock: { t: number };
  logs: { level: string; msg: string }[];
}

function rig(opts: Partial<EventRecorderOptions> = {}): Rig {
  const clock = { t: Date.parse("2026-11-21T10:00:00Z") };
  const logs: Rig["logs"] = [];
  const rec = new EventRecorder(core, {
    component: "kloak",
    host: "node-a",
    now: () => clock.t,
    log: (level, msg) => logs.push({ level, msg }),
    ...opts,
  });
  return { rec, clock, logs };
}

describe("EventRecorder against the API server double", () => {
  test(
    "records a core/v1 Event with the fields operators and kubectl expect",
    async () => {
      const { rec, clock } = rig();
      const obj = pod();
      rec.record(obj, "Warning", "SubstitutionRefused", "write to evil.example refused: not in getkloak.io/hosts");
      await rec.flush();
      const [ev, ...more] = eventsFor(obj);
      expect(more).toEqual([]);
      expect(ev).toBeDefined();
      expect(ev!.metadata.name).toMatch(new RegExp(`^${obj.name}\\.[0-9a-f]{16}$`));
      expect(ev!.metadata.namespace).toBe(NS);
      expect(ev!.involvedObject).toMatchObject({ apiVersion: "v1", kind: "Pod", namespace: NS, name: obj.name, uid: obj.uid! });
      expect(ev!.reason).toBe("SubstitutionRefused");
      expect(ev!.message).toBe("write to evil.example refused: not in getkloak.io/hosts");
      expect(ev!.type).toBe("Warning");
      expect(ev!.source).toEqual({ component: "kloak", host: "node-a" });
      expect(ev!.reportingComponent).toBe(REPORTING_COMPONENT);
      expect(ev!.reportingInstance).toBe("node-a");
      expect(ev!.count).toBe(1);
      expect(Date.parse(ev!.firstTimestamp)).toBe(clock.t);
      expect(Date.parse(ev!.lastTimestamp)).toBe(clock.t);
      expect(rec.dropped()).toBe(0);
    },
    30_000,
  );

  test(
    "20 identical records: one Event, count = accepted records, 2 API writes, the rest dropped",
    async () => {
      const { rec, clock } = rig({ perObjectBurst: 5 });
      const obj = pod();
      const mark = server.requests.length;
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) rec.record(obj, "Warning", "SubstitutionRefused", "refused");
      // fire-and-forget: twenty calls take no API round trip
      expect(performance.now() - t0).toBeLessThan(50);
      await rec.flush();

      // 5 tokens: 5 occurrences accepted, 15 dropped. The first creates the
      // Event; the 4 recorded while the create was in flight ride on one patch.
      expect(rec.dropped()).toBe(15);
      const evs = eventsFor(obj);
      expect(evs.length).toBe(1);
      expect(evs[0]!.count).toBe(5);
      const writes = eventWrites(mark);
      expect(writes.map((w) => w.method)).toEqual(["POST", "PATCH"]);
      expect(writes[1]!.contentType).toContain("application/merge-patch+json");
      expect(writes[1]!.path).toBe(`/api/v1/namespaces/${NS}/events/${evs[0]!.metadata.name}`);

      // a token comes back after perObjectRefillMs: the same Event is patched again
      clock.t += 60_000;
      rec.record(obj, "Warning", "SubstitutionRefused", "refused");
      rec.record(obj, "Warning", "SubstitutionRefused", "refused");
      await rec.flush();
      expect(rec.dropped()).toBe(16);
      const [ev] = eventsFor(obj);
      expect(eventsFor(obj).length).toBe(1);
      expect(ev!.count).toBe(6);
      expect(Date.parse(ev!.lastTimestamp)).toBe(clock.t);
      expect(Date.parse(ev!.firstTimestamp)).toBe(clock.t - 60_000);
      expect(eventWrites(mark).map((w) => w.method)).toEqual(["POST", "PATCH", "PATCH"]);
    },
    30_000,
  );

  test(
    "sequential repeats each patch the count (no coalescing needed)",
    async () => {
      const { rec } = rig();
      const obj = pod();
      for (let i = 0; i < 3; i++) {
        rec.record(obj, "Normal", "ShadowCreated", "shadow Secret db-kloak written");
        await rec.flush();
      }
      const evs = eventsFor(obj);
      expect(evs.length).toBe(1);
      expect(evs[0]!.count).toBe(3);
    },
    30_000,
  );

  test(
    "different reasons, types or messages are separate Events",
    async () => {
      const { rec } = rig();
      const obj = pod();
      rec.record(obj, "Warning", "SubstitutionRefused", "m");
      rec.record(obj, "Warning", "NoShadow", "m");
      rec.record(obj, "Normal", "NoShadow", "m");
      rec.record(obj, "Normal", "NoShadow", "other message");
      await rec.flush();
      const evs = eventsFor(obj);
      expect(evs.length).toBe(4);
      expect(evs.every((e) => e.count === 1)).toBe(true);
      expect(new Set(evs.map((e) => e.metadata.name)).size).toBe(4);
    },
    30_000,
  );

  test(
    "per-object limit: burst, then one per refill period; other objects unaffected",
    async () => {
      const { rec, clock } = rig({ perObjectBurst: 3, perObjectRefillMs: 10_000 });
      const a = pod();
      const b = pod();
      for (let i = 0; i < 5; i++) rec.record(a, "Warning", `Reason${i}`, "m");
      rec.record(b, "Warning", "Reason0", "m");
      await rec.flush();
      expect(eventsFor(a).length).toBe(3);
      expect(eventsFor(b).length).toBe(1);
      expect(rec.dropped()).toBe(2);

      clock.t += 9_999;
      rec.record(a, "Warning", "Reason9", "m");
      expect(rec.dropped()).toBe(3);
      clock.t += 1;
      rec.record(a, "Warning", "Reason9", "m");
      await rec.flush();
      expect(rec.dropped()).toBe(3);
      expect(eventsFor(a).length).toBe(4);
    },
    30_000,
  );

  test(
    "global limit: at most globalPerSecond Events per second over all objects",
    async () => {
      const { rec, clock } = rig({ globalPerSecond: 4 });
      const objs = Array.from({ length: 10 }, () => pod());
      for (const o of objs) rec.record(o, "Warning", "NoShadow", "m");
      await rec.flush();
      expect(objs.filter((o) => eventsFor(o).length === 1).length).toBe(4);
      expect(rec.dropped()).toBe(6);

      clock.t += 500; // half a second earns two
      for (const o of objs) rec.record(o, "Warning", "Other", "m");
      await rec.flush();
      expect(rec.dropped()).toBe(6 + 8);
      clock.t += 1000;
      for (const o of objs) rec.record(o, "Warning", "Third", "m");
      await rec.flush();
      expect(rec.dropped()).toBe(14 + 6);
    },
    30_000,
  );

  test(
    "unreachable API server: no throw, no wait, dropped counted, one warning; works again after resume",
    async () => {
      const { rec, logs } = rig({ requestTimeoutMs: 1000 });
      const obj = pod();
      server.pause();
      try {
        const t0 = performance.now();
        rec.record(obj, "Warning", "A", "m");
        rec.record(obj, "Warning", "B", "m");
        rec.record(obj, "Warning", "C", "m");
        expect(performance.now() - t0).toBeLessThan(50);
        await rec.flush();
      } finally {
        server.resume();
      }
      expect(rec.dropped()).toBe(3);
      expect(logs.filter((l) => l.level === "warn").length).toBe(1);
      expect(eventsFor(obj)).toEqual([]);

      rec.record(obj, "Warning", "A", "m");
      await rec.flush();
      expect(rec.dropped()).toBe(3);
      const evs = eventsFor(obj);
      expect(evs.length).toBe(1);
      // the lost occurrence is not counted on the new Event
      expect(evs[0]!.count).toBe(1);
      expect(logs.some((l) => l.level === "info" && /accepts events again/.test(l.msg))).toBe(true);
    },
    30_000,
  );

  test(
    "a repeat whose Event is gone (expired, deleted) creates a new Event",
    async () => {
      const { rec } = rig();
      const obj = pod();
      rec.record(obj, "Warning", "SubstitutionRefused", "m");
      await rec.flush();
      const [first] = eventsFor(obj);
      expect(server.delete("Event", NS, first!.metadata.name)).toBe(true);
      rec.record(obj, "Warning", "SubstitutionRefused", "m");
      await rec.flush();
      const evs = eventsFor(obj);
      expect(evs.length).toBe(1);
      expect(evs[0]!.metadata.name).not.toBe(first!.metadata.name);
      expect(evs[0]!.count).toBe(1);
      expect(rec.dropped()).toBe(0);
    },
    30_000,
  );

  test(
    "repeats more than 10 minutes apart start a new Event",
    async () => {
      const { rec, clock } = rig();
      const obj = pod();
      rec.record(obj, "Normal", "NoShadow", "m");
      await rec.flush();
      clock.t += AGGREGATE_WINDOW_MS;
      rec.record(obj, "Normal", "NoShadow", "m");
      await rec.flush();
      expect(eventsFor(obj).length).toBe(1);
      clock.t += AGGREGATE_WINDOW_MS + 1;
      rec.record(obj, "Normal", "NoShadow", "m");
      await rec.flush();
      const evs = eventsFor(obj).sort((x, y) => Date.parse(x.firstTimestamp) - Date.parse(y.firstTimestamp));
      expect(evs.map((e) => e.count)).toEqual([2, 1]);
    },
    30_000,
  );

  test(
    "long messages are cut to 1024 characters, and repeats of them still aggregate",
    async () => {
      const { rec } = rig();
      const obj = pod();
      const long = "x".repeat(5000);
      rec.record(obj, "Warning", "Long", long);
      rec.record(obj, "Warning", "Long", long + "tail differs only past the cut");
      await rec.flush();
      const evs = eventsFor(obj);
      expect(evs.length).toBe(1);
      expect(evs[0]!.message.length).toBe(MESSAGE_MAX);
      expect(evs[0]!.message.endsWith("...")).toBe(true);
      expect(evs[0]!.count).toBe(2);
    },
    30_000,
  );

  test(
    "API errors (namespace missing) are dropped, never thrown",
    async () => {
      const { rec } = rig();
      const ghost = { apiVersion: "v1", kind: "Secret", namespace: "no-such-namespace", name: "db" };
      expect(() => rec.record(ghost, "Warning", "NoShadow", "m")).not.toThrow();
      await rec.flush();
      expect(rec.dropped()).toBe(1);
    },
    30_000,
  );
});

describe("EventRecorder and a hung API server", () => {
  test(
    "requests are cut off after requestTimeoutMs; the occurrence counts as dropped",
    async () => {
      const blackHole = startBlackHole();
      try {
        const kc = blackHole.kc;
        const rec = new EventRecorder(kc.makeApiClient(k8s.CoreV1Api), { component: "kloak", requestTimeoutMs: 300 });
        rec.record(pod(), "Warning", "NoShadow", "m");
        const t0 = Date.now();
        await rec.flush();
        expect(Date.now() - t0).toBeLessThan(1000);
        expect(rec.dropped()).toBe(1);
      } finally {
        blackHole.stop();
      }
    },
    30_000,
  );
});

describe("truncate", () => {
  test("keeps short messages, cuts long ones without splitting a surrogate pair", () => {
    expect(truncate("abc", 10)).toBe("abc");
    expect(truncate("a".repeat(11), 10)).toBe("aaaaaaa...");
    const s = "aaaaaa😀bbbb"; // the emoji spans indices 6-7
    const cut = truncate(s, 10);
    expect(cut).toBe("aaaaaa...");
    expect(cut.length).toBeLessThanOrEqual(10);
  });
});
