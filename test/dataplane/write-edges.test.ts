/**
 * Edge cases of one TLS write (issue 14, "bad input"): a write of 0 bytes, of
 * 1 byte, writes around the scan cap, and one write with 10,000 placeholders.
 * Each case is one protected process under the real `kloak exec` (real eBPF
 * object on this kernel), test/support/ossl_client.py calling libssl's
 * SSL_write/SSL_write_ex through ctypes with a buffer laid out byte by byte,
 * against a real TLS server that records the plaintext it received. Each
 * case pins what the server received, the client's exit status and what it
 * saw in its own buffer after the call, and kloak's counters (its
 * --metrics-file, written at exit, and the refusal summary).
 *
 * The secret is allowed to 127.0.0.1 only (the server's address), so every
 * write is checked against the connection's peer as a real deployment's is.
 * Assertions count occurrences of the value: a failure never prints it.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseClientOutput, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { connectSteps, OSSL_CLIENT } from "../security/attack.ts";

const KLOAK_MAX_SUBST = 16; // bpf/kloak.h
const KLOAK_MAX_CANDIDATES = 32; // bpf/kloak.h
const CAP = 4096; // --scan-cap 4KiB: the smallest cap kloak takes, so the cases stay small
const TIMEOUT = 60_000;

let raw: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-write-edges-"));

beforeAll(async () => {
  raw = await startTlsServer({ mode: "raw" }); // records, never answers: any bytes are fine
});
afterAll(async () => {
  await raw.close();
  rmSync(tmp, { recursive: true, force: true });
});
beforeEach(() => raw.reset());

interface Metrics {
  /** unlabelled counters by name */
  total: Record<string, number>;
  /** kloak_substitutions_refused_total by reason, the reasons counted at least once */
  refused: Record<string, number>;
}

function readMetrics(file: string): Metrics {
  const m: Metrics = { total: {}, refused: {} };
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const r = /^kloak_substitutions_refused_total\{reason="(\w+)"\} (\d+)$/.exec(line);
    if (r) {
      if (Number(r[2]) > 0) m.refused[r[1]!] = Number(r[2]);
      continue;
    }
    const t = /^(kloak_\w+) (\d+)$/.exec(line);
    if (t) m.total[t[1]!] = Number(t[2]);
  }
  return m;
}

interface EdgeRun {
  code: number;
  stderr: string;
  /** the client printed DONE: it ran every step */
  done: boolean;
  /** the client's KEY=value lines */
  out: Record<string, string[]>;
  metrics: Metrics;
}

let runs = 0;
/**
 * One protected process: `kloak exec` with secret API_KEY (allowed to
 * 127.0.0.1) runs the ctypes client, which connects to the raw server
 * (SSL_set_fd, no SNI), handshakes and runs `steps`.
 */
async function edge(secret: string, steps: object[], scanCap = "4KiB"): Promise<EdgeRun> {
  const file = join(tmp, `run-${++runs}.prom`);
  const client = [pythonPath(), OSSL_CLIENT, JSON.stringify([...connectSteps("c", "127.0.0.1", raw.port, null), ...steps])];
  const r = await runKloak(
    ["exec", "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--scan-cap", scanCap, "--metrics-file", file, "--", ...client],
    { timeoutMs: 50_000 },
  );
  return { code: r.code, stderr: r.stderr, done: /^DONE$/m.test(r.stdout), out: parseClientOutput(r.stdout), metrics: readMetrics(file) };
}

/** What kloak's metrics file says about one run's writes (every other counter of the write path is 0). */
function writeCounters(m: Metrics) {
  return {
    writes: m.total.kloak_tls_writes_total,
    scanned: m.total.kloak_bytes_scanned_total,
    substituted: m.total.kloak_substitutions_total,
    notTaken: m.total.kloak_substitutions_not_taken_total,
    skipped: m.total.kloak_tls_writes_skipped_total,
    killed: m.total.kloak_writers_killed_total,
    eventsLost: m.total.kloak_events_lost_total,
    refused: m.refused,
  };
}

const refusalLine = (what: string, reason: string, n = 1) =>
  new RegExp(`refused ${n}x: ${what} to 127\\.0\\.0\\.1:${raw.port}: ${reason}`);

describe("a write of 0 bytes", () => {
  test(
    "SSL_write and SSL_write_ex of 0 bytes: the library's own result, not counted, not scanned; the next write is substituted",
    async () => {
      // Python's SSLSocket.send(b"") is the second call: CPython 3.11 calls SSL_write_ex(ssl, buf, 0, &n)
      // (checked with gdb; sendall(b"") calls nothing: its loop never runs). On OpenSSL 3.0 both reach ssl_write_internal
      // with length 0, where kloak's probe sits (src/dataplane/probe-sites.ts).
      const secret = fakeSecret(40);
      const zero = [
        { op: "buffer", id: "z", data: "" },
        { op: "write", id: "c", buf: "z" },
        { op: "write", id: "c", buf: "z", ex: true },
        { op: "check", buf: "z" },
      ];
      // Without kloak: what libssl itself returns for the two calls (SSL_write: 0, SSL_ERROR_SYSCALL
      // on OpenSSL 3.0; SSL_write_ex: 1, 0 bytes written).
      const plain = Bun.spawn([pythonPath(), OSSL_CLIENT, JSON.stringify([...connectSteps("c", "127.0.0.1", raw.port, null), ...zero])], {
        env: { ...process.env, API_KEY: "kloak:NOT0UNDER0KLOAK" }, // what "check" compares with; no value here
        stdout: "pipe",
        stderr: "pipe",
      });
      const [plainOut, plainErr, plainCode] = await Promise.all([new Response(plain.stdout).text(), new Response(plain.stderr).text(), plain.exited]);
      expect({ plainCode, plainErr }).toEqual({ plainCode: 0, plainErr: "" });
      const library = parseClientOutput(plainOut);
      expect(library.WROTE).toEqual(["0", "0"]); // 0 bytes written either way
      raw.reset();

      const r = await edge(secret, [...zero, { op: "buffer", id: "b", template: "{{API_KEY}}" }, { op: "write", id: "c", buf: "b" }, { op: "check", buf: "b" }]);
      expect(r.code).toBe(0);
      expect(r.done).toBe(true);
      // The 0-byte calls return what they return without kloak.
      expect(r.out.WROTE!.slice(0, 2)).toEqual(library.WROTE!);
      expect(r.out.WRITE_ERROR ?? []).toEqual(library.WRITE_ERROR ?? []);
      expect(r.out.BUF_Z).toEqual(["unchanged"]);
      // The connection goes on: the next write (the placeholder alone) is substituted and restored.
      expect(r.out.WROTE![2]).toBe("40");
      expect(r.out.BUF_B).toEqual(["placeholder"]);
      await raw.waitFor((all) => all.length >= 40);
      const got = raw.received();
      expect(got.length).toBe(40);
      expect(occurrences(got, secret)).toBe(1);
      expect(placeholderCount(got)).toBe(0);
      // A write of 0 bytes is no TLS write for kloak: not counted, nothing scanned, nothing refused.
      expect(writeCounters(r.metrics)).toEqual({ writes: 1, scanned: 40, substituted: 1, notTaken: 0, skipped: 0, killed: 0, eventsLost: 0, refused: {} });
      expect(r.stderr).toContain("kloak: 1 substitution(s) in 1 TLS write(s)\n");
      expect(r.stderr).not.toContain("refused");
    },
    TIMEOUT,
  );
});

describe("a write of 1 byte", () => {
  test(
    'a 1-byte write of ":" (the byte the scan looks for): counted and scanned, no candidate, sent as is',
    async () => {
      const r = await edge(fakeSecret(40), [{ op: "buffer", id: "o", data: ":" }, { op: "write", id: "c", buf: "o" }, { op: "check", buf: "o" }]);
      expect(r.code).toBe(0);
      expect(r.done).toBe(true);
      expect(r.out.WROTE).toEqual(["1"]);
      expect(r.out.BUF_O).toEqual(["unchanged"]);
      await raw.waitFor((all) => all.length >= 1);
      expect(raw.received().toString("latin1")).toBe(":");
      expect(writeCounters(r.metrics)).toEqual({ writes: 1, scanned: 1, substituted: 0, notTaken: 0, skipped: 0, killed: 0, eventsLost: 0, refused: {} });
      expect(r.stderr).toContain("kloak: 0 substitution(s) in 1 TLS write(s)\n");
      expect(r.stderr).not.toContain("refused");
    },
    TIMEOUT,
  );
});

describe(`writes around the scan cap (--scan-cap 4KiB = ${CAP} bytes; placeholder 40 bytes)`, () => {
  const L = 40;
  const x = (n: number) => "x".repeat(n);
  // before: filler bytes in front of the placeholder; after: filler bytes behind it.
  const cases: { name: string; before: number; after: number; substituted: boolean }[] = [
    { name: "cap - 1 bytes, the placeholder at its very end (wholly inside the cap): substituted", before: CAP - 1 - L, after: 0, substituted: true },
    { name: "cap bytes, the placeholder's last byte the last scanned byte: substituted", before: CAP - L, after: 0, substituted: true },
    {
      name: "cap + 1 bytes, the placeholder at the very end of the scanned region, 1 byte beyond: substituted, the write counted beyond_scan_cap",
      before: CAP - L,
      after: 1,
      substituted: true,
    },
    {
      name: "cap + 1 bytes, the placeholder at the very end of the write (its last byte beyond the cap): substituted (verified against the whole write), the write counted beyond_scan_cap",
      before: CAP + 1 - L,
      after: 0,
      substituted: true,
    },
    {
      name: 'straddling: only its marker "kloak:" inside the cap (the last 6 scanned bytes): substituted, the write counted beyond_scan_cap',
      before: CAP - 6,
      after: 0,
      substituted: true,
    },
    {
      name: 'the marker itself straddling the cap ("kloak" inside, ":" the first byte beyond): not found, sent as is, counted beyond_scan_cap',
      before: CAP - 5,
      after: 0,
      substituted: false,
    },
    { name: "wholly beyond the cap (it starts at the first unscanned byte): sent as is, counted beyond_scan_cap", before: CAP, after: 0, substituted: false },
  ];

  for (const c of cases) {
    test(
      c.name,
      async () => {
        const secret = fakeSecret(L);
        const len = c.before + L + c.after;
        const r = await edge(secret, [
          { op: "buffer", id: "b", template: `${x(c.before)}{{API_KEY}}${x(c.after)}` },
          { op: "write", id: "c", buf: "b" },
          { op: "check", buf: "b" },
        ]);
        expect(r.code).toBe(0);
        expect(r.done).toBe(true);
        expect(r.out.WROTE).toEqual([String(len)]); // the write completed whole
        expect(r.out.BUF_B).toEqual(["placeholder"]); // the app's buffer holds its placeholder again
        await raw.waitFor((all) => all.length >= len);
        const got = raw.received();
        expect(got.length).toBe(len);
        // the filler around it arrived as sent (the value itself may hold an "x": count only the filler's bytes)
        expect(occurrences(got.subarray(0, c.before), "x") + occurrences(got.subarray(c.before + L), "x")).toBe(c.before + c.after);
        if (c.substituted) {
          expect(occurrences(got, secret)).toBe(1);
          expect(got.indexOf(secret)).toBe(c.before);
          expect(placeholderCount(got)).toBe(0);
        } else {
          expect(occurrences(got, secret)).toBe(0);
          expect(placeholderCount(got)).toBe(1);
          expect(got.indexOf("kloak:")).toBe(c.before);
        }
        const beyond = len > CAP;
        expect(writeCounters(r.metrics)).toEqual({
          writes: 1,
          scanned: Math.min(len, CAP), // bytes unscanned: len - CAP
          substituted: c.substituted ? 1 : 0,
          notTaken: 0,
          skipped: 0,
          killed: 0,
          eventsLost: 0,
          // beyond_scan_cap counts the write (once, with no secret named), whether or not a placeholder sat beyond
          refused: beyond ? { beyond_scan_cap: 1 } : {},
        });
        expect(r.stderr).toContain(`kloak: ${c.substituted ? 1 : 0} substitution(s) in 1 TLS write(s)\n`);
        if (beyond) expect(r.stderr).toMatch(refusalLine("a write", "beyond_scan_cap"));
        else expect(r.stderr).not.toContain("refused");
      },
      TIMEOUT,
    );
  }
});

describe("10,000 placeholders in one write (~500 KiB, --scan-cap 512KiB covers it)", () => {
  const N = 10_000;
  const L = 50; // 10,000 x (50 + "\n") = 510,000 bytes
  let secret: string;
  let r: EdgeRun;
  let got: Buffer;

  beforeAll(async () => {
    secret = fakeSecret(L);
    raw.reset();
    const started = performance.now();
    r = await edge(secret, [{ op: "buffer", id: "b", template: "{{API_KEY}}\n", repeat: N }, { op: "write", id: "c", buf: "b" }, { op: "check", buf: "b" }], "512KiB");
    if (performance.now() - started > 40_000) throw new Error("kloak exec took over 40 s for one write");
    await raw.waitFor((all) => all.length >= N * (L + 1), 20_000);
    got = raw.received();
  }, TIMEOUT);

  test("the write completes whole (no hang, no kill), and every placeholder is back in the app's buffer", () => {
    expect(r.code).toBe(0);
    expect(r.done).toBe(true);
    expect(r.out.WROTE).toEqual([String(N * (L + 1))]);
    expect(r.out.BUF_B).toEqual(["placeholder"]);
    expect(r.out.BUF_B_PLACEHOLDERS).toEqual([String(N)]);
    expect(r.metrics.total.kloak_writers_killed_total).toBe(0);
  });

  test(`only the first ${KLOAK_MAX_SUBST} (in buffer order) went out as the value; the other ${N - KLOAK_MAX_SUBST} as placeholders`, () => {
    expect(got.length).toBe(N * (L + 1));
    const lines = got.toString("latin1").split("\n").slice(0, N);
    const isValue = lines.map((l) => l === secret);
    expect(isValue.slice(0, KLOAK_MAX_SUBST).every(Boolean)).toBe(true);
    expect(isValue.slice(KLOAK_MAX_SUBST).some(Boolean)).toBe(false);
    expect(occurrences(got, secret)).toBe(KLOAK_MAX_SUBST);
    expect(placeholderCount(got)).toBe(N - KLOAK_MAX_SUBST);
    expect(new Set(lines.slice(KLOAK_MAX_SUBST)).size).toBe(1); // all the one placeholder, untouched
    expect(lines[KLOAK_MAX_SUBST]!.startsWith("kloak:")).toBe(true);
  });

  test(`${KLOAK_MAX_SUBST} substituted, candidates ${KLOAK_MAX_SUBST + 1}..${KLOAK_MAX_CANDIDATES} refused too_many_placeholders`, () => {
    const { refused, ...c } = writeCounters(r.metrics);
    expect(c).toEqual({ writes: 1, scanned: N * (L + 1), substituted: KLOAK_MAX_SUBST, notTaken: 0, skipped: 0, killed: 0, eventsLost: 0 });
    expect(refused.too_many_placeholders).toBeGreaterThanOrEqual(KLOAK_MAX_CANDIDATES - KLOAK_MAX_SUBST);
    expect(r.stderr).toContain(`kloak: ${KLOAK_MAX_SUBST} substitution(s) in 1 TLS write(s)\n`);
    expect(r.stderr).toMatch(/refused \d+x: secret API_KEY to 127\.0\.0\.1:\d+: too_many_placeholders/);
  });

  test("every placeholder left in place is counted: refused (examined) or unexamined (markers past the first 32), and the summary says so", () => {
    // The 16 examined past the 16 substituted are refusals (too_many_placeholders); the 9,968 markers
    // past the first KLOAK_MAX_CANDIDATES are never examined: kloak_markers_unexamined_total counts them,
    // the summary names them, and --fail-on-refusal counts them (they may be placeholders that went out).
    const refused = Object.values(r.metrics.refused).reduce((a, n) => a + n, 0);
    const unexamined = r.metrics.total.kloak_markers_unexamined_total ?? -1;
    expect({ leftInPlace: placeholderCount(got), refused, unexamined, counted: refused + unexamined }).toEqual({
      leftInPlace: N - KLOAK_MAX_SUBST,
      refused: KLOAK_MAX_CANDIDATES - KLOAK_MAX_SUBST,
      unexamined: N - KLOAK_MAX_CANDIDATES,
      counted: N - KLOAK_MAX_SUBST,
    });
    expect(r.stderr).toContain(`kloak: ${N - KLOAK_MAX_CANDIDATES} "kloak:" marker(s) beyond the first ${KLOAK_MAX_CANDIDATES} of one TLS write were not examined`);
  });
});

describe("placeholders across the scan's chunk and word-group boundaries (bpf/scan.h: 2 KiB chunks, 32-byte groups)", () => {
  // Each write holds one placeholder whose marker "kloak:", or its ":", straddles a boundary: the
  // end of the first chunk and the start of the second, a 32-byte group boundary, an 8-byte word
  // boundary. Every one is found, verified and substituted, and put back.
  const CHUNK = 2048;
  const L = 40;
  const starts = [CHUNK - 6, CHUNK - 5, CHUNK - 3, CHUNK - 1, CHUNK, 2 * CHUNK - 4, 32 * 70 - 5, 32 * 71 - 2, 8 * 301 - 3];
  const filler = (n: number) => "x".repeat(n);
  test(
    `one write each with the placeholder at ${starts.join(", ")}: all substituted, all restored`,
    async () => {
      const secret = fakeSecret(L);
      const id = (i: number) => `b${String.fromCharCode(97 + i)}`; // the client's output keys are letters
      const steps = starts.flatMap((at, i) => [
        { op: "buffer", id: id(i), template: `${filler(at)}{{API_KEY}}${filler(10)}` },
        { op: "write", id: "c", buf: id(i) },
        { op: "check", buf: id(i) },
      ]);
      const r = await edge(secret, steps, "16KiB");
      expect(r.code).toBe(0);
      expect(r.done).toBe(true);
      for (let i = 0; i < starts.length; i++) expect(r.out[`BUF_${id(i).toUpperCase()}`]).toEqual(["placeholder"]);
      const total = starts.reduce((a, at) => a + at + L + 10, 0);
      await raw.waitFor((all) => all.length >= total);
      const got = raw.received();
      expect(got.length).toBe(total);
      let off = 0;
      const found = starts.map((at) => {
        const ok = got.subarray(off + at, off + at + L).toString("latin1") === secret;
        off += at + L + 10;
        return ok;
      });
      expect(found).toEqual(starts.map(() => true));
      expect(placeholderCount(got)).toBe(0);
      expect(writeCounters(r.metrics).substituted).toBe(starts.length);
    },
    TIMEOUT,
  );
});
