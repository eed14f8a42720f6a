/**
 * Destination policy, adversarially, on this kernel: the real CLI with the
 * real eBPF object, CPython's ssl as client, real TLS servers on distinct
 * loopback addresses (127.0.0.2-5 and ::1, all routed to lo), and a real DNS
 * server that kloak is pointed at with --dns-server. Every case asserts what
 * the servers received: the value, or the placeholder unchanged.
 *
 * Names: api.kloak.test -> 127.0.0.2, other.kloak.test -> 127.0.0.3,
 * *.example.test names -> 127.0.0.4, v6.kloak.test -> ::1.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createServer, type Server } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, parseClientOutput, pythonPath } from "../support/clients.ts";
import { startDnsServer, type DnsServer } from "../support/dns-server.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak, spawnKloak, type Run } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const PY_STEPS = join(import.meta.dir, "..", "support", "py_steps.py");

type Step =
  | { op: "open"; id: string; host: string; port: number; sni?: string | null; verify?: boolean }
  | { op: "send" | "raw_send"; id: string; n?: number }
  | { op: "close"; id: string }
  | { op: "sleep"; s: number }
  | { op: "reuse_fd"; id: string; host: string; port: number }
  | { op: "threads"; steps: Step[][] };

let certs: TestCerts;
let dns: DnsServer;
let s2: TlsServer; // api.kloak.test
let s3: TlsServer; // other.kloak.test
let s4: TlsServer; // *.example.test
let s6: TlsServer; // v6.kloak.test on ::1
let sink: Server; // plain TCP on 127.0.0.5: where a reused fd number points
let sinkBytes: Buffer[] = [];

beforeAll(async () => {
  certs = await testCerts();
  dns = await startDnsServer({
    "api.kloak.test": { A: ["127.0.0.2"], ttl: 300 },
    "other.kloak.test": { A: ["127.0.0.3"], ttl: 300 },
    "a.example.test": { A: ["127.0.0.4"], ttl: 300 },
    "a.b.example.test": { A: ["127.0.0.4"], ttl: 300 },
    "example.test": { A: ["127.0.0.4"], ttl: 300 },
    "badexample.test": { A: ["127.0.0.4"], ttl: 300 },
    "v6.kloak.test": { AAAA: ["::1"], ttl: 300 },
  });
  const start = (host: string) => startTlsServer({ host, mode: "http" });
  [s2, s3, s4, s6] = [await start("127.0.0.2"), await start("127.0.0.3"), await start("127.0.0.4"), await start("::1")];
  sink = createServer((c) => c.on("data", (d: Buffer) => sinkBytes.push(d)).on("error", () => {}));
  await new Promise<void>((r) => sink.listen(0, "127.0.0.5", r));
});
afterAll(async () => {
  await Promise.all([s2, s3, s4, s6].map((s) => s.close()));
  await dns.close();
  sink.close();
});
beforeEach(() => {
  for (const s of [s2, s3, s4, s6]) s.reset();
  sinkBytes = [];
});

const sinkPort = () => (sink.address() as { port: number }).port;

interface Outcome extends Run {
  secret: string;
  /** requests a server received carrying the real value */
  values(s: TlsServer): number;
  /** requests a server received carrying the placeholder */
  placeholders(s: TlsServer): number;
}

/** Run py_steps.py under kloak exec with secret T and these --allow rules. */
async function run(steps: Step[], allow: string[], extra: string[] = []): Promise<Outcome> {
  const secret = fakeSecret(40);
  const req = buildHttpRequest({ host: "x", headers: { "X-T": "{{T}}" } }).toString("latin1");
  const r = await runKloak(
    [
      "exec", "--secret", `T=${secret}`, "--dns-server", dns.address,
      ...allow.flatMap((a) => ["--allow", a]), ...extra,
      "--", pythonPath(), PY_STEPS, JSON.stringify(steps),
    ],
    { env: { KLOAK_TEST_REQUEST: req, KLOAK_TEST_CA: certs.caFile } },
  );
  if (process.env.KLOAK_TEST_DEBUG) console.log(r.code, r.stdout, r.stderr);
  // Every client run must complete (the servers answer placeholders too), so a
  // refused substitution can never hide behind a client that failed to connect.
  expect(r.code).toBe(0);
  return {
    ...r,
    secret,
    values: (s) => occurrences(s.received(), `X-T: ${secret}\r\n`),
    placeholders: (s) => placeholderCount(s.received()),
  };
}

const open = (id: string, s: TlsServer, sni: string | null, verify = true): Step => ({
  op: "open", id, host: s.host, port: s.port, sni, verify,
});
const send = (id: string, n = 1): Step => ({ op: "send", id, n });
const dest = (s: TlsServer) => (s.host.includes(":") ? `\\[${s.host}\\]:${s.port}` : `${s.host.replaceAll(".", "\\.")}:${s.port}`);

describe("a secret reaches only its allowed hosts", () => {
  test("allowed host: substituted; any other host: the placeholder arrives unchanged", async () => {
    const o = await run([open("a", s2, "api.kloak.test"), send("a"), open("b", s3, "other.kloak.test"), send("b")], [
      "T=api.kloak.test",
    ]);
    expect(o.code).toBe(0);
    expect(o.values(s2)).toBe(1);
    expect(o.values(s3)).toBe(0);
    expect(o.placeholders(s3)).toBe(1);
    expect(o.stderr).toMatch(new RegExp(`refused 1x: secret T to ${dest(s3)} \\(SNI other\\.kloak\\.test\\): destination_not_allowed`));
  });

  test("one process, a verified connection and one to a non-allowed IP, interleaved and from 4 threads", async () => {
    const thread = (i: number): Step[] => [
      open(`ok${i}`, s2, "api.kloak.test"),
      open(`bad${i}`, s3, "other.kloak.test"),
      send(`ok${i}`), send(`bad${i}`), send(`bad${i}`), send(`ok${i}`), send(`bad${i}`), send(`ok${i}`),
    ];
    const o = await run([{ op: "threads", steps: [0, 1, 2, 3].map(thread) }], ["T=api.kloak.test"]);
    expect(o.code).toBe(0);
    expect(parseClientOutput(o.stdout).SENT?.length).toBe(24);
    // Never the value on the non-allowed connections, whatever the order.
    expect(o.values(s3)).toBe(0);
    expect(o.placeholders(s3)).toBe(12);
    // The allowed ones: the value, or the placeholder when another thread held
    // the stop-mode claim at that moment (fail closed, counted).
    expect(o.values(s2) + o.placeholders(s2)).toBe(12);
    expect(o.values(s2)).toBeGreaterThan(0);
  });

  test("SNI set to the allowed name while connecting to a non-allowed IP: not substituted", async () => {
    // The certificate covers *.kloak.test on every loopback IP, so the client is satisfied.
    const o = await run([open("a", s3, "api.kloak.test"), send("a")], ["T=api.kloak.test"]);
    expect(o.code).toBe(0);
    expect(o.values(s3)).toBe(0);
    expect(o.placeholders(s3)).toBe(1);
    expect(o.stderr).toMatch(/destination_not_allowed/);
  });

  test("the allowed host's IP with another name as SNI: sni_mismatch (shared IPs serve many names)", async () => {
    const o = await run([open("a", s2, "other.kloak.test"), send("a")], ["T=api.kloak.test"]);
    expect(o.values(s2)).toBe(0);
    expect(o.placeholders(s2)).toBe(1);
    expect(o.stderr).toMatch(new RegExp(`secret T to ${dest(s2)} \\(SNI other\\.kloak\\.test\\): sni_mismatch`));
  });

  test("by IP without SNI: substituted when the IP is one kloak resolved for the rule's host, or an IP rule allows it", async () => {
    const o = await run([open("a", s2, null), send("a"), open("b", s3, null), send("b")], ["T=api.kloak.test"]);
    expect(o.values(s2)).toBe(1); // 127.0.0.2 is api.kloak.test's resolved address
    expect(o.values(s3)).toBe(0);
    const ip = await run([open("b", s3, null), send("b"), open("c", s4, null), send("c")], ["T=127.0.0.3"]);
    expect(ip.values(s3)).toBe(1);
    expect(ip.values(s4)).toBe(0);
    const cidr = await run([open("c", s4, null), send("c")], ["T=127.0.0.0/30"]);
    expect(cidr.values(s4)).toBe(0); // 127.0.0.4 is outside 127.0.0.0/30
  });

  test("fd closed and its number reused for another destination: not substituted", async () => {
    const o = await run(
      [
        open("a", s2, "api.kloak.test"),
        send("a"),
        { op: "reuse_fd", id: "a", host: "127.0.0.5", port: sinkPort() },
        { op: "raw_send", id: "a" },
        { op: "sleep", s: 0.2 },
      ],
      ["T=api.kloak.test"],
    );
    expect(o.code).toBe(0);
    expect(o.values(s2)).toBe(1);
    // The second write went, encrypted, into the other socket: kloak must not
    // have put the value into it (it cannot see that socket's peer as allowed).
    expect(Buffer.concat(sinkBytes).length).toBeGreaterThan(0);
    expect(o.stderr).toMatch(/1 substitution\(s\) in 2 TLS write\(s\)/);
    expect(o.stderr).toMatch(/refused 1x: secret T to unknown destination \(SNI api\.kloak\.test\): binding_changed/);
  });

  test("host:port: the wrong port is not substituted, the right one is", async () => {
    const wrong = await run([open("a", s2, "api.kloak.test"), send("a")], [`T=api.kloak.test:${s2.port === 1 ? 2 : 1}`]);
    expect(wrong.values(s2)).toBe(0);
    expect(wrong.placeholders(s2)).toBe(1);
    const right = await run([open("a", s2, "api.kloak.test"), send("a")], [`T=api.kloak.test:${s2.port}`]);
    expect(right.values(s2)).toBe(1);
  });

  test("*.example.test matches a.example.test and a.b.example.test, not example.test nor badexample.test", async () => {
    const o = await run(
      [
        open("one", s4, "a.example.test"), send("one"),
        // the test certificate's *.example.test covers one label only: no name check for a.b
        open("two", s4, "a.b.example.test", false), send("two"),
        open("bare", s4, "example.test"), send("bare"),
        open("bad", s4, "badexample.test", false), send("bad"),
      ],
      ["T=*.example.test"],
    );
    expect(o.code).toBe(0);
    const per = s4.connections.map((c) => occurrences(c, `X-T: ${o.secret}\r\n`));
    expect(s4.sni).toEqual(["a.example.test", "a.b.example.test", "example.test", "badexample.test"]);
    expect(per).toEqual([1, 1, 0, 0]);
    expect(o.placeholders(s4)).toBe(2);
  });

  test("IPv6: a peer on ::1 is allowed by its resolved AAAA and by [::1]:port, not by another port", async () => {
    const byName = await run([open("a", s6, "v6.kloak.test"), send("a")], ["T=v6.kloak.test"]);
    expect(byName.code).toBe(0);
    expect(byName.values(s6)).toBe(1);
    const byIp = await run([open("a", s6, null), send("a")], [`T=[::1]:${s6.port}`]);
    expect(byIp.values(s6)).toBe(1);
    const wrongPort = await run([open("a", s6, null), send("a")], [`T=[::1]:${s6.port === 1 ? 2 : 1}`]);
    expect(wrongPort.values(s6)).toBe(0);
    expect(wrongPort.stderr).toMatch(new RegExp(`secret T to ${dest(s6)}: destination_not_allowed`));
  });
});

describe("answers change while connections are open", () => {
  test("after TTL expiry new connections follow the new answers; a connection verified before keeps working", async () => {
    dns.set("rotating.kloak.test", { A: ["127.0.0.2"], ttl: 1 });
    try {
      const steps: Step[] = [
        open("early", s2, "rotating.kloak.test"),
        send("early"),
        // the test flips the answer to 127.0.0.3 once "early" arrived; TTL 1 s
        { op: "sleep", s: 3 },
        open("late_old", s2, "rotating.kloak.test"),
        send("late_old"),
        open("late_new", s3, "rotating.kloak.test"),
        send("late_new"),
        send("early"),
      ];
      const flip = s2
        .waitFor((all) => all.includes("X-T: "), 20_000)
        .then(() => dns.set("rotating.kloak.test", { A: ["127.0.0.3"], ttl: 1 }));
      const o = await run(steps, ["T=rotating.kloak.test"]);
      await flip;
      expect(o.code).toBe(0);
      // s2: "early" twice (value both times: bound while 127.0.0.2 was the answer), "late_old" once (placeholder)
      const early = s2.connections[0]!;
      const lateOld = s2.connections[1]!;
      expect(occurrences(early, `X-T: ${o.secret}\r\n`)).toBe(2);
      expect(occurrences(lateOld, `X-T: ${o.secret}\r\n`)).toBe(0);
      expect(placeholderCount(lateOld)).toBe(1);
      expect(o.values(s3)).toBe(1);
    } finally {
      dns.set("rotating.kloak.test", null);
    }
  }, 30_000);
});

describe("scopes", () => {
  test("a second kloak exec tree sending the first tree's placeholder: not substituted", async () => {
    const secret = fakeSecret(40);
    const dir = join(mkdtempSync(join(tmpdir(), "kloak-scope-")), "ph");
    const req = buildHttpRequest({ host: "x", headers: { "X-T": "{{T}}" } }).toString("latin1");
    const env = { KLOAK_TEST_REQUEST: req, KLOAK_TEST_CA: certs.caFile };
    // Tree 1 holds T and stays up while tree 2 runs.
    const first = spawnKloak(
      ["exec", "--secret", `T=${secret}`, "--allow", "T=127.0.0.2", "--placeholder-dir", dir, "--",
        pythonPath(), PY_STEPS, JSON.stringify([open("a", s2, null), send("a"), { op: "sleep", s: 4 }, send("a")])],
      { env },
    );
    try {
      await s2.waitFor((all) => occurrences(all, `X-T: ${secret}\r\n`) === 1, 20_000);
      const stolen = (await Bun.file(join(dir, "T")).text()).trim();
      // Tree 2 has its own secret U, and sends T's placeholder to the same allowed server.
      const other = fakeSecret(12);
      const second = await runKloak(
        ["exec", "--secret", `U=${other}`, "--allow", "U=127.0.0.2", "--",
          pythonPath(), PY_STEPS, JSON.stringify([open("b", s2, null), send("b")])],
        { env: { ...env, T: stolen } },
      );
      expect(second.code).toBe(0);
      expect(occurrences(s2.connections[1]!, stolen)).toBe(1);
      expect(occurrences(s2.connections[1]!, secret)).toBe(0);
      expect(second.stderr).toMatch(/refused 1x: a write to 127\.0\.0\.2:\d+: unknown_placeholder/);
    } finally {
      const code = await first.exited;
      expect(code).toBe(0);
      Bun.spawnSync(["rm", "-rf", dir]);
    }
    expect(occurrences(s2.connections[0]!, `X-T: ${secret}\r\n`)).toBe(2);
  }, 30_000);
});

describe("refusals are counted", () => {
  test("--metrics-file: kloak_substitutions_refused_total by reason, no value anywhere", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "kloak-metrics-")), "kloak.prom");
    try {
      const o = await run(
        [open("a", s2, "api.kloak.test"), send("a"), open("b", s3, "other.kloak.test"), send("b", 2), open("c", s2, "other.kloak.test"), send("c")],
        ["T=api.kloak.test"],
        ["--metrics-file", file],
      );
      expect(o.code).toBe(0);
      const text = await Bun.file(file).text();
      expect(text).toContain('kloak_substitutions_refused_total{reason="destination_not_allowed"} 2');
      expect(text).toContain('kloak_substitutions_refused_total{reason="sni_mismatch"} 1');
      expect(text).toContain('kloak_substitutions_refused_total{reason="unknown_peer"} 0');
      expect(text).toMatch(/^kloak_substitutions_total 1$/m);
      expect(occurrences(text, o.secret)).toBe(0);
      expect(occurrences(o.stderr + o.stdout, o.secret)).toBe(0);
    } finally {
      Bun.spawnSync(["rm", "-f", file]);
    }
  });
});

describe("--fail-on-refusal", () => {
  const runFlag = async (steps: Step[], extra: string[]) => {
    const secret = fakeSecret(40);
    const req = buildHttpRequest({ host: "x", headers: { "X-T": "{{T}}" } }).toString("latin1");
    return runKloak(
      ["exec", "-q", "--secret", `T=${secret}`, "--dns-server", dns.address, "--allow", "T=api.kloak.test", ...extra,
        "--", pythonPath(), PY_STEPS, JSON.stringify(steps)],
      { env: { KLOAK_TEST_REQUEST: req, KLOAK_TEST_CA: certs.caFile } },
    );
  };

  test("a refused substitution turns CMD's success into exit 3, saying why; without the flag, CMD's 0", async () => {
    const steps = [open("a", s2, "api.kloak.test"), send("a"), open("b", s3, "other.kloak.test"), send("b")];
    const flagged = await runFlag(steps, ["--fail-on-refusal"]);
    expect(flagged.code).toBe(3);
    // -q: the refusal, then why the exit code is 3
    const lines = flagged.stderr.trim().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(new RegExp(`^kloak: refused 1x: secret T to ${dest(s3)} \\(SNI other\\.kloak\\.test\\): destination_not_allowed`));
    expect(lines[1]).toBe("kloak: 1 substitution(s) refused or failed closed: exit 3 (--fail-on-refusal)");
    expect(s3.received().length).toBeGreaterThan(0); // CMD ran to its end: only the exit code changes
    const plain = await runFlag(steps, []);
    expect(plain.code).toBe(0);
  });

  test("nothing refused: CMD's exit code", async () => {
    const r = await runFlag([open("a", s2, "api.kloak.test"), send("a", 2)], ["--fail-on-refusal"]);
    expect(r.code).toBe(0);
    expect(s2.received().length).toBeGreaterThan(0);
    expect(r.stderr).toBe("");
  });
});
