/**
 * Proves the data-plane test support works on its own (no kloak): real curl,
 * Python and node clients reach the recording TLS server, which sees exactly
 * the plaintext they sent.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import {
  buildHttpRequest,
  curlArgs,
  nodeClientArgs,
  parseClientOutput,
  pythonClientArgs,
  runClient,
  type ClientResult,
} from "../support/clients.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const PLACEHOLDER = "kloak:abcdefgh0123456789";

let certs: TestCerts;
let server: TlsServer;
let work: string;

beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer();
  work = mkdtempSync(join(tmpdir(), "kloak-selftest-"));
});
afterAll(async () => {
  await server?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

function ok(r: ClientResult): ClientResult {
  if (r.code !== 0) throw new Error(`client exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

function header(req: { headers: [string, string][] }, name: string): string | undefined {
  return req.headers.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1];
}

function sha256(b: Buffer | string): string {
  return new Bun.CryptoHasher("sha256").update(b).digest("hex");
}

describe("certs", () => {
  test("memoized, server cert verifies against the CA with every SAN", async () => {
    expect(await testCerts()).toBe(certs);
    const text = Bun.spawnSync(["openssl", "x509", "-in", certs.certFile, "-noout", "-ext", "subjectAltName"]);
    const sans = text.stdout.toString();
    for (const san of ["DNS:localhost", "DNS:*.kloak.test", "DNS:kloak.test", "DNS:*.example.test", "DNS:example.test"]) {
      expect(sans).toContain(san);
    }
    for (let i = 1; i <= 9; i++) expect(sans).toContain(`IP Address:127.0.0.${i}`);
    expect(sans).toContain("IP Address:0:0:0:0:0:0:0:1");
    const verify = Bun.spawnSync(["openssl", "verify", "-CAfile", certs.caFile, certs.certFile]);
    expect(verify.exitCode).toBe(0);
  });
});

describe("http mode", () => {
  test("curl: header and body arrive exactly", async () => {
    server.reset();
    const r = ok(
      await runClient(
        curlArgs(`${server.url}/curl`, { caFile: certs.caFile, headers: { "X-Secret": PLACEHOLDER }, body: "curl-body=" + PLACEHOLDER }),
      ),
    );
    expect(r.stdout).toBe("ok\n");
    const raw = server.received().toString();
    expect(raw).toContain(`\r\nX-Secret: ${PLACEHOLDER}\r\n`);
    expect(raw.endsWith(`\r\n\r\ncurl-body=${PLACEHOLDER}`)).toBe(true);
    expect(server.connections).toHaveLength(1);
    expect(server.sni).toEqual([undefined]); // curl sends no SNI for an IP
    const [req] = server.requests;
    expect(req?.method).toBe("POST");
    expect(req?.target).toBe("/curl");
    expect(header(req!, "x-secret")).toBe(PLACEHOLDER);
    expect(req?.body.toString()).toBe("curl-body=" + PLACEHOLDER);
  });

  test("curl: chunked upload from stdin (-T -) and SNI via --resolve", async () => {
    server.reset();
    const body = "line one\nline two " + PLACEHOLDER + "\n";
    const r = ok(
      await runClient(
        curlArgs(`https://api.kloak.test:${server.port}/up`, {
          caFile: certs.caFile,
          upload: "-",
          resolve: `api.kloak.test:${server.port}:127.0.0.1`,
        }),
        { stdin: body },
      ),
    );
    expect(r.stdout).toBe("ok\n");
    expect(server.received().toString()).toContain("Transfer-Encoding: chunked\r\n");
    expect(server.sni).toEqual(["api.kloak.test"]);
    expect(server.requests[0]?.method).toBe("PUT");
    expect(server.requests[0]?.body.toString()).toBe(body);
  });

  test("python: header and body arrive exactly; the bytes object is unchanged", async () => {
    server.reset();
    const request = buildHttpRequest({
      host: "localhost",
      path: "/py",
      headers: { Authorization: `Bearer ${PLACEHOLDER}` },
      body: `{"token":"${PLACEHOLDER}"}`,
    });
    const file = join(work, "py-request.bin");
    writeFileSync(file, request);
    const r = ok(
      await runClient(pythonClientArgs({ port: server.port, caFile: certs.caFile, sni: "localhost", requestFile: file }), {
        env: { KLOAK_TEST_PLACEHOLDER: PLACEHOLDER },
      }),
    );
    const out = parseClientOutput(r.stdout);
    expect(out.STATUS).toEqual(["200"]);
    expect(out.APP_HAD).toEqual([sha256(request)]);
    expect(out.APP_SAW).toEqual([sha256(request)]);
    expect(out.APP_HAD_PLACEHOLDER).toEqual(["yes"]);
    expect(out.APP_SAW_PLACEHOLDER).toEqual(["yes"]);
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    expect(server.received().equals(request)).toBe(true);
    expect(server.sni).toEqual(["localhost"]);
    expect(header(server.requests[0]!, "authorization")).toBe(`Bearer ${PLACEHOLDER}`);
  });

  test("python: request from env, repeats, threads, connections", async () => {
    server.reset();
    const request = buildHttpRequest({ host: "x.example.test", headers: { "X-Key": PLACEHOLDER }, body: "b" });
    const r = ok(
      await runClient(
        pythonClientArgs({ port: server.port, caFile: certs.caFile, sni: "x.example.test", repeat: 3, connections: 2, threads: 4 }),
        { env: { KLOAK_TEST_REQUEST: request.toString(), KLOAK_TEST_PLACEHOLDER: PLACEHOLDER } },
      ),
    );
    const out = parseClientOutput(r.stdout);
    expect(out.STATUS).toHaveLength(24);
    expect(out.APP_SENDS).toEqual(["24"]);
    expect(new Set(out.APP_SAW)).toEqual(new Set([sha256(request)]));
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    expect(server.connections).toHaveLength(8);
    for (const c of server.connections) expect(c.equals(Buffer.concat([request, request, request]))).toBe(true);
    expect(new Set(server.sni)).toEqual(new Set(["x.example.test"]));
  });

  test("node: header and body arrive exactly", async () => {
    server.reset();
    const r = ok(
      await runClient(
        nodeClientArgs(`https://localhost:${server.port}/node`, {
          caFile: certs.caFile,
          headers: { "X-Secret": PLACEHOLDER },
          body: "node-body " + PLACEHOLDER,
          repeat: 2,
        }),
      ),
    );
    expect(parseClientOutput(r.stdout).STATUS).toEqual(["200", "200"]);
    expect(server.connections).toHaveLength(1); // keep-alive
    expect(server.requests).toHaveLength(2);
    for (const req of server.requests) {
      expect(req.target).toBe("/node");
      expect(header(req, "x-secret")).toBe(PLACEHOLDER);
      expect(req.body.toString()).toBe("node-body " + PLACEHOLDER);
    }
    expect(server.received().toString()).toContain(`\r\nX-Secret: ${PLACEHOLDER}\r\n`);
    expect(server.sni).toEqual(["localhost"]);
  });

  test("node: --connect dials an address for a name", async () => {
    server.reset();
    ok(
      await runClient(
        nodeClientArgs(`https://svc.kloak.test:${server.port}/`, { caFile: certs.caFile, connect: "127.0.0.1" }),
      ),
    );
    expect(server.requests[0]?.method).toBe("GET");
    expect(header(server.requests[0]!, "host")).toBe(`svc.kloak.test:${server.port}`);
    expect(server.sni).toEqual(["svc.kloak.test"]);
  });

  test("a 1 MiB body arrives whole (curl, python, node)", async () => {
    const body = Buffer.alloc(1 << 20);
    for (let i = 0; i < body.length; i++) body[i] = 0x61 + ((i * 7) % 26);
    body.write(PLACEHOLDER, body.length - PLACEHOLDER.length - 1);
    const bodyFile = join(work, "big.bin");
    writeFileSync(bodyFile, body);
    const reqFile = join(work, "big-request.bin");
    writeFileSync(reqFile, buildHttpRequest({ host: "localhost", body }));

    for (const argv of [
      curlArgs(`${server.url}/big`, { caFile: certs.caFile, bodyFile }),
      pythonClientArgs({ port: server.port, caFile: certs.caFile, requestFile: reqFile }),
      nodeClientArgs(`${server.url}/big`, { caFile: certs.caFile, bodyFile }),
    ]) {
      server.reset();
      ok(await runClient(argv));
      expect(server.requests).toHaveLength(1);
      expect(server.requests[0]!.body.equals(body)).toBe(true);
    }
  });

  test("curl: a 4 MiB chunked upload arrives whole", async () => {
    server.reset();
    const body = Buffer.alloc(4 << 20, "0123456789abcdef");
    ok(await runClient(curlArgs(`${server.url}/up`, { caFile: certs.caFile, upload: "-" }), { stdin: body }));
    expect(server.requests[0]!.body.equals(body)).toBe(true);
  });

  test("8 concurrent curl processes all arrive", async () => {
    server.reset();
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        runClient(curlArgs(`${server.url}/c${i}`, { caFile: certs.caFile, headers: { "X-N": String(i) }, body: `body-${i}` })),
      ),
    );
    for (const r of results) ok(r);
    expect(server.connections).toHaveLength(8);
    const bodies = server.requests.map((r) => r.body.toString()).sort();
    expect(bodies).toEqual(Array.from({ length: 8 }, (_, i) => `body-${i}`).sort());
    for (let i = 0; i < 8; i++) expect(server.received().toString()).toContain(`\r\nX-N: ${i}\r\n`);
  });

  test("waitFor resolves on arrival and rejects with what arrived", async () => {
    server.reset();
    const waiting = server.waitFor((all) => all.includes("X-Late: 1"));
    ok(await runClient(curlArgs(server.url, { caFile: certs.caFile, headers: { "X-Late": "1" } })));
    await waiting;
    await expect(server.waitFor((all) => all.includes("never"), 100)).rejects.toThrow(/bytes arrived over 1 connection/);
    server.reset();
    expect(server.received()).toHaveLength(0);
    expect(server.connections).toEqual([]);
  });
});

describe("IPv6", () => {
  let v6: TlsServer;
  beforeAll(async () => {
    v6 = await startTlsServer({ host: "::1" });
  });
  afterAll(() => v6?.close());

  test("url is bracketed and curl, python and node reach ::1", async () => {
    expect(v6.url).toBe(`https://[::1]:${v6.port}`);
    ok(await runClient(curlArgs(`${v6.url}/v6`, { caFile: certs.caFile, body: "curl6" })));
    const file = join(work, "v6.bin");
    writeFileSync(file, buildHttpRequest({ host: "[::1]", body: "py6" }));
    ok(await runClient(pythonClientArgs({ port: v6.port, host: "::1", caFile: certs.caFile, requestFile: file })));
    ok(await runClient(nodeClientArgs(`${v6.url}/v6`, { caFile: certs.caFile, body: "node6" })));
    expect(v6.requests.map((r) => r.body.toString())).toEqual(["curl6", "py6", "node6"]);
  });
});

describe("raw mode", () => {
  let raw: TlsServer;
  beforeAll(async () => {
    raw = await startTlsServer({ mode: "raw" });
  });
  afterAll(() => raw?.close());

  test("records without answering", async () => {
    const payload = Buffer.from(`not http at all ${PLACEHOLDER}\x00\xff binary`, "latin1");
    const file = join(work, "raw.bin");
    writeFileSync(file, payload);
    const r = ok(
      await runClient(
        pythonClientArgs({ port: raw.port, caFile: certs.caFile, sni: "raw.kloak.test", requestFile: file, noWait: true, repeat: 2 }),
        { env: { KLOAK_TEST_PLACEHOLDER: PLACEHOLDER } },
      ),
    );
    const out = parseClientOutput(r.stdout);
    expect(out.STATUS).toBeUndefined();
    expect(out.APP_SAW_PLACEHOLDER).toEqual(["yes", "yes"]);
    expect(out.APP_UNCHANGED).toEqual(["yes"]);
    const twice = Buffer.concat([payload, payload]);
    await raw.waitFor((all) => all.length >= twice.length);
    expect(raw.received().equals(twice)).toBe(true);
    expect(raw.sni).toEqual(["raw.kloak.test"]);
    expect(raw.requests).toEqual([]);
  });

  test("an HTTP request gets no answer", async () => {
    raw.reset();
    // curl waits for a response that never comes; its timeout proves silence.
    const r = await runClient(curlArgs(raw.url, { caFile: certs.caFile, extra: ["--max-time", "1"] }));
    expect(r.code).toBe(28); // operation timed out
    expect(r.stdout).toBe("");
    expect(raw.received().toString()).toStartWith("GET / HTTP/1.1\r\n");
  });
});
