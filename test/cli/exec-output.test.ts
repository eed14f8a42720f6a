/**
 * What `kloak exec` says, by verbosity, and its machine-readable summary: a
 * run with one allowed and one refused substitution (curl against the local
 * recording TLS server), seen through --quiet, --silent, --verbose and
 * --summary json; and secrets from a dotenv file (--env-file).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let certs: TestCerts;
let server: TlsServer;
const dir = mkdtempSync(join(tmpdir(), "kloak-output-"));
beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer();
});
afterAll(() => server.close());

/** Two requests: GOOD to its allowed host, BAD to a host its rule does not allow. */
async function run(flags: string[]) {
  server.reset();
  const good = fakeSecret(24);
  const bad = fakeSecret(24);
  const url = `https://localhost:${server.port}/`;
  const curl = (v: string) => `curl -sS -o /dev/null --cacert ${certs.caFile} -H "X-Token: $${v}" ${url}`;
  const r = await runKloak([
    "exec",
    ...flags,
    "--secret", `GOOD=${good}`, "--allow", "GOOD=localhost",
    "--secret", `BAD=${bad}`, "--allow", "BAD=api.example.invalid",
    "--", "sh", "-c", `${curl("GOOD")} && ${curl("BAD")}`,
  ]);
  expect(r.code).toBe(flags.includes("--fail-on-refusal") ? 3 : 0);
  expect(occurrences(server.received(), good)).toBe(1);
  expect(occurrences(server.received(), bad)).toBe(0);
  expect(placeholderCount(server.received())).toBe(1);
  return r;
}

const SUMMARY = /^kloak: 1 substitution\(s\) in 2 TLS write\(s\)$/m;
const REFUSAL = /^kloak: refused 1x: secret BAD to 127\.0\.0\.1:\d+ \(SNI localhost\): destination_not_allowed/m;

test("default: the summary and the refusal; no rewrite-mode line", async () => {
  const r = await run([]);
  expect(r.stderr).toMatch(SUMMARY);
  expect(r.stderr).toMatch(REFUSAL);
  expect(r.stderr).not.toContain("rewrite mode");
});

test("--verbose adds the rewrite mode", async () => {
  const r = await run(["--verbose"]);
  expect(r.stderr).toMatch(/^kloak: rewrite mode (stop|kernel) \(/m);
});

test("--quiet: the refusal only", async () => {
  const r = await run(["--quiet"]);
  expect(r.stderr.trim().split("\n")).toHaveLength(1);
  expect(r.stderr).toMatch(REFUSAL);
});

test("--silent: nothing (no error happened)", async () => {
  const r = await run(["--silent"]);
  expect(r.stderr).toBe("");
});

test("--silent --fail-on-refusal: the one line that explains the exit code", async () => {
  const r = await run(["--silent", "--fail-on-refusal"]);
  expect(r.stderr.trim()).toBe("kloak: 1 substitution(s) refused or failed closed: exit 3 (--fail-on-refusal)");
});

test("--summary json: one JSON line, with the refusal's secret, destination and reason, never a value", async () => {
  const r = await run(["--summary", "json", "--quiet"]);
  const lines = r.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  const s = JSON.parse(lines[0]!.replace(/^kloak: /, ""));
  expect(s).toMatchObject({ exitCode: 0, commandExitCode: 0, substitutions: 1, tlsWrites: 2, failedClosed: 0, notes: [] });
  expect(s.rewriteMode).toMatch(/^(stop|kernel)$/);
  expect(s.refusals).toHaveLength(1);
  expect(s.refusals[0]).toMatchObject({ secret: "BAD", reason: "destination_not_allowed", action: "pass", count: 1 });
  expect(s.refusals[0].destination).toMatch(/^127\.0\.0\.1:\d+ \(SNI localhost\)$/);
});

test("--env-file: each variable is a secret; comments, export and quotes as dotenv reads them", async () => {
  server.reset();
  const a = fakeSecret(20);
  const b = fakeSecret(30);
  const f = join(dir, "tokens.env");
  writeFileSync(f, `# from a secret manager\nexport A_TOKEN=${a}\nB_TOKEN="${b}"\n`);
  const url = `https://localhost:${server.port}/`;
  const r = await runKloak([
    "exec", "--quiet", "--env-file", f, "--allow", "A_TOKEN=localhost", "--allow", "B_TOKEN=localhost",
    "--", "sh", "-c", `curl -sS -o /dev/null --cacert ${certs.caFile} -H "A: $A_TOKEN" -H "B: $B_TOKEN" ${url}; echo "APP=$A_TOKEN $B_TOKEN"`,
  ]);
  expect(r.code).toBe(0);
  expect(occurrences(server.received(), a)).toBe(1);
  expect(occurrences(server.received(), b)).toBe(1);
  expect(occurrences(r.stdout, a) + occurrences(r.stdout, b)).toBe(0);
  expect(r.stdout).toMatch(/^APP=kloak:\S{14} kloak:\S{24}$/m);
});
