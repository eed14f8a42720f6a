/**
 * A data plane handed over (handover.ts) by a process that then exits, and
 * taken over here through the Dataplane API, with both uprobe kinds: multi-uprobe links
 * (6.6+) and perf-event links (one per function, what kernels before 6.6
 * get). A real Python client in a scope writes a placeholder every 20 ms to a
 * real TLS server across the handover: every request it sent carries the
 * value, none failed, the app's buffer holds the placeholder after each send.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { claimHandover, listHandovers, releaseHandover } from "../../src/dataplane/handover.ts";
import { ensurePinDir } from "../../src/dataplane/release.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, ROOT } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let http: TlsServer;
/** pids of the old sides and their clients, cleaned up whatever happens */
const olds: number[] = [];
const clients: number[] = [];
let certs: TestCerts;
const tmp = mkdtempSync(join(tmpdir(), "kloak-handover-"));

beforeAll(async () => {
  http = await startTlsServer({ mode: "http" });
  certs = await testCerts();
  ensurePinDir();
});
afterAll(async () => {
  for (const pid of clients) {
    try {
      // Still that client (not a reused pid)?
      if (readFileSync(`/proc/${pid}/cmdline`, "latin1").includes("py_loop_client")) process.kill(pid, "SIGKILL");
    } catch {
      // exited as asked
    }
  }
  // A test that failed before the take-over leaves its handover: released as a later agent would.
  for (const h of listHandovers().offered.filter((o) => olds.includes(o.pid))) {
    const mine = claimHandover(h);
    if (mine) await releaseHandover(mine.path);
  }
  await http.close();
});

for (const uprobes of ["multi", "single"] as const) {
  describe(`${uprobes} uprobes`, () => {
    test("writes go on being substituted across a handover by a process that exits, a take-over, and a second hop", async () => {
      const scope = uprobes === "multi" ? 11 : 12;
      const id = uprobes === "multi" ? 21 : 22;
      const opts = { mode: "auto" as const, scanCap: 65536, uprobes, holds: "signals" as const };
      const secret = fakeSecret(36);
      const ph = new PlaceholderRegistry().create("S", valueShape(secret));
      http.reset();
      const reqFile = join(tmp, `req-${uprobes}`);
      const stopFile = join(tmp, `stop-${uprobes}`);
      const outFile = join(tmp, `out-${uprobes}`);
      writeFileSync(reqFile, buildHttpRequest({ host: "x", headers: { "X-S": ph } }));
      const argv = [pythonPath(), join(ROOT, "test/support/py_loop_client.py"), "--host", "127.0.0.1", "--port", String(http.port), "--cafile", certs.caFile, "--request-file", reqFile, "--stop-file", stopFile, "--interval", "0.02", "--per-connection", "5"];
      const specFile = join(tmp, `spec-${uprobes}.json`);
      writeFileSync(specFile, JSON.stringify({ uprobes, scope, id, secret, placeholder: ph, argv, out: outFile }));
      // The old data plane lives in a process that exits after handing over: only the pins keep its links and maps.
      const old = Bun.spawn([process.execPath, join(ROOT, "test/support/handover-child.ts"), specFile], { stdout: "pipe", stderr: "pipe" });
      olds.push(old.pid);
      const [lines, err, code] = await Promise.all([new Response(old.stdout).text(), new Response(old.stderr).text(), old.exited]);
      const [clientPid, dir = ""] = lines.trim().split("\n");
      if (clientPid) clients.push(Number(clientPid));
      expect({ code, err: err.slice(-500) }).toEqual({ code: 0, err: "" });
      expect(existsSync(dir)).toBe(true);
      const out = () => readFileSync(outFile, "latin1");
      const oks = () => out().split("\n").filter((l) => l.startsWith("OK ")).length;
      // The gap: nobody serves the rings for a while; writes carrying the placeholder wait.
      await Bun.sleep(300);
      const offered = listHandovers().offered.find((h) => h.path === dir)!;
      expect(offered.uprobes).toBe(uprobes);
      expect(offered.pid).toBe(old.pid);
      const dp2 = await Dataplane.adopt(opts, claimHandover(offered)!);
      const settings = { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" as const };
      try {
        expect(dp2.adopted).toBe(true);
        expect(dp2.adoptedSecretId(Buffer.from(ph))).toBe(id);
        expect(dp2.firstFreeSecretId()).toBe(id + 1);
        dp2.setScope(scope, settings);
        await dp2.setSecret({ id, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(secret), rules: null });
        dp2.resumeWrites();
        const at = oks();
        for (let i = 0; i < 400 && oks() < at + 20; i++) await Bun.sleep(25);
        expect(oks()).toBeGreaterThanOrEqual(at + 20);
        expect(await dp2.pruneAdopted({ scope: (s) => s === scope, secret: (s) => s === id })).toEqual({ scopes: 0, secrets: 0, files: 0 });
        // A second hop: what was taken over is handed over again (its adopted links and tracepoints pinned anew).
        const dir2 = await dp2.handOver(Date.now() + 30_000);
        const dp3 = await Dataplane.adopt(opts, claimHandover(listHandovers().offered.find((h) => h.path === dir2)!)!);
        try {
          dp3.setScope(scope, settings);
          await dp3.setSecret({ id, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(secret), rules: null });
          dp3.resumeWrites();
          const at3 = oks();
          for (let i = 0; i < 400 && oks() < at3 + 10; i++) await Bun.sleep(25);
          expect(oks()).toBeGreaterThanOrEqual(at3 + 10);
          // Stopped while dp3 serves: after its close, writes go out as they are.
          writeFileSync(stopFile, "");
          for (let i = 0; i < 200 && !out().includes("APP_UNCHANGED="); i++) await Bun.sleep(25);
        } finally {
          await dp3.close();
        }
        expect(out()).toContain("APP_ERRORS=0");
        expect(out()).toContain("APP_UNCHANGED=yes");
        const sends = Number(/APP_SENDS=(\d+)/.exec(out())![1]);
        expect(occurrences(http.received(), `X-S: ${secret}\r\n`)).toBe(sends);
        expect(placeholderCount(http.received())).toBe(0);
        expect(existsSync(dir)).toBe(false);
      } finally {
        await dp2.close();
      }
    }, 60_000);
  });
}

test("a handover that cannot be taken over (a map pin missing) is refused and released: the client runs on, placeholders back", async () => {
  const secret = fakeSecret(36);
  const ph = new PlaceholderRegistry().create("S", valueShape(secret));
  http.reset();
  const reqFile = join(tmp, "req-broken");
  const stopFile = join(tmp, "stop-broken");
  const outFile = join(tmp, "out-broken");
  writeFileSync(reqFile, buildHttpRequest({ host: "x", headers: { "X-S": ph } }));
  const argv = [pythonPath(), join(ROOT, "test/support/py_loop_client.py"), "--host", "127.0.0.1", "--port", String(http.port), "--cafile", certs.caFile, "--request-file", reqFile, "--stop-file", stopFile, "--interval", "0.02", "--per-connection", "5"];
  const specFile = join(tmp, "spec-broken.json");
  writeFileSync(specFile, JSON.stringify({ uprobes: "multi", scope: 13, id: 23, secret, placeholder: ph, argv, out: outFile }));
  const old = Bun.spawn([process.execPath, join(ROOT, "test/support/handover-child.ts"), specFile], { stdout: "pipe", stderr: "pipe" });
  olds.push(old.pid);
  const [lines, err, code] = await Promise.all([new Response(old.stdout).text(), new Response(old.stderr).text(), old.exited]);
  const [clientPid, dir = ""] = lines.trim().split("\n");
  if (clientPid) clients.push(Number(clientPid));
  expect({ code, err: err.slice(-500) }).toEqual({ code: 0, err: "" });
  const out = () => readFileSync(outFile, "latin1");
  const oks = () => out().split("\n").filter((l) => l.startsWith("OK ")).length;
  rmSync(join(dir, "map-kloak_hcodes"));
  const claimed = claimHandover(listHandovers().offered.find((h) => h.path === dir)!)!;
  await expect(Dataplane.adopt({ mode: "auto", scanCap: 65536, uprobes: "multi", holds: "signals" }, claimed)).rejects.toThrow("lacks maps kloak_hcodes");
  // What the agent does then: release it.
  await releaseHandover(claimed.path);
  expect(existsSync(claimed.path)).toBe(false);
  const at = oks();
  for (let i = 0; i < 400 && oks() < at + 10; i++) await Bun.sleep(25);
  expect(oks()).toBeGreaterThanOrEqual(at + 10);
  writeFileSync(stopFile, "");
  for (let i = 0; i < 200 && !out().includes("APP_UNCHANGED="); i++) await Bun.sleep(25);
  expect(out()).toContain("APP_ERRORS=0");
  expect(out()).toContain("APP_UNCHANGED=yes");
  // Before: the value; after the release: the placeholder (nobody substitutes any more); nothing else.
  expect(occurrences(http.received(), `X-S: ${secret}\r\n`)).toBeGreaterThanOrEqual(10);
  expect(placeholderCount(http.received())).toBeGreaterThanOrEqual(10);
}, 60_000);

test("a handover claimed by a process that died is listed as orphaned and released", async () => {
  const secret = fakeSecret(36);
  const ph = new PlaceholderRegistry().create("S", valueShape(secret));
  http.reset();
  const reqFile = join(tmp, "req-orphan");
  const stopFile = join(tmp, "stop-orphan");
  const outFile = join(tmp, "out-orphan");
  writeFileSync(reqFile, buildHttpRequest({ host: "x", headers: { "X-S": ph } }));
  const argv = [pythonPath(), join(ROOT, "test/support/py_loop_client.py"), "--host", "127.0.0.1", "--port", String(http.port), "--cafile", certs.caFile, "--request-file", reqFile, "--stop-file", stopFile, "--interval", "0.02", "--per-connection", "5"];
  const specFile = join(tmp, "spec-orphan.json");
  writeFileSync(specFile, JSON.stringify({ uprobes: "multi", scope: 14, id: 24, secret, placeholder: ph, argv, out: outFile }));
  const old = Bun.spawn([process.execPath, join(ROOT, "test/support/handover-child.ts"), specFile], { stdout: "pipe", stderr: "pipe" });
  olds.push(old.pid);
  const [lines, err, code] = await Promise.all([new Response(old.stdout).text(), new Response(old.stderr).text(), old.exited]);
  const [clientPid, dir = ""] = lines.trim().split("\n");
  if (clientPid) clients.push(Number(clientPid));
  expect({ code, err: err.slice(-500) }).toEqual({ code: 0, err: "" });
  // Claimed by a process that is gone now (as if an agent died while taking it over).
  const gone = Bun.spawn(["true"]);
  await gone.exited;
  const claimed = claimHandover(listHandovers().offered.find((h) => h.path === dir)!, gone.pid)!;
  expect(listHandovers().orphaned).toContain(claimed.path);
  const out = () => readFileSync(outFile, "latin1");
  const oks = () => out().split("\n").filter((l) => l.startsWith("OK ")).length;
  const at = oks();
  await releaseHandover(claimed.path);
  expect(listHandovers().orphaned).not.toContain(claimed.path);
  for (let i = 0; i < 400 && oks() < at + 10; i++) await Bun.sleep(25);
  expect(oks()).toBeGreaterThanOrEqual(at + 10);
  writeFileSync(stopFile, "");
  for (let i = 0; i < 200 && !out().includes("APP_UNCHANGED="); i++) await Bun.sleep(25);
  expect(out()).toContain("APP_ERRORS=0");
  expect(out()).toContain("APP_UNCHANGED=yes");
}, 60_000);
