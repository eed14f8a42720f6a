/**
 * Attacks from inside the tree on what kloak believes a connection is (threat
 * model B, docs/policy.md section 5): the SNI that counts is the one the
 * handshake put on the wire, and no amount of connections can push a
 * connection's history out of kloak's table. api.kloak.test resolves (for
 * kloak, through its own DNS server) to 127.0.0.2, where one TLS server
 * answers for every name, as a shared front end does.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { startDnsServer, type DnsServer } from "../support/dns-server.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { attack, connectSteps, count, fakeSecret } from "./attack.ts";

let dns: DnsServer;
let front: TlsServer;

beforeAll(async () => {
  dns = await startDnsServer({ "api.kloak.test": { A: ["127.0.0.2"], ttl: 300 } });
  front = await startTlsServer({ host: "127.0.0.2" });
});
afterAll(async () => {
  await front.close();
  await dns.close();
});
beforeEach(() => front.reset());

const rules = () => ({ allow: ["api.kloak.test"], flags: ["--dns-server", `127.0.0.1:${dns.port}`] });
const writeSteps = [{ op: "buffer", id: "b" }, { op: "write", id: "c", buf: "b" }, { op: "read", id: "c" }];

describe("the SNI that counts is the one on the wire", () => {
  test("control: SNI api.kloak.test from the start: substituted", async () => {
    const secret = fakeSecret(32);
    const r = await attack({ secret, ...rules(), steps: [...connectSteps("c", "127.0.0.2", front.port, "api.kloak.test"), ...writeSteps] });
    expect(r.code).toBe(0);
    expect(front.sni).toEqual(["api.kloak.test"]);
    expect(count(front.received(), secret)).toEqual({ values: 2, placeholders: 0 });
  });

  test("handshake with SNI evil.kloak.test, then the SNI set to api.kloak.test: never substituted (sni_changed)", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      ...rules(),
      steps: [...connectSteps("c", "127.0.0.2", front.port, "evil.kloak.test"), { op: "sni", id: "c", name: "api.kloak.test" }, ...writeSteps],
    });
    expect(r.code).toBe(0);
    expect(front.sni).toEqual(["evil.kloak.test"]); // what the server was asked for
    expect(count(front.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to unknown destination \(SNI evil\.kloak\.test\): sni_changed/);
  });

  test("40,000 SSL_ctrl calls cannot push a connection out of kloak's table and have it re-learned without its SNI", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      ...rules(),
      steps: [
        ...connectSteps("c", "127.0.0.2", front.port, "evil.kloak.test"),
        { op: "flood_sni", n: 40_000 },
        ...writeSteps,
      ],
    });
    expect(r.code).toBe(0);
    expect(r.out.FLOODED).toEqual(["40000"]);
    // Still the connection that asked for evil.kloak.test: the peer is api.kloak.test's address, the name another.
    expect(count(front.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to 127\.0\.0\.2:\d+ \(SNI evil\.kloak\.test\): sni_mismatch/);
  });
});
