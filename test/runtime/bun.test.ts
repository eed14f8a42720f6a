/**
 * Bun's fetch under kloak exec: Bun links BoringSSL statically without
 * symbols; kloak finds SSL_write & co by per-version signatures
 * (src/dataplane/bun-signatures.ts). Every covered version runs a real
 * `bun client.js` against the local TLS server; the test asserts what the
 * server received. A Bun kloak does not recognise runs on unharmed, and is
 * named (warning, metric, doctor).
 *
 * Covered versions other than the installed one come from npm
 * (@oven/bun-linux-x64) into /var/cache/kloak-runtime/bun/VERSION.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lookupBun } from "../../src/dataplane/bun-boringssl.ts";
import { BUN_SIGNATURES, BUN_VERSIONS } from "../../src/dataplane/bun-signatures.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const CACHE = "/var/cache/kloak-runtime/bun";
const INSTALLED = realpathSync(Bun.which("bun") ?? "/usr/bin/bun");
const tmp = mkdtempSync(join(tmpdir(), "kloak-bun-test-"));
const CLIENT = join(tmp, "client.js");
writeFileSync(
  CLIENT,
  `const tok = process.env.API_TOKEN;
const r = await fetch(process.argv[2], { method: "POST", headers: { Authorization: "Bearer " + tok }, body: "token=" + tok + "&x=1" });
console.log("STATUS=" + r.status);
`,
);

/** The Bun binary of a covered version: the installed one, or fetched from npm into the cache. */
function bunBinary(version: string): string {
  const v = spawnSync(INSTALLED, ["--version"], { encoding: "utf8" }).stdout.trim();
  if (v === version) return INSTALLED;
  const bin = join(CACHE, version, "package", "bin", "bun");
  if (existsSync(bin)) return bin;
  mkdirSync(join(CACHE, version), { recursive: true });
  const pack = spawnSync("npm", ["pack", `@oven/bun-linux-x64@${version}`], { cwd: join(CACHE, version), encoding: "utf8", timeout: 600_000 });
  const tgz = join(CACHE, version, `oven-bun-linux-x64-${version}.tgz`);
  if (pack.status !== 0 || !existsSync(tgz))
    throw new Error(
      `cannot fetch Bun ${version} (npm pack @oven/bun-linux-x64@${version}: ${pack.stderr.trim()}); ` +
        `run: mkdir -p ${CACHE}/${version} && cd ${CACHE}/${version} && npm pack @oven/bun-linux-x64@${version} && tar xzf *.tgz`,
    );
  spawnSync("tar", ["xzf", tgz, "-C", join(CACHE, version)]);
  if (!existsSync(bin)) throw new Error(`Bun ${version}: ${tgz} holds no package/bin/bun`);
  return bin;
}

let unknown: { copy: string; version: string } | undefined;
/** The installed Bun with its version string changed: a version kloak has no entry for. */
function unknownBun(): { copy: string; version: string } {
  if (unknown) return unknown;
  const bytes = readFileSync(INSTALLED);
  const real = spawnSync(INSTALLED, ["--version"], { encoding: "utf8" }).stdout.trim();
  const version = real.replace(/\d/g, "9");
  const from = Buffer.from(`Bun v${real}`);
  const to = Buffer.from(`Bun v${version}`);
  let n = 0;
  for (let i = bytes.indexOf(from); i >= 0; i = bytes.indexOf(from, i + 1), n++) to.copy(bytes, i);
  if (n === 0) throw new Error(`no "Bun v${real}" in ${INSTALLED}`);
  const copy = join(tmp, "bun-unknown");
  writeFileSync(copy, bytes, { mode: 0o755 });
  return (unknown = { copy, version });
}

let certs: TestCerts;
let server: TlsServer;
beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer();
});
afterAll(() => server.close());
beforeEach(() => server.reset());

function fetchUrl(host = "localhost"): string {
  return `https://${host}:${server.port}/api`;
}

async function bunFetch(bun: string, kloakArgs: string[], url = fetchUrl()) {
  return runKloak(["exec", ...kloakArgs, "--", "env", `NODE_EXTRA_CA_CERTS=${certs.caFile}`, bun, CLIENT, url], { timeoutMs: 90_000 });
}

describe("the signature table", () => {
  test("covers the installed Bun and two earlier minor lines", () => {
    const installed = spawnSync(INSTALLED, ["--version"], { encoding: "utf8" }).stdout.trim();
    expect(BUN_VERSIONS).toContain(installed);
    const minors = new Set(BUN_VERSIONS.map((v) => v.split(".").slice(0, 2).join(".")));
    expect(minors.size).toBeGreaterThanOrEqual(3);
  });

  for (const version of BUN_VERSIONS)
    test(`Bun ${version}: every function found once, at a function start that raises its SSL errors`, () => {
      const r = lookupBun(bunBinary(version));
      expect(r.kind).toBe("bun");
      if (r.kind !== "bun") return;
      expect(r.version).toBe(version);
      expect(r.functions.map((f) => f.name).sort()).toEqual(BUN_SIGNATURES[version]!.functions.map((f) => f.name).sort());
      expect(new Set(r.functions.map((f) => f.offset)).size).toBe(r.functions.length);
    });

  test("a binary whose code does not match is unrecognised, with the function named", () => {
    // the installed Bun with the first fixed bytes of its SSL_write pattern changed (never run)
    const version = spawnSync(INSTALLED, ["--version"], { encoding: "utf8" }).stdout.trim();
    const bytes = readFileSync(INSTALLED);
    const r = lookupBun(INSTALLED);
    if (r.kind !== "bun") throw new Error(`installed Bun not recognised: ${JSON.stringify(r)}`);
    const at = r.functions.find((f) => f.name === "SSL_write")!.offset;
    bytes[at + 4] = bytes[at + 4]! ^ 0xff;
    const copy = join(tmp, "bun-altered");
    writeFileSync(copy, bytes);
    const bad = lookupBun(copy);
    expect(bad).toEqual({ kind: "unrecognised", version, why: "SSL_write: its signature matches nowhere" });
  });

  test("files that are not Bun are not Bun (node, curl)", () => {
    expect(lookupBun(realpathSync(Bun.which("curl")!)).kind).toBe("not-bun");
    expect(lookupBun(realpathSync(Bun.which("node")!)).kind).toBe("not-bun");
  });
});

describe("Bun fetch under kloak exec", () => {
  for (const version of BUN_VERSIONS)
    test(`Bun ${version}: placeholder in a header and the body, substituted toward an allowed host`, async () => {
      const secret = fakeSecret(32);
      const r = await bunFetch(bunBinary(version), ["--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=localhost"]);
      expect(r.stdout).toContain("STATUS=200");
      expect(r.code).toBe(0);
      const got = server.received();
      // header names: as sent (older Bun lowercases them)
      expect(occurrences(got.toString("latin1").toLowerCase(), `authorization: bearer ${secret.toLowerCase()}\r\n`)).toBe(1);
      expect(occurrences(got, `token=${secret}&x=1`)).toBe(1);
      expect(placeholderCount(got)).toBe(0);
      expect(server.sni[0]).toBe("localhost");
      expect(r.stderr).toContain("2 substitution(s) in 1 TLS write(s)");
      expect(r.stderr).not.toContain("warning:");
    });

  test("an allowed IP literal (the connection's peer, no SNI name rule)", async () => {
    const secret = fakeSecret(32);
    const r = await bunFetch(INSTALLED, ["--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=127.0.0.1"], fetchUrl("127.0.0.1"));
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(2);
    expect(placeholderCount(got)).toBe(0);
  });

  test("a destination the rules do not allow gets the placeholder, and the refusal is counted", async () => {
    const secret = fakeSecret(32);
    const r = await bunFetch(INSTALLED, ["--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=example.test"]);
    expect(r.stdout).toContain("STATUS=200");
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain("0 substitution(s) in 1 TLS write(s)");
    expect(r.stderr).toMatch(/refused 2x: secret API_TOKEN to 127\.0\.0\.1:\d+ \(SNI localhost\): destination_not_allowed/);
  });

  test("no rules: substituted toward any destination", async () => {
    const secret = fakeSecret(32);
    const r = await bunFetch(INSTALLED, ["--secret", `API_TOKEN=${secret}`]);
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(2);
    expect(r.stderr).toContain("2 substitution(s) in 1 TLS write(s)");
  });

  test("strict binding refuses Bun's connections: uSockets writes through its own BIO (app_bio)", async () => {
    const secret = fakeSecret(32);
    const r = await bunFetch(INSTALLED, ["--strict-binding", "--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=localhost"]);
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(0);
    expect(placeholderCount(server.received())).toBe(2);
    expect(r.stderr).toMatch(/refused 2x: secret API_TOKEN to unknown destination \(SNI localhost\): app_bio/);
  });

  test("a Bun version with no signature runs unharmed, sends its placeholder, and is named", async () => {
    const { copy, version } = unknownBun();
    const metrics = join(tmp, "unknown.prom");
    const secret = fakeSecret(32);
    const r = await bunFetch(copy, ["--metrics-file", metrics, "--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=localhost"]);
    expect(r.stdout).toContain("STATUS=200");
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(0);
    expect(placeholderCount(server.received())).toBe(2);
    expect(r.stderr).toContain(`no signature for Bun ${version}`);
    expect(r.stderr).toMatch(/warning: process \d+ \(bun-unknown, .*bun-unknown\) does TLS through a Bun binary/);
    expect(r.stderr).toContain("(bun_unrecognised)");
    expect(r.stderr).toContain("bun scripts/bun-signatures.ts --write");
    expect(readFileSync(metrics, "utf8")).toContain('kloak_tls_unhookable_total{reason="bun_unrecognised"} 1');
  });
});

describe("kloak doctor", () => {
  test("names the Bun on PATH and whether it is recognised", async () => {
    const r = await runKloak(["doctor"]);
    expect(r.stdout + r.stderr).toMatch(/Bun \(BoringSSL by signature\)\s+ok\s+.*Bun \d+\.\d+\.\d+ recognised/);
  });

  test("warns about a Bun it does not recognise (KLOAK_DOCTOR_BUN)", async () => {
    const { copy, version } = unknownBun();
    const r = await runKloak(["doctor"], { env: { KLOAK_DOCTOR_BUN: copy } });
    expect(r.stdout + r.stderr).toMatch(/Bun \(BoringSSL by signature\)\s+WARN\s+.*bun-unknown: Bun [0-9.]+ not recognised/);
    expect(r.stdout + r.stderr).toContain(`Bun ${version} not recognised (no signature for Bun ${version})`);
  });
});
