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
 * the report uses medians (variants and run records: bench/dataplane-model.ts;
 * analysis and report: bench/dataplane-report.ts). Writes
 * bench/report/report.{md,json} and prints the markdown. Exit status 0 whether or not targets are met (this is a
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
import { mkdirSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { testCerts } from "../test/support/certs.ts";
import { enableBpfStats, programStats, type ProgStat } from "./bpfstats.ts";
import { childrenOf, cmdline, cpuSeconds, foreignKloaks, memStatus, systemCpu, threadCpu } from "./procfs.ts";
import { startBenchServer, type ServerStats } from "./server.ts";
import { AGENT_DEFAULTS, runAgentBench } from "./agent.ts";
import { summarizeAgent, writeAgentReport } from "./agent-report.ts";
import { resolvePython } from "./python.ts";
import { nginxBinary, startEgressProxy, type EgressProxy } from "./nginx.ts";
import { LIBSSL, mappedLibssl, OUTSIDE_UNPROBED, startScopedHolder, type ScopedHolder } from "./outside.ts";
import { attachEmptyProbes, FLOOR_PROBED, type EmptyProbes } from "./floor.ts";
import { textChanges } from "../lib/proc.ts";
import { fmtMiB, fmtUs, keepSectionJson, keepSections } from "./report.ts";
import { analyse, dataplaneJson, dataplaneMarkdown, type Analysis, type Measured } from "./dataplane-report.ts";
import { RULES, VARIANTS, variantsFor, WORKLOADS, type ClientResult, type KloakInfo, type RunResult, type Variant, type Workload } from "./dataplane-model.ts";

const HERE = import.meta.dir;
const ROOT = dirname(HERE);
const CLIENT = join(HERE, "client.py");
const KLOAK_MAIN = join(ROOT, "src", "main.ts");
const REPORT_DIR = join(HERE, "report");
const SECRET_NAME = "KLOAK_BENCH_TOKEN";
const SECRET_LEN = 40;
const MARKER = "kloak:";

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
  /** outside variant: libssl's text in the client and in the scoped process against the file (breakpoints) */
  clientText: ReturnType<typeof textChanges>;
  holderText: ReturnType<typeof textChanges>;
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
  const clientText = holder || v.floor ? textChanges(pid, LIBSSL) : null;
  const holderText = holder ? textChanges(holder.pid, LIBSSL) : null;
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
  return { wall, sys, bench, cpu, threads, proxyCpu, prog, proxyHwm, clientLibssl, clientText, holderText, holderAlive, hwm, threadCount, clientHwm, guardianHwm };
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
  o: {
    server: ServerStats;
    result: ClientResult;
    kloak: KloakInfo | undefined;
    end: WindowEnd | undefined;
    holderEnd: Awaited<ReturnType<Peers["stop"]>>;
    floor: EmptyProbes | undefined;
  },
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
  if (o.floor) {
    // Every entry site is an int3 in the client's libssl (returns are probed through the stack, not the text).
    const ct = o.end?.clientText ?? null;
    check(
      FLOOR_PROBED,
      ct !== null && ct.int3 === o.floor.entries && ct.differ === ct.int3,
      `${o.floor.entries} entry and ${o.floor.returns} return site(s) on ${o.floor.path}; client: ${ct ? `${ct.int3} int3 byte(s), ${ct.differ} of ${ct.length} differ from the file` : "no libssl text"}`,
    );
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
    const ct = o.end?.clientText ?? null;
    const ht = o.end?.holderText ?? null;
    check(
      OUTSIDE_UNPROBED,
      ct !== null && ct.differ === 0 && ht !== null && ht.int3 > 0 && ht.differ === ht.int3,
      `client: ${ct ? `${ct.differ} byte(s) of ${ct.length} differ from the file` : "no libssl text"}; scoped process: ${ht ? `${ht.int3} int3 byte(s)` : "no libssl text"}`,
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
  // taskset execs the client in place: its pid is the Python's. The probes are on the file,
  // filtered to that pid, before the Python maps libssl (kloak attaches the same way).
  let floor: EmptyProbes | undefined;
  if (v.floor) {
    try {
      floor = attachEmptyProbes(proc.pid);
    } catch (e) {
      proc.kill("SIGKILL");
      await proc.exited;
      await peers.stop();
      throw new Error(`${w.id}/${v.id} rep ${rep + 1}: ${(e as Error).message}`);
    }
  }
  // Handshakes come before the first line: allow for them (tens of seconds at 10,000 connections under kloak).
  const limit = (WARMUP + duration) * 1000 + 30_000 + (w.connections ?? 1) * 20;
  const { stderr, code, failure, result, start, end, rssPolledMax } = await observeClient(proc, v, peers, limit, opts.bpfStats);
  floor?.detach();
  const server = ctx.server.snapshot();
  const proxyLog = proxy?.errorLog() ?? "";
  const holderEnd = await peers.stop();
  const peerOutput = `${proxyLog ? `\nnginx error log (end):\n${proxyLog}` : ""}${holderEnd && holderEnd.code !== 0 ? `\nscoped process (kloak exec) exit ${holderEnd.code}:\n${holderEnd.stderr.trim()}` : ""}`;
  if (failure !== undefined || result === undefined)
    throw new Error(`${w.id}/${v.id} rep ${rep + 1}: ${failure ?? "no result"} (exit ${code})\n${stderr}${peerOutput}`);
  if (code !== 0) throw new Error(`${w.id}/${v.id} rep ${rep + 1}: exit status ${code}\n${stderr}${peerOutput}`);

  const kloak = v.kloak ? kloakInfoOf(proc.pid, stderr, start, end, rssPolledMax) : undefined;
  checkRun(checks, w, v, peers, { server, result, kloak, end, holderEnd, floor });
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

// ---------------------------------------------------------------- the parts

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
  const method = { duration: DURATION, warmup: WARMUP, reps: REPS, maxCount: MAX_COUNT, secretLen: SECRET_LEN, marker: MARKER, pin: PIN, serverCpu: SERVER_CPU, clientCpu: CLIENT_CPU, allCpus: ALL_CPUS };
  return writeDataplaneReport(analyse(m, foreignAtStart, nginx, t0, method));
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
