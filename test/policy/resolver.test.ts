/**
 * NameResolver: TTL-paced refresh, change reports, fail-closed-without-flapping on DNS failure.
 * Timing rules are pinned with an injected LookupFn under fake timers; everything else goes
 * through dnsLookup() to a real UDP DNS server (test/support/dns-server.ts).
 */
import { afterEach, describe, expect, jest, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dnsLookup, NameResolver, type Answer, type LookupFn, type ResolverOptions } from "../../src/policy/resolver.ts";
import { startDnsServer, type DnsRecord, type DnsServer } from "../support/dns-server.ts";

interface Seen {
  name: string;
  added: string[];
  removed: string[];
  current: string[];
  at: number;
}

function resolverWith(lookup: LookupFn, opts: Partial<ResolverOptions> = {}) {
  const changes: Seen[] = [];
  const warnings: string[] = [];
  const res = new NameResolver({
    lookup,
    onChange: (name, c) =>
      changes.push({ name, added: c.added.map((a) => a.address), removed: c.removed.map((a) => a.address), current: c.current.map((a) => a.address), at: c.at }),
    warn: (m) => warnings.push(m),
    ...opts,
  });
  return { res, changes, warnings };
}

const v4 = (address: string, ttl: number): Answer => ({ address, family: 4, ttl });

describe("timing rules (injected lookup, fake timers)", () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  // Timer callbacks start async work; let it finish before the next timer is due.
  async function flush() {
    for (let i = 0; i < 20; i++) await Promise.resolve();
  }
  /** Advance fake time to `t` ms (from the fake epoch 0) in 100 ms steps. */
  async function advanceTo(t: number) {
    await flush();
    while (Date.now() < t) {
      jest.advanceTimersByTime(Math.min(100, t - Date.now()));
      await flush();
    }
  }

  /** A lookup answering from `script` (an Error = reject) and recording when it was called. */
  function scripted(script: () => Answer[] | Error) {
    const calls: number[] = [];
    const lookup: LookupFn = async () => {
      calls.push(Date.now());
      const r = script();
      if (r instanceof Error) throw r;
      return r;
    };
    return { lookup, calls };
  }

  test("ttl 0 is refreshed at minTtl (1 s), not in a loop", async () => {
    jest.useFakeTimers({ now: 0 });
    const { lookup, calls } = scripted(() => [v4("192.0.2.1", 0)]);
    const { res } = resolverWith(lookup);
    await res.watch("a.test");
    await advanceTo(999);
    expect(calls).toEqual([0]);
    await advanceTo(3000);
    expect(calls).toEqual([0, 1000, 2000, 3000]);
    res.close();
  });

  test("a huge ttl is capped at maxTtl (3600 s)", async () => {
    jest.useFakeTimers({ now: 0 });
    const { lookup, calls } = scripted(() => [v4("192.0.2.1", 86400 * 7)]);
    const { res } = resolverWith(lookup);
    await res.watch("a.test");
    jest.advanceTimersByTime(3_599_999);
    await flush();
    expect(calls).toEqual([0]);
    jest.advanceTimersByTime(1);
    await flush();
    expect(calls).toEqual([0, 3_600_000]);
    res.close();
  });

  test("custom bounds; the refresh follows the smallest TTL of the answers", async () => {
    jest.useFakeTimers({ now: 0 });
    let answers = [v4("192.0.2.1", 2), v4("192.0.2.2", 300)];
    const { lookup, calls } = scripted(() => answers);
    const { res } = resolverWith(lookup, { minTtlSeconds: 5, maxTtlSeconds: 20 });
    await res.watch("a.test");
    await advanceTo(5000);
    expect(calls).toEqual([0, 5000]); // 2 s raised to 5 s
    answers = [v4("192.0.2.1", 100), v4("192.0.2.2", 300)];
    await advanceTo(10_000);
    await advanceTo(30_000);
    expect(calls).toEqual([0, 5000, 10_000, 30_000]); // 100 s lowered to 20 s
    res.close();
  });

  test("a name without addresses reports nothing and is asked again after the negative TTL (30 s)", async () => {
    jest.useFakeTimers({ now: 0 });
    let answers: Answer[] = [];
    const { lookup, calls } = scripted(() => answers);
    const { res, changes } = resolverWith(lookup);
    await res.watch("a.test");
    expect(changes).toEqual([]);
    answers = [v4("192.0.2.1", 60)];
    await advanceTo(29_900);
    expect(calls).toEqual([0]);
    await advanceTo(30_000);
    expect(calls).toEqual([0, 30_000]);
    expect(changes).toEqual([{ name: "a.test", added: ["192.0.2.1"], removed: [], current: ["192.0.2.1"], at: 30_000 }]);
    res.close();
  });

  test("failures: keep until 2×TTL (≥30 s) past expiry, back off 1 s doubling to 30 s, warn once per streak", async () => {
    jest.useFakeTimers({ now: 0 });
    let answer: Answer[] | Error = [v4("192.0.2.1", 10)];
    const { lookup, calls } = scripted(() => answer);
    const { res, changes, warnings } = resolverWith(lookup);
    await res.watch("a.test");
    answer = new Error("queryA ESERVFAIL a.test");

    // Expires at 10 s; stale deadline 10 + max(30, 2×10) = 40 s. Backoff 1, 2, 4, 8, then cut to the deadline.
    await advanceTo(39_900);
    expect(calls).toEqual([0, 10_000, 11_000, 13_000, 17_000, 25_000]);
    expect(res.current("a.test")).toEqual([{ address: "192.0.2.1", family: 4 }]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("a.test");
    expect(warnings[0]).toContain("ESERVFAIL");

    await advanceTo(40_000);
    expect(res.current("a.test")).toEqual([]);
    expect(changes.at(-1)).toEqual({ name: "a.test", added: [], removed: ["192.0.2.1"], current: [], at: 40_000 });

    // Without addresses the backoff keeps doubling up to 30 s.
    await advanceTo(100_000);
    expect(calls.slice(6)).toEqual([40_000, 70_000, 100_000]);
    expect(warnings).toHaveLength(1);

    // Recovery re-adds and resets the streak: the next failure warns again and backs off from 1 s.
    answer = [v4("192.0.2.1", 60)];
    await advanceTo(130_000);
    expect(res.current("a.test")).toEqual([{ address: "192.0.2.1", family: 4 }]);
    answer = new Error("queryA ETIMEOUT a.test");
    await advanceTo(191_000);
    expect(calls.slice(9)).toEqual([130_000, 190_000, 191_000]);
    expect(warnings).toHaveLength(2);
    // TTL 60 s: kept until 60 + 2×60 = 180 s past the success at 130 s.
    await advanceTo(309_900);
    expect(res.current("a.test")).toHaveLength(1);
    await advanceTo(310_000);
    expect(res.current("a.test")).toEqual([]);
    res.close();
  });

  test("maxStaleSeconds overrides the stale window", async () => {
    jest.useFakeTimers({ now: 0 });
    let answer: Answer[] | Error = [v4("192.0.2.1", 10)];
    const { lookup } = scripted(() => answer);
    const { res } = resolverWith(lookup, { maxStaleSeconds: 3 });
    await res.watch("a.test");
    answer = new Error("boom");
    await advanceTo(12_900);
    expect(res.current("a.test")).toHaveLength(1);
    await advanceTo(13_000);
    expect(res.current("a.test")).toEqual([]);
    res.close();
  });

  test("a successful empty answer removes at once", async () => {
    jest.useFakeTimers({ now: 0 });
    let answers = [v4("192.0.2.1", 10), { address: "2001:db8::1", family: 6 as const, ttl: 10 }];
    const { lookup } = scripted(() => answers);
    const { res, changes } = resolverWith(lookup);
    await res.watch("a.test");
    answers = [];
    await advanceTo(10_000);
    expect(changes.at(-1)).toEqual({ name: "a.test", added: [], removed: ["192.0.2.1", "2001:db8::1"], current: [], at: 10_000 });
    res.close();
  });

  test("at most one lookup in flight per name, even across unwatch + watch", async () => {
    let release!: (a: Answer[]) => void;
    let calls = 0;
    const { res, changes } = resolverWith(() => {
      calls++;
      return new Promise((r) => (release = r));
    });
    const first = res.watch("a.test");
    res.unwatch("a.test");
    const second = res.watch("A.test");
    expect(res.watch("a.test")).toBe(second);
    await Promise.resolve();
    expect(calls).toBe(1);
    release([v4("192.0.2.1", 60)]);
    await Promise.all([first, second]);
    expect(calls).toBe(1);
    expect(res.current("a.test")).toEqual([{ address: "192.0.2.1", family: 4 }]);
    expect(changes).toHaveLength(1); // the unwatched entry's result is not reported
    res.close();
  });

  test("watch settles (never rejects) on failure, including a lookup that throws synchronously", async () => {
    const { res, warnings } = resolverWith(() => {
      throw new Error("sync boom");
    });
    await res.watch("a.test");
    expect(res.current("a.test")).toEqual([]);
    expect(warnings).toEqual(["kloak: resolving a.test failed: sync boom"]);
    res.close();
  });

  test("an onChange that throws is warned and resolution carries on", async () => {
    const warnings: string[] = [];
    const res = new NameResolver({
      lookup: async () => [v4("192.0.2.1", 60)],
      onChange: () => {
        throw new Error("map full");
      },
      warn: (m) => warnings.push(m),
    });
    await res.watch("a.test");
    expect(res.current("a.test")).toHaveLength(1);
    expect(warnings).toEqual(["kloak: onChange for a.test threw: map full"]);
    res.close();
  });
});

describe.concurrent("through dnsLookup() to a real UDP DNS server", () => {
  const BOTH: DnsRecord = { A: ["192.0.2.1", "192.0.2.2"], AAAA: ["2001:db8::1"], ttl: 1 };

  /** Each test gets its own server and resolvers, so tests can run side by side. */
  async function withServer(records: Record<string, DnsRecord>, fn: (srv: DnsServer) => Promise<void>) {
    const srv = await startDnsServer(records);
    try {
      await fn(srv);
    } finally {
      await srv.close();
    }
  }
  const lookupVia = (srv: DnsServer) => dnsLookup([srv.address], { timeoutMs: 1000, tries: 1 });
  const aQueries = (srv: DnsServer, name: string) => srv.queries.filter((q) => q.name === name && q.type === "A").length;

  /** Polls until pred() holds; returns ms waited. */
  async function until(pred: () => boolean, what: string, timeoutMs = 4000): Promise<number> {
    const start = performance.now();
    while (!pred()) {
      if (performance.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await Bun.sleep(20);
    }
    return performance.now() - start;
  }

  test("dnsLookup: A and AAAA with their TTLs; NXDOMAIN and NODATA are no addresses", async () => {
    await withServer({ "both.test": { ...BOTH, ttl: 42 }, "v4.test": { A: ["192.0.2.3"], ttl: 7 } }, async (srv) => {
      const lookup = lookupVia(srv);
      expect(await lookup("both.test")).toEqual([
        { address: "192.0.2.1", family: 4, ttl: 42 },
        { address: "192.0.2.2", family: 4, ttl: 42 },
        { address: "2001:db8::1", family: 6, ttl: 42 },
      ]);
      expect(await lookup("v4.test")).toEqual([{ address: "192.0.2.3", family: 4, ttl: 7 }]);
      expect(await lookup("nope.test")).toEqual([]);
      expect(srv.queries.filter((q) => q.name === "nope.test").map((q) => q.type).sort()).toEqual(["A", "AAAA"]);
    });
  });

  test("dnsLookup: SERVFAIL and timeouts reject", async () => {
    await withServer({ "both.test": BOTH }, async (srv) => {
      srv.failing = "servfail";
      await expect(lookupVia(srv)("both.test")).rejects.toMatchObject({ code: "ESERVFAIL" });
      srv.failing = "drop";
      const t = performance.now();
      await expect(lookupVia(srv)("both.test")).rejects.toMatchObject({ code: "ETIMEOUT" });
      expect(performance.now() - t).toBeLessThan(1900);
    });
  });

  test("dnsLookup: /etc/hosts (getaddrinfo, TTL 60 s) when DNS has no address and the fallback is on", async () => {
    await withServer({}, async (srv) => {
      expect(await lookupVia(srv)("localhost")).toEqual([]);
      const viaHosts = await dnsLookup([srv.address], { hostsFallback: true, timeoutMs: 1000, tries: 1 })("localhost");
      expect(viaHosts).toContainEqual({ address: "127.0.0.1", family: 4, ttl: 60 });
      expect(srv.queries.filter((q) => q.name === "localhost")).toHaveLength(4); // DNS asked first, both times
    });
  });

  test("first resolution reports every address added", async () => {
    await withServer({ "both.test": { ...BOTH, ttl: 60 } }, async (srv) => {
      const { res, changes } = resolverWith(lookupVia(srv));
      await res.watch("both.test");
      expect(changes).toEqual([
        { name: "both.test", added: ["192.0.2.1", "192.0.2.2", "2001:db8::1"], removed: [], current: ["192.0.2.1", "192.0.2.2", "2001:db8::1"], at: changes[0]!.at },
      ]);
      expect(res.current("both.test")).toEqual([
        { address: "192.0.2.1", family: 4 },
        { address: "192.0.2.2", family: 4 },
        { address: "2001:db8::1", family: 6 },
      ]);
      expect(res.names()).toEqual(["both.test"]);
      res.close();
    });
  });

  test("new answers after the TTL expires are reported as added/removed", async () => {
    await withServer({ "both.test": BOTH }, async (srv) => {
      const { res, changes } = resolverWith(lookupVia(srv));
      await res.watch("both.test");
      srv.set("both.test", { A: ["192.0.2.2", "192.0.2.9"], ttl: 1 });
      const waited = await until(() => changes.length === 2, "the change");
      expect(waited).toBeGreaterThan(800);
      expect(changes[1]).toMatchObject({ added: ["192.0.2.9"], removed: ["192.0.2.1", "2001:db8::1"], current: ["192.0.2.2", "192.0.2.9"] });
      res.close();
    });
  });

  test("ttl 0 is asked again once a second", async () => {
    await withServer({ "zero.test": { A: ["192.0.2.1"], ttl: 0 } }, async (srv) => {
      const { res } = resolverWith(lookupVia(srv));
      await res.watch("zero.test");
      await Bun.sleep(1500);
      expect(aQueries(srv, "zero.test")).toBe(2);
      res.close();
    });
  });

  test("NXDOMAIN removes at the next refresh, not after the stale window", async () => {
    await withServer({ "both.test": BOTH }, async (srv) => {
      const { res, changes, warnings } = resolverWith(lookupVia(srv), { maxStaleSeconds: 60 });
      await res.watch("both.test");
      srv.set("both.test", null);
      await until(() => changes.length === 2, "the removal", 2500);
      expect(changes[1]).toMatchObject({ added: [], removed: ["192.0.2.1", "192.0.2.2", "2001:db8::1"], current: [] });
      expect(warnings).toEqual([]);
      res.close();
    });
  });

  // TTL 1 s, stale window 1 s: the refresh at ~1 s fails, the set is kept, and goes at ~2 s.
  for (const failing of ["servfail", "drop"] as const) {
    test(`${failing}: the last good set is kept until maxStale, then removed (one warning)`, async () => {
      await withServer({ "both.test": BOTH }, async (srv) => {
        let keptAtWarning = -1;
        const { res, changes, warnings } = resolverWith(lookupVia(srv), {
          maxStaleSeconds: failing === "drop" ? 2 : 1, // a dropped query itself takes 1 s to time out
          warn: (m) => {
            warnings.push(m);
            keptAtWarning = res.current("both.test").length;
          },
        });
        await res.watch("both.test");
        const t0 = performance.now();
        srv.failing = failing;
        await until(() => changes.length === 2, "the removal", 5000);
        const removedAfter = performance.now() - t0;
        expect(removedAfter).toBeGreaterThan(1700);
        expect(keptAtWarning).toBe(3);
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatch(/^kloak: resolving both\.test failed: .*(ESERVFAIL|ETIMEOUT).*; keeping its 3 address\(es\)/);
        expect(changes[1]).toMatchObject({ added: [], removed: ["192.0.2.1", "192.0.2.2", "2001:db8::1"], current: [] });
        res.close();
      });
    });
  }

  test("names are case-insensitive, one trailing dot is ignored", async () => {
    await withServer({ "both.test": { ...BOTH, ttl: 60 } }, async (srv) => {
      const { res, changes } = resolverWith(lookupVia(srv));
      await res.watch("BoTh.TEST.");
      await res.watch("both.test");
      expect(res.names()).toEqual(["both.test"]);
      expect(changes.map((c) => c.name)).toEqual(["both.test"]);
      expect(res.current("BOTH.test.")).toHaveLength(3);
      expect(srv.queries).toEqual([
        { name: "both.test", type: "A" },
        { name: "both.test", type: "AAAA" },
      ]);
      res.close();
    });
  });

  test("watch is idempotent: concurrent and later calls share one lookup", async () => {
    await withServer({ "both.test": { ...BOTH, ttl: 60 } }, async (srv) => {
      const { res } = resolverWith(lookupVia(srv));
      await Promise.all([res.watch("both.test"), res.watch("both.test"), res.watch("Both.Test.")]);
      const t = performance.now();
      await res.watch("both.test");
      expect(performance.now() - t).toBeLessThan(50);
      expect(aQueries(srv, "both.test")).toBe(1);
      res.close();
    });
  });

  test("unwatch reports the addresses removed and stops refreshing", async () => {
    await withServer({ "both.test": BOTH, "other.test": BOTH }, async (srv) => {
      const { res, changes } = resolverWith(lookupVia(srv));
      await res.watch("both.test");
      await res.watch("other.test");
      res.unwatch("BOTH.test");
      expect(changes.at(-1)).toMatchObject({ name: "both.test", added: [], removed: ["192.0.2.1", "192.0.2.2", "2001:db8::1"], current: [] });
      expect(res.names()).toEqual(["other.test"]);
      expect(res.current("both.test")).toEqual([]);
      await Bun.sleep(1500);
      expect(aQueries(srv, "both.test")).toBe(1);
      expect(aQueries(srv, "other.test")).toBe(2); // the other name keeps its pace
      res.close();
    });
  });

  test("close() stops every refresh and later watches reject", async () => {
    await withServer({ "both.test": BOTH, "other.test": BOTH }, async (srv) => {
      const { res, changes } = resolverWith(lookupVia(srv));
      await Promise.all([res.watch("both.test"), res.watch("other.test")]);
      const queries = srv.queries.length;
      res.close();
      expect(res.names()).toEqual([]);
      await Bun.sleep(1500);
      expect(srv.queries.length).toBe(queries);
      expect(changes).toHaveLength(2); // close reports nothing
      await expect(res.watch("both.test")).rejects.toThrow("closed");
    });
  });

  test("refresh timers do not keep a process alive, with or without close()", async () => {
    await withServer({ "both.test": BOTH }, async (srv) => {
      const dir = mkdtempSync(join(tmpdir(), "kloak-resolver-"));
      try {
        const script = join(dir, "child.ts");
        writeFileSync(
          script,
          `import { NameResolver, dnsLookup } from ${JSON.stringify(join(import.meta.dir, "../../src/policy/resolver.ts"))};
const res = new NameResolver({ lookup: dnsLookup([process.env.DNS!]), onChange: () => {} });
await res.watch("both.test");
console.log(res.current("both.test").length);
if (process.argv[2] === "close") res.close();
`,
        );
        const run = async (mode: string) => {
          const child = Bun.spawn([process.execPath, script, mode], { env: { ...process.env, DNS: srv.address }, stdout: "pipe", stderr: "inherit" });
          const killer = setTimeout(() => child.kill(), 5000);
          const [out, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
          clearTimeout(killer);
          return { out: out.trim(), code };
        };
        // A referenced timer would refresh (TTL 1 s) forever, until the 5 s kill: exit code 143.
        for (const r of await Promise.all([run("close"), run("keep")])) expect(r).toMatchObject({ out: "3", code: 0 });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
