/**
 * Memory-BIO TLS clients (bpf/membio.h): the app encrypts into a memory BIO
 * and moves the ciphertext to its socket itself, after the TLS call returned.
 * node https and fetch (undici) run TLSWrap on node's static OpenSSL; Python's
 * asyncio (pyenv CPython and Debian's python3 with python3-aiohttp,
 * python3-httpx, python3-uvloop) runs SSLObject on the system libssl3. Each
 * runs under the real `kloak exec` against real local TLS servers, which
 * record what arrived: with a rule (the value arrives, one substitution per
 * placeholder), to a disallowed destination (the placeholder arrives, the
 * refusal is reported) and with no rules.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { nodePath, parseClientOutput, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const NODE_CLIENT = join(import.meta.dir, "..", "support", "membio_client.mjs");
const PY_CLIENT = join(import.meta.dir, "..", "support", "membio_client.py");
/** Debian's interpreter: the one python3-aiohttp, python3-httpx and python3-uvloop are built for. */
const DEBIAN_PYTHON = "/usr/bin/python3";

let certs: TestCerts;
let one: TlsServer; // 127.0.0.1: API_KEY may go here
let two: TlsServer; // 127.0.0.2: another host

beforeAll(async () => {
  certs = await testCerts();
  one = await startTlsServer({ host: "127.0.0.1" });
  two = await startTlsServer({ host: "127.0.0.2" });
});
afterAll(async () => {
  await one.close();
  await two.close();
});
beforeEach(() => {
  one.reset();
  two.reset();
});

type Client = {
  name: string;
  argv: (urls: string[], concurrent: number) => string[];
  needs?: string;
  /** node retries SSL_write while the handshake runs: each try is scanned (and refused) again */
  retries?: boolean;
  /** sends a connection's ciphertext after other connections ran (uvloop's write queue, anyio's
   * checkpoints): with several connections at once the ClientHello can be anyone's, and kloak fails closed */
  deferred?: boolean;
};
const node = (kind: string): Client => ({
  name: `node ${kind}`,
  retries: true,
  argv: (urls, n) => [nodePath(), NODE_CLIENT, "--kind", kind, "--ca", certs.caFile, "--concurrent", String(n), ...urls.flatMap((u) => ["--url", u])],
});
const py = (kind: string, python: () => string, label: string, module?: string, deferred = false): Client => ({
  name: `${label} ${kind}`,
  deferred,
  argv: (urls, n) => [python(), PY_CLIENT, "--kind", kind, "--ca", certs.caFile, "--concurrent", String(n), ...urls.flatMap((u) => ["--url", u])],
  needs: module,
});
const CLIENTS: Client[] = [
  node("https"),
  node("fetch"),
  py("streams", pythonPath, "python asyncio"),
  py("streams", () => DEBIAN_PYTHON, "debian python3 asyncio"),
  py("aiohttp", () => DEBIAN_PYTHON, "debian python3", "aiohttp"),
  py("httpx", () => DEBIAN_PYTHON, "debian python3", "httpx", true),
  py("uvloop", () => DEBIAN_PYTHON, "debian python3", "uvloop", true),
];

/** A client that cannot run fails the test, saying what to install. */
function ensureRunnable(c: Client): void {
  if (c.needs === undefined) return;
  const r = Bun.spawnSync([DEBIAN_PYTHON, "-c", `import ${c.needs}`]);
  if (!existsSync(DEBIAN_PYTHON) || !r.success)
    throw new Error(`${c.name}: ${DEBIAN_PYTHON} cannot import ${c.needs}: apt-get install python3-${c.needs} (bookworm)`);
}

async function run(c: Client, secret: string, allow: string[], urls: string[], concurrent = 1) {
  ensureRunnable(c);
  const args = ["exec", "--secret", `API_KEY=${secret}`];
  for (const a of allow) args.push("--allow", `API_KEY=${a}`);
  args.push("--", ...c.argv(urls, concurrent));
  const r = await runKloak(args, { env: { NODE_EXTRA_CA_CERTS: certs.caFile }, timeoutMs: 90_000 });
  return { ...r, out: parseClientOutput(r.stdout) };
}

const seen = (s: TlsServer, secret: string) => ({ values: occurrences(s.received(), secret), placeholders: placeholderCount(s.received()) });
const substitutions = (stderr: string) => Number(/kloak: (\d+) substitution\(s\)/.exec(stderr)?.[1] ?? -1);
/** How often a reason was reported for API_KEY (summed over destinations). */
function refused(stderr: string, reason: string): number {
  let n = 0;
  for (const m of stderr.matchAll(new RegExp(`refused (\\d+)x: secret API_KEY to [^\\n]*: ${reason}`, "g"))) n += Number(m[1]);
  return n;
}
/** Refusals of one placeholder pair (header and body) in one request: node reports each try. */
function expectRefused(c: Client, stderr: string, reason: string, requests: number): void {
  const n = refused(stderr, reason);
  if (c.retries) {
    expect(n).toBeGreaterThanOrEqual(2 * requests);
    expect(n % 2).toBe(0);
  } else {
    expect(n).toBe(2 * requests);
  }
}

describe.each(CLIENTS)("$name", (c) => {
  test("with a rule for the destination: the value arrives, one substitution per placeholder", async () => {
    const secret = fakeSecret(32);
    const r = await run(c, secret, ["127.0.0.1"], [`${one.url}/a`]);
    expect(r.stderr).not.toMatch(/refused/);
    expect(r.code).toBe(0);
    expect(r.out.STATUS).toEqual(["200"]);
    expect(seen(one, secret)).toEqual({ values: 2, placeholders: 0 });
    expect(substitutions(r.stderr)).toBe(2);
  });

  test("to a destination the rule does not allow: the placeholder arrives, the refusal is reported", async () => {
    const secret = fakeSecret(32);
    const r = await run(c, secret, ["127.0.0.1"], [`${two.url}/a`]);
    expect(r.code).toBe(0);
    expect(seen(two, secret)).toEqual({ values: 0, placeholders: 2 });
    expect(substitutions(r.stderr)).toBe(0);
    expect(r.stderr).toMatch(/secret API_KEY to 127\.0\.0\.2:\d+: destination_not_allowed/);
    expectRefused(c, r.stderr, "destination_not_allowed", 1);
  });

  test("no rules: the value arrives", async () => {
    const secret = fakeSecret(32);
    const r = await run(c, secret, [], [`${one.url}/a`]);
    expect(r.code).toBe(0);
    expect(seen(one, secret)).toEqual({ values: 2, placeholders: 0 });
    expect(substitutions(r.stderr)).toBe(2);
  });

  test("two hosts in one process: each connection is bound to its own socket", async () => {
    const secret = fakeSecret(32);
    const r = await run(c, secret, ["127.0.0.1"], [`${one.url}/a`, `${two.url}/b`]);
    expect(r.code).toBe(0);
    expect(r.out.STATUS).toEqual(["200", "200"]);
    // Never cross-bound: the other host gets the placeholder whatever happens.
    expect(seen(two, secret)).toEqual({ values: 0, placeholders: 2 });
    if (c.deferred) return expectFailClosedOrBound(r.stderr, seen(one, secret), seen(two, secret), 1);
    expectRefused(c, r.stderr, "destination_not_allowed", 1);
    expect(seen(one, secret)).toEqual({ values: 2, placeholders: 0 });
    expect(substitutions(r.stderr)).toBe(2);
  });

  test("eight connections writing at once on one event loop, to both hosts", async () => {
    const secret = fakeSecret(32);
    const r = await run(c, secret, ["127.0.0.1"], [`${one.url}/a`, `${two.url}/b`], 4);
    expect(r.code).toBe(0);
    expect(r.out.STATUS?.length).toBe(8);
    expect(seen(two, secret)).toEqual({ values: 0, placeholders: 8 });
    if (c.deferred) return expectFailClosedOrBound(r.stderr, seen(one, secret), seen(two, secret), 4);
    expectRefused(c, r.stderr, "destination_not_allowed", 4);
    expect(seen(one, secret)).toEqual({ values: 8, placeholders: 0 });
    expect(substitutions(r.stderr)).toBe(8);
  });
});

type Seen = { values: number; placeholders: number };
/** Connections whose ClientHello could be another's are never bound: each request to the allowed host
 * carries the value (bound) or the placeholder (failed closed), and every placeholder that went out
 * was reported, as unknown_peer (unbound) or destination_not_allowed (bound to the other host). */
function expectFailClosedOrBound(stderr: string, one: Seen, two: Seen, requests: number): void {
  expect(one.values + one.placeholders).toBe(2 * requests);
  expect(one.values % 2).toBe(0);
  expect(substitutions(stderr)).toBe(one.values);
  expect(refused(stderr, "unknown_peer") + refused(stderr, "destination_not_allowed")).toBe(one.placeholders + two.placeholders);
}

/** node http2 over TLSWrap: the body goes in DATA frames (header blocks are HPACK-coded, see the HTTP/2 tests). */
describe("node http2 (DATA frames)", () => {
  let received: Buffer[] = [];
  let servers: http2.Http2SecureServer[] = [];
  const h2 = async (host: string): Promise<string> => {
    const s = http2.createSecureServer({ key: certs.key, cert: certs.cert });
    s.on("stream", (stream: http2.ServerHttp2Stream) => {
      stream.on("data", (d: Buffer) => received.push(Buffer.from(d)));
      stream.on("end", () => {
        stream.respond({ ":status": 200 });
        stream.end("ok");
      });
    });
    await new Promise<void>((r) => s.listen(0, host, r));
    servers.push(s);
    return `https://${host}:${(s.address() as AddressInfo).port}/h2`;
  };
  afterAll(() => {
    for (const s of servers) s.close();
    servers = [];
  });
  beforeEach(() => {
    received = [];
  });
  const client = node("http2");

  test("with a rule: the value arrives in the DATA frame, one substitution", async () => {
    const secret = fakeSecret(32);
    const r = await run(client, secret, ["127.0.0.1"], [await h2("127.0.0.1")]);
    expect(r.code).toBe(0);
    expect(r.out.STATUS).toEqual(["200"]);
    expect(occurrences(Buffer.concat(received), secret)).toBe(1);
    expect(placeholderCount(Buffer.concat(received))).toBe(0);
    expect(substitutions(r.stderr)).toBe(1);
  });

  test("to a disallowed host: the placeholder arrives, the refusal is reported", async () => {
    const secret = fakeSecret(32);
    const r = await run(client, secret, ["127.0.0.1"], [await h2("127.0.0.2")]);
    expect(r.code).toBe(0);
    expect(occurrences(Buffer.concat(received), secret)).toBe(0);
    expect(placeholderCount(Buffer.concat(received))).toBe(1);
    expect(refused(r.stderr, "destination_not_allowed")).toBeGreaterThanOrEqual(1);
  });
});
