/**
 * The data plane end to end on this kernel: the real CLI loads the real eBPF
 * object, real TLS clients (curl, Python's ssl, node) talk to a real TLS
 * server that records the plaintext it received.
 *
 * Assertions count occurrences instead of comparing strings, so a failure
 * never prints a secret value.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, curlArgs, nodeClientArgs, parseClientOutput, pythonClientArgs } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak, spawnKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { NO_TLS_WRITES } from "../../src/cli/exec.ts";

let certs: TestCerts;
let http: TlsServer;
let raw: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-exec-test-"));

beforeAll(async () => {
  certs = await testCerts();
  http = await startTlsServer({ mode: "http" });
  raw = await startTlsServer({ mode: "raw" });
});
afterAll(() => {
  http.close();
  raw.close();
});
beforeEach(() => {
  http.reset();
  raw.reset();
});

/** Shell-quote for sh -c. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

function requestFile(name: string, req: Buffer): string {
  const f = join(tmp, name);
  writeFileSync(f, req);
  return f;
}

describe("kloak exec substitutes inside real TLS writes", () => {
  test("curl: placeholder in a header and in the body; the app only ever holds the placeholder", async () => {
    const secret = fakeSecret(40);
    const curl = curlArgs(`${http.url}/api`, {
      caFile: certs.caFile,
      headers: { Authorization: "Bearer $API_TOKEN" },
      body: "token=$API_TOKEN&x=1",
    })
      .map(q)
      .join(" ")
      .replaceAll("$API_TOKEN", `'"$API_TOKEN"'`);
    const r = await runKloak(["exec", "--secret", `API_TOKEN=${secret}`, "--", "sh", "-c", `${curl} && echo "APP=$API_TOKEN"`]);
    expect(r.code).toBe(0);
    const got = http.received();
    expect(occurrences(got, `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(occurrences(got, `token=${secret}&x=1`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
    // What the application saw: the placeholder, never the value.
    expect(occurrences(r.stdout, secret)).toBe(0);
    expect(r.stdout).toMatch(/^APP=kloak:[0-9A-Z]{34}$/m);
    // The rewrite mode is --verbose's; a plain run says only what matters.
    expect(r.stderr).not.toContain("rewrite mode");
    expect(r.stderr).toContain("may be sent to any TLS destination");
    expect(r.stderr).not.toContain(NO_TLS_WRITES);
  });

  test("a run with no TLS write kloak could see says so, and what it means for the placeholders", async () => {
    const r = await runKloak(["exec", "--secret", `API_TOKEN=${fakeSecret(20)}`, "--", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >/dev/null"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("kloak: 0 substitution(s) in 0 TLS write(s)\n");
    expect(r.stderr).toContain(`kloak: ${NO_TLS_WRITES}\n`);
  });

  test("python ssl: sendall of a bytes object; after the call the object still holds the placeholder", async () => {
    const secret = fakeSecret(24);
    const req = requestFile("py.req", buildHttpRequest({ host: "x", headers: { "X-Api-Key": "{{API_KEY}}" }, body: "k={{API_KEY}}" }));
    const r = await runKloak(
      ["exec", "--secret", `API_KEY=${secret}`, "--", ...pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: req, placeholderEnv: "API_KEY", repeat: 3 })],
    );
    expect(r.code).toBe(0);
    const out = parseClientOutput(r.stdout);
    expect(out.APP_SENDS).toEqual(["3"]);
    expect(out.APP_SAW_PLACEHOLDER).toEqual(["yes", "yes", "yes"]);
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    const got = http.received();
    expect(occurrences(got, `X-Api-Key: ${secret}\r\n`)).toBe(3);
    expect(occurrences(got, `k=${secret}`)).toBe(3);
    expect(placeholderCount(got)).toBe(0);
  });

  test("node https (OpenSSL linked into the node executable)", async () => {
    const secret = fakeSecret(32);
    const node = nodeClientArgs(`${http.url}/n`, { caFile: certs.caFile, headers: { "X-Token": "__T__" }, body: "v=__T__" })
      .map(q)
      .join(" ")
      .replaceAll("__T__", `'"$NODE_TOKEN"'`);
    const r = await runKloak(["exec", "--secret", `NODE_TOKEN=${secret}`, "--", "sh", "-c", node]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("STATUS=200");
    const got = http.received();
    expect(occurrences(got, `X-Token: ${secret}`)).toBe(1);
    expect(occurrences(got, `v=${secret}`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
  });

  test("several placeholders in one write, at the very start and the very end of the buffer", async () => {
    const a = fakeSecret(16);
    const b = fakeSecret(100);
    const req = requestFile("edges.req", Buffer.from("{{A}} middle {{B}} and {{A}} again {{B}}"));
    const r = await runKloak([
      "exec", "--secret", `A=${a}`, "--secret", `B=${b}`, "--",
      ...pythonClientArgs({ port: raw.port, caFile: certs.caFile, requestFile: req, placeholderEnv: "A", noWait: true }),
    ]);
    expect(r.code).toBe(0);
    await raw.waitFor((all) => all.length >= 2 * a.length + 2 * b.length + 18);
    expect(raw.received().toString("latin1")).toBe(`${a} middle ${b} and ${a} again ${b}`);
    expect(parseClientOutput(r.stdout).APP_UNCHANGED).toEqual(["yes"]);
  });

  test("a lookalike kloak: with an unknown tail is left untouched and counted", async () => {
    const secret = fakeSecret(20);
    const lookalike = "kloak:ZZZZZZZZZZZZZZ"; // 20 bytes, never issued
    const req = requestFile("look.req", Buffer.from(`real={{S}} fake=${lookalike}`));
    const r = await runKloak(["exec", "--secret", `S=${secret}`, "--", ...pythonClientArgs({ port: raw.port, caFile: certs.caFile, requestFile: req, noWait: true })]);
    expect(r.code).toBe(0);
    await raw.waitFor((all) => all.includes(lookalike));
    const got = raw.received();
    expect(occurrences(got, `real=${secret} `)).toBe(1);
    expect(occurrences(got, `fake=${lookalike}`)).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`refused 1x: a write to 127\\.0\\.0\\.1:${raw.port}: unknown_placeholder`));
  });

  test("1 MiB body: a placeholder inside the scan cap is substituted, one beyond it goes out as is (counted)", async () => {
    const secret = fakeSecret(32);
    const filler = (n: number) => "x".repeat(n);
    // One sendall of ~1 MiB: one SSL_write of the whole buffer.
    const body = `${filler(1000)}{{S}}${filler(512 * 1024)}{{S}}${filler(500 * 1024)}`;
    const req = requestFile("big.req", Buffer.from(body));
    const r = await runKloak(["exec", "--secret", `S=${secret}`, "--", ...pythonClientArgs({ port: raw.port, caFile: certs.caFile, requestFile: req, noWait: true })]);
    expect(r.code).toBe(0);
    const total = 1000 + 2 * 32 + 1012 * 1024;
    await raw.waitFor((all) => all.length >= total, 20_000);
    const got = raw.received();
    expect(got.length).toBe(total);
    expect(occurrences(got, secret)).toBe(1);
    expect(got.indexOf(secret)).toBe(1000);
    expect(placeholderCount(got)).toBe(1);
    expect(got.indexOf("kloak:")).toBe(1000 + 32 + 512 * 1024);
    expect(r.stderr).toMatch(new RegExp(`refused 1x: a write to 127\\.0\\.0\\.1:${raw.port}: beyond_scan_cap`));
  });

  test("8 concurrent curl clients in one tree all get substituted", async () => {
    const secret = fakeSecret(48);
    const one = curlArgs(`${http.url}/c`, { caFile: certs.caFile, headers: { Authorization: "Bearer __T__" } })
      .map(q)
      .join(" ")
      .replaceAll("__T__", `'"$TOK"'`);
    const script = `for i in 1 2 3 4 5 6 7 8; do ${one} >/dev/null & done; wait`;
    const r = await runKloak(["exec", "--secret", `TOK=${secret}`, "--", "sh", "-c", script]);
    expect(r.code).toBe(0);
    await http.waitFor(() => http.requests.length >= 8);
    expect(occurrences(http.received(), `Bearer ${secret}\r\n`)).toBe(8);
    expect(placeholderCount(http.received())).toBe(0);
  });

  test("one thread writing back to back: every write substituted, none refused as concurrent", async () => {
    // Regression: the thread resumed after its restore used to find its own,
    // not yet released claim and refuse its next write.
    const secret = fakeSecret(40);
    const req = requestFile("b2b.req", buildHttpRequest({ host: "x", headers: { "X-B": "{{B}}" } }));
    const r = await runKloak([
      "exec", "--secret", `B=${secret}`, "--",
      ...pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: req, placeholderEnv: "B", repeat: 300 }),
    ]);
    expect(r.code).toBe(0);
    expect(parseClientOutput(r.stdout).APP_UNCHANGED).toEqual(["yes"]);
    expect(occurrences(http.received(), `X-B: ${secret}\r\n`)).toBe(300);
    expect(placeholderCount(http.received())).toBe(0);
    expect(r.stderr).not.toContain("concurrent_write");
  });

  test("8 threads of one process writing at once", async () => {
    const secret = fakeSecret(30);
    const req = requestFile("thr.req", buildHttpRequest({ host: "x", headers: { "X-K": "{{K}}" } }));
    const r = await runKloak([
      "exec", "--secret", `K=${secret}`, "--",
      ...pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: req, placeholderEnv: "K", threads: 8, repeat: 5 }),
    ]);
    expect(r.code).toBe(0);
    const out = parseClientOutput(r.stdout);
    expect(out.APP_SENDS).toEqual(["40"]);
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    // Every request carries exactly the value or, when another thread of the
    // process held the stop at that moment, the placeholder (fail closed,
    // counted as concurrent_write); never torn bytes.
    const got = http.received();
    const substituted = occurrences(got, `X-K: ${secret}\r\n`);
    const refused = placeholderCount(got);
    expect(substituted + refused).toBe(40);
    expect(substituted).toBeGreaterThan(0);
    // Each placeholder that went out is accounted for: refused (concurrent_write, or another
    // reason a loaded machine can produce, e.g. writer_not_stopped) or failed closed.
    let counted = 0;
    for (const m of r.stderr.matchAll(/refused (\d+)x: secret K to /g)) counted += Number(m[1]);
    counted += Number(/, (\d+) failed closed/.exec(r.stderr)?.[1] ?? 0);
    expect(refused).toBe(counted);
  });

  test("descendants started later, loading libssl late, are covered", async () => {
    const secret = fakeSecret(26);
    const req = requestFile("late.req", buildHttpRequest({ host: "x", headers: { "X-Late": "{{L}}" } }));
    const py = pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: req }).map(q).join(" ");
    // sh -> (sleep) -> sh -> python, which imports ssl (dlopen of libssl) only when it runs.
    const r = await runKloak(["exec", "--secret", `L=${secret}`, "--", "sh", "-c", `sleep 0.3; sh -c ${q(py)}`]);
    expect(r.code).toBe(0);
    expect(occurrences(http.received(), `X-Late: ${secret}\r\n`)).toBe(1);
  });

  test("a process outside kloak exec sending the same placeholder is untouched", async () => {
    const secret = fakeSecret(22);
    const dir = join(tmp, "ph-outside");
    const holder = spawnKloak(["exec", "-q", "--secret", `O=${secret}`, "--placeholder-dir", dir, "--", "sleep", "3"]);
    let placeholder = "";
    for (let i = 0; i < 100 && !placeholder; i++) {
      await Bun.sleep(50);
      try {
        placeholder = readFileSync(join(dir, "O"), "latin1");
      } catch {}
    }
    expect(placeholder).toMatch(/^kloak:/);
    await Bun.sleep(300); // the agent is loaded and its tree is running
    const req = requestFile("out.req", Buffer.from(`outside=${placeholder}`));
    const p = Bun.spawn(pythonClientArgs({ port: raw.port, caFile: certs.caFile, requestFile: req, noWait: true }), { stdout: "pipe" });
    expect(await p.exited).toBe(0);
    await raw.waitFor((all) => all.length >= 8 + placeholder.length);
    expect(raw.received().toString("latin1")).toBe(`outside=${placeholder}`);
    holder.kill("SIGTERM");
    await holder.exited;
  });

  test("exit code of CMD is kloak's; a signal death maps to 128+N", async () => {
    const s = fakeSecret(12);
    expect((await runKloak(["exec", "-q", "--secret", `X=${s}`, "--", "sh", "-c", "exit 7"])).code).toBe(7);
    expect((await runKloak(["exec", "-q", "--secret", `X=${s}`, "--", "sh", "-c", "kill -TERM $$"])).code).toBe(143);
  });

  test("SIGTERM to kloak is forwarded to CMD", async () => {
    const p = spawnKloak(["exec", "-q", "--secret", `X=${fakeSecret(12)}`, "--", "sleep", "30"]);
    await Bun.sleep(700);
    p.kill("SIGTERM");
    expect(await p.exited).toBe(143);
  });

  test("an exec is held only until its image is attached: later execs of that image (traced) are not held; with --holds signals every exec is", async () => {
    const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1]);
    const seen: Record<string, { held: number; known: number }> = {};
    for (const holds of ["ptrace", "signals"]) {
      const file = join(tmp, `execs-${holds}.prom`);
      const r = await runKloak(["exec", "-q", "--holds", holds, "--secret", `X=${fakeSecret(12)}`, "--metrics-file", file, "--", "bash", "-c", "for i in $(seq 50); do /bin/true; done"]);
      expect(r.code).toBe(0);
      const text = readFileSync(file, "utf8");
      seen[holds] = { held: metric(text, "kloak_exec_holds_total"), known: metric(text, "kloak_execs_known_total") };
    }
    // bash (held, then traced), seq and the first /bin/true (held, then known); 49 more not held.
    expect(seen.ptrace).toEqual({ held: 3, known: 49 });
    expect(seen.signals).toEqual({ held: 52, known: 0 });
  });
});
