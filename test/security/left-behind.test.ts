/**
 * No value is ever left behind (threat model B, docs/policy.md section 5):
 * kloak never writes the value into memory it cannot take it back from, takes
 * it back through protections the tree sets during the call, kills a writer
 * whose buffer it cannot restore, and keeps room for every restore whatever
 * the tree floods the event ring with. API_KEY may go to 127.0.0.1.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { parseClientOutput, pythonPath } from "../support/clients.ts";
import { attack, connectSteps, count, fakeSecret, OSSL_CLIENT, type AttackRun } from "./attack.ts";

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

let server: TlsServer;
let raw: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-left-behind-"));

beforeAll(async () => {
  server = await startTlsServer({ host: "127.0.0.1" });
  raw = await startTlsServer({ host: "127.0.0.1", mode: "raw" });
});
afterAll(async () => {
  await server.close();
  await raw.close();
});
beforeEach(() => {
  server.reset();
  raw.reset();
});

const metric = (file: string, name: string) => {
  const m = new RegExp(`^${name} (\\d+)$`, "m").exec(readFileSync(file, "utf8"));
  return m ? Number(m[1]) : NaN;
};

describe("kloak writes the value only into private memory of the writer", () => {
  for (const kind of ["shared", "file"] as const) {
    test(`a buffer in ${kind === "shared" ? "shared (MAP_SHARED)" : "file-backed"} memory: refused, the memory never holds the value`, async () => {
      const secret = fakeSecret(32);
      const r = await attack({
        secret,
        allow: ["127.0.0.1"],
        steps: [...connectSteps("c", "127.0.0.1", server.port, null), { op: "buffer", id: "b", kind }, { op: "write", id: "c", buf: "b" }, { op: "check", buf: "b" }, { op: "read", id: "c" }],
      });
      expect(r.code).toBe(0);
      expect(count(server.received(), secret)).toEqual({ values: 0, placeholders: 2 });
      expect(r.out.BUF_B).toEqual(["placeholder"]);
      expect(r.stderr).toMatch(/refused 2x: secret API_KEY to 127\.0\.0\.1:\d+: buffer_not_private/);
    });
  }
});

describe("the value does not outlive the write", () => {
  test("the buffer made read-only from inside the call (a BIO of the app's): put back anyway, or the writer dies", async () => {
    const secret = fakeSecret(32);
    const metrics = join(tmp, "mprotect.prom");
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      flags: ["--metrics-file", metrics, "--verbose"],
      steps: [
        { op: "tcp", id: "t", host: "127.0.0.1", port: server.port },
        { op: "ssl", id: "c" },
        { op: "buffer", id: "b", kind: "page" },
        { op: "app_bio", id: "c", sock: "t", during_write: "mprotect:b" },
        { op: "connect", id: "c" },
        { op: "write", id: "c", buf: "b" },
        { op: "check", buf: "b" },
        { op: "read", id: "c" },
      ],
    });
    expect(count(server.received(), secret)).toEqual({ values: 2, placeholders: 0 });
    if (/rewrite mode stop/.test(r.stderr)) {
      // The worker writes through the protection, as a debugger does.
      expect(r.code).toBe(0);
      expect(r.out.BUF_B).toEqual(["placeholder"]);
    } else {
      // bpf_probe_write_user cannot: the writer dies before it runs on with the value.
      expect(r.code).toBe(128 + 9);
      expect(r.out.BUF_B).toBeUndefined();
      expect(metric(metrics, "kloak_writers_killed_total")).toBe(1);
    }
  });

  test("the buffer moved away (mremap) from inside the call: the writer is killed, counted", async () => {
    const secret = fakeSecret(32);
    const metrics = join(tmp, "mremap.prom");
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      flags: ["--metrics-file", metrics],
      steps: [
        { op: "tcp", id: "t", host: "127.0.0.1", port: server.port },
        { op: "ssl", id: "c" },
        { op: "buffer", id: "b", kind: "page" },
        { op: "app_bio", id: "c", sock: "t", during_write: "mremap:b" },
        { op: "connect", id: "c" },
        { op: "write", id: "c", buf: "b" },
        { op: "sleep", s: 5 },
      ],
    });
    expect(r.code).toBe(128 + 9); // SIGKILL, before it could run on with the value
    expect(r.stdout).not.toContain("WROTE=");
    expect(metric(metrics, "kloak_writers_killed_total")).toBe(1);
  });

  /** What --quiet printed, but for buffer_unchecked refusals: a busy memory map (TCG VMs) fails a
   * write closed before anything is substituted, and --quiet shows refusals. */
  const problems = (stderr: string) => stderr.split("\n").filter((l) => l !== "" && !/: buffer_unchecked \(/.test(l));

  /** A descendant whose write sleeps `sleep` s inside the call (a BIO of the app's), holding the
   * value, while CMD exits 1 s into the write and kloak closes down; what it printed, once it ended. */
  async function survivor(sleep: number): Promise<{ r: AttackRun; out: Record<string, string[]>; text: string; secret: string }> {
    const secret = fakeSecret(32);
    const out = join(tmp, `survivor-${sleep}.out`);
    const steps = JSON.stringify([
      { op: "tcp", id: "t", host: "127.0.0.1", port: server.port },
      { op: "ssl", id: "c" },
      { op: "buffer", id: "b", kind: "page" },
      { op: "app_bio", id: "c", sock: "t", during_write: `sleep:${sleep}` },
      { op: "connect", id: "c" },
      { op: "say", text: "READY" },
      { op: "write", id: "c", buf: "b" },
      { op: "check", buf: "b" },
    ]);
    const py = `${q(pythonPath())} ${q(OSSL_CLIENT)} ${q(steps)}`;
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      flags: ["--quiet"],
      steps: [],
      // CMD exits 1 s after the descendant began its write (however slow the machine). grep -s: the
      // shell may look before the background job's redirect has made the file (its "No such file"
      // would be CMD's stderr, which the tests read).
      wrap: ["sh", "-c", `${py} >${q(out)} 2>&1 & until grep -qs READY ${q(out)}; do sleep 0.1; done; sleep 1; exit 0 #`],
    });
    // Until the descendant (its steps name `sleep:N`) has ended: only then is its output complete.
    for (let i = 0; i < 100 && Bun.spawnSync(["pgrep", "-f", `sleep:${sleep}`]).success; i++) await Bun.sleep(100);
    const text = existsSync(out) ? readFileSync(out, "utf8") : "";
    return { r, out: parseClientOutput(text), text, secret };
  }

  test("a descendant still inside a write when CMD exits and kloak stops: its buffer gets the placeholder back", async () => {
    const { r, out } = await survivor(2);
    expect(r.code).toBe(0);
    expect(out.BUF_B).toEqual(["placeholder"]);
    expect(problems(r.stderr)).toEqual([]);
  });

  test("... and one still inside it 3 s after kloak began to stop is killed: it never runs on with the value", async () => {
    const { r, out, text } = await survivor(6);
    expect(r.code).toBe(0);
    // one line, and a failure shows every line (counts and pids, never a value)
    expect(problems(r.stderr)).toEqual([expect.stringMatching(/^kloak: killed process \d+: still inside a TLS write holding a secret 3000 ms after kloak began to stop$/)]);
    expect(out.BUF_B).toBeUndefined();
    expect(text).not.toContain("WROTE=");
  });

  test("a flood of refusal events overflows their ring: every substitution is still restored", async () => {
    const secret = fakeSecret(32);
    // Flooders write strings that look like placeholders but are none (32 refusals a write);
    // meanwhile the real client substitutes API_KEY 200 times.
    const junk = Array.from({ length: 32 }, (_, i) => `kloak:ZZZZZZ${String(i).padStart(2, "0")}`).join(" ");
    const flood = JSON.stringify([
      ...connectSteps("f", "127.0.0.1", raw.port, null),
      { op: "buffer", id: "j", data: junk },
      { op: "write", id: "f", buf: "j", n: 3000 },
    ]);
    const real = JSON.stringify([
      ...connectSteps("c", "127.0.0.1", raw.port, null),
      { op: "buffer", id: "b" },
      { op: "write", id: "c", buf: "b", n: 200 },
      { op: "check", buf: "b" },
      { op: "sleep", s: 0.5 },
    ]);
    const py = (steps: string) => `${q(pythonPath())} ${q(OSSL_CLIENT)} ${q(steps)}`;
    const metrics = join(tmp, "flood.prom");
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      flags: ["--metrics-file", metrics, "--quiet"],
      steps: [],
      // The first python loads kloak's TLS programs (held at its open of libssl) before the three
      // start: this test is about the flood, not about processes that open libssl while that load
      // runs (test/dataplane/lib-open.test.ts).
      wrap: ["sh", "-c", `${q(pythonPath())} -c "import ssl" && { ${py(flood)} >/dev/null & ${py(flood)} >/dev/null & ${py(real)}; wait; } #`],
    });
    // One comparison, so a failure shows every outcome at once.
    expect({
      code: r.code,
      tlsWrites: metric(metrics, "kloak_tls_writes_total"), // every client probed: 3000 + 3000 + 200
      overflowed: metric(metrics, "kloak_events_lost_total") > 0, // the flood did overflow its ring
      buffer: r.out.BUF_B,
      values: count(raw.received(), secret).values, // header and body, 200 writes
      killed: metric(metrics, "kloak_writers_killed_total"),
      skipped: metric(metrics, "kloak_tls_writes_skipped_total"), // every CPU work slot taken
      notStopped: metric(metrics, 'kloak_substitutions_refused_total\\{reason="writer_not_stopped"\\}'),
    }).toEqual({ code: 0, tlsWrites: 6200, overflowed: true, buffer: ["placeholder"], values: 400, killed: 0, skipped: 0, notStopped: 0 });
  });
});
