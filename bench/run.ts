/**
 * kloak benchmark: `bun run bench` (= `bun bench/run.ts`), as root.
 *
 * Several parts, all in one run by default, each writing its own sections of
 * bench/report/report.{md,json} (a part run alone keeps the others' sections
 * from the previous run):
 *
 *   dataplane  the TLS data plane under `kloak exec` (below; several minutes)
 *   growth     per-write cost against write size, loaded secrets and open
 *              connections (bench/growth.ts; ~4 min by default)
 *   agent      the node agent (`kloak agent`) against the in-process test API
 *              server: webhook latency at 200 req/s over HTTPS vs a minimal
 *              HTTPS server, agent RSS idle vs 1,000 Secrets + 100 attached
 *              processes, load/attach/restart times (bench/agent.ts; ~3 min).
 *              The agent runs from source (or $KLOAK_BIN); dist/kloak, when
 *              built, is measured too (memory, restart).
 *
 *   bun run bench --only agent        just the agent part (or KLOAK_BENCH_ONLY=agent)
 *   bun run bench --only dataplane    just the data-plane part
 *   bun run bench --only startup      just kloak exec's startup and exit (bench/startup.ts)
 *   bun run bench --only clients      Go and HTTP/2 clients with and without kloak (bench/clients.ts)
 *   bun run bench --only growth       just the cost-growth tables
 *   growth options: --growth-duration S (1), --growth-reps N (1),
 *   --growth-tables size,secrets,connections (all), the points as lists:
 *   --growth-sizes (256,1KiB,4KiB,16KiB,64KiB,256KiB,1MiB),
 *   --growth-secrets (1,10,100,1000,10000), --growth-connections
 *   (1,10,100,1000,10000); --growth-scan-cap SIZE (kloak's default, 64KiB).
 *   --quick: 0.5 s per run and every other point (connections up to 1,000:
 *   10,000 handshakes take about a minute per variant).
 *   agent options: --agent-duration S (20), --agent-warmup S (5),
 *   --agent-rate N (200), --agent-reps N (1), --no-agent-restart;
 *   --quick also shortens the agent part (5 s measured, 2 s warm-up).
 *   Env KLOAK_BENCH_NO_GIT=1: the commit is read from .git files, no git command runs.
 *
 * One run measures, against a local TLS server on 127.0.0.1 (bench/server.ts,
 * in this process, identical for every variant), a Python ssl client
 * (bench/client.py, one blocking socket) in these variants:
 *
 *   baseline   the client run directly, no kloak
 *   kloak      under `kloak exec --secret`, the client never sends the placeholder
 *   kloak+ph   under kloak, one placeholder in every write (substituted)
 *   kloak+rules, kloak+ph+rules
 *              the same with destination rules on the secret
 *              (--allow NAME=localhost,127.0.0.1): every substitution is
 *              checked against the connection's peer
 *   proxy      (request loop only) the client, not under kloak, talks to an
 *              nginx egress proxy (bench/nginx.ts) that terminates its TLS,
 *              puts the real value into the Authorization header and
 *              originates TLS to the same server over a keep-alive upstream
 *              connection: what users deploy instead of kloak
 *   outside    the client, not under kloak, while a `kloak exec` tree that has
 *              attached the same libssl runs beside it (bench/outside.ts): what
 *              a process outside every scope pays
 *
 * for two workloads:
 *
 *   request    keep-alive HTTP/1.1, one 1 KiB write per request + small response
 *   bulk       16 KiB writes back to back on one connection (server discards)
 *
 * Each (workload, variant) runs --reps times, interleaved with rotating order;
 * the report uses medians. Writes bench/report/report.{md,json} and prints the
 * markdown. Exit status 0 whether or not targets are met (this is a
 * measurement); 1 only when the harness could not measure (a run failed or the
 * server did not receive what it should have).
 *
 * Options: --duration S (measured seconds per run, default 3), --reps N (3),
 * --warmup S (0.3), --max-count N (bound on measured writes per run, 300000),
 * --quick (duration 1, reps 1), --no-diag (skip the diagnostic phase),
 * --no-pin (no CPU pinning; see PIN below).
 * The proxy variant needs nginx (Debian's package; scripts/setup.sh installs
 * it): without it the data-plane part stops at once and says so.
 * Env KLOAK_BENCH_PYTHON overrides the Python.
 *
 * After the measured runs, a short diagnostic phase re-runs the two kloak
 * variants with the kernel's BPF run-time statistics switched on (through a
 * bpf_enable_stats fd, so nothing stays switched on) to show how much of the
 * per-write cost is the BPF programs themselves.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { testCerts } from "../test/support/certs.ts";
import { enableBpfStats, programStats, type ProgStat } from "./bpfstats.ts";
import { childrenOf, cmdline, cpuSeconds, foreignKloaks, memStatus, systemCpu, threadCpu } from "./procfs.ts";
import { startBenchServer, type ServerStats } from "./server.ts";
import { AGENT_DEFAULTS, headCommit, runAgentBench } from "./agent.ts";
import { summarizeAgent, writeAgentReport } from "./agent-report.ts";
import { resolvePython } from "./python.ts";
import { maxOf, median, perOpUs, sum } from "./stats.ts";
import { nginxBinary, startEgressProxy, type EgressProxy } from "./nginx.ts";
import { mappedLibssl, startScopedHolder, type ScopedHolder } from "./outside.ts";
import { fmtMiB, fmtSigned, fmtSignedUs, fmtUs, keepSectionJson, keepSections, Markdown, pct } from "./report.ts";

const HERE = import.meta.dir;
const ROOT = dirname(HERE);
const CLIENT = join(HERE, "client.py");
const KLOAK_MAIN = join(ROOT, "src", "main.ts");
const REPORT_DIR = join(HERE, "report");
const SECRET_NAME = "KLOAK_BENCH_TOKEN";
const SECRET_LEN = 40;
const MARKER = "kloak:";

/** Issue 14's targets (same-run ratios). */
const TARGETS = {
  noPh1k: 0.97,
  noPh16k: 0.9,
  addedP99Us: 300,
  /** kloak+ph req/s over the egress proxy's, 1 KiB request loop */
  phVsProxy: 1,
  rssBytes: 80 * 1000 * 1000, // "80 MB", read strictly as 80×10^6 bytes
};

// ---------------------------------------------------------------- options

const { values: argv } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    duration: { type: "string", default: "3" },
    reps: { type: "string", default: "3" },
    warmup: { type: "string", default: "0.3" },
    "max-count": { type: "string", default: "300000" },
    quick: { type: "boolean", default: false },
    "no-diag": { type: "boolean", default: false },
    "no-pin": { type: "boolean", default: false },
    only: { type: "string" },
    "agent-duration": { type: "string" },
    "agent-warmup": { type: "string" },
    "agent-rate": { type: "string" },
    "agent-reps": { type: "string" },
    "no-agent-restart": { type: "boolean", default: false },
    "growth-duration": { type: "string" },
    "growth-reps": { type: "string" },
    "growth-tables": { type: "string" },
    "growth-sizes": { type: "string" },
    "growth-secrets": { type: "string" },
    "growth-connections": { type: "string" },
    "growth-scan-cap": { type: "string" },
  },
});
/** Which part runs (all when empty; see PARTS). */
const ONLY = argv.only ?? process.env.KLOAK_BENCH_ONLY ?? "";
if (!["", "agent", "dataplane", "startup", "clients", "growth"].includes(ONLY)) {
  console.error(`bench: --only must be "agent", "dataplane", "startup", "clients" or "growth" (got ${JSON.stringify(ONLY)})`);
  process.exit(2);
}
const DURATION = argv.quick ? 1 : Number(argv.duration);
const REPS = argv.quick ? 1 : Math.max(1, Math.floor(Number(argv.reps)));
const WARMUP = Number(argv.warmup);
const MAX_COUNT = Math.floor(Number(argv["max-count"]));
/** Diagnostic phase (BPF run-time stats on, not part of the measured numbers). */
const DIAG = !argv["no-diag"];
const DIAG_DURATION = Math.min(1, DURATION);
/**
 * CPU placement. Unpinned, a ping-pong client and server on this 2-CPU VM land
 * on the same CPU or not at random, and that alone moves the request loop by
 * 2-3x (a cross-CPU wakeup costs tens of µs here). So by default the server
 * (this process) runs on the first CPU, the client on the last, and the kloak
 * agent may use every CPU.
 */
const TASKSET = Bun.which("taskset");
const NCPU = os.cpus().length;
const PIN = !argv["no-pin"] && NCPU >= 2 && TASKSET !== null;
const SERVER_CPU = 0;
const CLIENT_CPU = NCPU - 1;
const ALL_CPUS = `0-${NCPU - 1}`;
if (![DURATION, REPS, WARMUP, MAX_COUNT].every((x) => Number.isFinite(x) && x >= 0)) {
  console.error("bench: bad option value");
  process.exit(2);
}

// ---------------------------------------------------------------- model

type VariantId = "baseline" | "kloak" | "kloak+ph" | "kloak+rules" | "kloak+ph+rules" | "proxy" | "outside";
type WorkloadId = "request" | "bulk";

interface Variant {
  id: VariantId;
  label: string;
  kloak: boolean;
  placeholder: boolean;
  /** the secret has destination rules (the server's address is allowed) */
  rules?: boolean;
  /** the client talks to an nginx egress proxy that injects the real value (bench/nginx.ts) */
  proxy?: boolean;
  /** the client runs outside any scope beside a kloak exec tree that has the same libssl attached (bench/outside.ts) */
  outside?: boolean;
  /** the workloads this variant runs (default: all) */
  workloads?: WorkloadId[];
  /** kloak exec takes its secrets from this file instead of --secret NAME (growth part) */
  secretsFile?: string;
  /** more kloak exec options (growth part: --scan-cap) */
  kloakArgs?: string[];
}
interface Workload {
  id: WorkloadId;
  label: string;
  size: number;
  /** request loop: keep-alive connections the client sends round-robin across (default 1) */
  connections?: number;
  /** bulk: where the placeholder or filler sits in each record (default: the middle) */
  tokenOffset?: number;
}

const VARIANTS: Variant[] = [
  { id: "baseline", label: "baseline (no kloak)", kloak: false, placeholder: false },
  { id: "kloak", label: "kloak, no placeholder sent", kloak: true, placeholder: false },
  { id: "kloak+ph", label: "kloak, 1 placeholder per write", kloak: true, placeholder: true },
  { id: "kloak+rules", label: "kloak with rules, no placeholder sent", kloak: true, placeholder: false, rules: true },
  { id: "kloak+ph+rules", label: "kloak with rules, 1 placeholder per write", kloak: true, placeholder: true, rules: true },
  // The alternative to kloak+ph: the app holds no credential, the proxy adds it on the way out.
  // The client sends filler where the placeholder would be, as the "kloak" variant does.
  {
    id: "proxy",
    label: "egress proxy (nginx, TLS terminate + inject + TLS originate)",
    kloak: false,
    placeholder: false,
    proxy: true,
    workloads: ["request"],
  },
  { id: "outside", label: "non-enabled process, same libssl (kloak attached beside it)", kloak: false, placeholder: false, outside: true },
];
const variantsFor = (w: WorkloadId) => VARIANTS.filter((v) => !v.workloads || v.workloads.includes(w));
/** host rule first (resolved-address path), then the address itself (CIDR path) */
const RULES = "localhost,127.0.0.1";
const WORKLOADS: Workload[] = [
  { id: "request", label: "request loop (1 KiB request, keep-alive)", size: 1024 },
  { id: "bulk", label: "bulk (16 KiB writes)", size: 16384 },
];

interface Latency {
  n: number;
  mean_ns: number;
  min_ns: number;
  p50_ns: number;
  p90_ns: number;
  p99_ns: number;
  p999_ns: number;
  max_ns: number;
}

interface ClientResult {
  workload: WorkloadId;
  size: number;
  measured: number;
  warmup_writes: number;
  writes_total: number;
  elapsed_ns: number;
  bytes: number;
  ops_per_s: number;
  mib_per_s: number;
  latency: Latency;
  cpu_user_s: number;
  cpu_sys_s: number;
  t_start_wall_ns: number;
  t_connected_wall_ns: number;
  connections: number;
  /** seconds to open all connections (handshakes), and to send the first request on each when there are several */
  connect_s: number;
  prime_s: number;
  placeholder_sent: boolean;
  restored: boolean | null;
  tls_version: string;
  cipher: string;
  openssl: string;
  python: string;
}

interface KloakInfo {
  pid: number;
  mode?: string;
  modeReason?: string;
  substitutions?: number;
  tlsWrites?: number;
  failedClosed: number;
  /** VmHWM of the kloak exec process, read while the client is still alive */
  hwm: number;
  /** max VmRSS seen by 50 ms polling */
  rssPolledMax: number;
  threads: number;
  guardianHwm?: number;
  /** agent CPU (all threads) during the client's measured window, seconds */
  cpuWindowS: number;
  /** per-thread CPU during the measured window */
  threadCpuWindow: { comm: string; cpuS: number }[];
}

interface RunResult {
  rep: number;
  workload: WorkloadId;
  variant: VariantId;
  client: ClientResult;
  server: ServerStats;
  /** ms from spawn until the client process started (kloak startup + python startup) */
  startupMs: number;
  /** ms from spawn until the TLS connection was up */
  connectedMs: number;
  clientHwm: number;
  kloak?: KloakInfo;
  /** proxy variant: nginx during the measured window */
  proxy?: { pid: number; cpuWindowS: number; hwm: number };
  /** outside variant: the scoped process beside the client */
  scoped?: { pid: number; libssl: string | null; substitutions: number | undefined; exitCode: number };
  checks: { name: string; ok: boolean; detail: string }[];
  /** machine CPU during the measured window, seconds (all CPUs summed) */
  window: { seconds: number; busyS: number; oursS: number; foreignS: number; stealS: number };
  /** diagnostic runs only: BPF programs of the agent during the window */
  bpf?: { name: string; runs: number; nsPerRun: number; runsPerWrite: number; nsPerWrite: number }[];
  stderr: string;
}

// ---------------------------------------------------------------- helpers


function randomValue(len: number): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = crypto.getRandomValues(new Uint8Array(len));
  let s = "";
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
}

/** Wall clock in ns (the client reports time.time_ns(); Bun's hrtime is process-relative). */
const wallNs = () => (performance.timeOrigin + performance.now()) * 1e6;

/** Line reader over a spawned process's stdout. */
function lineReader(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let done = false;
  return async function next(): Promise<string | null> {
    for (;;) {
      const i = buf.indexOf("\n");
      if (i >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        return line;
      }
      if (done) {
        if (buf.length === 0) return null;
        const rest = buf;
        buf = "";
        return rest;
      }
      const r = await reader.read();
      if (r.done) done = true;
      else buf += dec.decode(r.value, { stream: true });
    }
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}


// ---------------------------------------------------------------- one run

interface BenchCtx {
  python: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  value: string;
  server: Awaited<ReturnType<typeof startBenchServer>>;
}

/** The agent, nginx and the scoped process may use every CPU (they inherit the pinned server's affinity otherwise). */
const UNPIN = () => (PIN ? [TASKSET!, "-c", ALL_CPUS] : []);

/**
 * What runs beside the client: the proxy variant's nginx, the outside variant's
 * scoped process (which must have connected, and been substituted, before the
 * client starts). Checks of the scoped process's own request go into `checks`.
 */
async function startPeers(ctx: BenchCtx, v: Variant, checks: RunResult["checks"]) {
  let proxy: EgressProxy | undefined;
  let holder: ScopedHolder | undefined;
  if (v.proxy)
    proxy = await startEgressProxy({
      upstreamPort: ctx.server.httpPort,
      certFile: ctx.certFile,
      keyFile: ctx.keyFile,
      caFile: ctx.caFile,
      value: ctx.value,
      prefix: UNPIN(), // pinned like the agent
    });
  if (v.outside) {
    ctx.server.reset();
    holder = await startScopedHolder({
      kloak: [...UNPIN(), process.execPath, KLOAK_MAIN],
      python: ctx.python,
      secretName: SECRET_NAME,
      value: ctx.value,
      caFile: ctx.caFile,
      port: ctx.server.httpPort,
    }).catch(async (e) => {
      await proxy?.stop();
      throw e;
    });
    const s = ctx.server.snapshot();
    checks.push({
      name: "scoped process: its request reached the server with the real value",
      ok: s.requests === 1 && s.valueHits === 1 && s.markerHits === 0,
      detail: `${s.requests} request(s), ${s.valueHits} value / ${s.markerHits} marker occurrence(s)`,
    });
  }
  return {
    proxy,
    holder,
    /** stops both; the scoped process's end as kloak reported it */
    async stop() {
      await proxy?.stop();
      return holder ? await holder.stop() : undefined;
    },
  };
}

/** The client's argv and environment: alone, or under `kloak exec` as variant v asks. */
function clientCommand(ctx: BenchCtx, w: Workload, v: Variant, port: number, duration: number): { cmd: string[]; env: Record<string, string> } {
  const connections = w.connections ?? 1;
  const client = [
    ...(PIN ? [TASKSET!, "-c", String(CLIENT_CPU)] : []),
    ctx.python, "-u", CLIENT,
    "--port", String(port), "--cafile", ctx.caFile,
    "--workload", w.id, "--size", String(w.size),
    "--duration", String(duration), "--warmup", String(WARMUP), "--max-count", String(MAX_COUNT),
    "--token-len", String(SECRET_LEN), "--hold",
    ...(v.placeholder ? ["--placeholder-env", SECRET_NAME] : []),
    ...(connections > 1 ? ["--connections", String(connections)] : []),
    ...(w.tokenOffset !== undefined ? ["--token-offset", String(w.tokenOffset)] : []),
  ];
  const env: Record<string, string> = {};
  for (const [k, val] of Object.entries(process.env)) if (val !== undefined && k !== SECRET_NAME) env[k] = val;
  if (!v.kloak) return { cmd: client, env };
  const cmd = [
    ...UNPIN(), // undo the affinity inherited from the pinned server
    // --user root: the client runs from root's files; the benchmark measures the data path.
    process.execPath, KLOAK_MAIN, "exec", "--verbose", "--user", "root", // --verbose: the rewrite mode, for the report
    // --secret NAME takes the value from kloak's environment: it never appears in argv.
    ...(v.secretsFile ? ["--secrets-file", v.secretsFile] : ["--secret", SECRET_NAME]),
    ...(v.rules ? ["--allow", `${SECRET_NAME}=${RULES}`] : []), ...(v.kloakArgs ?? []), "--", ...client,
  ];
  if (!v.secretsFile) env[SECRET_NAME] = ctx.value;
  return { cmd, env };
}

type Peers = Awaited<ReturnType<typeof startPeers>>;
const spawnClient = (cmd: string[], env: Record<string, string>) => Bun.spawn(cmd, { env, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
type ClientProc = ReturnType<typeof spawnClient>;

/** Counters read when the client starts its measured window. */
interface WindowStart {
  wall: number;
  sys: ReturnType<typeof systemCpu>;
  bench: NodeJS.CpuUsage;
  cpu: ReturnType<typeof cpuSeconds>;
  threads: Map<number, { comm: string; cpu: number }>;
  proxyCpu: ReturnType<typeof cpuSeconds>;
  prog: ProgStat[];
}

/** The same at the window's end, with memory, read while the client holds (everything still alive). */
interface WindowEnd extends WindowStart {
  proxyHwm: number;
  clientLibssl: ReturnType<typeof mappedLibssl>;
  holderAlive: boolean;
  hwm: number;
  threadCount: number;
  clientHwm: number;
  guardianHwm?: number;
}

function windowStart(pid: number, v: Variant, peers: Peers, bpfStats: boolean | undefined): WindowStart {
  const wall = wallNs();
  const sys = systemCpu();
  const bench = process.cpuUsage();
  const cpu = cpuSeconds(pid);
  const threads = threadCpu(pid);
  const proxyCpu = peers.proxy ? cpuSeconds(peers.proxy.pid) : null;
  const prog = bpfStats && v.kloak ? programStats(pid) : [];
  return { wall, sys, bench, cpu, threads, proxyCpu, prog };
}

function windowEnd(pid: number, v: Variant, peers: Peers, bpfStats: boolean | undefined, rss: { max: number }): WindowEnd {
  const { proxy, holder } = peers;
  const wall = wallNs();
  const sys = systemCpu();
  const bench = process.cpuUsage();
  const prog = bpfStats && v.kloak ? programStats(pid) : [];
  const proxyCpu = proxy ? cpuSeconds(proxy.pid) : null;
  const proxyHwm = proxy ? (memStatus(proxy.pid)?.hwm ?? 0) : 0;
  // taskset execs the client, so pid is the Python that used libssl
  const clientLibssl = holder ? mappedLibssl(pid) : null;
  const holderAlive = holder ? memStatus(holder.pid) !== null : false;
  const cpu = cpuSeconds(pid);
  const threads = threadCpu(pid);
  let hwm = 0;
  let threadCount = 0;
  let clientHwm = 0;
  let guardianHwm: number | undefined;
  const top = memStatus(pid);
  if (top) {
    hwm = top.hwm;
    threadCount = top.threads;
    if (top.rss > rss.max) rss.max = top.rss;
  }
  if (v.kloak) {
    for (const c of childrenOf(pid)) {
      const args = cmdline(c);
      const m = memStatus(c);
      if (!m) continue;
      if (args.includes("__guardian")) guardianHwm = m.hwm;
      else if (args.includes(CLIENT)) clientHwm = m.hwm;
    }
  } else {
    clientHwm = hwm;
  }
  return { wall, sys, bench, cpu, threads, proxyCpu, prog, proxyHwm, clientLibssl, holderAlive, hwm, threadCount, clientHwm, guardianHwm };
}

/**
 * Reads the client's lines until its result, sampling at the start of its
 * measured window and after the result (the client then holds on stdin, so
 * everything is still alive); then lets it exit. Throws, with the client's
 * and the peers' output, when it failed.
 */
async function observeClient(proc: ClientProc, v: Variant, peers: Peers, limit: number, bpfStats: boolean | undefined) {
  const stderrP = new Response(proc.stderr).text();
  const next = lineReader(proc.stdout);
  // Poll the top process's RSS every 50 ms (same harness load in every variant).
  const rss = { max: 0 };
  const poll = setInterval(() => {
    const m = memStatus(proc.pid);
    if (m && m.rss > rss.max) rss.max = m.rss;
  }, 50);
  let start: WindowStart = { wall: 0, sys: null, bench: process.cpuUsage(), cpu: null, threads: new Map(), proxyCpu: null, prog: [] };
  let end: WindowEnd | undefined;
  let result: ClientResult | undefined;
  let failure: string | undefined;
  try {
    for (;;) {
      const line = await withTimeout(next(), limit, "client output");
      if (line === null) throw new Error("client exited without a result");
      if (!line.startsWith("{")) continue;
      const msg = JSON.parse(line);
      if (msg.event === "measure") {
        start = windowStart(proc.pid, v, peers, bpfStats);
        continue;
      }
      result = msg as ClientResult;
      break;
    }
    end = windowEnd(proc.pid, v, peers, bpfStats, rss);
  } catch (e) {
    failure = (e as Error).message;
    try {
      process.kill(proc.pid, "SIGTERM");
    } catch {
      // gone
    }
  } finally {
    clearInterval(poll);
    try {
      proc.stdin.write("\n");
      proc.stdin.end();
    } catch {
      // gone
    }
  }
  const code = await withTimeout(proc.exited, 30_000, "the client to exit").catch((e) => {
    process.kill(proc.pid, "SIGKILL");
    failure ??= (e as Error).message;
    return -1;
  });
  return { stderr: await stderrP, code, failure, result, start, end, rssPolledMax: rss.max };
}

/** kloak exec's own account (rewrite mode, substitutions) from its stderr, and what it used during the window. */
function kloakInfoOf(pid: number, stderr: string, start: WindowStart, end: WindowEnd | undefined, rssPolledMax: number): KloakInfo {
  const mode = /rewrite mode (\S+) \(([^)]*)\)/.exec(stderr);
  const subs = /(\d+) substitution\(s\) in (\d+) TLS write\(s\)(?:, (\d+) failed closed)?/.exec(stderr);
  const threadCpuWindow: { comm: string; cpuS: number }[] = [];
  for (const [tid, t] of end?.threads ?? new Map<number, { comm: string; cpu: number }>()) {
    const d = t.cpu - (start.threads.get(tid)?.cpu ?? 0);
    if (d > 0) threadCpuWindow.push({ comm: t.comm, cpuS: d });
  }
  threadCpuWindow.sort((a, b) => b.cpuS - a.cpuS);
  const cpuStart = start.cpu;
  const cpuEnd = end?.cpu ?? null;
  return {
    pid,
    mode: mode?.[1],
    modeReason: mode?.[2],
    substitutions: subs ? Number(subs[1]) : undefined,
    tlsWrites: subs ? Number(subs[2]) : undefined,
    failedClosed: subs?.[3] ? Number(subs[3]) : 0,
    hwm: end?.hwm ?? 0,
    rssPolledMax,
    threads: end?.threadCount ?? 0,
    guardianHwm: end?.guardianHwm,
    cpuWindowS: cpuStart && cpuEnd ? cpuEnd.user + cpuEnd.sys - cpuStart.user - cpuStart.sys : NaN,
    threadCpuWindow,
  };
}

/** What the server, the client and kloak saw must agree with what variant v should do; every check goes into `checks`. */
function checkRun(
  checks: RunResult["checks"],
  w: Workload,
  v: Variant,
  peers: Peers,
  o: { server: ServerStats; result: ClientResult; kloak: KloakInfo | undefined; end: WindowEnd | undefined; holderEnd: Awaited<ReturnType<Peers["stop"]>> },
): void {
  const { proxy, holder } = peers;
  const { server, result, kloak, holderEnd } = o;
  const connections = w.connections ?? 1;
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  const writes = result.writes_total;
  check("server errors", server.errors.length === 0, server.errors.join("; ") || "none");
  if (proxy) check("one upstream connection (keep-alive)", server.connections === 1, `${server.connections}`);
  else if (connections > 1)
    check(`${connections} connections`, server.connections === connections && result.connections === connections, `${server.connections}`);
  else check("one connection", server.connections === 1, `${server.connections}`);
  if (w.id === "request")
    check("server answered every request", server.requests === writes, `${server.requests}/${writes}`);
  else check("server read every byte", server.bytes === writes * w.size, `${server.bytes}/${writes * w.size}`);
  check("placeholder never on the wire", server.markerHits === 0, `${server.markerHits} marker occurrence(s)`);
  if (v.placeholder) {
    check("real value in every write", server.valueHits === writes, `${server.valueHits}/${writes} writes`);
    check("app buffer restored", result.restored === true, `restored=${result.restored}`);
    check(
      "kloak counted every substitution",
      kloak?.substitutions === writes && kloak.failedClosed === 0,
      `${kloak?.substitutions} substitution(s), ${kloak?.failedClosed} failed closed, ${writes} writes`,
    );
  } else if (proxy) {
    check("real value in every request (injected by the proxy)", server.valueHits === writes, `${server.valueHits}/${writes} requests`);
  } else {
    check("real value absent", server.valueHits === 0, `${server.valueHits} occurrence(s)`);
    if (kloak) check("no substitution", kloak.substitutions === 0, `${kloak.substitutions} substitution(s)`);
  }
  if (holder) {
    const holderAlive = o.end?.holderAlive ?? false;
    const clientLibssl = o.end?.clientLibssl ?? null;
    check("scoped process alive during the run", holderAlive, holderAlive ? "yes" : "it had exited");
    check(
      "client and scoped process map the same libssl",
      clientLibssl !== null && holder.libssl !== null && clientLibssl.id === holder.libssl.id,
      `client ${clientLibssl?.path ?? "none"} (${clientLibssl?.id ?? "-"}), scoped ${holder.libssl?.path ?? "none"} (${holder.libssl?.id ?? "-"})`,
    );
    check(
      "kloak substituted the scoped process's one request",
      holderEnd?.code === 0 && holderEnd.substitutions === 1,
      `exit ${holderEnd?.code}, ${holderEnd?.substitutions} substitution(s)`,
    );
  }
}

/** Machine CPU over the window: ours (client, agent or proxy, this process) and everything else's. */
function machineWindow(result: ClientResult, agentWindow: number, start: WindowStart, end: WindowEnd | undefined): RunResult["window"] {
  const bench1 = end?.bench ?? start.bench;
  const sys0 = start.sys;
  const sys1 = end?.sys ?? null;
  const benchS = (bench1.user + bench1.system - start.bench.user - start.bench.system) / 1e6;
  const oursS = result.cpu_user_s + result.cpu_sys_s + (Number.isFinite(agentWindow) ? agentWindow : 0) + benchS;
  const busyS = sys0 && sys1 ? sys1.busy - sys0.busy : NaN;
  return {
    seconds: ((end?.wall ?? 0) - start.wall) / 1e9,
    busyS,
    oursS,
    foreignS: Math.max(0, busyS - oursS),
    stealS: sys0 && sys1 ? sys1.steal - sys0.steal : NaN,
  };
}

/** Each BPF program's runs and time during the window, per write (diagnostic runs). */
function bpfWindow(start: WindowStart, end: WindowEnd | undefined, measured: number): NonNullable<RunResult["bpf"]> {
  return (end?.prog ?? [])
    .map((p) => {
      const before = start.prog.find((q) => q.id === p.id);
      const runs = p.runCnt - (before?.runCnt ?? 0);
      const ns = p.runTimeNs - (before?.runTimeNs ?? 0);
      return {
        name: p.name,
        runs,
        nsPerRun: runs > 0 ? ns / runs : 0,
        runsPerWrite: runs / measured,
        nsPerWrite: ns / measured,
      };
    })
    .filter((p) => p.runs > 0);
}

/** One run of workload w in variant v: peers up, the client (under kloak or not) measured, checked, peers down. */
async function runOne(
  ctx: BenchCtx,
  w: Workload,
  v: Variant,
  rep: number,
  opts: { bpfStats?: boolean; duration?: number } = {},
): Promise<RunResult> {
  const duration = opts.duration ?? (opts.bpfStats ? DIAG_DURATION : DURATION);
  const checks: RunResult["checks"] = [];
  let peers: Peers;
  try {
    peers = await startPeers(ctx, v, checks);
  } catch (e) {
    throw new Error(`${w.id}/${v.id} rep ${rep + 1}: ${(e as Error).message}`);
  }
  const { proxy, holder } = peers;
  const port = proxy ? proxy.port : w.id === "request" ? ctx.server.httpPort : ctx.server.bulkPort;
  const { cmd, env } = clientCommand(ctx, w, v, port, duration);

  ctx.server.reset();
  const tSpawn = wallNs();
  let proc: ClientProc;
  try {
    proc = spawnClient(cmd, env);
  } catch (e) {
    await peers.stop();
    throw e;
  }
  // Handshakes come before the first line: allow for them (tens of seconds at 10,000 connections under kloak).
  const limit = (WARMUP + duration) * 1000 + 30_000 + (w.connections ?? 1) * 20;
  const { stderr, code, failure, result, start, end, rssPolledMax } = await observeClient(proc, v, peers, limit, opts.bpfStats);
  const server = ctx.server.snapshot();
  const proxyLog = proxy?.errorLog() ?? "";
  const holderEnd = await peers.stop();
  const peerOutput = `${proxyLog ? `\nnginx error log (end):\n${proxyLog}` : ""}${holderEnd && holderEnd.code !== 0 ? `\nscoped process (kloak exec) exit ${holderEnd.code}:\n${holderEnd.stderr.trim()}` : ""}`;
  if (failure !== undefined || result === undefined)
    throw new Error(`${w.id}/${v.id} rep ${rep + 1}: ${failure ?? "no result"} (exit ${code})\n${stderr}${peerOutput}`);
  if (code !== 0) throw new Error(`${w.id}/${v.id} rep ${rep + 1}: exit status ${code}\n${stderr}${peerOutput}`);

  const kloak = v.kloak ? kloakInfoOf(proc.pid, stderr, start, end, rssPolledMax) : undefined;
  checkRun(checks, w, v, peers, { server, result, kloak, end, holderEnd });
  const proxyCpu0 = start.proxyCpu;
  const proxyCpu1 = end?.proxyCpu ?? null;
  const proxyInfo = proxy
    ? { pid: proxy.pid, cpuWindowS: proxyCpu0 && proxyCpu1 ? proxyCpu1.user + proxyCpu1.sys - proxyCpu0.user - proxyCpu0.sys : NaN, hwm: end?.proxyHwm ?? 0 }
    : undefined;
  const window = machineWindow(result, kloak?.cpuWindowS ?? proxyInfo?.cpuWindowS ?? 0, start, end);
  const bpf = opts.bpfStats && v.kloak ? bpfWindow(start, end, result.measured) : undefined;

  return {
    rep,
    window,
    bpf,
    workload: w.id,
    variant: v.id,
    client: result,
    server,
    startupMs: (result.t_start_wall_ns - tSpawn) / 1e6,
    connectedMs: (result.t_connected_wall_ns - tSpawn) / 1e6,
    clientHwm: end?.clientHwm ?? 0,
    kloak,
    proxy: proxyInfo,
    scoped: holder && holderEnd ? { pid: holder.pid, libssl: holder.libssl?.path ?? null, substitutions: holderEnd.substitutions, exitCode: holderEnd.code } : undefined,
    checks,
    stderr: stderr.trim(),
  };
}

// ---------------------------------------------------------------- summary

interface Summary {
  workload: WorkloadId;
  variant: VariantId;
  reps: number;
  ops_per_s: number;
  mib_per_s: number;
  p50_ns: number;
  p90_ns: number;
  p99_ns: number;
  p999_ns: number;
  max_ns: number;
  mean_ns: number;
  measured_writes: number;
  client_user_us_per_op: number;
  client_sys_us_per_op: number;
  agent_cpu_us_per_op: number;
  bench_process_cpu_us_per_op: number;
  startup_ms: number;
  agent_hwm_max: number;
  agent_hwm_median: number;
  guardian_hwm_max: number;
  client_hwm_median: number;
  per_rep_ops: number[];
  per_rep_p99_ns: number[];
}

function summarize(runs: RunResult[], w: WorkloadId, v: VariantId): Summary {
  const rs = runs.filter((r) => r.workload === w && r.variant === v);
  const m = (f: (r: RunResult) => number) => median(rs.map(f));
  const perOp = (f: (r: RunResult) => number) => m((r) => perOpUs(f(r), r.client.measured));
  return {
    workload: w,
    variant: v,
    reps: rs.length,
    ops_per_s: m((r) => r.client.ops_per_s),
    mib_per_s: m((r) => r.client.mib_per_s),
    p50_ns: m((r) => r.client.latency.p50_ns),
    p90_ns: m((r) => r.client.latency.p90_ns),
    p99_ns: m((r) => r.client.latency.p99_ns),
    p999_ns: m((r) => r.client.latency.p999_ns),
    max_ns: m((r) => r.client.latency.max_ns),
    mean_ns: m((r) => r.client.latency.mean_ns),
    measured_writes: m((r) => r.client.measured),
    client_user_us_per_op: perOp((r) => r.client.cpu_user_s),
    client_sys_us_per_op: perOp((r) => r.client.cpu_sys_s),
    // kloak's agent, or the proxy's nginx: the CPU that the data path adds outside the client
    agent_cpu_us_per_op: rs[0]?.kloak ? perOp((r) => r.kloak!.cpuWindowS) : rs[0]?.proxy ? perOp((r) => r.proxy!.cpuWindowS) : NaN,
    bench_process_cpu_us_per_op: perOp((r) => r.server.cpuS),
    startup_ms: m((r) => r.startupMs),
    agent_hwm_max: rs[0]?.kloak ? maxOf(rs.map((r) => r.kloak!.hwm)) : NaN,
    agent_hwm_median: rs[0]?.kloak ? m((r) => r.kloak!.hwm) : NaN,
    guardian_hwm_max: rs[0]?.kloak ? maxOf(rs.map((r) => r.kloak!.guardianHwm ?? 0)) : NaN,
    client_hwm_median: m((r) => r.clientHwm),
    per_rep_ops: rs.map((r) => r.client.ops_per_s),
    per_rep_p99_ns: rs.map((r) => r.client.latency.p99_ns),
  };
}

function machineInfo(sample: RunResult | undefined, kloakRun: RunResult | undefined) {
  const cpuModel = (() => {
    try {
      return /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
    } catch {
      return "unknown";
    }
  })();
  const lockdown = (() => {
    try {
      return readFileSync("/sys/kernel/security/lockdown", "utf8").trim();
    } catch {
      return "n/a";
    }
  })();
  const noGit = process.env.KLOAK_BENCH_NO_GIT === "1";
  const git = noGit ? { success: true, stdout: Buffer.from(headCommit()) } : Bun.spawnSync(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = noGit ? { success: false, stdout: Buffer.alloc(0) } : Bun.spawnSync(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "lib", "bpf"]);
  return {
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    cpu_model: cpuModel,
    memory: fmtMiB(os.totalmem()),
    lockdown,
    bun: Bun.version,
    python: sample?.client.python ?? "?",
    openssl: sample?.client.openssl ?? "?",
    tls: sample ? `${sample.client.tls_version} ${sample.client.cipher}` : "?",
    kloak_commit: git.success
      ? git.stdout.toString().trim() + (dirty.success && dirty.stdout.toString().trim() ? " (+uncommitted changes)" : "")
      : "?",
    kloak_rewrite_mode: kloakRun?.kloak?.mode ?? "?",
    kloak_rewrite_mode_reason: kloakRun?.kloak?.modeReason ?? "?",
  };
}

// ---------------------------------------------------------------- main

/** What the data-plane and growth parts share: the Python, this process pinned, the certificates, the server and the value. */
async function benchContext(): Promise<BenchCtx> {
  if (process.getuid?.() !== 0) console.error("bench: warning: not root; kloak exec will likely fail");
  const python = resolvePython();
  if (PIN) {
    const r = Bun.spawnSync([TASKSET!, "-a", "-p", "-c", String(SERVER_CPU), String(process.pid)], { stdout: "ignore" });
    if (!r.success) console.error(`bench: warning: could not pin the server to CPU ${SERVER_CPU}: ${r.stderr.toString().trim()}`);
  }
  const certs = await testCerts();
  const value = randomValue(SECRET_LEN);
  const server = await startBenchServer({
    key: certs.key,
    cert: certs.cert,
    value: Buffer.from(value),
    marker: Buffer.from(MARKER),
    recordSize: 16384,
  });
  return { python, caFile: certs.caFile, certFile: certs.certFile, keyFile: certs.keyFile, value, server };
}

/** nginx's version; undefined, said on stderr, when it is missing (the proxy variant is in every run, so before measuring anything). */
function nginxVersion(): string | undefined {
  try {
    const r = Bun.spawnSync([nginxBinary(), "-v"]);
    return /nginx\/(\S+)/.exec(r.stderr.toString())?.[1] ?? "?";
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    return undefined;
  }
}

/** The data-plane part's runs: measured, diagnostic (BPF stats on), and what failed to run. */
interface Measured {
  runs: RunResult[];
  diagRuns: RunResult[];
  errors: string[];
  diagNote?: string;
}

/** Every (workload, variant) REPS times; each run's line on stderr as it ends. */
async function measuredRuns(ctx: BenchCtx, m: Measured, total: number): Promise<void> {
  const { runs, errors } = m;
  for (let rep = 0; rep < REPS; rep++) {
    for (const w of WORKLOADS) {
      // Rotate the order each repetition so no variant always runs first.
      const vs = variantsFor(w.id);
      const order = vs.map((_, i) => vs[(i + rep) % vs.length]!);
      for (const v of order) {
        let r: RunResult;
        try {
          r = await runOne(ctx, w, v, rep);
        } catch (e) {
          const msg = (e as Error).message;
          errors.push(msg);
          console.error(`bench: RUN FAILED: ${msg}`);
          continue;
        }
        runs.push(r);
        const bad = r.checks.filter((c) => !c.ok);
        const c = r.client;
        console.error(
          `  [${runs.length + errors.length}/${total}] rep ${rep + 1} ${w.id.padEnd(7)} ${v.id.padEnd(9)} ` +
            (w.id === "request" ? `${c.ops_per_s.toFixed(0).padStart(6)} req/s` : `${c.mib_per_s.toFixed(1).padStart(6)} MiB/s`) +
            `  p50 ${fmtUs(c.latency.p50_ns)}  p99 ${fmtUs(c.latency.p99_ns)}` +
            (r.kloak ? `  agent HWM ${fmtMiB(r.kloak.hwm)} cpu ${r.kloak.cpuWindowS.toFixed(2)}s` : "") +
            (bad.length ? `  CHECK FAILED: ${bad.map((b) => `${b.name} (${b.detail})`).join(", ")}` : "  ok"),
        );
      }
    }
  }
}

/** The kloak variants (without rules) again, with the kernel's BPF run-time statistics on; not in the measured numbers. */
async function diagnosticRuns(ctx: BenchCtx, m: Measured): Promise<void> {
  const { diagRuns, errors } = m;
  const stats = enableBpfStats();
  if (typeof stats === "string") {
    m.diagNote = `diagnostic phase skipped: ${stats}`;
    console.error(`bench: ${m.diagNote}`);
  } else {
    console.error(`bench: diagnostic phase (BPF run-time stats on, ${DIAG_DURATION}s runs, not in the numbers above)`);
    try {
      for (const w of WORKLOADS)
        for (const v of VARIANTS.filter((x) => x.kloak && !x.rules)) {
          try {
            const r = await runOne(ctx, w, v, 0, { bpfStats: true });
            diagRuns.push(r);
            const bad = r.checks.filter((c) => !c.ok);
            console.error(
              `  diag ${w.id.padEnd(7)} ${v.id.padEnd(9)} ` +
                (r.bpf ?? []).map((b) => `${b.name} ${b.runsPerWrite.toFixed(2)}/write ${(b.nsPerRun / 1000).toFixed(2)} µs/run`).join(", ") +
                (bad.length ? `  CHECK FAILED: ${bad.map((b) => `${b.name} (${b.detail})`).join(", ")}` : ""),
            );
          } catch (e) {
            errors.push(`diagnostic: ${(e as Error).message}`);
            console.error(`bench: DIAGNOSTIC RUN FAILED: ${(e as Error).message}`);
          }
        }
    } finally {
      stats.close();
    }
  }
}

type Derived = ReturnType<typeof derive>;
const summaryOf = (summaries: Summary[], w: WorkloadId, v: VariantId) => summaries.find((s) => s.workload === w && s.variant === v)!;

/** Workload w's ratios and added latencies: each variant against the baseline (and kloak+ph against the proxy), from the medians and rep by rep. */
function derive(runs: RunResult[], summaries: Summary[], w: WorkloadId) {
  const S = (w: WorkloadId, v: VariantId) => summaryOf(summaries, w, v);
  const b = S(w, "baseline");
  const k = S(w, "kloak");
  const p = S(w, "kloak+ph");
  const kr = S(w, "kloak+rules");
  const pr = S(w, "kloak+ph+rules");
  const px = summaries.find((s) => s.workload === w && s.variant === "proxy"); // request loop only
  const out = S(w, "outside");
  const rate = (s: Summary) => (w === "request" ? s.ops_per_s : s.mib_per_s);
  /** v's throughput over ref's, rep by rep (the two ran minutes apart at most) */
  const pairs = (v: VariantId, ref: VariantId = "baseline") =>
    [...new Set(runs.map((r) => r.rep))].flatMap((rep) => {
      const x = runs.find((r) => r.rep === rep && r.workload === w && r.variant === v);
      const y = runs.find((r) => r.rep === rep && r.workload === w && r.variant === ref);
      return x && y ? [x.client.ops_per_s / y.client.ops_per_s] : [];
    });
  return {
    ratio_proxy: px ? rate(px) / rate(b) : NaN,
    per_rep_ratio_proxy: px ? pairs("proxy") : [],
    /** kloak with one placeholder per write against the egress proxy, the alternative */
    ratio_placeholder_vs_proxy: px ? rate(p) / rate(px) : NaN,
    per_rep_ratio_placeholder_vs_proxy: px ? pairs("kloak+ph", "proxy") : [],
    added_p50_proxy_ns: px ? px.p50_ns - b.p50_ns : NaN,
    added_p99_proxy_ns: px ? px.p99_ns - b.p99_ns : NaN,
    added_mean_per_request_proxy_from_throughput_ns: px ? 1e9 / px.ops_per_s - 1e9 / b.ops_per_s : NaN,
    /** a process outside every scope, the same libssl attached by a kloak exec tree beside it */
    ratio_outside: rate(out) / rate(b),
    per_rep_ratio_outside: pairs("outside"),
    per_rep_ratio_no_placeholder: pairs("kloak"),
    per_rep_ratio_placeholder: pairs("kloak+ph"),
    ratio_no_placeholder: rate(k) / rate(b),
    ratio_placeholder: rate(p) / rate(b),
    per_rep_ratio_no_placeholder_rules: pairs("kloak+rules"),
    per_rep_ratio_placeholder_rules: pairs("kloak+ph+rules"),
    ratio_no_placeholder_rules: rate(kr) / rate(b),
    ratio_placeholder_rules: rate(pr) / rate(b),
    added_p99_per_substituted_write_rules_ns: pr.p99_ns - b.p99_ns,
    added_p50_no_placeholder_ns: k.p50_ns - b.p50_ns,
    added_p99_no_placeholder_ns: k.p99_ns - b.p99_ns,
    added_p50_per_substituted_write_ns: p.p50_ns - b.p50_ns,
    added_p90_per_substituted_write_ns: p.p90_ns - b.p90_ns,
    added_p99_per_substituted_write_ns: p.p99_ns - b.p99_ns,
    added_mean_per_write_no_placeholder_from_throughput_ns: 1e9 / k.ops_per_s - 1e9 / b.ops_per_s,
    added_mean_per_write_from_throughput_ns: 1e9 / p.ops_per_s - 1e9 / b.ops_per_s,
    added_client_sys_us_per_write_no_placeholder: k.client_sys_us_per_op - b.client_sys_us_per_op,
    added_client_sys_us_per_write_placeholder: p.client_sys_us_per_op - b.client_sys_us_per_op,
  };
}

/** Issue 14's targets, each with its measured value and verdict. */
function targetsOf(derived: Record<WorkloadId, Derived>, peakAgent: number) {
  return [
    {
      id: "no_placeholder_1k",
      what: `kloak without placeholders, 1 KiB request loop: req/s >= ${pct(TARGETS.noPh1k)} of baseline`,
      value: derived.request.ratio_no_placeholder,
      shown: pct(derived.request.ratio_no_placeholder),
      pass: derived.request.ratio_no_placeholder >= TARGETS.noPh1k,
    },
    {
      id: "no_placeholder_16k",
      what: `kloak without placeholders, 16 KiB bulk: MiB/s >= ${pct(TARGETS.noPh16k)} of baseline`,
      value: derived.bulk.ratio_no_placeholder,
      shown: pct(derived.bulk.ratio_no_placeholder),
      pass: derived.bulk.ratio_no_placeholder >= TARGETS.noPh16k,
    },
    {
      id: "added_p99_per_substituted_write",
      what: `added p99 latency per substituted write (request loop: p99 kloak+ph - p99 baseline) <= ${TARGETS.addedP99Us} µs`,
      value: derived.request.added_p99_per_substituted_write_ns / 1e3,
      shown: fmtSignedUs(derived.request.added_p99_per_substituted_write_ns),
      pass: derived.request.added_p99_per_substituted_write_ns <= TARGETS.addedP99Us * 1e3,
    },
    {
      id: "placeholder_vs_proxy",
      what: `kloak+ph throughput >= egress proxy throughput (1 KiB request loop, same run: kloak+ph req/s / proxy req/s >= ${pct(TARGETS.phVsProxy)})`,
      value: derived.request.ratio_placeholder_vs_proxy,
      shown: pct(derived.request.ratio_placeholder_vs_proxy),
      pass: derived.request.ratio_placeholder_vs_proxy >= TARGETS.phVsProxy,
    },
    {
      id: "no_placeholder_1k_rules",
      what: `... the same with destination rules: req/s >= ${pct(TARGETS.noPh1k)} of baseline`,
      value: derived.request.ratio_no_placeholder_rules,
      shown: pct(derived.request.ratio_no_placeholder_rules),
      pass: derived.request.ratio_no_placeholder_rules >= TARGETS.noPh1k,
    },
    {
      id: "no_placeholder_16k_rules",
      what: `... 16 KiB bulk with destination rules: MiB/s >= ${pct(TARGETS.noPh16k)} of baseline`,
      value: derived.bulk.ratio_no_placeholder_rules,
      shown: pct(derived.bulk.ratio_no_placeholder_rules),
      pass: derived.bulk.ratio_no_placeholder_rules >= TARGETS.noPh16k,
    },
    {
      id: "added_p99_per_substituted_write_rules",
      what: `added p99 per substituted write with destination rules (p99 kloak+ph+rules - p99 baseline) <= ${TARGETS.addedP99Us} µs`,
      value: derived.request.added_p99_per_substituted_write_rules_ns / 1e3,
      shown: fmtSignedUs(derived.request.added_p99_per_substituted_write_rules_ns),
      pass: derived.request.added_p99_per_substituted_write_rules_ns <= TARGETS.addedP99Us * 1e3,
    },
    {
      id: "peak_agent_rss",
      what: `peak agent RSS (VmHWM of the kloak exec process, max over all kloak runs) <= 80 MB (80e6 bytes)`,
      value: peakAgent,
      shown: `${fmtMiB(peakAgent)} (${(peakAgent / 1e6).toFixed(1)} MB)`,
      pass: peakAgent <= TARGETS.rssBytes,
    },
  ].map((t) => ({ ...t, pass: Number.isFinite(t.value) && t.pass }));
}

/** One line per run with failed checks, with kloak's own explanation (its refusal summary lines). */
function failedChecksOf(runs: RunResult[], diagRuns: RunResult[]): string[] {
  return [
    ...runs.map((r) => ({ r, tag: `rep ${r.rep + 1}` })),
    ...diagRuns.map((r) => ({ r, tag: "diagnostic run" })),
  ].flatMap(({ r, tag }) => {
    const bad = r.checks.filter((c) => !c.ok);
    if (bad.length === 0) return [];
    const why = r.stderr
      .split("\n")
      .filter((l) => /refused|failed closed/.test(l))
      .map((l) => l.replace(/^kloak: /, "").trim());
    return [
      `${r.workload}/${r.variant} ${tag}: ${bad.map((c) => `${c.name}: ${c.detail}`).join("; ")}` +
        (why.length ? ` — kloak says: ${why.join(" | ")}` : ""),
    ];
  });
}

/** What the report says, computed once from the runs. */
function analyse(m: Measured, foreignAtStart: ReturnType<typeof foreignKloaks>, nginx: string, t0: number) {
  const { runs, diagRuns } = m;
  const summaries: Summary[] = [];
  for (const w of WORKLOADS) for (const v of variantsFor(w.id)) summaries.push(summarize(runs, w.id, v.id));
  const derived = { request: derive(runs, summaries, "request"), bulk: derive(runs, summaries, "bulk") };
  const kloakRuns = runs.filter((r) => r.kloak);
  const peakAgent = maxOf(kloakRuns.map((r) => r.kloak!.hwm));
  const peakPolled = maxOf(kloakRuns.map((r) => r.kloak!.rssPolledMax));
  const peakGuardian = maxOf(kloakRuns.map((r) => r.kloak!.guardianHwm ?? 0));
  const targets = targetsOf(derived, peakAgent);
  const failedChecks = failedChecksOf(runs, diagRuns);
  const foreign = runs.map((r) => r.window.foreignS / r.window.seconds).filter(Number.isFinite);
  const steal = runs.map((r) => r.window.stealS / r.window.seconds).filter(Number.isFinite);
  return {
    ...m,
    summaries,
    S: (w: WorkloadId, v: VariantId) => summaryOf(summaries, w, v),
    derived,
    peakAgent,
    peakPolled,
    peakGuardian,
    targets,
    missed: targets.filter((t) => !t.pass),
    failedChecks,
    foreign,
    steal,
    foreignAtStart,
    busyMachine: foreignAtStart.length > 0 || median(foreign) > 0.15,
    machine: { ...machineInfo(runs.find((r) => r.variant === "baseline"), kloakRuns[0]), nginx },
    elapsedS: (Date.now() - t0) / 1000,
  };
}
type Analysis = ReturnType<typeof analyse>;

// ---------------------------------------------------------------- the data-plane report

/** What failed or was missed, at the top where it cannot be overlooked. */
function alertsBlock(md: Markdown, a: Analysis): void {
  const { missed, failedChecks, errors, busyMachine, foreign } = a;
  if (!(missed.length || failedChecks.length || errors.length || busyMachine)) return;
  md.fenced([
    ...(busyMachine ? [`!!! MACHINE NOT IDLE: other kloak/test processes or ${pct(median(foreign))} of a CPU of other load; numbers are noisy`] : []),
    ...missed.map((t) => `!!! MISSED: ${t.what}: got ${t.shown}`),
    ...failedChecks.map((f) => `!!! CORRECTNESS FAILED: ${f}`),
    ...errors.map((e) => `!!! RUN FAILED: ${e.split("\n")[0]}`),
  ]);
  md.line();
}

/** The machine and the method, so two reports can be compared. */
function machineSection(L: Markdown["line"], a: Analysis): void {
  const { machine } = a;
  L("## Machine");
  L();
  L("| | |");
  L("|---|---|");
  L(`| kernel | ${machine.kernel} |`);
  L(`| CPUs | ${machine.cpus} × ${machine.cpu_model} |`);
  L(`| memory | ${machine.memory} |`);
  L(`| kernel lockdown | ${machine.lockdown} |`);
  L(`| kloak rewrite mode | **${machine.kloak_rewrite_mode}** (${machine.kloak_rewrite_mode_reason}) |`);
  L(`| kloak | commit ${machine.kloak_commit}, run from source with bun ${machine.bun} |`);
  L(`| client | CPython ${machine.python} ssl, ${machine.openssl}, ${machine.tls}, one blocking socket |`);
  L(`| server | node:tls in the bench process (bun), 127.0.0.1, same for all variants |`);
  L(
    `| egress proxy (variant "proxy") | nginx ${machine.nginx} (Debian), one process (\`master_process off\`), started per run with its own config; ` +
      `TLS from the client terminated with the test server certificate, \`proxy_set_header Authorization "Bearer <value>"\`, ` +
      `TLS 1.2/1.3 to the server verified against the test CA (name localhost), upstream \`keepalive 16\` + HTTP/1.1 + \`Connection ""\`, session reuse; ` +
      `${PIN ? `pinned like the agent (CPUs ${ALL_CPUS})` : "unpinned"} |`,
  );
  L(
    `| outside (variant "outside") | the baseline client, not in any scope, while \`kloak exec --secret NAME -- python3\` runs beside it with the same libssl attached ` +
      `(its process made one TLS request, substituted, before the client started, and stays connected) |`,
  );
  L(
    `| CPU placement | ${PIN ? `server (bench process) pinned to CPU ${SERVER_CPU}, client to CPU ${CLIENT_CPU}, kloak agent unpinned (CPUs ${ALL_CPUS})` : "unpinned"} |`,
  );
  L(
    `| method | ${DURATION} s measured (+${WARMUP} s warmup) per run, ${REPS} rep(s) per variant interleaved (rotating order), medians; ` +
      `secret of ${SECRET_LEN} bytes; bound ${MAX_COUNT} writes/run |`,
  );
  L();
}

function targetsSection(L: Markdown["line"], a: Analysis): void {
  const { targets, failedChecks, errors } = a;
  L("## Targets");
  L();
  L("| target | result | |");
  L("|---|---|---|");
  for (const t of targets) L(`| ${t.what} | ${t.shown} | ${t.pass ? "PASS" : "**MISSED**"} |`);
  L(
    `| correctness: server got the real value in every kloak+ph write and every proxied request, never a placeholder; app buffers restored; the outside variant's scoped process was substituted on the same libssl | ` +
      `${failedChecks.length === 0 && errors.length === 0 ? "all checks held" : `${failedChecks.length + errors.length} run(s) failed (see top)`} | ` +
      `${failedChecks.length === 0 && errors.length === 0 ? "PASS" : "**FAIL**"} |`,
  );
  L();
}

/** One workload's table of variants and what its ratios say. */
function workloadSection(L: Markdown["line"], a: Analysis, w: Workload): void {
  const { runs, derived, S } = a;
  const d = derived[w.id];
  const b = S(w.id, "baseline");
  L(`## ${w.label}`);
  L();
  const unit = w.id === "request" ? "req/s" : "MiB/s";
  L(
    `| variant | ${unit} | vs baseline | p50 | p90 | p99 | p99.9 | max | client user/sys µs per write | agent (proxy: nginx) CPU µs per write | bench proc CPU µs per write | agent VmHWM (max) | writes measured (median) |`,
  );
  L("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const v of variantsFor(w.id)) {
    const s = S(w.id, v.id);
    const rate = w.id === "request" ? s.ops_per_s : s.mib_per_s;
    const base = w.id === "request" ? b.ops_per_s : b.mib_per_s;
    L(
      `| ${v.label} | ${rate.toFixed(w.id === "request" ? 0 : 1)} | ${pct(rate / base)} | ${fmtUs(s.p50_ns)} | ${fmtUs(s.p90_ns)} | ` +
        `${fmtUs(s.p99_ns)} | ${fmtUs(s.p999_ns)} | ${fmtUs(s.max_ns)} | ${s.client_user_us_per_op.toFixed(1)} / ${s.client_sys_us_per_op.toFixed(1)} | ` +
        `${Number.isFinite(s.agent_cpu_us_per_op) ? s.agent_cpu_us_per_op.toFixed(1) : "–"} | ${s.bench_process_cpu_us_per_op.toFixed(1)} | ` +
        `${Number.isFinite(s.agent_hwm_max) ? fmtMiB(s.agent_hwm_max) : "–"} | ${s.measured_writes.toFixed(0)} |`,
    );
  }
  L();
  L(`Per-rep ${unit === "req/s" ? "req/s" : "writes/s"}: ` + variantsFor(w.id).map((v) => `${v.id} ${S(w.id, v.id).per_rep_ops.map((x) => x.toFixed(0)).join(", ")}`).join("; ") + ".");
  L();
  L(
    `- throughput without placeholders: ${pct(d.ratio_no_placeholder)} of baseline (ratio of medians; same-rep ratios ${d.per_rep_ratio_no_placeholder.map(pct).join(", ")}); ` +
      `with one placeholder per write: ${pct(d.ratio_placeholder)} (same-rep ${d.per_rep_ratio_placeholder.map(pct).join(", ")}); ` +
      `with destination rules: ${pct(d.ratio_no_placeholder_rules)} without and ${pct(d.ratio_placeholder_rules)} with a placeholder`,
  );
  L(
    `- added latency per substituted write (kloak+ph − baseline): p50 ${fmtSignedUs(d.added_p50_per_substituted_write_ns)}, ` +
      `p90 ${fmtSignedUs(d.added_p90_per_substituted_write_ns)}, p99 ${fmtSignedUs(d.added_p99_per_substituted_write_ns)}; ` +
      `mean from throughput ${fmtSignedUs(d.added_mean_per_write_from_throughput_ns)}`,
  );
  L(
    `- added latency without placeholders (kloak − baseline): p50 ${fmtSignedUs(d.added_p50_no_placeholder_ns)}, p99 ${fmtSignedUs(d.added_p99_no_placeholder_ns)}; ` +
      `mean from throughput ${fmtSignedUs(d.added_mean_per_write_no_placeholder_from_throughput_ns)}`,
  );
  if (variantsFor(w.id).some((v) => v.proxy))
    L(
      `- **kloak with one placeholder per write vs the egress proxy: ${pct(d.ratio_placeholder_vs_proxy)} of the proxy's req/s** ` +
        `(same-rep ${d.per_rep_ratio_placeholder_vs_proxy.map(pct).join(", ")}); the proxy runs at ${pct(d.ratio_proxy)} of baseline ` +
        `(same-rep ${d.per_rep_ratio_proxy.map(pct).join(", ")}). Added p99 per substituted write ${fmtSignedUs(d.added_p99_per_substituted_write_ns)} ` +
        `against the proxy's added p99 per request ${fmtSignedUs(d.added_p99_proxy_ns)} (p50 ${fmtSignedUs(d.added_p50_per_substituted_write_ns)} vs ${fmtSignedUs(d.added_p50_proxy_ns)}; ` +
        `mean from throughput ${fmtSignedUs(d.added_mean_per_write_from_throughput_ns)} vs ${fmtSignedUs(d.added_mean_per_request_proxy_from_throughput_ns)})`,
    );
  L(
    `- non-enabled process, same libssl (a kloak exec tree attached beside it): ${pct(d.ratio_outside)} of baseline ` +
      `(same-rep ${d.per_rep_ratio_outside.map(pct).join(", ")})`,
  );
  const last = runs.filter((r) => r.workload === w.id && r.variant === "kloak+ph").at(-1);
  if (last?.kloak) {
    const th = last.kloak.threadCpuWindow.slice(0, 4);
    L(
      `- agent threads busy during a kloak+ph run (rep ${last.rep + 1}, CPU s in the ${DURATION} s window): ` +
        (th.length ? th.map((t) => `${t.comm} ${t.cpuS.toFixed(2)}`).join(", ") : "none measurable"),
    );
  }
  L();
}

/** Where one workload's added time per write goes: client kernel time, the BPF programs (from the diagnostic runs), the agent. */
function timeParagraph(L: Markdown["line"], a: Analysis, w: Workload): void {
  const { diagRuns, derived, S } = a;
  const d = derived[w.id];
  const b = S(w.id, "baseline");
  const k = S(w.id, "kloak");
  const p = S(w.id, "kloak+ph");
  const bpfOf = (v: VariantId) => diagRuns.find((r) => r.workload === w.id && r.variant === v)?.bpf ?? [];
  // the write path: the TLS uprobe programs and the send tracepoints (bpftool names are cut at 15 chars)
  const writeProgs = (v: VariantId) => bpfOf(v).filter((x) => x.name.startsWith("kloak_tls") || x.name.startsWith("kloak_send"));
  const progText = (v: VariantId) =>
    writeProgs(v)
      .map((x) => `\`${x.name}\` ${(x.nsPerRun / 1000).toFixed(2)} µs/run × ${x.runsPerWrite.toFixed(2)}/write`)
      .join(", ") || "n/a";
  const bpfPerWrite = (v: VariantId) => sum(writeProgs(v).map((x) => x.nsPerWrite)) / 1000;
  L(`**${w.label}** (baseline client kernel time ${b.client_sys_us_per_op.toFixed(1)} µs/write, user ${b.client_user_us_per_op.toFixed(1)} µs/write)`);
  L();
  L(
    `- kloak, no placeholder: ${fmtSignedUs(d.added_mean_per_write_no_placeholder_from_throughput_ns)} per write (mean, from throughput). ` +
      `Client kernel time ${fmtSigned(d.added_client_sys_us_per_write_no_placeholder)} µs/write, client user ${fmtSigned(k.client_user_us_per_op - b.client_user_us_per_op)} µs/write; ` +
      `the BPF programs themselves run ${bpfPerWrite("kloak").toFixed(2)} µs/write (${progText("kloak")}); ` +
      `the other ${fmtSigned(d.added_client_sys_us_per_write_no_placeholder - bpfPerWrite("kloak"))} µs/write of client kernel time is the uprobe machinery ` +
      `(int3 trap, out-of-line single-step of the probed instruction, uretprobe trampoline) and changed TCP batching. ` +
      `Agent CPU ${k.agent_cpu_us_per_op.toFixed(1)} µs/write.`,
  );
  L(
    `- kloak, 1 placeholder per write: ${fmtSignedUs(d.added_mean_per_write_from_throughput_ns)} per write (mean). ` +
      `Client kernel time ${fmtSigned(d.added_client_sys_us_per_write_placeholder)} µs/write; BPF ${bpfPerWrite("kloak+ph").toFixed(2)} µs/write (${progText("kloak+ph")}); ` +
      `agent CPU ${p.agent_cpu_us_per_op.toFixed(1)} µs/write: each substituted write is two holds (substitute at entry, restore at return): the kernel stops the writing thread (SIGSTOP, reported to kloak's ring worker through ptrace), the worker patches it with process_vm_writev and lets it go (PTRACE_CONT).`,
  );
  L();
}

function timeSection(L: Markdown["line"], a: Analysis): void {
  L("## Where the time goes");
  L();
  if (a.diagNote) L(`(${a.diagNote})`);
  for (const w of WORKLOADS) timeParagraph(L, a, w);
}

/** Other load on the machine during the measured windows: how far to trust the numbers. */
function activitySection(L: Markdown["line"], a: Analysis): void {
  const { foreign, steal, foreignAtStart } = a;
  L("## Machine activity during the runs");
  L();
  L(
    `- CPU used by anything other than client, agent and bench process during measured windows (approx., /proc/stat): ` +
      `median ${pct(median(foreign))} of one CPU, max ${pct(Math.max(...foreign))}; hypervisor steal median ${pct(median(steal))}, max ${pct(Math.max(...steal))}`,
  );
  L(
    foreignAtStart.length
      ? `- **other kloak/test processes were running at start** (numbers noisier): ${foreignAtStart.map((f) => `\`${f.cmd}\``).join("; ")}`
      : "- no other kloak or test processes were running at start",
  );
  L();
}

function memorySection(L: Markdown["line"], a: Analysis): void {
  const { peakAgent, peakPolled, peakGuardian, S } = a;
  L("## Memory and startup");
  L();
  L(`- peak agent RSS (VmHWM of \`kloak exec\`, read while its command was still running): **${fmtMiB(peakAgent)}**; max VmRSS seen by 50 ms polling: ${fmtMiB(peakPolled)}`);
  L(`- guardian process (\`kloak __guardian\`, a second bun process) VmHWM: ${fmtMiB(peakGuardian)}; agent + guardian: ${fmtMiB(peakAgent + peakGuardian)}`);
  const st = (v: VariantId) => median(WORKLOADS.map((w) => S(w.id, v).startup_ms));
  L(
    `- spawn → client process running: baseline ${st("baseline").toFixed(0)} ms, under kloak ${median([st("kloak"), st("kloak+ph")]).toFixed(0)} ms ` +
      `(kloak exec startup ≈ ${(median([st("kloak"), st("kloak+ph")]) - st("baseline")).toFixed(0)} ms)`,
  );
  L();
}

function notesSection(L: Markdown["line"]): void {
  L("## Notes");
  L();
  L(
    "- The client, the server (bench process) and the kloak agent share the machine's CPUs; ratios are end to end on this machine. " +
      "Unpinned, the request loop is bimodal (client and server on one CPU or two: 2-3x apart), hence the pinning above (`--no-pin` to disable).",
  );
  L("- \"agent CPU\" is user+sys of the `kloak exec` process (all threads) during the client's measured window; uprobe/BPF time and the stop/continue signal handling are kernel time charged to the *client* (its sys µs per write).");
  L("- Latency for the request loop is sendall → full response read; for bulk it is the time of one 16 KiB sendall (mostly copy into the socket buffer).");
  L(`- The real secret value is never printed; the server only counts its occurrences (and those of the "${MARKER}" placeholder marker). The proxy variant's value is in its nginx config only, in a 0700 temp dir removed after the run.`);
  L(
    "- The proxy variant's client sends filler where the placeholder would be (as the \"kloak\" variant does); nginx replaces the whole Authorization header, so the server must see the real value once per request and the one upstream connection must carry them all (keep-alive). " +
      "Its latency is the client's full round trip through nginx; \"agent CPU\" is nginx's CPU for that variant.",
  );
  L();
}

function dataplaneMarkdown(a: Analysis): string {
  const md = new Markdown();
  const L = md.line;
  L("# kloak benchmark");
  L();
  L(`Generated ${new Date().toISOString()} in ${a.elapsedS.toFixed(0)} s by \`bun run bench\`.`);
  L();
  alertsBlock(md, a);
  machineSection(L, a);
  targetsSection(L, a);
  for (const w of WORKLOADS) workloadSection(L, a, w);
  timeSection(L, a);
  activitySection(L, a);
  memorySection(L, a);
  notesSection(L);
  return md.toString();
}

function dataplaneJson(a: Analysis) {
  const { elapsedS, machine, targets, failedChecks, errors, summaries, derived, peakAgent, peakPolled, peakGuardian, foreignAtStart, diagNote, diagRuns, runs } = a;
  return {
    generated: new Date().toISOString(),
    elapsed_s: elapsedS,
    options: { pinned: PIN, server_cpu: PIN ? SERVER_CPU : null, client_cpu: PIN ? CLIENT_CPU : null, duration_s: DURATION, reps: REPS, warmup_s: WARMUP, max_count: MAX_COUNT, secret_len: SECRET_LEN },
    machine,
    targets: targets.map(({ id, what, value, pass }) => ({ id, what, value, pass })),
    correctness: { pass: failedChecks.length === 0 && errors.length === 0, failed_checks: failedChecks, run_errors: errors },
    summaries,
    derived,
    memory: { peak_agent_hwm_bytes: peakAgent, peak_agent_rss_polled_bytes: peakPolled, peak_guardian_hwm_bytes: peakGuardian },
    foreign_at_start: foreignAtStart,
    diagnostic: { note: diagNote ?? null, runs: diagRuns.map((r) => ({ ...r, stderr: undefined })) },
    runs: runs.map((r) => ({ ...r, stderr: r.stderr.split("\n").filter((l) => l.startsWith("kloak")) })),
  };
}

/** Writes report.{md,json}, keeping the other parts' sections of the previous report until those parts replace them; prints the report and the verdict. */
function writeDataplaneReport(a: Analysis): number {
  const { missed, failedChecks, errors } = a;
  const report = dataplaneMarkdown(a);
  mkdirSync(REPORT_DIR, { recursive: true });
  writeFileSync(join(REPORT_DIR, "report.md"), keepSections(report, REPORT_DIR) + "\n");
  writeFileSync(join(REPORT_DIR, "report.json"), JSON.stringify(keepSectionJson(dataplaneJson(a), REPORT_DIR), null, 2) + "\n");
  console.log(report);
  if (missed.length) console.log(`\n!!! ${missed.length} TARGET(S) MISSED: ${missed.map((t) => t.id).join(", ")} !!!`);
  else console.log("\nAll targets met.");
  if (failedChecks.length || errors.length)
    console.log(`!!! CORRECTNESS/RUN FAILURES in ${failedChecks.length + errors.length} run(s) (see the top of the report) !!!`);
  console.log(`(report written to ${join(REPORT_DIR, "report.md")} and report.json)`);
  return failedChecks.length || errors.length ? 1 : 0;
}

/** The data-plane part: every variant of both workloads, the diagnostic runs, the report. */
async function dataplanePart(): Promise<number> {
  const t0 = Date.now();
  const nginx = nginxVersion();
  if (nginx === undefined) return 1;
  const ctx = await benchContext();
  const { python, server } = ctx;
  const foreignAtStart = foreignKloaks(new Set());
  if (foreignAtStart.length)
    console.error(
      `bench: WARNING: other kloak/test processes are running; numbers will be noisy:\n` +
        foreignAtStart.map((f) => `  ${f.pid} ${f.cmd}`).join("\n"),
    );
  const total = REPS * WORKLOADS.reduce((n, w) => n + variantsFor(w.id).length, 0);
  console.error(
    `bench: ${total} runs of ${DURATION}s (+${WARMUP}s warmup), python ${python}, server 127.0.0.1:${server.httpPort}/${server.bulkPort}`,
  );
  const m: Measured = { runs: [], diagRuns: [], errors: [] };
  try {
    await measuredRuns(ctx, m, total);
    if (DIAG) await diagnosticRuns(ctx, m);
  } finally {
    await server.close();
  }
  return writeDataplaneReport(analyse(m, foreignAtStart, nginx, t0));
}

/** The agent part (bench/agent.ts): measures, then writes its section into the report. */
async function agentPart(): Promise<number> {
  const num = (x: string | undefined, d: number) => (x === undefined ? d : Number(x));
  const opts = {
    rate: num(argv["agent-rate"], AGENT_DEFAULTS.rate),
    durationS: num(argv["agent-duration"], argv.quick ? 5 : AGENT_DEFAULTS.durationS),
    warmupS: num(argv["agent-warmup"], argv.quick ? 2 : AGENT_DEFAULTS.warmupS),
    reps: Math.max(1, Math.floor(num(argv["agent-reps"], AGENT_DEFAULTS.reps))),
    restart: !argv["no-agent-restart"],
    command: `bun run bench${Bun.argv.length > 2 ? " " + Bun.argv.slice(2).join(" ") : ""}${!argv.only && process.env.KLOAK_BENCH_ONLY ? ` (KLOAK_BENCH_ONLY=${ONLY})` : ""}`,
  };
  if (![opts.rate, opts.durationS].every((x) => Number.isFinite(x) && x > 0) || !(opts.warmupS >= 0)) {
    console.error("bench: bad --agent-* option value");
    return 2;
  }
  let r: Awaited<ReturnType<typeof runAgentBench>>;
  try {
    r = await runAgentBench(opts);
  } catch (e) {
    // Preconditions (root, cgroup v2, Python); failures later are in the report.
    console.error(`bench: the agent part could not run: ${(e as Error).message}`);
    return 1;
  }
  const section = writeAgentReport(REPORT_DIR, r);
  console.log("\n" + section);
  const s = summarizeAgent(r);
  const missed = s.targets.filter((t) => !t.pass);
  console.log(missed.length ? `\n!!! AGENT: ${missed.length} TARGET(S) MISSED: ${missed.map((t) => t.id).join(", ")} !!!` : "\nAgent: all targets met.");
  if (s.correctness.length) console.log(`!!! AGENT: ${s.correctness.length} CORRECTNESS/RUN PROBLEM(S) (see the Agent section) !!!`);
  console.log(`(agent section written to ${join(REPORT_DIR, "report.md")} and report.json)`);
  return s.correctness.length ? 1 : 0;
}

/** A part that writes one section: prints it; a failure to run is exit status 1, said on stderr. */
async function sectionPart(name: string, run: () => Promise<string>): Promise<number> {
  try {
    const section = await run();
    console.log("\n" + section + `\n(${name} section written to ${join(REPORT_DIR, "report.md")} and report.json)`);
    return 0;
  } catch (e) {
    console.error(`bench: the ${name} part could not run: ${(e as Error).message}`);
    return 1;
  }
}

/** The startup part (bench/startup.ts). */
async function startupPart(): Promise<number> {
  const { runStartupBench, writeStartupReport } = await import("./startup.ts");
  return sectionPart("startup", async () => writeStartupReport(REPORT_DIR, await runStartupBench(argv.quick ? 5 : 15)));
}

/** The clients part (bench/clients.ts): a Go client and HTTP/2 clients, kloak against no kloak. */
async function clientsPart(): Promise<number> {
  const { runClientsBench, writeClientsReport } = await import("./clients.ts");
  return sectionPart("clients", async () => writeClientsReport(REPORT_DIR, await runClientsBench({ reps: argv.quick ? 3 : 9, requests: argv.quick ? 50 : 200 })));
}

/** The cost-growth part (bench/growth.ts): each point is a runOne of the data-plane part with one thing grown. */
async function growthPart(): Promise<number> {
  const { GROWTH_DEFAULTS, GROWTH_TABLES, runGrowthBench, writeGrowthReport } = await import("./growth.ts");
  const num = (x: string | undefined, d: number) => (x === undefined ? d : Number(x));
  const tables = (argv["growth-tables"] ?? GROWTH_TABLES.join(",")).split(",").map((t) => t.trim());
  const bad = tables.filter((t) => !(GROWTH_TABLES as string[]).includes(t));
  const durationS = num(argv["growth-duration"], argv.quick ? 0.5 : GROWTH_DEFAULTS.durationS);
  const reps = Math.floor(num(argv["growth-reps"], GROWTH_DEFAULTS.reps));
  /** "4096", "4KiB", "1MiB" */
  const bytes = (x: string) => {
    const m = /^(\d+)(KiB|MiB)?$/.exec(x.trim());
    return m ? Number(m[1]) * (m[2] === "MiB" ? 1048576 : m[2] === "KiB" ? 1024 : 1) : NaN;
  };
  const list = (x: string | undefined, d: number[], parse: (s: string) => number) => (x === undefined ? d : x.split(",").map(parse));
  const scanCap = argv["growth-scan-cap"] === undefined ? undefined : bytes(argv["growth-scan-cap"]);
  // --quick: every other point, from the first to the last (connections: to 1,000; 10,000 handshakes take a minute)
  const q = argv.quick ? GROWTH_DEFAULTS.quick : GROWTH_DEFAULTS;
  const sizes = list(argv["growth-sizes"], q.sizes, bytes);
  const secrets = list(argv["growth-secrets"], q.secrets, Number);
  const connections = list(argv["growth-connections"], q.connections, Number);
  const ok = (xs: number[], min: number) => xs.length > 0 && xs.every((x) => Number.isInteger(x) && x >= min);
  // sizes >= 2 × 40: the 40-byte token sits in the middle of the record
  if (bad.length || !(durationS > 0) || !(reps >= 1) || !ok(sizes, 2 * SECRET_LEN) || !ok(secrets, 1) || !ok(connections, 1) || (scanCap !== undefined && !(scanCap > 0))) {
    console.error(
      `bench: bad --growth-* option (tables: ${GROWTH_TABLES.join(",")}; sizes and --growth-scan-cap: bytes, NKiB or NMiB; lists comma-separated)` +
        (bad.length ? `: ${bad.join(",")}` : ""),
    );
    return 2;
  }
  const ctx = await benchContext();
  console.error(
    `bench: cost growth (${tables.join(", ")}), ${durationS}s (+${WARMUP}s warmup) per run, ${reps} rep(s); connections up to ${Math.max(...connections).toLocaleString("en-US")}`,
  );
  let r: Awaited<ReturnType<typeof runGrowthBench>>;
  try {
    r = await runGrowthBench(
      {
        tables: tables as typeof GROWTH_TABLES,
        sizes,
        secrets,
        connections,
        durationS,
        reps,
        scanCap,
        secretName: SECRET_NAME,
        value: ctx.value,
        log: (l) => console.error(l),
      },
      async (spec) => {
        ctx.server.setRecordSize(spec.size);
        const base = VARIANTS.find((v) => v.id === spec.variant)!;
        const w: Workload = {
          id: spec.workload,
          label: `${spec.table} ${spec.point}`,
          size: spec.size,
          connections: spec.connections,
          tokenOffset: spec.tokenOffset,
        };
        const v: Variant = base.kloak ? { ...base, secretsFile: spec.secretsFile, kloakArgs: spec.kloakArgs } : base;
        return await runOne(ctx, w, v, spec.rep, { duration: spec.durationS });
      },
    );
  } finally {
    await ctx.server.close();
  }
  const section = writeGrowthReport(REPORT_DIR, r);
  console.log("\n" + section + `\n(growth section written to ${join(REPORT_DIR, "report.md")} and report.json)`);
  const failures = r.points.flatMap((p) => p.failures);
  if (failures.length) console.log(`!!! GROWTH: ${failures.length} CORRECTNESS/RUN PROBLEM(S) (see the Cost growth section) !!!`);
  return failures.length ? 1 : 0;
}

/** The parts in the order `bun run bench` runs them; --only picks one. */
const PARTS: [string, () => Promise<number>][] = [
  ["startup", startupPart],
  ["clients", clientsPart],
  ["dataplane", dataplanePart],
  ["growth", growthPart],
  ["agent", agentPart],
];

async function main(): Promise<number> {
  let exitCode = 0;
  for (const [name, part] of PARTS) if (ONLY === "" || ONLY === name) exitCode = Math.max(exitCode, await part());
  return exitCode;
}

process.exitCode = await main();
