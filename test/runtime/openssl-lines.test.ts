/**
 * OpenSSL 1.1 to 3.6 under the real `kloak exec`: one small C client
 * (ossl_line_client.c, built here with gcc) dlopen()s each line's libssl and
 * sends a placeholder in a header and a body to a real local TLS server,
 * which records what arrived.
 *
 *   1.1  bullseye libssl1.1              root: /var/cache/kloak-runtime/openssl/bullseye
 *   3.0  bookworm libssl3 (the system's)
 *   3.5  trixie libssl3t64               root: /var/cache/kloak-runtime/openssl/trixie
 *   3.6  sid libssl3t64                  root: /var/cache/kloak-runtime/openssl/sid
 *
 * The fetched lines run in a chroot of their root, with a C library that
 * suits them (trixie's and sid's libcrypto need glibc 2.38; libssl1.1 runs on
 * bookworm's): the root's libssl is then the only one the client can load,
 * and kloak attaches it the way it attaches a container's libraries, through
 * the process's root, before the process starts.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { CACHE, debianRoot, keyValues } from "./gnutls-support.ts";

interface Line {
  name: string;
  version: RegExp;
  libssl: string;
  libcrypto: string;
  /** null: the system's own library */
  root: null | (() => string);
}

const triple = "usr/lib/x86_64-linux-gnu";
const fetched = (suite: string, ssl: string, crypto: string, fetches: { suite: string; packages: string[] }[]) => () =>
  debianRoot(join(CACHE, "openssl", suite), fetches, [`${triple}/${ssl}`, `${triple}/${crypto}`, "lib64/ld-linux-x86-64.so.2"]);

const LINES: Line[] = [
  {
    name: "1.1 (bullseye libssl1.1)",
    version: /^OpenSSL 1\.1\.1/,
    libssl: "libssl.so.1.1",
    libcrypto: "libcrypto.so.1.1",
    root: fetched("bullseye", "libssl.so.1.1", "libcrypto.so.1.1", [
      { suite: "bullseye", packages: ["libssl1.1"] },
      { suite: "bookworm", packages: ["libc6"] },
    ]),
  },
  { name: "3.0 (bookworm libssl3, the system's)", version: /^OpenSSL 3\.0\./, libssl: "libssl.so.3", libcrypto: "libcrypto.so.3", root: null },
  {
    name: "3.5 (trixie libssl3t64)",
    version: /^OpenSSL 3\.5\./,
    libssl: "libssl.so.3",
    libcrypto: "libcrypto.so.3",
    root: fetched("trixie", "libssl.so.3", "libcrypto.so.3", [{ suite: "trixie", packages: ["libssl3t64", "libc6", "zlib1g", "libzstd1"] }]),
  },
  {
    name: "3.6 (sid libssl3t64)",
    version: /^OpenSSL 3\.6\./,
    libssl: "libssl.so.3",
    libcrypto: "libcrypto.so.3",
    root: fetched("sid", "libssl.so.3", "libcrypto.so.3", [{ suite: "sid", packages: ["libssl3t64", "libc6", "zlib1g", "libzstd1"] }]),
  },
];

let certs: TestCerts;
let server: TlsServer;
const build = mkdtempSync(join(tmpdir(), "kloak-ossl-lines-"));
const CLIENT = join(build, "ossl_line_client");
/** Where the client and the CA go inside a fetched root (removed at the end). */
const IN_ROOT = `/tmp/kloak-ossl-lines-${process.pid}`;
const rootsUsed = new Set<string>();

beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer({ host: "127.0.0.1" });
  const cc = Bun.spawnSync(["gcc", "-O2", "-Wall", "-Werror", "-o", CLIENT, join(import.meta.dir, "ossl_line_client.c"), "-ldl"], { stderr: "pipe" });
  if (!cc.success) throw new Error(`gcc failed: ${cc.stderr.toString()}`);
});
afterAll(async () => {
  await server.close();
  for (const root of rootsUsed) rmSync(join(root, IN_ROOT), { recursive: true, force: true });
  rmSync(build, { recursive: true, force: true });
});
beforeEach(() => server.reset());

/** argv of the client for a line: directly (the system's library) or chrooted into the line's root. */
function clientArgv(line: Line): string[] {
  const tail = [line.libssl, line.libcrypto, "127.0.0.1", String(server.port), "localhost"];
  if (!line.root) return [CLIENT, ...tail, certs.caFile];
  const root = line.root();
  mkdirSync(join(root, IN_ROOT), { recursive: true });
  copyFileSync(CLIENT, join(root, IN_ROOT, "client"));
  copyFileSync(certs.caFile, join(root, IN_ROOT, "ca.pem"));
  rootsUsed.add(root);
  return ["chroot", root, `${IN_ROOT}/client`, ...tail, `${IN_ROOT}/ca.pem`];
}

describe.each(LINES)("OpenSSL $name", (line) => {
  async function run(allow: string[]) {
    const secret = fakeSecret(36);
    const r = await runKloak(["exec", "--secret", `API_TOKEN=${secret}`, ...allow.flatMap((a) => ["--allow", `API_TOKEN=${a}`]), "--", ...clientArgv(line)]);
    const out = keyValues(r.stdout);
    expect(out.VERSION?.[0]).toMatch(line.version);
    expect(out.STATUS).toEqual(["200"]);
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    expect(r.code).toBe(0);
    return { r, secret, got: server.received() };
  }

  test("allowed destination (the SNI's name): the server gets the value, no placeholder", async () => {
    const { r, secret, got } = await run(["localhost"]);
    expect(occurrences(got, `X-Api-Key: ${secret}\r\n`)).toBe(1);
    expect(occurrences(got, `k=${secret}`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
    expect(r.stderr).toContain("kloak: 2 substitution(s) in 1 TLS write(s)");
  });

  test("disallowed destination: the placeholder goes out, the refusal is reported", async () => {
    const { r, secret, got } = await run(["127.0.0.2"]);
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain(`refused 2x: secret API_TOKEN to 127.0.0.1:${server.port} (SNI localhost): destination_not_allowed`);
  });

  test("no rules: substituted for any destination, with the warning", async () => {
    const { r, secret, got } = await run([]);
    expect(occurrences(got, secret)).toBe(2);
    expect(placeholderCount(got)).toBe(0);
    expect(r.stderr).toContain("may be sent to any TLS destination");
  });
});
