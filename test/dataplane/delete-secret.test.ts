/**
 * Dataplane maintenance the cluster agent needs: deleteSecret (the
 * placeholder goes out unchanged afterwards, even mid-stream, and a write
 * that substituted it is still restored), revoke, cgroups, removeProcess,
 * and mapUsage counting all of it. Real Python clients, a real TLS server.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RefusalEvent } from "../../src/dataplane/abi.ts";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane, type MapUsage } from "../../src/dataplane/dataplane.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, parseClientOutput, pythonClientArgs, pythonPath, runClient } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let http: TlsServer;
let dp: Dataplane;
let certs: TestCerts;
const refusals: RefusalEvent[] = [];
const tmp = mkdtempSync(join(tmpdir(), "kloak-delete-"));
const registry = new PlaceholderRegistry();

beforeAll(async () => {
  pythonPath(); // runs a child synchronously: before any scope exists
  certs = await testCerts();
  http = await startTlsServer({ mode: "http" });
  dp = await Dataplane.start({ mode: "auto", scanCap: 4096 });
  // Every scope the tests use: sockets in this process\'s network namespace.
  for (const scope of [1, 2, 3, 4]) dp.setScope(scope, { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" });
  dp.onRefusal((e) => refusals.push(e));
}, 60_000);
afterAll(async () => {
  await dp.close();
  await http.close();
});

const usage = (): Record<string, number> => Object.fromEntries(dp.mapUsage().map((m: MapUsage) => [m.name, m.entries]));

async function load(id: number, name: string, withRules = false) {
  const value = fakeSecret(32);
  const ph = registry.create(name, valueShape(value));
  const rules = withRules ? [{ kind: "cidr" as const, addr: new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 0]), prefix: 104, port: 0 }] : null;
  await dp.setSecret({ id, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(value), rules });
  return { value, ph };
}

/** One Python client, a child of this process in scopeId, sending req `repeat` times. */
function clientInScope(scopeId: number, req: Buffer, o: { repeat?: number; placeholder?: string } = {}) {
  const file = join(tmp, `req-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, req);
  const argv = pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: file, repeat: o.repeat });
  dp.addLauncher(process.pid, scopeId);
  try {
    return runClient(argv, { env: { KLOAK_TEST_PLACEHOLDER: o.placeholder }, timeoutMs: 60_000 });
  } finally {
    dp.removeLauncher(process.pid);
  }
}

test("mapUsage: every map with its capacity; counts follow secrets, grants, cgroups and processes", async () => {
  const before = usage();
  const names = dp.mapUsage().map((m) => m.name);
  expect(names).toEqual(["kloak_procs", "kloak_secrets", "kloak_entitled", "kloak_cgroups", "kloak_conns", "kloak_policy"]);
  expect(dp.mapUsage().find((m) => m.name === "kloak_cgroups")?.capacity).toBe(16384);
  expect(dp.mapUsage().find((m) => m.name === "kloak_procs")?.capacity).toBe(65536);

  await load(31, "U1", true);
  await load(32, "U2");
  dp.grant(3, 31);
  dp.grant(3, 32);
  dp.grant(4, 32);
  dp.addCgroup(123456789n, 3);
  const sleeper = Bun.spawn(["sleep", "30"]);
  dp.addProcess(sleeper.pid, 3);
  expect(usage()).toMatchObject({
    kloak_secrets: before.kloak_secrets! + 2,
    kloak_policy: before.kloak_policy! + 1,
    kloak_entitled: before.kloak_entitled! + 3,
    kloak_cgroups: before.kloak_cgroups! + 1,
    kloak_procs: before.kloak_procs! + 1,
  });
  expect(dp.processScope(sleeper.pid)).toBe(3);
  expect(dp.processesByScope().get(3)).toEqual([sleeper.pid]);
  expect(dp.grantsByScope().get(3)?.sort()).toEqual([31, 32]);

  expect(dp.revoke(4, 32)).toBe(true);
  expect(dp.revoke(4, 32)).toBe(false);
  expect(dp.removeCgroup(123456789n)).toBe(true);
  expect(dp.removeCgroup(123456789n)).toBe(false);
  expect(dp.removeProcess(sleeper.pid)).toBe(true);
  expect(dp.processScope(sleeper.pid)).toBeUndefined();
  await dp.deleteSecret(31);
  await dp.deleteSecret(32);
  expect(usage()).toMatchObject(before);
  sleeper.kill();
  await sleeper.exited;
}, 60_000);

test("deleteSecret: the placeholder goes out unchanged afterwards (unknown_placeholder); other secrets keep working", async () => {
  const s = await load(7, "S");
  const t = await load(8, "T");
  dp.grant(1, 7);
  dp.grant(1, 8);
  const req = buildHttpRequest({ host: "x", headers: { "X-S": s.ph, "X-T": t.ph } });

  http.reset();
  expect((await clientInScope(1, req)).code).toBe(0);
  expect(occurrences(http.received(), `X-S: ${s.value}\r\n`)).toBe(1);

  await dp.deleteSecret(7);
  expect(dp.grantsByScope().get(1)).toEqual([8]);
  http.reset();
  refusals.length = 0;
  expect((await clientInScope(1, req)).code).toBe(0);
  const got = http.received();
  expect(occurrences(got, s.value)).toBe(0);
  expect(occurrences(got, `X-S: ${s.ph}\r\n`)).toBe(1);
  expect(occurrences(got, `X-T: ${t.value}\r\n`)).toBe(1);
  await Bun.sleep(50);
  expect(refusals.filter((e) => e.reason === "unknown_placeholder" && e.scopeId === 1)).toHaveLength(1);

  // the same id loaded again with another value: usable, and not entitled by the old grant
  const again = await load(7, "S2");
  http.reset();
  expect((await clientInScope(1, buildHttpRequest({ host: "x", headers: { "X-S": again.ph } }))).code).toBe(0);
  expect(occurrences(http.received(), again.value)).toBe(0);
  dp.grant(1, 7);
  http.reset();
  expect((await clientInScope(1, buildHttpRequest({ host: "x", headers: { "X-S": again.ph } }))).code).toBe(0);
  expect(occurrences(http.received(), `X-S: ${again.value}\r\n`)).toBe(1);
  await dp.deleteSecret(7);
  await dp.deleteSecret(8);
}, 60_000);

test("deleteSecret while a client keeps sending it: every write restored in the app's memory, value then placeholder on the wire", async () => {
  const s = await load(9, "M");
  dp.grant(1, 9);
  const repeat = 1500;
  http.reset();
  const run = clientInScope(1, buildHttpRequest({ host: "x", headers: { "X-M": s.ph } }), { repeat, placeholder: s.ph });
  await http.waitFor((all) => occurrences(all, s.value) >= 20, 30_000);
  await dp.deleteSecret(9);
  const r = await run;
  expect(r.code).toBe(0);
  const out = parseClientOutput(r.stdout);
  expect(out.APP_SENDS).toEqual([String(repeat)]);
  // the application's buffer held the placeholder after every single send
  expect(out.APP_UNCHANGED).toEqual(["yes"]);
  expect(out.APP_SAW_PLACEHOLDER?.every((x) => x === "yes")).toBe(true);
  const got = http.received();
  const values = occurrences(got, `X-M: ${s.value}\r\n`);
  const placeholders = occurrences(got, `X-M: ${s.ph}\r\n`);
  expect(values).toBeGreaterThanOrEqual(20);
  expect(placeholders).toBeGreaterThan(0);
  expect(values + placeholders).toBe(repeat);
  expect(placeholderCount(got)).toBe(placeholders);
}, 90_000);
