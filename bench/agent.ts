/**
 * The agent benchmark (part of `bun run bench`; alone: `bun run bench --only agent`).
 * Runs the real `kloak agent` process against the in-process test API server
 * (test/support/kube-api-server.ts) on this machine, as root, and measures:
 *
 *  1. Memory. An idle agent (0 Secrets, 0 pods) is started, settles, and its
 *     VmRSS/VmHWM are sampled: the baseline. Then 1,000 enabled Secrets (1-2
 *     keys each, values of 32-64 random bytes, over 10 namespaces, a third
 *     with IP getkloak.io/hosts annotations and a third with a single-IP
 *     label, so no DNS is involved) are created and a fresh agent is started:
 *     as Lease holder it writes the 1,000 shadows and loads every key
 *     (kloak_secret_keys_loaded). Then 10 fake pods × 10 processes: each
 *     process a real Python (sys.executable, not a pyenv shim) that imported
 *     ssl (libssl mapped) and waits on stdin, in a kubelet-shaped cgroup
 *     (kubepods.slice/.../cri-containerd-<id>.scope) under a private directory
 *     of the cgroup2 root; each pod goes Running with containerd:// ids and
 *     the time until kloak_attached_processes counts its 10 processes is
 *     recorded. After settling, the agent's RSS is sampled again.
 *  2. Webhook latency. With the loaded agent running, bench/agent-loadgen.ts
 *     (own process) offers a fixed 200 requests/s, open loop, over 4
 *     keep-alive HTTPS connections verified against the agent's CA for
 *     kloak-webhook.kloak.svc: pods that reference enabled Secrets (patched),
 *     pods that reference none (allowed), Secret validations
 *     (bench/agent-reviews.ts). The same load then goes to a minimal Bun HTTPS
 *     server with the agent's certificate that answers one fixed allowed
 *     review (bench/agent-baseline-server.ts), for the ratio.
 *  3. Restart: the agent is replaced with everything in place (shadows exist,
 *     pods running) and the time to keys loaded and processes re-attached is
 *     recorded.
 *
 * Everything started here is stopped, and every cgroup made here removed
 * (leaf to root), also on failure or SIGINT/SIGTERM. No secret value is ever
 * printed: only counts, sizes and timings leave this module.
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import * as os from "node:os";
import { dirname, join } from "node:path";
import { parseAllDocuments } from "yaml";
import { cgroupProcesses, cgroupV2Root } from "../src/node/cgroups.ts";
import { startKubeApiServer, type KubeApiServer, type KubeObject } from "../test/support/kube-api-server.ts";
import { kindOf, randomValue, type SecretInventory } from "./agent-reviews.ts";
import type { LoadConfig, LoadResult } from "./agent-loadgen.ts";
import { childrenOf, cmdline, cpuSeconds, memStatus } from "./procfs.ts";
import { resolvePython } from "./python.ts";
import { fmtMiB } from "./report.ts";
import { median, sum } from "./stats.ts";

const HERE = import.meta.dir;
const ROOT = dirname(HERE);
const KLOAK: string[] = process.env.KLOAK_BIN ? [process.env.KLOAK_BIN] : [process.execPath, join(ROOT, "src", "main.ts")];
/** The executable `bun run build` makes (what the container image ships), measured too when present. */
const DIST = join(ROOT, "dist", "kloak");
const NODE = "bench-node";
const AGENT_POD = "kloak-bench";
export const SERVICE_DNS = "kloak-webhook.kloak.svc";
const MB = 1e6;

export const AGENT_TARGETS = {
  webhookP99Ms: 10,
  webhookRate: 200,
  rssBytes: 120 * MB, // "120 MB", read strictly as 120×10^6 bytes
};

export interface AgentBenchOptions {
  /** webhook load: requests per second, measured seconds, warm-up seconds, rounds (kloak + baseline each) */
  rate: number;
  durationS: number;
  warmupS: number;
  reps: number;
  connections: number;
  secrets: number;
  namespaces: number;
  pods: number;
  procsPerPod: number;
  /** seconds to let an agent settle before its RSS is sampled, and the sampling window */
  settleS: number;
  sampleS: number;
  restart: boolean;
  /** also measure the memory of dist/kloak (the compiled executable) when it exists */
  compiled: boolean;
  /** how this run was invoked (for the report) */
  command: string;
}

export const AGENT_DEFAULTS: AgentBenchOptions = {
  rate: AGENT_TARGETS.webhookRate,
  durationS: 20,
  warmupS: 5,
  reps: 1,
  connections: 4,
  secrets: 1000,
  namespaces: 10,
  pods: 10,
  procsPerPod: 10,
  settleS: 10,
  sampleS: 5,
  restart: true,
  compiled: true,
  command: "bun run bench",
};

// ---------------------------------------------------------------- small helpers

const sleep = (ms: number) => Bun.sleep(ms);
const now = () => performance.now();

function log(msg: string): void {
  console.error(`bench agent: ${msg}`);
}

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms: number, every = 50): Promise<T> {
  const end = now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (now() > end) throw new Error(`timed out after ${(ms / 1000).toFixed(0)} s waiting for ${what}`);
    await sleep(every);
  }
}

/** A port free on 127.0.0.1 now (the agent takes port numbers, not 0). */
export async function freePort(): Promise<number> {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
  const p = s.port!;
  s.stop(true);
  return p;
}


const b64 = (s: string) => Buffer.from(s).toString("base64");

/** Prometheus text -> "name{labels}" -> value. */
function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    if (i > 0) m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

/** Value of a series whose labels include `labels` (summed over the others); undefined if none. */
function metric(m: Map<string, number>, name: string, labels: Record<string, string> = {}): number | undefined {
  let sum: number | undefined;
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const [key, v] of m) {
    if (key !== name && !key.startsWith(name + "{")) continue;
    if (want.some((w) => !key.includes(w))) continue;
    sum = (sum ?? 0) + v;
  }
  return sum;
}

/** The current commit from .git (files only: no git command). */
export function headCommit(): string {
  try {
    const head = readFileSync(join(ROOT, ".git", "HEAD"), "utf8").trim();
    if (!head.startsWith("ref: ")) return head.slice(0, 12);
    const ref = head.slice(5);
    const loose = join(ROOT, ".git", ref);
    if (existsSync(loose)) return readFileSync(loose, "utf8").trim().slice(0, 12);
    const packed = readFileSync(join(ROOT, ".git", "packed-refs"), "utf8");
    const line = packed.split("\n").find((l) => l.endsWith(" " + ref));
    return line ? line.slice(0, 12) : "?";
  } catch {
    return "?";
  }
}

function fdCounts(pid: number): { fds: number; bpfLinks: number; perfEvents: number } {
  let fds = 0;
  let bpfLinks = 0;
  let perfEvents = 0;
  let names: string[] = [];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return { fds: NaN, bpfLinks: NaN, perfEvents: NaN };
  }
  for (const n of names) {
    let t = "";
    try {
      t = readlinkSync(`/proc/${pid}/fd/${n}`);
    } catch {
      continue;
    }
    fds++;
    if (t === "anon_inode:bpf_link") bpfLinks++;
    else if (t === "anon_inode:[perf_event]") perfEvents++;
  }
  return { fds, bpfLinks, perfEvents };
}

/** Other kloak agents or bun test runs on the machine (they would skew the numbers). */
function foreignProcesses(mine: Set<number>): string[] {
  const out: string[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid || mine.has(pid)) continue;
    const args = cmdline(pid);
    if (args.length === 0) continue;
    const kloak = (args[0]!.endsWith("/kloak") || args.some((a) => a.endsWith("src/main.ts"))) && (args.includes("agent") || args.includes("exec"));
    const test = args.includes("test") && /bun(\.exe)?$/.test(args[0]!);
    if (kloak || test) out.push(`${pid} ${args.join(" ").slice(0, 100)}`);
  }
  return out;
}

// ---------------------------------------------------------------- results

export interface MemSample {
  /** VmRSS: median / max / last of the samples, bytes */
  rss_median: number;
  rss_max: number;
  rss_last: number;
  /** VmHWM at the end of sampling, bytes */
  hwm: number;
  threads: number;
  fds: number;
  bpf_links: number;
  perf_events: number;
  guardian_rss: number;
  samples: number;
}

export interface LoadRun {
  mode: "kloak" | "baseline";
  rep: number;
  result: LoadResult;
  /** CPU of the server process (agent or baseline) from the first to the last due measured request, seconds */
  server_cpu_s: number;
  window_s: number;
  /** kloak only: the agent's own webhook metrics over the run (warm-up included) */
  agent_counts?: Record<string, number>;
  agent_handler_mean_ms?: number;
  expected_counts?: Record<string, number>;
}

export interface RestartTimes {
  stop_s: number;
  ready_s: number;
  keys_loaded_s: number;
  attached_s: number;
  attached: number;
}

export interface AgentBenchResult {
  generated: string;
  elapsed_s: number;
  options: AgentBenchOptions;
  machine: Record<string, string | number>;
  foreign_at_start: string[];
  inventory: { secrets: number; keys: number; namespaces: number; with_host_annotation: number; with_host_label: number; value_bytes: string };
  idle: { ready_s: number; mem: MemSample };
  loaded: {
    ready_s: number;
    keys_loaded_s: number;
    keys_loaded_after_ready_s: number;
    shadows: number;
    keys: number;
    secrets_tracked: number;
    api_requests_until_loaded: number;
    attach_ms: number[];
    attached: number;
    cgroups: number;
    mem: MemSample;
    mem_after_webhook?: MemSample;
  };
  webhook: LoadRun[];
  restart?: RestartTimes;
  /** dist/kloak, idle and loaded (the loaded one started with everything in place, as in a restart) */
  compiled?: { path: string; built: string; commit: string; stale: boolean; idle: { ready_s: number; mem: MemSample }; loaded?: { mem: MemSample; restart: RestartTimes } };
  /** RSS of plain bun processes for scale: bare, importing @kubernetes/client-node, importing the agent's modules */
  floor: { label: string; rss: number }[];
  /** warn/error lines of all agents' logs: message -> count */
  agent_log: { warn: Record<string, number>; error: Record<string, number> };
  errors: string[];
}

// ---------------------------------------------------------------- the run

interface AgentProc {
  proc: ReturnType<typeof Bun.spawn>;
  pid: number;
  opsPort: number;
  webhookPort: number;
  logFile: string;
  spawnedAt: number;
  readyAt: number;
}

/**
 * What the agent benchmark starts and has to stop again: the API server, one
 * agent at a time, helper processes (baseline server, load generators), the
 * pods' Python processes and the cgroup directories made for them. cleanup()
 * stops everything, also from a signal.
 */
class AgentRig {
  readonly madeDirs: string[] = [];
  readonly pythons: ReturnType<typeof Bun.spawn>[] = [];
  readonly helpers = new Set<ReturnType<typeof Bun.spawn>>();
  agent: AgentProc | undefined;
  api: KubeApiServer | undefined;
  private cleaned = false;

  constructor(
    readonly o: AgentBenchOptions,
    readonly tmp: string,
    readonly cgBase: string,
  ) {}

  /** mkdir -p, remembering each directory made so cleanup removes it. */
  mkdirTracked(dir: string): void {
    const parts: string[] = [];
    for (let d = dir; !existsSync(d); d = dirname(d)) parts.unshift(d);
    for (const d of parts) {
      mkdirSync(d);
      this.madeDirs.push(d);
    }
  }

  /** SIGTERM, then SIGKILL after 20 s; returns the seconds it took. */
  async stopAgent(a: AgentProc): Promise<number> {
    const t = now();
    a.proc.kill("SIGTERM");
    const done = await Promise.race([a.proc.exited.then(() => true), sleep(20_000).then(() => false)]);
    if (!done) {
      log(`agent ${a.pid} did not stop within 20 s of SIGTERM; killing it`);
      a.proc.kill("SIGKILL");
      await a.proc.exited;
    }
    return (now() - t) / 1000;
  }

  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    if (this.agent) await this.stopAgent(this.agent).catch(() => {});
    this.agent = undefined;
    for (const h of this.helpers) {
      h.kill("SIGKILL");
      await h.exited.catch(() => {});
    }
    for (const p of this.pythons) {
      try {
        (p.stdin as import("bun").FileSink).end();
      } catch {
        // gone
      }
    }
    const deadline = now() + 5000;
    for (const p of this.pythons) {
      const left = deadline - now();
      const done = await Promise.race([p.exited.then(() => true), sleep(Math.max(0, left)).then(() => false)]);
      if (!done) {
        p.kill("SIGKILL");
        await p.exited;
      }
    }
    // Leaf to root, once the processes are gone.
    for (const d of [...this.madeDirs].reverse()) {
      for (let i = 0; ; i++) {
        const last = i === 250; // ~5 s
        if (!last && existsSync(join(d, "cgroup.procs")) && cgroupProcesses(d).length) {
          await sleep(20);
          continue;
        }
        try {
          rmdirSync(d);
          break;
        } catch (e) {
          if (last) {
            log(`could not remove ${d}: ${(e as Error).message}`);
            break;
          }
          await sleep(20);
        }
      }
    }
    await this.api?.stop().catch(() => {});
  }

  async metricsOf(a: AgentProc): Promise<Map<string, number>> {
    return parseMetrics(await (await fetch(`http://127.0.0.1:${a.opsPort}/metrics`)).text());
  }

  logTail(a: AgentProc | undefined, n = 20): string {
    if (!a) return "";
    try {
      return readFileSync(a.logFile, "utf8").trimEnd().split("\n").slice(-n).join("\n");
    } catch {
      return "";
    }
  }

  /** Starts an agent (the current one from now on) and waits until it is ready. */
  async spawnAgent(label: string, cmd: string[] = KLOAK): Promise<AgentProc> {
    const opsPort = await freePort();
    const webhookPort = await freePort();
    const logFile = join(this.tmp, `agent-${label}.log`);
    const fd = openSync(logFile, "w");
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("KLOAK_")) env[k] = v;
    const proc = Bun.spawn(
      [
        ...cmd,
        "agent",
        "--kubeconfig", this.api!.kubeconfigPath,
        "--node-name", NODE,
        "--pod-name", AGENT_POD,
        "--ops-port", String(opsPort),
        "--webhook-port", String(webhookPort),
        "--bind-address", "127.0.0.1",
        "--cgroup-root", this.cgBase,
      ],
      { env, stdin: "ignore", stdout: fd, stderr: fd },
    );
    closeSync(fd);
    const a: AgentProc = { proc, pid: proc.pid, opsPort, webhookPort, logFile, spawnedAt: now(), readyAt: NaN };
    this.agent = a;
    await waitFor(
      `${label} agent ready`,
      async () => {
        if (proc.exitCode !== null) throw new Error(`${label} agent exited with ${proc.exitCode}:\n${this.logTail(a)}`);
        return (await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined))?.status === 200;
      },
      120_000,
      50,
    );
    a.readyAt = now();
    return a;
  }

  /** VmRSS every 250 ms for sampleS seconds, then VmHWM, threads, fds and the guardian's RSS. */
  async sampleMem(a: AgentProc): Promise<MemSample> {
    const rss: number[] = [];
    const end = now() + this.o.sampleS * 1000;
    do {
      const m = memStatus(a.pid);
      if (m) rss.push(m.rss);
      await sleep(250);
    } while (now() < end);
    const m = memStatus(a.pid);
    if (!m) throw new Error(`agent ${a.pid} is gone`);
    const guardian = childrenOf(a.pid).find((c) => cmdline(c).includes("__guardian"));
    const f = fdCounts(a.pid);
    return {
      rss_median: median(rss),
      rss_max: Math.max(...rss),
      rss_last: rss.at(-1) ?? NaN,
      hwm: m.hwm,
      threads: m.threads,
      fds: f.fds,
      bpf_links: f.bpfLinks,
      perf_events: f.perfEvents,
      guardian_rss: guardian !== undefined ? (memStatus(guardian)?.rss ?? NaN) : NaN,
      samples: rss.length,
    };
  }
}

const buildInfoOf = (m: Map<string, number>) => [...m.keys()].find((k) => k.startsWith("kloak_build_info{")) ?? "";

/** The API server with the namespaces (opted in) and the agent's ClusterRole; returns the Secrets' namespaces. */
async function startApi(rig: AgentRig): Promise<{ api: KubeApiServer; namespaces: string[] }> {
  const api = await startKubeApiServer({ bookmarkIntervalMs: 60_000 });
  rig.api = api;
  const namespaces = Array.from({ length: rig.o.namespaces }, (_, i) => `bench-${String(i).padStart(2, "0")}`);
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
  // Opted in: enabled Secrets are only accepted (and pods only mutated) in labelled namespaces.
  for (const ns of namespaces) api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: ns, labels: { "getkloak.io/enabled": "true" } } });
  // The agent registers its webhook configurations itself, owned by ClusterRole kloak.
  for (const doc of parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8"))) {
    const obj = doc.toJS() as KubeObject;
    if (obj.kind === "ClusterRole") api.create(obj);
  }
  rig.mkdirTracked(rig.cgBase);
  return { api, namespaces };
}

/** 1. The idle agent: the memory baseline. Also keeps the agent's serving pair, for the baseline server and the clients' CA. */
async function idlePhase(rig: AgentRig, api: KubeApiServer, result: AgentBenchResult) {
  const o = rig.o;
  log(`idle agent (0 Secrets, 0 pods): starting, then ${o.settleS} s settle + ${o.sampleS} s of RSS samples`);
  const a = await rig.spawnAgent("idle");
  result.idle.ready_s = (a.readyAt - a.spawnedAt) / 1000;
  const buildInfo = buildInfoOf(await rig.metricsOf(a));
  await sleep(o.settleS * 1000);
  result.idle.mem = await rig.sampleMem(a);
  log(`idle agent: VmRSS ${(result.idle.mem.rss_median / MB).toFixed(1)} MB, VmHWM ${(result.idle.mem.hwm / MB).toFixed(1)} MB`);
  const tlsSecret = api.get("Secret", "kloak", "kloak-webhook-tls") as (KubeObject & { data: Record<string, string> }) | undefined;
  if (!tlsSecret) throw new Error("the agent did not write Secret kloak/kloak-webhook-tls");
  const unb64 = (k: string) => Buffer.from(tlsSecret.data[k] ?? "", "base64").toString("utf8");
  const ca = unb64("ca.crt");
  const certFile = join(rig.tmp, "tls.crt");
  const keyFile = join(rig.tmp, "tls.key");
  writeFileSync(certFile, unb64("tls.crt"), { mode: 0o600 });
  writeFileSync(keyFile, unb64("tls.key"), { mode: 0o600 });
  await rig.stopAgent(a);
  rig.agent = undefined;
  return { buildInfo, ca, certFile, keyFile };
}

/** The same for dist/kloak, the executable the image ships. */
async function idleCompiledPhase(rig: AgentRig, result: AgentBenchResult): Promise<void> {
  const o = rig.o;
  log(`idle agent from ${DIST} (compiled): starting`);
  const a = await rig.spawnAgent("idle-compiled", [DIST]);
  const info = buildInfoOf(await rig.metricsOf(a));
  const readyS = (a.readyAt - a.spawnedAt) / 1000;
  await sleep(o.settleS * 1000);
  const mem = await rig.sampleMem(a);
  log(`idle compiled agent: VmRSS ${(mem.rss_median / MB).toFixed(1)} MB, VmHWM ${(mem.hwm / MB).toFixed(1)} MB`);
  await rig.stopAgent(a);
  rig.agent = undefined;
  const built = statSync(DIST).mtimeMs;
  result.compiled = {
    path: DIST,
    built: new Date(built).toISOString(),
    commit: /commit="([^"]*)"/.exec(info)?.[1] ?? "?",
    stale: newestMtime([join(ROOT, "src"), join(ROOT, "lib"), join(ROOT, "bpf")]) > built,
    idle: { ready_s: readyS, mem },
  };
}

/** The enabled Secrets, a third with a hosts annotation and a third with a hosts label; returns where they are and their key count. */
function createSecrets(api: KubeApiServer, o: AgentBenchOptions, namespaces: string[], result: AgentBenchResult): { inventory: SecretInventory; keys: number } {
  const inventory: SecretInventory = { byNamespace: Object.fromEntries(namespaces.map((ns) => [ns, []])) };
  let keys = 0;
  for (let s = 0; s < o.secrets; s++) {
    const ns = namespaces[s % namespaces.length]!;
    const name = `app-creds-${String(s).padStart(4, "0")}`;
    const ks = s % 2 === 0 ? ["token"] : ["token", "password"];
    keys += ks.length;
    const labels: Record<string, string> = { "getkloak.io/enabled": "true", "app.kubernetes.io/name": "web" };
    const annotations: Record<string, string> = {};
    if (s % 3 === 0) {
      annotations["getkloak.io/hosts"] = "10.40.0.0/16,192.0.2.10";
      result.inventory.with_host_annotation++;
    } else if (s % 3 === 1) {
      labels["getkloak.io/hosts"] = "203.0.113.7";
      result.inventory.with_host_label++;
    }
    api.create({
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name, namespace: ns, labels, annotations },
      type: "Opaque",
      data: Object.fromEntries(ks.map((k, j) => [k, b64(randomValue(32 + ((s * 7 + j * 11) % 33)))])),
    });
    inventory.byNamespace[ns]!.push(name);
  }
  result.inventory.secrets = o.secrets;
  result.inventory.keys = keys;
  return { inventory, keys };
}

/** 2. A fresh agent with the Secrets in place: as Lease holder it writes the shadows, then loads every key. */
async function loadedAgentPhase(rig: AgentRig, api: KubeApiServer, keys: number) {
  log(`${rig.o.secrets} enabled Secrets (${keys} keys) created; loaded agent starting`);
  const apiReq0 = api.requests.length;
  const a = await rig.spawnAgent("loaded");
  const loadedAt = await waitFor(
    `${keys} secret keys loaded`,
    async () => {
      if (a.proc.exitCode !== null) throw new Error(`agent exited with ${a.proc.exitCode}:\n${rig.logTail(a)}`);
      return metric(await rig.metricsOf(a), "kloak_secret_keys_loaded") === keys ? now() : undefined;
    },
    300_000,
    100,
  );
  const apiRequests = api.requests.length - apiReq0;
  const m1 = await rig.metricsOf(a);
  log(`keys loaded ${((loadedAt - a.spawnedAt) / 1000).toFixed(1)} s after spawn (${((loadedAt - a.readyAt) / 1000).toFixed(1)} s after ready)`);
  return { a, loadedAt, apiRequests, m1 };
}

const PYTHON_CODE = "import ssl, sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nsys.stdin.read()";
const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * Fake pod k: a Pending Pod referencing five Secrets, procsPerPod Pythons
 * (ssl imported) in a kubelet-shaped cgroup; then Running, and the ms until the
 * agent counts them attached.
 */
async function startPod(rig: AgentRig, api: KubeApiServer, a: AgentProc, k: number, ns: string, refs: string[], python: string): Promise<number> {
  const o = rig.o;
  const pod = api.create({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: `bench-web-${k}`, namespace: ns, annotations: { "getkloak.io/enabled": "true" } },
    spec: {
      nodeName: NODE,
      containers: [
        {
          name: "app",
          image: "app",
          env: refs.map((r, j) => ({ name: `TOKEN_${j}`, valueFrom: { secretKeyRef: { name: `${r}-kloak`, key: "token" } } })),
        },
      ],
    },
    status: { phase: "Pending", qosClass: "BestEffort" },
  });
  const uid = pod.metadata.uid!;
  const cid = randomBytes(32).toString("hex");
  const leaf = join(
    rig.cgBase,
    "kubepods.slice",
    "kubepods-besteffort.slice",
    `kubepods-besteffort-pod${uid.replaceAll("-", "_")}.slice`,
    `cri-containerd-${cid}.scope`,
  );
  rig.mkdirTracked(leaf);
  const procs = Array.from({ length: o.procsPerPod }, () => {
    const p = Bun.spawn(["sh", "-c", `echo $$ > ${shq(join(leaf, "cgroup.procs"))} && exec ${shq(python)} -c ${shq(PYTHON_CODE)}`], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "inherit",
    });
    rig.pythons.push(p);
    return p;
  });
  await Promise.all(
    procs.map(async (p) => {
      const reader = (p.stdout as ReadableStream<Uint8Array>).getReader();
      let text = "";
      const deadline = now() + 30_000;
      while (!text.includes("ready\n")) {
        const r = await Promise.race([reader.read(), sleep(Math.max(0, deadline - now())).then(() => undefined)]);
        if (!r || r.done) throw new Error(`a Python process of pod ${k} did not start (exit ${p.exitCode})`);
        text += new TextDecoder().decode(r.value);
      }
      reader.releaseLock();
    }),
  );
  const before = metric(await rig.metricsOf(a), "kloak_attached_processes") ?? 0;
  const cur = api.get("Pod", ns, pod.metadata.name!)!;
  const tRun = now();
  api.update({
    ...cur,
    status: {
      phase: "Running",
      qosClass: "BestEffort",
      containerStatuses: [{ name: "app", containerID: `containerd://${cid}`, ready: true, state: { running: { startedAt: new Date().toISOString() } } }],
    },
  });
  const tAttached = await waitFor(
    `pod ${k}'s ${o.procsPerPod} processes attached`,
    async () => ((metric(await rig.metricsOf(a), "kloak_attached_processes") ?? 0) >= before + o.procsPerPod ? now() : undefined),
    60_000,
    10,
  );
  return tAttached - tRun;
}

/** The minimal HTTPS webhook server for the ratio (bench/agent-baseline-server.ts), with the agent's certificate; returns it and its port. */
async function startBaselineServer(rig: AgentRig, certFile: string, keyFile: string) {
  const baseline = Bun.spawn([process.execPath, join(HERE, "agent-baseline-server.ts"), certFile, keyFile], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  rig.helpers.add(baseline);
  const baseReader = (baseline.stdout as ReadableStream<Uint8Array>).getReader();
  const first = await Promise.race([baseReader.read(), sleep(15_000).then(() => undefined)]);
  if (!first || first.done) throw new Error("the baseline server did not start");
  const basePort = (JSON.parse(new TextDecoder().decode(first.value).split("\n")[0]!) as { port: number }).port;
  baseReader.releaseLock();
  return { baseline, basePort };
}

/** How many of each review kind the load generator sends in one run, warm-up included. */
function expectedKinds(o: AgentBenchOptions): Record<string, number> {
  const total = Math.round(o.rate * o.warmupS) + Math.round(o.rate * o.durationS);
  const expectedCounts: Record<string, number> = { patched: 0, allowed: 0, validate: 0 };
  for (let i = 0; i < total; i++) {
    const k = kindOf(i);
    expectedCounts[k] = (expectedCounts[k] ?? 0) + 1;
  }
  return expectedCounts;
}

/** What one load run needs: the two servers, the CA to verify them, the Secrets the reviews reference, the counts to expect. */
interface LoadTarget {
  agent: AgentProc;
  baselinePid: number;
  basePort: number;
  ca: string;
  inventory: SecretInventory;
  expectedCounts: Record<string, number>;
}

/** The agent's webhook counters between two scrapes. */
function webhookCounts(before: Map<string, number>, after: Map<string, number>): Pick<LoadRun, "agent_counts" | "agent_handler_mean_ms"> {
  const d = (name: string, labels: Record<string, string>) => (metric(after, name, labels) ?? 0) - (metric(before, name, labels) ?? 0);
  const agent_counts = {
    patched: d("kloak_webhook_requests_total", { path: "/mutate", outcome: "patched" }),
    allowed: d("kloak_webhook_requests_total", { path: "/mutate", outcome: "allowed" }),
    validate: d("kloak_webhook_requests_total", { path: "/validate", outcome: "allowed" }),
    other: d("kloak_webhook_requests_total", {}) -
      d("kloak_webhook_requests_total", { path: "/mutate", outcome: "patched" }) -
      d("kloak_webhook_requests_total", { path: "/mutate", outcome: "allowed" }) -
      d("kloak_webhook_requests_total", { path: "/validate", outcome: "allowed" }),
  };
  const handlerSum = d("kloak_webhook_request_duration_seconds_sum", {});
  const count = d("kloak_webhook_request_duration_seconds_count", {});
  return { agent_counts, agent_handler_mean_ms: count > 0 ? (handlerSum / count) * 1000 : NaN };
}

/** One run of bench/agent-loadgen.ts against the agent or the baseline server, with the server's CPU over the measured window. */
async function runLoad(rig: AgentRig, t: LoadTarget, mode: "kloak" | "baseline", rep: number): Promise<LoadRun> {
  const o = rig.o;
  const a = t.agent;
  const serverPid = mode === "kloak" ? a.pid : t.baselinePid;
  const cfg: LoadConfig = {
    mode,
    port: mode === "kloak" ? a.webhookPort : t.basePort,
    ca: t.ca,
    serverName: SERVICE_DNS,
    rate: o.rate,
    warmupS: o.warmupS,
    durationS: o.durationS,
    connections: o.connections,
    inventory: t.inventory,
    sampleEvery: 10,
    drainTimeoutS: 15,
  };
  const cfgFile = join(rig.tmp, `load-${mode}-${rep}.json`);
  writeFileSync(cfgFile, JSON.stringify(cfg));
  const before = mode === "kloak" ? await rig.metricsOf(a) : undefined;
  const p = Bun.spawn([process.execPath, join(HERE, "agent-loadgen.ts"), cfgFile], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  rig.helpers.add(p);
  const stderrP = new Response(p.stderr as ReadableStream<Uint8Array>).text();
  let cpu0: { user: number; sys: number } | null = null;
  let cpu1: { user: number; sys: number } | null = null;
  let w0 = 0;
  let w1 = 0;
  let res: LoadResult | undefined;
  let buf = "";
  const dec = new TextDecoder();
  const timeout = setTimeout(() => p.kill("SIGKILL"), (o.warmupS + o.durationS + 60) * 1000);
  for await (const chunk of p.stdout as ReadableStream<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith("{")) continue;
      const ev = JSON.parse(line) as { event: string };
      if (ev.event === "measure") {
        w0 = now();
        cpu0 = cpuSeconds(serverPid);
      } else if (ev.event === "window-end") {
        w1 = now();
        cpu1 = cpuSeconds(serverPid);
      } else if (ev.event === "result") res = ev as LoadResult;
    }
  }
  clearTimeout(timeout);
  const code = await p.exited;
  rig.helpers.delete(p);
  const stderr = await stderrP;
  if (!res) throw new Error(`load generator (${mode}) failed (exit ${code}): ${stderr.trim().split("\n").slice(-5).join(" | ")}`);
  const run: LoadRun = {
    mode,
    rep,
    result: res,
    server_cpu_s: cpu0 && cpu1 ? cpu1.user + cpu1.sys - cpu0.user - cpu0.sys : NaN,
    window_s: (w1 - w0) / 1000,
  };
  if (mode === "kloak" && before) {
    Object.assign(run, webhookCounts(before, await rig.metricsOf(a)));
    run.expected_counts = t.expectedCounts;
  }
  const r = res;
  log(
    `webhook ${mode.padEnd(8)} rep ${rep + 1}: p50 ${r.latency.p50_ms.toFixed(2)} ms, p99 ${r.latency.p99_ms.toFixed(2)} ms, max ${r.latency.max_ms.toFixed(2)} ms, ` +
      `${r.achieved_rps.toFixed(1)} req/s, ${sum(Object.values(r.errors))} error(s), ${r.verified.checked} answers checked (${r.verified.failed} bad)`,
  );
  return run;
}

/** 3. Webhook latency: the same load against the loaded agent and the baseline server, alternating which goes first. */
async function webhookPhase(rig: AgentRig, a: AgentProc, tls: { ca: string; certFile: string; keyFile: string }, inventory: SecretInventory, result: AgentBenchResult): Promise<void> {
  const o = rig.o;
  const { baseline, basePort } = await startBaselineServer(rig, tls.certFile, tls.keyFile);
  const target: LoadTarget = { agent: a, baselinePid: baseline.pid, basePort, ca: tls.ca, inventory, expectedCounts: expectedKinds(o) };
  log(`webhook load: ${o.rate} req/s open loop, ${o.warmupS} s warm-up + ${o.durationS} s, ${o.connections} connections, ${o.reps} round(s) of kloak + baseline`);
  for (let rep = 0; rep < o.reps; rep++) {
    const order: ("kloak" | "baseline")[] = rep % 2 === 0 ? ["kloak", "baseline"] : ["baseline", "kloak"];
    for (const mode of order) {
      try {
        result.webhook.push(await runLoad(rig, target, mode, rep));
      } catch (e) {
        result.errors.push((e as Error).message);
        log(`RUN FAILED: ${(e as Error).message}`);
      }
    }
  }
  (baseline.stdin as import("bun").FileSink).end();
  await Promise.race([baseline.exited, sleep(5000)]);
  baseline.kill("SIGKILL");
  rig.helpers.delete(baseline);
}

/** Replaces the current agent with everything in place and times it back to all keys loaded and all processes attached. */
async function replaceAgent(rig: AgentRig, keys: number, label: string, cmd: string[] = KLOAK): Promise<RestartTimes> {
  const want = rig.o.pods * rig.o.procsPerPod;
  const stopS = await rig.stopAgent(rig.agent!);
  rig.agent = undefined;
  const a = await rig.spawnAgent(label, cmd);
  const keysAt = await waitFor(`${keys} keys (${label})`, async () => (metric(await rig.metricsOf(a), "kloak_secret_keys_loaded") === keys ? now() : undefined), 300_000, 50);
  const attachedAt = await waitFor(
    `${want} processes re-attached (${label})`,
    async () => ((metric(await rig.metricsOf(a), "kloak_attached_processes") ?? 0) >= want ? now() : undefined),
    300_000,
    50,
  );
  return {
    stop_s: stopS,
    ready_s: (a.readyAt - a.spawnedAt) / 1000,
    keys_loaded_s: (keysAt - a.spawnedAt) / 1000,
    attached_s: (attachedAt - a.spawnedAt) / 1000,
    attached: metric(await rig.metricsOf(a), "kloak_attached_processes") ?? NaN,
  };
}

/** 4. Restart with everything in place; then the compiled executable loaded the same way, and its memory. */
async function restartPhase(rig: AgentRig, keys: number, result: AgentBenchResult): Promise<void> {
  const o = rig.o;
  if (o.restart) {
    log("restart: replacing the agent (shadows exist, pods running)");
    result.restart = await replaceAgent(rig, keys, "restart");
    log(`restart: ready ${result.restart.ready_s.toFixed(1)} s, keys ${result.restart.keys_loaded_s.toFixed(1)} s, attached ${result.restart.attached_s.toFixed(1)} s after spawn`);
  }
  if (result.compiled) {
    log(`loaded agent from ${DIST} (compiled), replacing the running one; then ${o.settleS} s settle + ${o.sampleS} s of RSS samples`);
    const restart = await replaceAgent(rig, keys, "loaded-compiled", [DIST]);
    await sleep(o.settleS * 1000);
    const mem = await rig.sampleMem(rig.agent!);
    result.compiled.loaded = { mem, restart };
    log(`loaded compiled agent: VmRSS ${(mem.rss_median / MB).toFixed(1)} MB, VmHWM ${(mem.hwm / MB).toFixed(1)} MB`);
  }
}

/** The phases in order, on a rig whose cleanup the caller owns. */
async function agentPhases(rig: AgentRig, result: AgentBenchResult, python: string, pyInfo: string): Promise<void> {
  const o = rig.o;
  const { api, namespaces } = await startApi(rig);
  result.floor = await rssFloor();
  const idle = await idlePhase(rig, api, result);
  if (o.compiled && !process.env.KLOAK_BIN && existsSync(DIST)) await idleCompiledPhase(rig, result);
  const { inventory, keys } = createSecrets(api, o, namespaces, result);
  const { a, loadedAt, apiRequests, m1 } = await loadedAgentPhase(rig, api, keys);
  const shadowCount = () => api.list("Secret").filter((s) => s.metadata.labels?.["getkloak.io/managed"] === "true").length;
  // pods: 10 × 10 Python processes, attached through the pod watcher
  const attachMs: number[] = [];
  for (let k = 0; k < o.pods; k++) {
    const ns = namespaces[k % namespaces.length]!;
    attachMs.push(await startPod(rig, api, a, k, ns, inventory.byNamespace[ns]!.slice(0, 5), python));
  }
  const m2 = await rig.metricsOf(a);
  const attached = metric(m2, "kloak_attached_processes") ?? NaN;
  log(`${attached} processes attached (per pod, Running → attached: median ${median(attachMs).toFixed(0)} ms, max ${Math.max(...attachMs).toFixed(0)} ms); settling ${o.settleS} s`);
  await sleep(o.settleS * 1000);
  const loadedMem = await rig.sampleMem(a);
  log(`loaded agent: VmRSS ${(loadedMem.rss_median / MB).toFixed(1)} MB, VmHWM ${(loadedMem.hwm / MB).toFixed(1)} MB`);
  result.loaded = {
    ready_s: (a.readyAt - a.spawnedAt) / 1000,
    keys_loaded_s: (loadedAt - a.spawnedAt) / 1000,
    keys_loaded_after_ready_s: (loadedAt - a.readyAt) / 1000,
    shadows: shadowCount(),
    keys: metric(m1, "kloak_secret_keys_loaded") ?? NaN,
    secrets_tracked: metric(m1, "kloak_secrets_tracked") ?? NaN,
    api_requests_until_loaded: apiRequests,
    attach_ms: attachMs,
    attached,
    cgroups: metric(m2, "kloak_bpf_map_entries", { map: "kloak_cgroups" }) ?? NaN,
    mem: loadedMem,
  };
  await webhookPhase(rig, a, idle, inventory, result);
  result.loaded.mem_after_webhook = await rig.sampleMem(a);
  await restartPhase(rig, keys, result);
  result.machine = machineFacts(idle.buildInfo, pyInfo);
}

/** The warn/error messages of every agent's log, counted (messages only: kloak's log lines never hold values). */
function countLogMessages(tmp: string, into: AgentBenchResult["agent_log"]): void {
  for (const f of readdirSync(tmp).filter((n) => n.endsWith(".log"))) {
    for (const line of readFileSync(join(tmp, f), "utf8").split("\n")) {
      if (!line.includes('"level":"warn"') && !line.includes('"level":"error"')) continue;
      try {
        const rec = JSON.parse(line) as { level: "warn" | "error"; msg: string };
        const m = into[rec.level];
        m[rec.msg] = (m[rec.msg] ?? 0) + 1;
      } catch {
        // not a log line
      }
    }
  }
}

export async function runAgentBench(opts: Partial<AgentBenchOptions> = {}): Promise<AgentBenchResult> {
  const o: AgentBenchOptions = { ...AGENT_DEFAULTS, ...opts };
  const t0 = now();
  if (process.getuid?.() !== 0) throw new Error("the agent benchmark needs root (eBPF, cgroups)");
  // The data-plane part pins this process (and so its children) to one CPU: undo it.
  const taskset = Bun.which("taskset");
  if (taskset) Bun.spawnSync([taskset, "-a", "-p", "-c", `0-${os.cpus().length - 1}`, String(process.pid)], { stdout: "ignore", stderr: "ignore" });

  const python = resolvePython();
  const pyInfo = Bun.spawnSync([python, "-c", "import ssl, sys; print(sys.version.split()[0] + ' / ' + ssl.OPENSSL_VERSION)"]).stdout.toString().trim();
  const cgBase = join(cgroupV2Root(), `kloak-bench-agent-${process.pid}`);
  const tmp = mkdtempSync(join(os.tmpdir(), "kloak-bench-agent-"));
  const rig = new AgentRig(o, tmp, cgBase);
  const errors: string[] = [];
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: cleaning up`);
    void rig.cleanup().finally(() => {
      rmSync(tmp, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  const result: AgentBenchResult = {
    generated: "",
    elapsed_s: 0,
    options: o,
    machine: {},
    foreign_at_start: foreignProcesses(new Set()),
    inventory: { secrets: 0, keys: 0, namespaces: o.namespaces, with_host_annotation: 0, with_host_label: 0, value_bytes: "32-64" },
    idle: { ready_s: NaN, mem: undefined as unknown as MemSample },
    loaded: undefined as unknown as AgentBenchResult["loaded"],
    webhook: [],
    floor: [],
    agent_log: { warn: {}, error: {} },
    errors,
  };
  if (result.foreign_at_start.length) log(`WARNING: other kloak/test processes are running; numbers will be noisy:\n  ${result.foreign_at_start.join("\n  ")}`);

  try {
    await agentPhases(rig, result, python, pyInfo);
  } catch (e) {
    errors.push((e as Error).message);
    log(`FAILED: ${(e as Error).message}`);
    const tail = rig.logTail(rig.agent);
    if (tail) log(`agent log tail:\n${tail}`);
  } finally {
    await rig.cleanup();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    countLogMessages(tmp, result.agent_log);
    if (errors.length === 0) rmSync(tmp, { recursive: true, force: true });
    else log(`agent logs kept in ${tmp}`);
  }
  result.generated = new Date().toISOString();
  result.elapsed_s = (now() - t0) / 1000;
  if (Object.keys(result.machine).length === 0) result.machine = machineFacts("", pyInfo);
  return result;
}

/** Latest mtime of any file below the directories. */
function newestMtime(dirs: string[]): number {
  let newest = 0;
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of dirs) if (existsSync(d)) walk(d);
  return newest;
}

/** RSS of plain bun processes, for scale (run side by side, sampled after 4 s). */
async function rssFloor(): Promise<{ label: string; rss: number }[]> {
  const cases: [string, string][] = [
    ["bare bun process", "setInterval(() => {}, 1e6)"],
    ["bun importing @kubernetes/client-node", "await import('@kubernetes/client-node'); setInterval(() => {}, 1e6)"],
    ["bun importing the agent's modules (src/agent/agent.ts), nothing started", `await import(${JSON.stringify(join(ROOT, "src", "agent", "agent.ts"))}); setInterval(() => {}, 1e6)`],
  ];
  const procs = cases.map(([label, code]) => ({ label, p: Bun.spawn([process.execPath, "-e", code], { cwd: ROOT, stdin: "ignore", stdout: "ignore", stderr: "ignore" }) }));
  await sleep(4000);
  const out = procs.map(({ label, p }) => ({ label, rss: memStatus(p.pid)?.rss ?? NaN }));
  for (const { p } of procs) {
    p.kill("SIGKILL");
    await p.exited;
  }
  return out;
}

function machineFacts(buildInfo: string, python: string): Record<string, string | number> {
  const read = (p: string) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return "";
    }
  };
  const label = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(buildInfo)?.[1] ?? "?";
  return {
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    cpu_model: /^model name\s*:\s*(.*)$/m.exec(read("/proc/cpuinfo"))?.[1] ?? "unknown",
    memory: fmtMiB(os.totalmem()),
    lockdown: read("/sys/kernel/security/lockdown").trim() || "n/a",
    bun: Bun.version,
    kloak_commit: headCommit(),
    kloak_agent: process.env.KLOAK_BIN ? `KLOAK_BIN=${process.env.KLOAK_BIN}` : "from source (bun src/main.ts agent)",
    rewrite_mode: label("rewrite_mode"),
    python,
  };
}
