/**
 * Zero-gap upgrade, end to end on this kernel: real `kloak agent` processes
 * against the test API server, a fake pod whose container is a real process
 * in a real cgroup, and a Python TLS client in it that writes a request
 * carrying a placeholder every 30 ms to an allowed destination (a real TLS
 * server that records what it received).
 *
 *  - SIGTERM: /readyz fails at once, the webhook answers through the shutdown
 *    delay, a review in flight completes, then the listener is closed.
 *  - The data plane is handed over (handover.ts) and the next agent takes it
 *    over: every request the server received carried the real value, none
 *    failed; no link is left pinned; the final shutdown leaves no pins.
 *  - No successor within the handover timeout: the guardian releases it:
 *    the client runs on (its placeholders go out: fail closed), nothing stays
 *    stopped, nothing stays pinned.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect } from "node:tls";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { parseAllDocuments } from "yaml";
import { cgroupProcesses, cgroupV2Root } from "../../src/node/cgroups.ts";
import { PIN_DIR } from "../../src/dataplane/release.ts";
import { policyFor, startKubeApiServer, type KubeApiServer, type KubeObject } from "../support/kube-api-server.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, ROOT, spawnKloak } from "../support/kloak.ts";

const NODE = "node-upgrade";
const b64 = (s: string) => Buffer.from(s).toString("base64");
const unb64 = (s: string) => Buffer.from(s, "base64").toString("latin1");

let api: KubeApiServer;
let tls: TlsServer;
let certs: TestCerts;
let base = "";
let webhookPort = 0;
let opsPort = 0;
const tmp = mkdtempSync(join(tmpdir(), "kloak-upgrade-"));
const token = fakeSecret(40);
let ph = "";
const cgroups: string[] = [];

interface Agent {
  proc: ReturnType<typeof spawnKloak>;
  log: () => string;
}

const agents: Agent[] = [];

async function freePort(): Promise<number> {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
  const p = s.port!;
  s.stop(true);
  return p;
}

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000, log?: () => string, pollMs = 25): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${log ? `; agent log tail:\n${log().split("\n").slice(-15).join("\n")}` : ""}`);
    await Bun.sleep(pollMs);
  }
}

function startAgent(extra: string[]): Agent {
  const proc = spawnKloak(
    [
      "agent",
      "--kubeconfig", api.kubeconfigPath,
      "--node-name", NODE,
      "--pod-name", "kloak-upgrade",
      "--ops-port", String(opsPort),
      "--webhook-port", String(webhookPort),
      "--bind-address", "127.0.0.1",
      "--cgroup-root", base,
      "--lease-duration", "5",
      "--log-level", "debug",
      ...extra,
    ],
    { env: { KLOAK_NODE_NAME: undefined } },
  );
  let text = "";
  void (async () => {
    for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) text += new TextDecoder().decode(chunk);
  })();
  const a = { proc, log: () => text };
  agents.push(a);
  return a;
}

/** A test that failed left its agents running: they would hold the ports. */
async function killLeftovers(): Promise<void> {
  for (const a of agents) {
    if (a.proc.exitCode !== null || a.proc.signalCode !== null) continue;
    a.proc.kill("SIGKILL");
    await a.proc.exited;
  }
}

const ready = async () => (await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined))?.status;

async function waitReady(a: Agent): Promise<void> {
  await waitFor(
    "readyz",
    async () => {
      if (a.proc.exitCode !== null) throw new Error(`agent exited ${a.proc.exitCode}:\n${a.log()}`);
      return (await ready()) === 200;
    },
    120_000,
    a.log,
  );
}

async function metric(name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

/** A pod on this node, enabled, its container running in a fresh cgroup; returns the container's cgroup. */
async function startPod(name: string): Promise<string> {
  const cid = randomBytes(32).toString("hex");
  const pod = api.create({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "shop", annotations: { "getkloak.io/enabled": "true" } },
    spec: { nodeName: NODE, containers: [{ name: "app", image: "app", env: [{ name: "TOKEN", valueFrom: { secretKeyRef: { name: "api-kloak", key: "token" } } }] }] },
    status: { phase: "Pending", qosClass: "BestEffort" },
  });
  const uid = pod.metadata.uid!;
  const leaf = join(base, "kubepods.slice", "kubepods-besteffort.slice", `kubepods-besteffort-pod${uid.replaceAll("-", "_")}.slice`, `cri-containerd-${cid}.scope`);
  mkdirSync(leaf, { recursive: true });
  cgroups.push(leaf);
  api.update({
    ...api.get("Pod", "shop", name)!,
    status: {
      phase: "Running",
      qosClass: "BestEffort",
      containerStatuses: [{ name: "app", containerID: `containerd://${cid}`, ready: true, state: { running: { startedAt: new Date().toISOString() } } }],
    },
  });
  return leaf;
}

interface LoopClient {
  proc: ReturnType<typeof Bun.spawn>;
  out: () => string;
  oks: () => number;
  stop: () => Promise<{ sends: number; errors: number; unchanged: boolean; errLines: string[] }>;
}

/** The container's process: the loop client, joined to the pod's cgroup before its exec. */
function startLoopClient(leaf: string): LoopClient {
  const id = randomUUID();
  const reqFile = join(tmp, `req-${id}`);
  const stopFile = join(tmp, `stop-${id}`);
  writeFileSync(reqFile, buildHttpRequest({ host: "127.0.0.2", headers: { Authorization: `Bearer ${ph}` } }));
  const argv = [pythonPath(), join(ROOT, "test/support/py_loop_client.py"), "--host", "127.0.0.2", "--port", String(tls.port), "--cafile", certs.caFile, "--request-file", reqFile, "--stop-file", stopFile];
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const proc = Bun.spawn(["sh", "-c", `echo $$ > ${q(join(leaf, "cgroup.procs"))} && exec ${argv.map(q).join(" ")}`], { stdout: "pipe", stderr: "pipe" });
  let text = "";
  void (async () => {
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) text += new TextDecoder().decode(chunk);
  })();
  const stderr = new Response(proc.stderr).text();
  return {
    proc,
    out: () => text,
    oks: () => text.split("\n").filter((l) => l.startsWith("OK ")).length,
    async stop() {
      writeFileSync(stopFile, "");
      const code = await proc.exited;
      await Bun.sleep(50);
      if (code !== 0) throw new Error(`loop client exited ${code}: ${await stderr}`);
      const get = (k: string) => /^(\S+)=(\S+)$/m.exec(text.split("\n").filter((l) => l.startsWith(k + "=")).join("\n"))?.[2];
      return {
        sends: Number(get("APP_SENDS")),
        errors: Number(get("APP_ERRORS")),
        unchanged: get("APP_UNCHANGED") === "yes",
        errLines: text.split("\n").filter((l) => l.startsWith("ERR ")),
      };
    },
  };
}

/** kloak's entries in bpffs. */
const pins = () => (existsSync(PIN_DIR) ? readdirSync(PIN_DIR) : []);

/** BPF link ids some process holds open (any process on this machine: other tests run kloak too). */
function heldLinks(pid?: number): Set<number> {
  const out = new Set<number>();
  for (const p of pid ? [String(pid)] : readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (!/^anon_inode:bpf[-_]link/.test(readlinkSync(`/proc/${p}/fd/${fd}`))) continue;
        const m = /link_id:\s*(\d+)/.exec(readFileSync(`/proc/${p}/fdinfo/${fd}`, "latin1"));
        if (m) out.add(Number(m[1]));
      } catch {
        // gone meanwhile
      }
    }
  }
  return out;
}

/** Links of kloak's programs in the kernel: id -> program name. */
function kloakLinks(): Map<number, string> {
  const progs = new Map<number, string>();
  for (const p of JSON.parse(Bun.spawnSync(["bpftool", "prog", "list", "-j"]).stdout.toString()) as { id: number; name?: string }[])
    if (p.name?.startsWith("kloak_")) progs.set(p.id, p.name);
  const out = new Map<number, string>();
  for (const l of JSON.parse(Bun.spawnSync(["bpftool", "link", "list", "-j"]).stdout.toString()) as { id: number; prog_id: number }[]) {
    const name = progs.get(l.prog_id);
    if (name) out.set(l.id, name);
  }
  return out;
}

/** Links of kloak programs nobody holds open: pinned, or left behind. */
function orphanLinks(): number[] {
  // Listed first: a link that appears after the fd scan belongs to a process that started meanwhile.
  const links = kloakLinks();
  const held = heldLinks();
  return [...links.keys()].filter((id) => !held.has(id) && kloakLinks().has(id));
}

beforeAll(async () => {
  certs = await testCerts();
  tls = await startTlsServer({ host: "127.0.0.2", mode: "http" });
  const rbacDocs = parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8")).map((d) => d.toJS() as KubeObject);
  api = await startKubeApiServer({ bookmarkIntervalMs: 1000, rbac: policyFor(rbacDocs, "kloak", "kloak") });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "shop", labels: { "getkloak.io/enabled": "true" } } });
  for (const o of rbacDocs) if (o.kind === "ClusterRole") api.create(o);
  api.create({
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: "api", namespace: "shop", labels: { "getkloak.io/enabled": "true" }, annotations: { "getkloak.io/hosts": "127.0.0.2" } },
    type: "Opaque",
    data: { token: b64(token) },
  });
  opsPort = await freePort();
  webhookPort = await freePort();
  base = join(cgroupV2Root(), `kloak-upgrade-${process.pid}`);
  mkdirSync(base, { recursive: true });
}, 60_000);

afterAll(async () => {
  for (const a of agents) {
    if (a.proc.exitCode === null) a.proc.kill("SIGKILL");
    await a.proc.exited;
  }
  await tls?.close();
  await api?.stop();
  for (const leaf of cgroups) for (let i = 0; i < 100 && cgroupProcesses(leaf).length; i++) await Bun.sleep(20);
  for (const leaf of cgroups) {
    let dir = leaf;
    while (dir.startsWith(base) && dir !== base) {
      try {
        rmdirSync(dir);
      } catch {}
      dir = join(dir, "..");
    }
  }
  try {
    rmdirSync(base);
  } catch {}
}, 60_000);

/** An AdmissionReview sent in two halves over one TLS connection; resolves with the HTTP status line. */
function slowReview(ca: string): { sendRest: () => void; status: Promise<string> } {
  const body = JSON.stringify({
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: randomUUID(),
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      namespace: "shop",
      operation: "CREATE",
      userInfo: {},
      object: { apiVersion: "v1", kind: "Pod", metadata: { generateName: "w-", namespace: "shop" }, spec: { containers: [{ name: "c", image: "x" }] } },
    },
  });
  const sock = connect({ host: "127.0.0.1", port: webhookPort, ca, servername: "kloak-webhook.kloak.svc" });
  let got = "";
  const status = new Promise<string>((resolve, reject) => {
    sock.on("data", (d) => {
      got += d.toString("latin1");
      if (got.includes("\r\n")) resolve(got.split("\r\n")[0]!);
    });
    sock.on("error", reject);
    sock.on("close", () => resolve(got.split("\r\n")[0] ?? ""));
  });
  const half = Math.floor(body.length / 2);
  sock.once("secureConnect", () => {
    sock.write(`POST /mutate HTTP/1.1\r\nHost: kloak-webhook.kloak.svc\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    sock.write(body.slice(0, half));
  });
  return { sendRest: () => sock.write(body.slice(half)), status };
}

describe("zero-gap upgrade", () => {
  test("SIGTERM drains the webhook; the next agent takes the data plane over: every request carried the real value", async () => {
    const a = startAgent(["--handover", "always", "--shutdown-delay", "2"]);
    await waitReady(a);
    const shadow = await waitFor("shadow", () => api.get("Secret", "shop", "api-kloak") as (KubeObject & { data: Record<string, string> }) | undefined);
    ph = unb64(shadow.data.token!);
    const ca = unb64((api.get("Secret", "kloak", "kloak-webhook-tls") as KubeObject & { data: Record<string, string> }).data["ca.crt"]!);
    const leaf = await startPod("web-0");
    await waitFor("cgroup registered", async () => a.log().includes('"container attached"'), 20_000, a.log);
    const client = startLoopClient(leaf);
    await waitFor("requests before the upgrade", () => client.oks() >= 20, 20_000, () => client.out());

    // A review in flight when SIGTERM comes.
    const inflight = slowReview(ca);
    await Bun.sleep(200);
    const t0 = Date.now();
    a.proc.kill("SIGTERM");
    await waitFor("not ready", async () => (await ready()) === 503, 2000, a.log);
    expect(Date.now() - t0).toBeLessThan(1500);
    // Within the delay the webhook still takes new connections (endpoints are still dropping it).
    const during = await fetch(`https://127.0.0.1:${webhookPort}/mutate`, {
      method: "POST",
      body: "{}",
      tls: { ca, serverName: "kloak-webhook.kloak.svc" },
    } as RequestInit);
    expect(during.status).toBeLessThan(500);
    expect(Date.now() - t0).toBeLessThan(2000);
    // After the delay: refused.
    await Bun.sleep(Math.max(0, t0 + 2600 - Date.now()));
    await expect(
      fetch(`https://127.0.0.1:${webhookPort}/mutate`, { method: "POST", body: "{}", tls: { ca, serverName: "kloak-webhook.kloak.svc" } } as RequestInit),
    ).rejects.toThrow();
    // ... while the review in flight since before SIGTERM still gets its answer.
    inflight.sendRest();
    expect(await inflight.status).toBe("HTTP/1.1 200 OK");
    expect(await a.proc.exited).toBe(0);
    const aExited = Date.now();
    expect(a.log()).toContain('"data plane handed over');
    const offered = pins().filter((n) => n.startsWith("handover-"));
    expect(offered.length).toBe(1);
    expect(offered[0]).toContain(`-${a.proc.pid}-`);
    const beforeGap = client.oks();
    // a's links now live on only through the pins (other tests' links may linger while they close: left out below).
    const handed = orphanLinks();
    expect(handed.length).toBeGreaterThan(0);

    const b = startAgent(["--handover", "never", "--shutdown-delay", "0"]);
    await waitReady(b);
    expect(b.log()).toContain("took over the data plane of the previous agent");
    expect(await metric('kloak_handovers_total{outcome="adopted"}')).toBe(1);
    await waitFor("requests after the upgrade", () => client.oks() >= beforeGap + 40, 90_000, () => {
      const st = existsSync(`/proc/${client.proc.pid}`) ? readFileSync(`/proc/${client.proc.pid}/stat`, "latin1").split(") ")[1]!.slice(0, 1) : `gone ${client.proc.exitCode} ${client.proc.signalCode}`;
      const m = Bun.spawnSync(["curl", "-s", `http://127.0.0.1:${opsPort}/metrics`]).stdout.toString().split("\n").filter((l) => /^kloak_/.test(l)).join("\n");
      console.error(`client state ${st}\n${client.out().slice(-200)}\n${m}`);
      return "";
    });

    // Writes went on until a exited and were held through the gap: the longest pause between answers spans it.
    const times = client.out().split("\n").filter((l) => l.startsWith("OK ")).map((l) => Number(l.split(" ")[2]) * 1000);
    const stall = Math.max(...times.slice(1).map((t, i) => t - times[i]!));
    const at = (msg: string) => Date.parse(/"time":"([^"]+)"/.exec(b.log().split("\n").find((l) => l.includes(msg)) ?? "")?.[1] ?? "");
    console.log(
      `upgrade: ${times.length} requests, longest pause between answers ${Math.round(stall)} ms; ` +
        `a exited -> b started ${at("kloak agent starting") - aExited} ms, -> took over ${at("took over the data plane") - aExited} ms, -> serving ${at("serving the writes") - aExited} ms`,
    );
    const bMetrics = (await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text())
      .split("\n")
      .filter((l) => /^kloak_(substitutions|worker|writers|stop|events|handover)/.test(l) && !/ 0$/.test(l))
      .join("\n");
    // While the client runs, b holds a's very uprobe links on its TLS library (taken over, not attached again).
    const bTls = heldLinks(b.proc.pid);
    const kl = kloakLinks();
    expect(handed.filter((id) => bTls.has(id) && kl.get(id)?.startsWith("kloak_tls_")).length).toBeGreaterThan(0);
    expect([...bTls].filter((id) => kl.get(id)?.startsWith("kloak_tls_") && !handed.includes(id))).toEqual([]);
    const r = await client.stop();
    const authOf = tls.requests.map((q) => q.headers.find(([n]) => n.toLowerCase() === "authorization")?.[1]);
    if (!authOf.every((v) => v === `Bearer ${token}`)) {
      const bad = authOf.flatMap((v, i) => (v === `Bearer ${token}` ? [] : [i]));
      const warn = (log: string) => log.split("\n").filter((l) => /"level":"(warn|error)"/.test(l)).join("\n");
      console.error(
        `UPGRADE FAILURE: requests without the value at ${bad.join(",")} of ${authOf.length} (${bad.map((i) => (authOf[i] === `Bearer ${ph}` ? "placeholder" : "other")).join(",")}); ` +
          `a exited at ${aExited}; OK times ${times.map((t) => Math.round(t - aExited)).join(",")}\nb metrics:\n${bMetrics}\na warnings:\n${warn(a.log())}\nb warnings:\n${warn(b.log())}\nb log:\n${b.log().split("\n").filter((l) => !l.includes('"debug"')).join("\n")}`,
      );
    }
    // No request failed, every one carried the real value, no placeholder reached the server.
    expect(r.errLines).toEqual([]);
    expect(r.errors).toBe(0);
    expect(r.unchanged).toBe(true);
    const auth = tls.requests.map((q) => q.headers.find(([n]) => n.toLowerCase() === "authorization")?.[1]);
    expect(auth.length).toBe(r.sends);
    expect(auth.every((v) => v === `Bearer ${token}`)).toBe(true);
    expect(occurrences(tls.received(), ph)).toBe(0);

    // With the client stopped (scanning every process's fds is heavy): the handover is gone; every kloak link is held open by a live process (none left pinned), the adopted ones by b.
    expect(pins().filter((n) => /^(handover|claimed|partial)-/.test(n))).toEqual([]);
    // Each link a handed over is now held by b (taken over) or gone (b had no use for it): none is left pinned.
    await waitFor("a's links taken over or gone", () => {
      const held = heldLinks(b.proc.pid);
      const live = kloakLinks();
      return handed.every((id) => held.has(id) || !live.has(id));
    }, 5000, () => {
      const held = heldLinks(b.proc.pid);
      const all = heldLinks();
      const live = kloakLinks();
      const fds = readdirSync(`/proc/${b.proc.pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${b.proc.pid}/fd/${fd}`); } catch { return "?"; } }).filter((t) => t.includes("bpf"));
      const find = Bun.spawnSync(["find", PIN_DIR]).stdout.toString();
      return JSON.stringify(handed.filter((id) => !held.has(id) && live.has(id)).map((id) => [id, live.get(id), all.has(id)])) + `\nheld by b: ${[...held]}\nb fds: ${fds.join(" ")}\n${find}`;
    }, 250);
    const bLinks = heldLinks(b.proc.pid);
    expect(handed.filter((id) => bLinks.has(id)).length).toBeGreaterThan(0);
    expect(b.log()).toContain('"taken-over data plane reconciled"');

    // The final shutdown (no handover) leaves nothing pinned and no link behind.
    b.proc.kill("SIGTERM");
    expect(await b.proc.exited).toBe(0);
    expect(pins().filter((n) => n.includes(`-${b.proc.pid}-`) || /^(handover|claimed|partial)-/.test(n))).toEqual([]);
    await waitFor("b's links gone", () => {
      const live = kloakLinks();
      return [...bLinks].every((id) => !live.has(id));
    }, 10_000, undefined, 250);
    expect(b.log().includes(token)).toBe(false);
    expect(a.log().includes(token)).toBe(false);
  }, 300_000);

  test("another object or settings: the new agent releases the handover and attaches afresh (a gap, said in a log line and a metric)", async () => {
    await killLeftovers();
    const a = startAgent(["--handover", "always", "--shutdown-delay", "0"]);
    await waitReady(a);
    const leaf = await startPod("web-2");
    await waitFor("container attached", async () => a.log().includes('"container attached"'), 20_000, a.log);
    tls.reset();
    const client = startLoopClient(leaf);
    await waitFor("requests", () => client.oks() >= 10, 20_000, () => client.out());
    a.proc.kill("SIGTERM");
    expect(await a.proc.exited).toBe(0);
    expect(pins().some((n) => n.startsWith("handover-") && n.includes(`-${a.proc.pid}-`))).toBe(true);
    const handed = orphanLinks();
    // A different scan cap is a different load: the maps and programs are not the same.
    const b = startAgent(["--handover", "never", "--shutdown-delay", "0", "--scan-cap", "32KiB"]);
    await waitReady(b);
    expect(b.log()).toContain("is another object or has other settings");
    expect(await metric('kloak_handovers_total{outcome="incompatible"}')).toBe(1);
    expect(pins().filter((n) => /^(handover|claimed|partial)-/.test(n))).toEqual([]);
    // b attached the pod itself: its writes carry the value again.
    const before = tls.requests.length;
    const at = client.oks();
    await waitFor("requests after the restart", () => client.oks() >= at + 10, 20_000, () => client.out());
    const r = await client.stop();
    expect(r.unchanged).toBe(true);
    expect(r.errors).toBe(0);
    const auth = tls.requests.map((q) => q.headers.find(([n]) => n.toLowerCase() === "authorization")?.[1]);
    expect(auth.every((v) => v === `Bearer ${token}` || v === `Bearer ${ph}`)).toBe(true);
    expect(auth.slice(before).at(-1)).toBe(`Bearer ${token}`);
    await waitFor("a's links gone", () => {
      const live = kloakLinks();
      return handed.every((id) => !live.has(id));
    }, 10_000, undefined, 250);
    b.proc.kill("SIGTERM");
    expect(await b.proc.exited).toBe(0);
    api.delete("Pod", "shop", "web-2");
  }, 240_000);

  test("no successor within the handover timeout: released, placeholders go out, nothing stays stopped or pinned", async () => {
    if (api.get("Pod", "shop", "web-0")) api.delete("Pod", "shop", "web-0");
    await killLeftovers();
    const c = startAgent(["--handover", "always", "--shutdown-delay", "0", "--handover-timeout", "3"]);
    await waitReady(c);
    const leaf = await startPod("web-1");
    await waitFor("container attached", async () => (c.log().match(/"container attached"/g) ?? []).length >= 1, 20_000, c.log);
    tls.reset();
    const client = startLoopClient(leaf);
    await waitFor("requests", () => client.oks() >= 10, 20_000, () => client.out());
    c.proc.kill("SIGTERM");
    expect(await c.proc.exited).toBe(0);
    const exited = Date.now();
    expect(pins().some((n) => n.startsWith("handover-") && n.includes(`-${c.proc.pid}-`))).toBe(true);
    const atExit = client.oks();
    const handed = orphanLinks();
    expect(handed.length).toBeGreaterThan(0);
    // Released by c's guardian at the deadline: the client goes on, with its placeholders.
    await waitFor("handover released", () => !pins().some((n) => /^(handover|claimed)-/.test(n)), 10_000);
    await waitFor("client running again", () => client.oks() >= atExit + 10, 10_000, () => client.out());
    // The bound: the timeout, plus the guardian's release (about a second; more on a loaded machine).
    expect(Date.now() - exited).toBeLessThan(3000 + 10_000);
    const pid = client.proc.pid;
    expect(readFileSync(`/proc/${pid}/stat`, "latin1").split(") ")[1]![0]).not.toBe("T");
    const r = await client.stop();
    expect(r.unchanged).toBe(true);
    expect(r.errors).toBe(0);
    // Before the handover: the value; after its release: the placeholder (fail closed), never anything else.
    const auth = tls.requests.map((q) => q.headers.find(([n]) => n.toLowerCase() === "authorization")?.[1]);
    expect(auth.every((v) => v === `Bearer ${token}` || v === `Bearer ${ph}`)).toBe(true);
    expect(auth.filter((v) => v === `Bearer ${ph}`).length).toBeGreaterThan(0);
    expect(auth.filter((v) => v === `Bearer ${token}`).length).toBeGreaterThan(0);
    expect(pins().filter((n) => n.includes(`-${c.proc.pid}-`))).toEqual([]);
    await waitFor("the handed-over links gone", () => {
      const live = kloakLinks();
      return handed.every((id) => !live.has(id));
    }, 10_000, undefined, 250);
  }, 240_000);
});
