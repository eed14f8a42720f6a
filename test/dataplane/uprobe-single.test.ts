/**
 * Kernels before 6.6 have no multi-uprobe links; kloak then attaches one perf
 * event per probed function. This kernel has both, so the fallback is forced
 * here and must substitute (and bind connections for a destination rule) the
 * same way.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { kernelRules } from "../../src/policy/policy-engine.ts";
import { parseRuleList } from "../../src/policy/rules.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonClientArgs, runClient } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let http: TlsServer;
let dp: Dataplane;

beforeAll(async () => {
  http = await startTlsServer({ mode: "http", host: "127.0.0.2" });
  dp = await Dataplane.start({ mode: "auto", scanCap: 65536, uprobes: "single" });
  // Every scope the tests use: sockets in this process\'s network namespace.
  for (const scope of [1, 2, 3, 4]) dp.setScope(scope, { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" });
});
afterAll(async () => {
  await dp.close();
  await http.close();
});

test("perf-event uprobes (pre-6.6 kernels): substituted for an allowed peer, refused for another", async () => {
  expect(dp.uprobes).toBe("single");
  const secret = fakeSecret(32);
  const ph = new PlaceholderRegistry().create("S", valueShape(secret));
  const rules = kernelRules(parseRuleList("127.0.0.2"));
  await dp.setSecret({ id: 3, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(secret), rules });
  dp.grant(1, 3);
  const dir = mkdtempSync(join(tmpdir(), "kloak-single-"));
  const file = join(dir, "req");
  writeFileSync(file, buildHttpRequest({ host: "x", headers: { "X-S": ph } }));
  const certs = await testCerts();
  // Built before joining the scope: pythonPath() runs a child synchronously.
  const ok = pythonClientArgs({ port: http.port, host: "127.0.0.2", caFile: certs.caFile, requestFile: file });
  dp.addLauncher(process.pid, 1);
  const run = runClient(ok);
  dp.removeLauncher(process.pid);
  expect((await run).code).toBe(0);
  expect(occurrences(http.received(), `X-S: ${secret}\r\n`)).toBe(1);

  // The same server reached as 127.0.0.3 is not 127.0.0.2: refused.
  const other = await startTlsServer({ mode: "http", host: "127.0.0.3" });
  try {
    const bad = pythonClientArgs({ port: other.port, host: "127.0.0.3", caFile: certs.caFile, requestFile: file });
    dp.addLauncher(process.pid, 1);
    const run2 = runClient(bad);
    dp.removeLauncher(process.pid);
    expect((await run2).code).toBe(0);
    expect(occurrences(other.received(), secret)).toBe(0);
    expect(placeholderCount(other.received())).toBe(1);
    expect(dp.refusalCounts().destination_not_allowed).toBe(1n);
  } finally {
    await other.close();
  }
});
