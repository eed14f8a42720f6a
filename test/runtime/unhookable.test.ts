/**
 * TLS that kloak cannot hook is reported, never a silent "0 TLS writes": a
 * process in the scope that sends a ClientHello no hooked library made is
 * named (comm, exe, what it links) in the exec summary and the metrics, and
 * runs on unharmed (its placeholder goes out as it is).
 *
 * The client kloak cannot hook: Java (OpenJDK's own TLS, JSSE), a real TLS
 * stack in wide use. Memory-BIO clients (Python asyncio, node) send their
 * ClientHello outside TLS calls too, but through a hooked library: they must
 * not be reported.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NO_TLS_WRITES } from "../../src/cli/exec.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { fakeSecret, occurrences, placeholderCount, ROOT, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const JAVA = Bun.which("java");
const JAVA_CLIENT = join(ROOT, "test", "support", "JavaTlsClient.java");
const tmp = mkdtempSync(join(tmpdir(), "kloak-unhookable-test-"));

let certs: TestCerts;
let server: TlsServer;
beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer();
});
afterAll(() => server.close());
beforeEach(() => server.reset());

function requireJava(): string {
  if (!JAVA) throw new Error("java not found: apt-get install default-jre-headless (OpenJDK 17 in bookworm)");
  return JAVA;
}

describe("unhookable TLS is reported", () => {
  test("Java (JSSE): runs unharmed, sends its placeholder, and is named with what it links", async () => {
    const secret = fakeSecret(32);
    const metrics = join(tmp, "java.prom");
    const r = await runKloak(
      [
        "exec",
        "--metrics-file",
        metrics,
        "--secret",
        `API_TOKEN=${secret}`,
        "--allow",
        "API_TOKEN=localhost",
        "--",
        requireJava(),
        JAVA_CLIENT,
        "localhost",
        String(server.port),
        certs.caFile,
      ],
      { timeoutMs: 120_000 },
    );
    expect(r.stdout).toContain("HTTP/1.1 200 OK");
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain("0 substitution(s) in 0 TLS write(s)");
    expect(r.stderr).toMatch(
      new RegExp(`warning: process \\d+ \\(java, /\\S+/java\\) does TLS to 127\\.0\\.0\\.1:${server.port} through Java's own TLS \\(JSSE\\); it links: \\S*lib(jvm|java)\\.so`),
    );
    expect(r.stderr).toContain("Its placeholders are sent as they are (java)");
    // the specific warning replaces the generic note
    expect(r.stderr).not.toContain(NO_TLS_WRITES);
    const prom = readFileSync(metrics, "utf8");
    expect(prom).toContain('kloak_tls_unhookable_total{reason="java"} 1');
    expect(prom).toMatch(/^kloak_tls_unhookable_total\{reason="static_tls"\} 0$/m);
  });

  test("Python asyncio (memory BIO, hooked libssl): not reported, substituted", async () => {
    const secret = fakeSecret(32);
    const script = join(tmp, "aio.py");
    writeFileSync(
      script,
      `import asyncio, os, ssl, sys
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    r, w = await asyncio.open_connection("localhost", int(sys.argv[1]), ssl=ctx)
    w.write(("GET / HTTP/1.1\\r\\nHost: localhost\\r\\nAuthorization: Bearer " + os.environ["API_TOKEN"] + "\\r\\nConnection: close\\r\\n\\r\\n").encode())
    await w.drain()
    print((await r.readline()).decode().strip())
    w.close()
asyncio.run(main())
`,
    );
    const r = await runKloak(["exec", "--secret", `API_TOKEN=${secret}`, "--", "python3", script, String(server.port), certs.caFile]);
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(1);
    expect(r.stderr).not.toContain("warning: process");
  });

  test("node fetch (memory BIO, OpenSSL inside node): not reported", async () => {
    const secret = fakeSecret(32);
    const r = await runKloak([
      "exec",
      "--secret",
      `API_TOKEN=${secret}`,
      "--",
      "env",
      `NODE_EXTRA_CA_CERTS=${certs.caFile}`,
      "node",
      "-e",
      `fetch("https://localhost:${server.port}/", { headers: { authorization: process.env.API_TOKEN } }).then((r) => console.log(r.status))`,
    ]);
    expect(r.stdout).toContain("200");
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(1);
    expect(r.stderr).not.toContain("warning: process");
  });

  // A ClientHello record written by hand over a plain socket: TLS no library kloak
  // knows made, from a process that links none (python3 without its ssl module).
  // Each syscall that can carry it: sendto, write, writev, sendmsg.
  for (const [syscall, send] of [
    ["sendto", "s.sendall(hello)"],
    ["write", "os.write(s.fileno(), hello)"],
    ["writev", "os.writev(s.fileno(), [hello, hello])"],
    ["sendmsg", "s.sendmsg([hello])"],
  ] as const)
    test(`a hand-made ClientHello (${syscall}) from a process that links no TLS library: static_tls`, async () => {
      const metrics = join(tmp, `${syscall}.prom`);
      const r = await runKloak([
        "exec",
        "--metrics-file",
        metrics,
        "--secret",
        `API_TOKEN=${fakeSecret(20)}`,
        "--",
        "python3",
        "-c",
        `import os, socket; s = socket.create_connection(("127.0.0.1", ${server.port})); ` +
          `hello = bytes([0x16, 3, 1, 0, 4, 1, 0, 0, 0]); ${send}; s.close()`,
      ]);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(
        new RegExp(`warning: process \\d+ \\(python3, \\S+\\) does TLS to 127\\.0\\.0\\.1:${server.port} through TLS linked into the program`),
      );
      expect(r.stderr).toContain("it links: none (TLS built into the executable)");
      expect(readFileSync(metrics, "utf8")).toContain('kloak_tls_unhookable_total{reason="static_tls"} 1');
    });

  test("a process that maps a probed library (libssl) is not reported: its TLS may be hooked", async () => {
    const r = await runKloak([
      "exec",
      "--secret",
      `API_TOKEN=${fakeSecret(20)}`,
      "--",
      "python3",
      "-c",
      `import socket, ssl; s = socket.create_connection(("127.0.0.1", ${server.port})); s.sendall(bytes([0x16, 3, 1, 0, 4, 1, 0, 0, 0])); s.close()`,
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("warning: process");
  });

  test("plain TCP that is no TLS is not reported", async () => {
    const r = await runKloak([
      "exec",
      "--secret",
      `API_TOKEN=${fakeSecret(20)}`,
      "--",
      "python3",
      "-c",
      `import socket; s = socket.create_connection(("127.0.0.1", ${server.port})); s.sendall(b"\\x16\\x03\\x01\\x00\\x05\\x02hello"); s.close()`,
    ]);
    // a handshake record, but a ServerHello (type 2): no ClientHello, no report
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("warning: process");
    expect(r.stderr).toContain(NO_TLS_WRITES);
  });
});
