/**
 * The data-plane part's report: from the runs (bench/run.ts measures them)
 * to the medians, the same-run ratios, issue 14's targets and the markdown
 * and JSON of bench/report/report.{md,json}.
 */
import { readFileSync } from "node:fs";
import * as os from "node:os";
import { dirname } from "node:path";
import { headCommit } from "./agent.ts";
import { TARGETS, variantsFor, WORKLOADS, type RunResult, type VariantId, type Workload, type WorkloadId } from "./dataplane-model.ts";
import { OUTSIDE_UNPROBED } from "./outside.ts";
import { FLOOR_PROBED } from "./floor.ts";
import type { foreignKloaks } from "./procfs.ts";
import { fmtMiB, fmtSigned, fmtSignedUs, fmtUs, Markdown, pct } from "./report.ts";
import { maxOf, median, perOpUs, sum } from "./stats.ts";

const ROOT = dirname(import.meta.dir);

/** How the runs were made, as the report states it (bench/run.ts's options). */
export interface DataplaneMethod {
  duration: number;
  warmup: number;
  reps: number;
  maxCount: number;
  secretLen: number;
  /** the placeholder's marker, counted by the server */
  marker: string;
  pin: boolean;
  serverCpu: number;
  clientCpu: number;
  allCpus: string;
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

export function summarize(runs: RunResult[], w: WorkloadId, v: VariantId): Summary {
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

/** The data-plane part's runs: measured, diagnostic (BPF stats on), and what failed to run. */
export interface Measured {
  runs: RunResult[];
  diagRuns: RunResult[];
  errors: string[];
  diagNote?: string;
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
  const fl = S(w, "floor");
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
    /** empty programs on kloak's probe sites: what the uprobe mechanism alone costs */
    ratio_floor: rate(fl) / rate(b),
    per_rep_ratio_floor: pairs("floor"),
    added_mean_per_write_floor_from_throughput_ns: 1e9 / fl.ops_per_s - 1e9 / b.ops_per_s,
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
export function analyse(m: Measured, foreignAtStart: ReturnType<typeof foreignKloaks>, nginx: string, t0: number, method: DataplaneMethod) {
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
    method,
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
export type Analysis = ReturnType<typeof analyse>;

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
  const { machine, method } = a;
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
      `${method.pin ? `pinned like the agent (CPUs ${method.allCpus})` : "unpinned"} |`,
  );
  L(
    `| outside (variant "outside") | the baseline client, not in any scope, while \`kloak exec --secret NAME -- python3\` runs beside it with the same libssl attached ` +
      `(its process made one TLS request, substituted, before the client started, and stays connected) |`,
  );
  L(
    `| probe floor (variant "floor") | the baseline client, not under kloak, with a two-instruction BPF program (\`r0 = 0; exit\`) on every site where kloak probes its libssl ` +
      `(same sites, entry and return as kloak probes them, one pid-filtered multi-uprobe link each): the uprobe mechanism's own cost (bench/floor.ts) |`,
  );
  L(
    `| CPU placement | ${method.pin ? `server (bench process) pinned to CPU ${method.serverCpu}, client to CPU ${method.clientCpu}, kloak agent unpinned (CPUs ${method.allCpus})` : "unpinned"} |`,
  );
  L(
    `| method | ${method.duration} s measured (+${method.warmup} s warmup) per run, ${method.reps} rep(s) per variant interleaved (rotating order), medians; ` +
      `secret of ${method.secretLen} bytes; bound ${method.maxCount} writes/run |`,
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
  const { runs, derived, S, method } = a;
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
  const unprobed = runs.find((r) => r.workload === w.id && r.variant === "outside")?.checks.find((c) => c.name === OUTSIDE_UNPROBED);
  L(
    `- non-enabled process, same libssl (a kloak exec tree attached beside it): ${pct(d.ratio_outside)} of baseline ` +
      `(same-rep ${d.per_rep_ratio_outside.map(pct).join(", ")})` +
      (unprobed ? `; probes per process: ${unprobed.detail}${unprobed.ok ? "" : " (FAILED)"}` : ""),
  );
  const floorCheck = runs.find((r) => r.workload === w.id && r.variant === "floor")?.checks.find((c) => c.name === FLOOR_PROBED);
  const target = w.id === "request" ? TARGETS.noPh1k : TARGETS.noPh16k;
  const baseNs = 1e9 / S(w.id, "baseline").ops_per_s;
  // the most a write may cost above the baseline and still meet the target
  const budgetNs = baseNs / target - baseNs;
  L(
    `- probe floor (empty programs on kloak's probe sites, no kloak): ${pct(d.ratio_floor)} of baseline ` +
      `(same-rep ${d.per_rep_ratio_floor.map(pct).join(", ")}): the uprobe mechanism alone ${fmtSignedUs(d.added_mean_per_write_floor_from_throughput_ns)} per write (mean, from throughput); ` +
      `kloak without placeholders ${fmtSignedUs(d.added_mean_per_write_no_placeholder_from_throughput_ns - d.added_mean_per_write_floor_from_throughput_ns)} above it. ` +
      `The ${pct(target)} target allows ${fmtSignedUs(budgetNs)} per write in all, ${fmtSignedUs(budgetNs - d.added_mean_per_write_floor_from_throughput_ns)} above the floor` +
      (floorCheck ? `; ${floorCheck.detail}${floorCheck.ok ? "" : " (FAILED)"}` : ""),
  );
  const last = runs.filter((r) => r.workload === w.id && r.variant === "kloak+ph").at(-1);
  if (last?.kloak) {
    const th = last.kloak.threadCpuWindow.slice(0, 4);
    L(
      `- agent threads busy during a kloak+ph run (rep ${last.rep + 1}, CPU s in the ${method.duration} s window): ` +
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

function notesSection(L: Markdown["line"], method: DataplaneMethod): void {
  L("## Notes");
  L();
  L(
    "- The client, the server (bench process) and the kloak agent share the machine's CPUs; ratios are end to end on this machine. " +
      "Unpinned, the request loop is bimodal (client and server on one CPU or two: 2-3x apart), hence the pinning above (`--no-pin` to disable).",
  );
  L("- \"agent CPU\" is user+sys of the `kloak exec` process (all threads) during the client's measured window; uprobe/BPF time and the stop/continue signal handling are kernel time charged to the *client* (its sys µs per write).");
  L("- Latency for the request loop is sendall → full response read; for bulk it is the time of one 16 KiB sendall (mostly copy into the socket buffer).");
  L(`- The real secret value is never printed; the server only counts its occurrences (and those of the "${method.marker}" placeholder marker). The proxy variant's value is in its nginx config only, in a 0700 temp dir removed after the run.`);
  L(
    "- The proxy variant's client sends filler where the placeholder would be (as the \"kloak\" variant does); nginx replaces the whole Authorization header, so the server must see the real value once per request and the one upstream connection must carry them all (keep-alive). " +
      "Its latency is the client's full round trip through nginx; \"agent CPU\" is nginx's CPU for that variant.",
  );
  L();
}

export function dataplaneMarkdown(a: Analysis): string {
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
  notesSection(L, a.method);
  return md.toString();
}

export function dataplaneJson(a: Analysis) {
  const { method, elapsedS, machine, targets, failedChecks, errors, summaries, derived, peakAgent, peakPolled, peakGuardian, foreignAtStart, diagNote, diagRuns, runs } = a;
  return {
    generated: new Date().toISOString(),
    elapsed_s: elapsedS,
    options: { pinned: method.pin, server_cpu: method.pin ? method.serverCpu : null, client_cpu: method.pin ? method.clientCpu : null, duration_s: method.duration, reps: method.reps, warmup_s: method.warmup, max_count: method.maxCount, secret_len: method.secretLen },
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
