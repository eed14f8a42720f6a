/**
 * Pod attach end to end on this kernel: a real cgroup shaped like the
 * kubelet's systemd layout under the real cgroup2 root, real Python ssl
 * clients in it, a real TLS server recording what arrived, the real eBPF
 * object driven in-process through Dataplane and PodAttacher.
 *
 *  - a process already in the container when the pod is synced is added and
 *    redeems the pod's secret A; B (not the pod's) goes out as placeholder;
 *  - processes started in the container later join in the kernel through
 *    kloak_cgroups: at exec (the runtime's `exec` path), at fork, and from a
 *    nested sub-cgroup;
 *  - after remove(uid) nothing of the pod is left in the maps and new
 *    processes in the cgroup send placeholders unchanged.
 *
 * Hazard: processes joining at exec are held stopped until this thread
 * attaches them, so nothing here blocks on a child (no spawnSync once the
 * cgroup is registered; pythonPath() runs in beforeAll).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RefusalEvent } from "../../src/dataplane/abi.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { cgroupProcesses, cgroupV2Root } from "../../src/node/cgroups.ts";
import { PodAttacher, type PodTarget } from "../../src/node/pod-attacher.ts";
import { PlaceholderRegistry, placeholderKey, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonClientArgs, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const UID = `0e1f2a3b-4c5d-4e6f-8a9b-${String(process.pid).padStart(12, "0")}`;
const CID = "c0ffee".padEnd(64, "0");
const A_ID = 501;
const B_ID = 502;

let http: TlsServer;
let dp: Dataplane;
let certs: TestCerts;
let python: string;
let attacher: PodAttacher;
const refusals: RefusalEvent[] = [];
const logs: string[] = [];
const tmp = mkdtempSync(join(tmpdir(), "kloak-pod-e2e-"));
let base: string;
const REL = [
  "kubepods.slice",
  "kubepods-besteffort.slice",
  `kubepods-besteffort-pod${UID.replaceAll("-", "_")}.slice`,
  `cri-containerd-${CID}.scope`,
];
let leaf: string;
let nested: string;
const secretA = fakeSecret(40);
const secretB = fakeSecret(40);
let phA: string;
let phB: string;
let reqFile: string;
let holder: ReturnType<typeof spawnHolder> | undefined;

const target = (secretIds: number[]): PodTarget => ({
  uid: UID,
  namespace: "ns",
  name: "web-0",
  qosClass: "BestEffort",
  containers: [{ name: "app", containerId: `containerd://${CID}`, running: true }],
  secretIds,
});

/** Shell-quote for sh -c. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * A long-lived client: it moves itself into the cgroup (before the cgroup is
 * registered, so it is not held), loads ssl, prints READY, then sends the
 * request once per line on stdin and prints STATUS=<code>.
 */
const HOLDER = `
import socket, ssl, sys
port, cafile, req = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
data = open(req, "rb").read()
print("READY", flush=True)
for line in sys.stdin:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
        s.sendall(data)
        buf = b""
        while b"\\r\\n\\r\\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        print("STATUS=" + (buf.split(b" ")[1].decode() if buf else "none"), flush=True)
`;

function spawnHolder() {
  const argv = [python, "-c", HOLDER, String(http.port), certs.caFile, reqFile];
  const proc = Bun.spawn(["sh", "-c", `echo $$ > ${q(join(leaf, "cgroup.procs"))} && exec ${argv.map(q).join(" ")}`], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
  });
  let out = "";
  const waiters: (() => void)[] = [];
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stdout) {
      out += dec.decode(chunk);
      for (const w of waiters.splice(0)) w();
    }
  })();
  const waitFor = async (re: RegExp, ms = 20_000) => {
    const deadline = performance.now() + ms;
    while (!re.test(out)) {
      if (performance.now() > deadline) throw new Error(`holder: no ${re} within ${ms} ms; stdout so far: ${JSON.stringify(out)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
  };
  return {
    proc,
    waitFor,
    count: (re: RegExp) => (out.match(new RegExp(re, "g")) ?? []).length,
    send() {
      proc.stdin.write("go\n");
      proc.stdin.flush();
    },
  };
}

/** Run a client in the container: sh moves itself into `cgroup`, then execs `cmd`. */
async function inContainer(cmd: string[], o: { cgroup?: string } = {}): Promise<{ code: number; stdout: string; ms: number }> {
  const procs = join(o.cgroup ?? leaf, "cgroup.procs");
  const script = `echo $$ > ${q(procs)} && exec ${cmd.map(q).join(" ")}`;
  const t0 = performance.now();
  const p = Bun.spawn(["sh", "-c", script], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) console.error(`client failed (${code}): ${stderr}`);
  return { code, stdout, ms: performance.now() - t0 };
}

const client = () => pythonClientArgs({ port: http.port, caFile: certs.caFile, requestFile: reqFile });

beforeAll(async () => {
  // Everything that runs a child synchronously happens before any scope exists.
  python = pythonPath();
  certs = await testCerts();
  http = await startTlsServer({ mode: "http" });
  base = join(cgroupV2Root(), `kloak-e2e-${process.pid}`);
  leaf = join(base, ...REL);
  nested = join(leaf, "nested");
  mkdirSync(nested, { recursive: true });

  const registry = new PlaceholderRegistry();
  phA = registry.create("A", valueShape(secretA));
  phB = registry.create("B", valueShape(secretB));
  reqFile = join(tmp, "req");
  writeFileSync(reqFile, buildHttpRequest({ host: "x", headers: { "X-A": phA, "X-B": phB } }));

  dp = await Dataplane.start({ mode: "auto", scanCap: 4096 });
  dp.onRefusal((e) => refusals.push(e));
  await dp.setSecret({ id: A_ID, placeholder: Buffer.from(phA), key: placeholderKey(phA), value: Buffer.from(secretA), rules: null });
  await dp.setSecret({ id: B_ID, placeholder: Buffer.from(phB), key: placeholderKey(phB), value: Buffer.from(secretB), rules: null });
  attacher = new PodAttacher(dp, { cgroupRoot: base, log: (level, msg, fields) => logs.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`) });
}, 60_000);

afterAll(async () => {
  attacher?.remove(UID);
  attacher?.close();
  if (holder) {
    holder.proc.kill("SIGKILL");
    await holder.proc.exited;
  }
  await dp?.close();
  await http?.close();
  for (let i = 0; i < 100 && cgroupProcesses(leaf).length; i++) await Bun.sleep(20);
  for (const dir of [nested, ...REL.map((_, i) => join(base, ...REL.slice(0, REL.length - i))), base]) {
    try {
      rmdirSync(dir);
    } catch (e) {
      console.error(`cleanup: ${(e as Error).message}`);
    }
  }
}, 30_000);

/** What one send delivered: counts only, never the values. */
function delivered(): { a: number; b: number; phA: number; phB: number } {
  const got = http.received();
  return { a: occurrences(got, `X-A: ${secretA}\r\n`), b: occurrences(got, secretB), phA: occurrences(got, phA), phB: occurrences(got, `X-B: ${phB}\r\n`) };
}

test("a process already in the container when the pod is synced: the pod's secret A is substituted, B goes out as placeholder (scope_not_entitled)", async () => {
  holder = spawnHolder();
  await holder.waitFor(/READY/);
  expect(cgroupProcesses(leaf)).toContain(holder.proc.pid);

  attacher.sync(target([A_ID]));
  const scope = attacher.scopeOf(UID)!;
  expect(scope).toBe(1000);
  expect(dp.processScope(holder.proc.pid)).toBe(scope);
  expect(attacher.stats()).toEqual({ pods: 1, containers: 1, processes: 1, pendingContainers: 0 });
  expect(dp.mapUsage().find((m) => m.name === "kloak_cgroups")).toEqual({ name: "kloak_cgroups", entries: 1, capacity: 16384 });

  http.reset();
  holder.send();
  await holder.waitFor(/STATUS=200/);
  expect(delivered()).toEqual({ a: 1, b: 0, phA: 0, phB: 1 });
  await Bun.sleep(50);
  expect(refusals.filter((e) => e.reason === "scope_not_entitled" && e.secretId === B_ID && e.scopeId === scope)).toHaveLength(1);
}, 60_000);

test("a process started later in the container joins at its exec (held until attached) and substitutes", async () => {
  const joined = dp.counters().cgroup_joined;
  http.reset();
  const r = await inContainer(client());
  expect(r.code).toBe(0);
  expect(delivered()).toEqual({ a: 1, b: 0, phA: 0, phB: 1 });
  expect(dp.counters().cgroup_joined).toBe(joined + 1n);
}, 60_000);

test("... and at fork: the child of an unprotected process in the container joins before it execs", async () => {
  const joined = dp.counters().cgroup_joined;
  http.reset();
  const procs = join(leaf, "cgroup.procs");
  // sh moves itself in (never exec'ing afterwards, so it stays unprotected),
  // then forks a subshell that waits before exec'ing the client.
  const p = Bun.spawn(["sh", "-c", `echo $$ > ${q(procs)} && ( sleep 1; exec ${client().map(q).join(" ")} ); exit $?`], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
    timeout: 30_000,
  });
  const scope = attacher.scopeOf(UID)!;
  let forked: number[] = [];
  for (let i = 0; i < 50 && forked.length === 0; i++) {
    await Bun.sleep(20);
    forked = cgroupProcesses(leaf).filter((pid) => pid !== p.pid && pid !== holder!.proc.pid && dp.processScope(pid) === scope);
  }
  expect(forked.length).toBeGreaterThan(0); // the subshell (and its sleep), scoped while still sh
  expect(dp.processScope(p.pid)).toBeUndefined();
  expect(await p.exited).toBe(0);
  expect(delivered()).toEqual({ a: 1, b: 0, phA: 0, phB: 1 });
  // only the fork joined through the cgroup; the rest followed their parent
  expect(dp.counters().cgroup_joined).toBe(joined + 1n);
}, 60_000);

test("... and from a sub-cgroup the container created (nearest registered ancestor)", async () => {
  http.reset();
  const r = await inContainer(client(), { cgroup: nested });
  expect(r.code).toBe(0);
  expect(delivered()).toEqual({ a: 1, b: 0, phA: 0, phB: 1 });
}, 60_000);

test("grants follow sync: with B granted and A revoked, the same process redeems B only", async () => {
  attacher.sync(target([B_ID]));
  http.reset();
  holder!.send();
  await holder!.waitFor(/(STATUS=200[\s\S]*){2}/);
  const got = http.received();
  expect(occurrences(got, `X-A: ${phA}\r\n`)).toBe(1);
  expect(occurrences(got, `X-B: ${secretB}\r\n`)).toBe(1);
  expect(occurrences(got, secretA)).toBe(0);
  attacher.sync(target([A_ID]));
}, 60_000);

test("time a held exec costs: python -c pass in the container vs outside it (reported)", async () => {
  const cmd = [python, "-c", "pass"];
  const runs = async (cgroup: string) => {
    const ms: number[] = [];
    for (let i = 0; i < 5; i++) ms.push((await inContainer(cmd, { cgroup })).ms);
    return ms.sort((a, b) => a - b)[2]!;
  };
  const outside = join(base, "outside");
  mkdirSync(outside, { recursive: true });
  try {
    const held = await runs(leaf);
    const free = await runs(outside);
    console.log(`exec of python -c pass: median ${held.toFixed(1)} ms joined+held+attached vs ${free.toFixed(1)} ms unprotected`);
    expect(held).toBeLessThan(free + 2000);
  } finally {
    for (let i = 0; i < 50 && cgroupProcesses(outside).length; i++) await Bun.sleep(20);
    rmdirSync(outside);
  }
}, 60_000);

test("remove(uid): nothing of the pod left in the maps; old and new processes send placeholders unchanged", async () => {
  const scope = attacher.scopeOf(UID)!;
  attacher.remove(UID);
  expect(dp.processesByScope().get(scope)).toBeUndefined();
  expect(dp.grantsByScope().get(scope)).toBeUndefined();
  expect(dp.mapUsage().find((m) => m.name === "kloak_cgroups")?.entries).toBe(0);
  expect(attacher.stats()).toEqual({ pods: 0, containers: 0, processes: 0, pendingContainers: 0 });

  // the process that was attached
  http.reset();
  holder!.send();
  await holder!.waitFor(/(STATUS=200[\s\S]*){3}/);
  expect(delivered()).toEqual({ a: 0, b: 0, phA: 1, phB: 1 });

  // a new one in the container: not held, not attached, nothing substituted
  const joined = dp.counters().cgroup_joined;
  http.reset();
  const r = await inContainer(client());
  expect(r.code).toBe(0);
  expect(delivered()).toEqual({ a: 0, b: 0, phA: 1, phB: 1 });
  expect(dp.counters().cgroup_joined).toBe(joined);
  await Bun.sleep(100);
  // the removed process's probes went once it was idle
  expect(dp.attachedProcesses).toBe(0);
}, 60_000);
