/**
 * Scopes inside one data plane (as the cluster agent runs it: one object,
 * many pods): a process redeems a placeholder only when its scope is
 * entitled to the secret. Driven through the Dataplane API in this process,
 * with real Python clients and a real TLS server.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RefusalEvent } from "../../src/dataplane/abi.ts";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonClientArgs, runClient } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let http: TlsServer;
let dp: Dataplane;
const refusals: RefusalEvent[] = [];

beforeAll(async () => {
  http = await startTlsServer({ mode: "http" });
  dp = await Dataplane.start({ mode: "auto", scanCap: 65536 });
  // Every scope the tests use: sockets in this process\'s network namespace.
  for (const scope of [1, 2, 3, 4]) dp.setScope(scope, { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" });
  dp.onRefusal((e) => refusals.push(e));
});
afterAll(async () => {
  await dp.close();
  await http.close();
});

/** Run one Python client as a child of this process joining scopeId; it sends `req`. */
async function clientInScope(scopeId: number, req: Buffer): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), "kloak-scope-"));
  const file = join(dir, "req");
  writeFileSync(file, req);
  const certs = await testCerts();
  // Built before joining: pythonPath() runs a child synchronously, and a held
  // child of a blocked main thread would never be attached.
  const argv = pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: file });
  dp.addLauncher(process.pid, scopeId);
  let r;
  try {
    r = runClient(argv);
  } finally {
    // Bun.spawn has forked by now: later children of this process stay out of scopes.
    dp.removeLauncher(process.pid);
  }
  return (await r).code;
}

test("scope 2, not entitled to the secret, sends its placeholder: refused scope_not_entitled; scope 1 is substituted", async () => {
  const secret = fakeSecret(36);
  const registry = new PlaceholderRegistry();
  const ph = registry.create("S", valueShape(secret));
  await dp.setSecret({ id: 7, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(secret), rules: null });
  dp.grant(1, 7);
  const req = buildHttpRequest({ host: "x", headers: { "X-S": ph } });

  expect(await clientInScope(2, req)).toBe(0);
  expect(occurrences(http.received(), secret)).toBe(0);
  expect(placeholderCount(http.received())).toBe(1);
  await Bun.sleep(50);
  expect(refusals.filter((e) => e.reason === "scope_not_entitled" && e.secretId === 7 && e.scopeId === 2)).toHaveLength(1);
  expect(dp.refusalCounts().scope_not_entitled).toBe(1n);

  http.reset();
  expect(await clientInScope(1, req)).toBe(0);
  expect(occurrences(http.received(), `X-S: ${secret}\r\n`)).toBe(1);
  expect(placeholderCount(http.received())).toBe(0);
});
