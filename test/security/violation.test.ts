/**
 * The violation policy: what an attempt to send a secret where it may not go
 * does (--on-violation, or onViolation: per secret in a secrets file). pass:
 * the placeholder goes out; block: the connection is shut down before the
 * write leaves (the app sees an error); kill: the process dies before the
 * write. API_KEY may go to 127.0.0.1; 127.0.0.3 is elsewhere.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { attack, connectSteps, count, fakeSecret } from "./attack.ts";

let allowed: TlsServer;
let elsewhere: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-violation-"));

beforeAll(async () => {
  allowed = await startTlsServer({ host: "127.0.0.1" });
  elsewhere = await startTlsServer({ host: "127.0.0.3" });
});
afterAll(async () => {
  await allowed.close();
  await elsewhere.close();
});
beforeEach(() => {
  allowed.reset();
  elsewhere.reset();
});

const metric = (file: string, name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(readFileSync(file, "utf8"))?.[1]);

/** Write API_KEY to 127.0.0.3 (not allowed), then, if still alive, to 127.0.0.1. */
const steps = () => [
  ...connectSteps("bad", "127.0.0.3", elsewhere.port, null),
  ...connectSteps("good", "127.0.0.1", allowed.port, null),
  { op: "buffer", id: "b" },
  { op: "write", id: "bad", buf: "b" },
  { op: "write", id: "good", buf: "b" },
  { op: "read", id: "good" },
];

describe("--on-violation", () => {
  test("pass (the default): the placeholder goes out, refused and reported; the process goes on", async () => {
    const secret = fakeSecret(32);
    const r = await attack({ secret, allow: ["127.0.0.1"], steps: steps() });
    expect(r.code).toBe(0);
    expect(count(elsewhere.received(), secret)).toEqual({ values: 0, placeholders: 2 });
    expect(count(allowed.received(), secret)).toEqual({ values: 2, placeholders: 0 });
    expect(r.stderr).toMatch(/refused 2x: secret API_KEY to 127\.0\.0\.3:\d+: destination_not_allowed \([^)]*\)\n/);
  });

  test("block: the connection is shut down before the write leaves; the app sees an error and goes on", async () => {
    const secret = fakeSecret(32);
    const metrics = join(tmp, "block.prom");
    const r = await attack({ secret, allow: ["127.0.0.1"], flags: ["--on-violation", "block", "--metrics-file", metrics], steps: steps() });
    expect(r.code).toBe(0);
    expect(r.out.WROTE?.[0]).not.toBe("127"); // the blocked write failed
    expect(count(elsewhere.received(), secret)).toEqual({ values: 0, placeholders: 0 }); // nothing arrived there
    expect(count(allowed.received(), secret)).toEqual({ values: 2, placeholders: 0 });
    expect(r.stderr).toMatch(/destination_not_allowed \([^)]*\); violation: the connection was shut down/);
    expect(metric(metrics, "kloak_connections_blocked_total")).toBe(1);
  });

  test("kill: the process dies before the write; nothing arrives anywhere", async () => {
    const secret = fakeSecret(32);
    const metrics = join(tmp, "kill.prom");
    const r = await attack({ secret, allow: ["127.0.0.1"], flags: ["--on-violation", "kill", "--metrics-file", metrics], steps: steps() });
    expect(r.code).toBe(128 + 9);
    expect(r.out.WROTE).toBeUndefined();
    expect(count(elsewhere.received(), secret)).toEqual({ values: 0, placeholders: 0 });
    expect(count(allowed.received(), secret)).toEqual({ values: 0, placeholders: 0 });
    expect(r.stderr).toMatch(/destination_not_allowed \([^)]*\); violation: the process was killed/);
    expect(metric(metrics, "kloak_writers_killed_total")).toBe(1);
  });

  test("block where kloak knows no socket for the connection (memory BIOs): the process is killed instead", async () => {
    const secret = fakeSecret(32);
    const r = await attack({
      secret,
      allow: ["127.0.0.1"],
      flags: ["--on-violation", "block"],
      steps: [
        { op: "tcp", id: "good", host: "127.0.0.1", port: allowed.port },
        { op: "tcp", id: "bad", host: "127.0.0.3", port: elsewhere.port },
        { op: "ssl", id: "c" },
        { op: "set_fd", id: "c", sock: "good" },
        { op: "mem_bio", id: "c" },
        { op: "mem_handshake", id: "c", sock: "bad" },
        { op: "buffer", id: "b" },
        { op: "write", id: "c", buf: "b" },
        { op: "relay", id: "c", sock: "bad" },
      ],
    });
    expect(r.code).toBe(128 + 9);
    expect(count(elsewhere.received(), secret)).toEqual({ values: 0, placeholders: 0 });
    expect(r.stderr).toMatch(/binding_changed \([^)]*\); violation: the process was killed/);
  });

  test("onViolation: kill for one secret of a secrets file, pass for the rest", async () => {
    const secret = fakeSecret(32);
    const file = join(tmp, "secrets.yaml");
    writeFileSync(file, `secrets:\n  - name: API_KEY\n    value: "${secret}"\n    hosts: ["127.0.0.1"]\n    onViolation: kill\n`);
    const args = ["exec", "--secrets-file", file];
    const { runKloak } = await import("../support/kloak.ts");
    const { pythonPath } = await import("../support/clients.ts");
    const { OSSL_CLIENT, REQUEST } = await import("./attack.ts");
    const r = await runKloak([...args, "--", pythonPath(), OSSL_CLIENT, JSON.stringify(steps())], { env: { KLOAK_TEST_REQUEST: REQUEST } });
    expect(r.code).toBe(128 + 9);
    expect(count(elsewhere.received(), secret)).toEqual({ values: 0, placeholders: 0 });
  });

  test("a bad --on-violation is a usage error naming the choices", async () => {
    const { runKloak } = await import("../support/kloak.ts");
    const r = await runKloak(["exec", "--secret", "A=abcdefghij", "--on-violation", "stop", "--", "true"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('kloak: exec: --on-violation "stop": use pass, block, kill\n');
  });
});
