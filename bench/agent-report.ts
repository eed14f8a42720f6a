/**
 * The agent benchmark's report (bench/agent.ts measures): the "Agent" section
 * of bench/report/report.md and the `agent` entry of report.json, written
 * through bench/report.ts like every part's.
 */
import { AGENT_TARGETS, SERVICE_DNS, type AgentBenchResult, type MemSample } from "./agent.ts";
import { KINDS, type ReviewKind } from "./agent-reviews.ts";
import type { LoadResult } from "./agent-loadgen.ts";
import { fmtMB, fmtMs, fmtRatio, fmtS, Markdown, writeReportSection } from "./report.ts";
import { maxOf, median, perOpUs, sum } from "./stats.ts";


export interface AgentSummary {
  kloak: { p50_ms: number; p90_ms: number; p99_ms: number; p999_ms: number; max_ms: number; achieved_rps: number; errors: number; bad_answers: number; checked: number };
  baseline: AgentSummary["kloak"];
  targets: { id: string; what: string; value: number; shown: string; baseline: string; ratio: string; pass: boolean }[];
  correctness: string[];
}

type Side = AgentSummary["kloak"];

/** One server's webhook runs: median latencies, the worst max, and every error and bad answer summed. */
function webhookSide(r: AgentBenchResult, mode: "kloak" | "baseline"): Side {
  const runs = r.webhook.filter((w) => w.mode === mode).map((w) => w.result);
  const m = (f: (x: LoadResult) => number) => median(runs.map(f));
  return {
    p50_ms: m((x) => x.latency.p50_ms),
    p90_ms: m((x) => x.latency.p90_ms),
    p99_ms: m((x) => x.latency.p99_ms),
    p999_ms: m((x) => x.latency.p999_ms),
    max_ms: maxOf(runs.map((x) => x.latency.max_ms)),
    achieved_rps: m((x) => x.achieved_rps),
    errors: sum(runs.map((x) => sum(Object.values(x.errors)))),
    bad_answers: sum(runs.map((x) => x.verified.failed)),
    checked: sum(runs.map((x) => x.verified.checked)),
  };
}

/** Every problem that makes the numbers untrustworthy: failed runs, errors, TLS not verified, miscounts, keys or processes missing. */
function agentProblems(r: AgentBenchResult): string[] {
  const correctness: string[] = [...r.errors.map((e) => `run failed: ${e.split("\n")[0]}`)];
  for (const w of r.webhook) {
    const tag = `${w.mode} rep ${w.rep + 1}`;
    const errs = Object.entries(w.result.errors);
    if (errs.length) correctness.push(`${tag}: ${errs.map(([e, n]) => `${n} × ${e}`).join(", ")}${w.result.error_samples.length ? ` (e.g. ${w.result.error_samples[0]})` : ""}`);
    if (!w.result.tls_checks.wrong_name_rejected || !w.result.tls_checks.no_ca_rejected)
      correctness.push(`${tag}: TLS not verified as expected (wrong name rejected: ${w.result.tls_checks.wrong_name_rejected}, no CA rejected: ${w.result.tls_checks.no_ca_rejected})`);
    if (w.agent_counts && w.expected_counts)
      for (const kind of KINDS)
        if (w.agent_counts[kind] !== w.expected_counts[kind])
          correctness.push(`${tag}: the agent counted ${w.agent_counts[kind]} ${kind} answers, ${w.expected_counts[kind]} were sent`);
  }
  const loaded = r.loaded;
  const wantProcs = r.options.pods * r.options.procsPerPod;
  if (loaded && loaded.keys !== r.inventory.keys) correctness.push(`keys loaded ${loaded.keys}, expected ${r.inventory.keys}`);
  if (loaded && !(loaded.attached >= wantProcs)) correctness.push(`processes attached ${loaded.attached}, expected ${wantProcs}`);
  return correctness;
}

/** The agent's targets (webhook p99, RSS loaded, peak RSS, the compiled executable's RSS), each against its baseline. */
function agentTargets(r: AgentBenchResult, k: Side, b: Side): AgentSummary["targets"] {
  const loaded = r.loaded;
  const wantProcs = r.options.pods * r.options.procsPerPod;
  const webhookOk = r.webhook.some((w) => w.mode === "kloak") && k.errors === 0 && k.bad_answers === 0;
  const memOk = !!loaded?.mem && loaded.keys === r.inventory.keys && loaded.attached >= wantProcs;
  const idle = r.idle.mem;
  const peakLoaded = Math.max(loaded?.mem?.hwm ?? NaN, loaded?.mem_after_webhook?.hwm ?? NaN);
  return [
    {
      id: "webhook_p99",
      what: `webhook p99 ≤ ${AGENT_TARGETS.webhookP99Ms} ms at ${r.options.rate} requests/s over HTTPS (open loop, from the scheduled send time)`,
      value: k.p99_ms,
      shown: fmtMs(k.p99_ms),
      baseline: `${fmtMs(b.p99_ms)} (minimal Bun HTTPS server, fixed answer)`,
      ratio: fmtRatio(k.p99_ms, b.p99_ms),
      pass: webhookOk && k.p99_ms <= AGENT_TARGETS.webhookP99Ms,
    },
    {
      id: "agent_rss_loaded",
      what: `agent RSS ≤ 120 MB (120e6 bytes) with ${r.inventory.secrets.toLocaleString("en")} Secrets (${r.inventory.keys.toLocaleString("en")} keys) and ${wantProcs} attached processes (VmRSS, median of ${r.options.sampleS} s of samples after ${r.options.settleS} s settle)`,
      value: loaded?.mem?.rss_median ?? NaN,
      shown: fmtMB(loaded?.mem?.rss_median ?? NaN),
      baseline: `${fmtMB(idle?.rss_median ?? NaN)} (same agent, 0 Secrets, 0 pods)`,
      ratio: fmtRatio(loaded?.mem?.rss_median ?? NaN, idle?.rss_median ?? NaN),
      pass: memOk && (loaded?.mem?.rss_median ?? Infinity) <= AGENT_TARGETS.rssBytes,
    },
    {
      id: "agent_peak_rss_loaded",
      what: "… read strictly: peak RSS (VmHWM) of the loaded agent over its whole life (start, shadow writes, attach, webhook load) ≤ 120 MB",
      value: peakLoaded,
      shown: fmtMB(peakLoaded),
      baseline: `${fmtMB(idle?.hwm ?? NaN)} (idle agent's VmHWM)`,
      ratio: fmtRatio(peakLoaded, idle?.hwm ?? NaN),
      pass: memOk && peakLoaded <= AGENT_TARGETS.rssBytes,
    },
    ...(r.compiled?.loaded
      ? [
          {
            id: "agent_rss_loaded_compiled",
            what: `the same RSS target for the compiled executable the image ships (dist/kloak, commit ${r.compiled.commit}${r.compiled.stale ? ", OLDER than the source" : ""}), loaded by a restart with everything in place`,
            value: r.compiled.loaded.mem.rss_median,
            shown: fmtMB(r.compiled.loaded.mem.rss_median),
            baseline: `${fmtMB(r.compiled.idle.mem.rss_median)} (dist/kloak idle)`,
            ratio: fmtRatio(r.compiled.loaded.mem.rss_median, r.compiled.idle.mem.rss_median),
            pass: r.compiled.loaded.restart.attached >= wantProcs && r.compiled.loaded.mem.rss_median <= AGENT_TARGETS.rssBytes,
          },
        ]
      : []),
  ].map((t) => ({ ...t, pass: Number.isFinite(t.value) && t.pass }));
}

export function summarizeAgent(r: AgentBenchResult): AgentSummary {
  const k = webhookSide(r, "kloak");
  const b = webhookSide(r, "baseline");
  return { kloak: k, baseline: b, targets: agentTargets(r, k, b), correctness: agentProblems(r) };
}

/** Alerts, the machine, and the targets with their verdicts. */
function agentHeader(md: Markdown, r: AgentBenchResult): void {
  const L = md.line;
  const s = summarizeAgent(r);
  const o = r.options;
  const mc = r.machine;
  L("## Agent");
  L();
  L(`Generated ${r.generated} in ${r.elapsed_s.toFixed(0)} s by \`${o.command}\`.`);
  L();
  const missed = s.targets.filter((t) => !t.pass);
  if (missed.length || s.correctness.length || r.foreign_at_start.length) {
    md.fenced([
      ...(r.foreign_at_start.length ? [`!!! MACHINE NOT IDLE: other kloak/test processes were running: ${r.foreign_at_start.join("; ")}`] : []),
      ...missed.map((t) => `!!! MISSED: ${t.what}: got ${t.shown}`),
      ...s.correctness.map((c) => `!!! CORRECTNESS FAILED: ${c}`),
    ]);
    L();
  }
  L(
    `Machine: ${mc.kernel}, ${mc.cpus} × ${mc.cpu_model}, ${mc.memory}, lockdown ${mc.lockdown}; bun ${mc.bun}; kloak commit ${mc.kloak_commit}, agent ${mc.kloak_agent}, ` +
      `rewrite mode **${mc.rewrite_mode}**; attached processes: CPython ${mc.python}; API server: the in-process test double (test/support/kube-api-server.ts) in the bench process; ` +
      `agent, load generator and baseline server unpinned on all ${mc.cpus} CPUs.`,
  );
  L();
  md.tableHead(["target", "measured", "result", "baseline", "ratio"]);
  for (const t of s.targets) L(`| ${t.what} | ${t.shown} | ${t.pass ? "PASS" : "**MISSED**"} | ${t.baseline} | ${t.ratio} |`);
  const correct = s.correctness.length === 0;
  L(
    `| correctness: every answer HTTP 200, sampled answers checked (uid, allowed, patched pods reference only the shadows), the agent's own counters match what was sent, TLS verified; all keys loaded, all processes attached | ` +
      `${correct ? `${s.kloak.checked} kloak answers checked, all held` : `${s.correctness.length} problem(s) (see top)`} | ${correct ? "PASS" : "**FAIL**"} | | |`,
  );
  L();
}

/** Each load run, kloak and baseline, and what the agent counted. */
function webhookSection(md: Markdown, r: AgentBenchResult): void {
  const L = md.line;
  const o = r.options;
  L(`### Webhook latency: ${o.rate} requests/s, open loop`);
  L();
  L(
    `${o.warmupS} s warm-up + ${o.durationS} s measured per run, ${o.reps} round(s); ${o.connections} keep-alive HTTP/1.1 connections over TLS from a separate process (bench/agent-loadgen.ts), verified against the agent's CA for ${SERVICE_DNS} while connecting to 127.0.0.1. ` +
      "Latency runs from the time each request was due, so a stall delays every request behind it (no coordinated omission); \"service\" is from the write. " +
      "Mix: 5 in 10 pod CREATEs that reference three enabled Secrets (env secretKeyRef, envFrom, secret volume: patched), 3 in 10 pods without Secret references (allowed), 2 in 10 Secret CREATE validations (allowed).",
  );
  L();
  md.tableHead(["server", "rep", "offered req/s", "achieved req/s", "p50", "p90", "p99", "p99.9", "max", "service p99", "errors", "answers checked", "server CPU per request"]);
  for (const w of r.webhook) {
    const x = w.result;
    const errs = sum(Object.values(x.errors));
    L(
      `| ${w.mode === "kloak" ? "kloak agent" : "baseline"} | ${w.rep + 1} | ${x.rate} | ${x.achieved_rps.toFixed(1)} | ${fmtMs(x.latency.p50_ms)} | ${fmtMs(x.latency.p90_ms)} | ${fmtMs(x.latency.p99_ms)} | ` +
        `${fmtMs(x.latency.p999_ms)} | ${fmtMs(x.latency.max_ms)} | ${fmtMs(x.service.p99_ms)} | ${errs} | ${x.verified.checked} (${x.verified.failed} bad) | ` +
        `${Number.isFinite(w.server_cpu_s) ? `${perOpUs(w.server_cpu_s, x.rate * w.window_s).toFixed(0)} µs` : "n/a"} |`,
    );
  }
  L();
  const kl = r.webhook.filter((w) => w.mode === "kloak");
  for (const w of kl) {
    const x = w.result;
    L(
      `- kloak rep ${w.rep + 1} by kind: ` +
        KINDS.map((k: ReviewKind) => `${k} ${x.by_kind[k].n} (p50 ${fmtMs(x.by_kind[k].p50_ms)}, p99 ${fmtMs(x.by_kind[k].p99_ms)}, max ${fmtMs(x.by_kind[k].max_ms)})`).join("; ") +
        `; mean time inside the webhook handler (the agent's kloak_webhook_request_duration_seconds) ${fmtMs(w.agent_handler_mean_ms ?? NaN)}; ` +
        `the agent counted ${w.agent_counts ? `${w.agent_counts.patched} patched, ${w.agent_counts.allowed} allowed, ${w.agent_counts.validate} validated${w.agent_counts.other ? `, ${w.agent_counts.other} other` : ""}` : "?"} ` +
        `(sent, warm-up included: ${w.expected_counts ? `${w.expected_counts.patched} / ${w.expected_counts.allowed} / ${w.expected_counts.validate}` : "?"})`,
    );
  }
  const any = r.webhook[0]?.result;
  if (any)
    L(
      `- generator: request bodies ${(any.request_bytes_mean / 1024).toFixed(1)} KiB on average; timer lateness p99 ${fmtMs(median(r.webhook.map((w) => w.result.dispatch_lag_p99_ms)))}, max ${fmtMs(Math.max(...r.webhook.map((w) => w.result.dispatch_lag_max_ms)))} ` +
        `(in both columns alike); requests that waited for a free connection: ${r.webhook.map((w) => `${w.mode} ${w.result.queued}`).join(", ")}; reconnects ${sum(r.webhook.map((w) => w.result.reconnects))}; ` +
        `TLS: a connection for another name and one without the CA were both refused in every run: ${r.webhook.every((w) => w.result.tls_checks.wrong_name_rejected && w.result.tls_checks.no_ca_rejected) ? "yes" : "**no**"}`,
    );
  L();
}

/** The agent's memory idle, loaded and after the load (and the compiled executable's). */
function memorySection(md: Markdown, r: AgentBenchResult): void {
  const L = md.line;
  const o = r.options;
  L("### Memory");
  L();
  md.tableHead(["agent", "VmRSS (median of samples)", "VmRSS max", "VmHWM", "threads", "fds (BPF links, perf events)", "guardian process VmRSS"]);
  const memRow = (label: string, m: MemSample | undefined) => {
    if (!m) return;
    L(`| ${label} | ${fmtMB(m.rss_median)} | ${fmtMB(m.rss_max)} | ${fmtMB(m.hwm)} | ${m.threads} | ${m.fds} (${m.bpf_links}, ${m.perf_events}) | ${fmtMB(m.guardian_rss)} |`);
  };
  const wantProcs = o.pods * o.procsPerPod;
  memRow(`idle: 0 Secrets, 0 pods (${o.settleS} s after ready)`, r.idle.mem);
  memRow(`loaded: ${r.inventory.secrets} Secrets (${r.inventory.keys} keys), ${wantProcs} processes in ${o.pods} pods (${o.settleS} s after the last attach)`, r.loaded?.mem);
  memRow("loaded, right after the webhook load", r.loaded?.mem_after_webhook);
  if (r.compiled) {
    memRow(`compiled dist/kloak, idle (${o.settleS} s after ready)`, r.compiled.idle.mem);
    memRow(`compiled dist/kloak, loaded (restarted with everything in place, ${o.settleS} s after all attached)`, r.compiled.loaded?.mem);
  }
  L();
  L(
    "MB = 10^6 bytes. VmHWM is the peak resident set since the process started. The guardian (`kloak __guardian`, a second bun process that resumes stopped writers if the agent dies) is not included in the agent's figures." +
      (r.compiled
        ? ` dist/kloak: built ${r.compiled.built}, kloak_build_info commit ${r.compiled.commit}${r.compiled.stale ? "; **src/, lib/ or bpf/ changed after it was built**, so its figures may not match the source" : ""}.`
        : " (dist/kloak was not measured: not built, or KLOAK_BIN set.)"),
  );
  if (r.floor.length) {
    L();
    L(`For scale, plain bun processes on this machine: ${r.floor.map((f) => `${f.label} ${fmtMB(f.rss)}`).join("; ")}.`);
  }
  L();
}

/** How long loading the Secrets, attaching the pods' processes and a restart took. */
function loadTimesSection(md: Markdown, r: AgentBenchResult): void {
  const L = md.line;
  const o = r.options;
  const wantProcs = o.pods * o.procsPerPod;
  L("### Load and attach times");
  L();
  const ld = r.loaded;
  if (ld) {
    L(
      `- ${r.inventory.secrets.toLocaleString("en")} enabled Secrets, ${r.inventory.keys.toLocaleString("en")} keys, values of ${r.inventory.value_bytes} bytes, over ${r.inventory.namespaces} namespaces ` +
        `(${r.inventory.with_host_annotation} with an IP getkloak.io/hosts annotation, ${r.inventory.with_host_label} with a single-IP label, the rest unrestricted), no shadows yet (a fresh install): ` +
        `agent spawn → ready ${fmtS(ld.ready_s)}; → all ${ld.keys} keys loaded ${fmtS(ld.keys_loaded_s)} (${fmtS(ld.keys_loaded_after_ready_s)} after ready), ` +
        `the agent as Lease holder wrote ${ld.shadows} shadows; ${ld.api_requests_until_loaded} API requests until then`,
    );
    const sorted = [...ld.attach_ms].sort((a, b) => a - b);
    L(
      `- pod status Running → all ${o.procsPerPod} of its processes attached (kloak_attached_processes, polled every 10 ms; the pod watch included): ` +
        `median ${fmtMs(median(ld.attach_ms))}, max ${fmtMs(maxOf(ld.attach_ms))} over ${ld.attach_ms.length} pods (${sorted.map((x) => x.toFixed(0)).join(", ")} ms); ` +
        `${ld.attached} processes attached, ${ld.cgroups} container cgroups registered`,
    );
  }
  if (r.restart)
    L(
      `- restart with everything in place (shadows exist, ${wantProcs} processes running): old agent SIGTERM → exit ${fmtS(r.restart.stop_s)} ` +
        `(${fmtMs((r.restart.stop_s * 1000) / wantProcs)} per attached process: at shutdown the agent closes every process's uprobe links, up to 8 at once (lib/fd-closer.ts), each waiting for the kernel's unregister); new agent spawn → ready ${fmtS(r.restart.ready_s)}, ` +
        `→ all keys loaded ${fmtS(r.restart.keys_loaded_s)}, → ${r.restart.attached} processes re-attached ${fmtS(r.restart.attached_s)}`,
    );
  if (r.compiled?.loaded) {
    const c = r.compiled.loaded.restart;
    L(`- the same restart with dist/kloak: spawn → ready ${fmtS(c.ready_s)}, → all keys loaded ${fmtS(c.keys_loaded_s)}, → ${c.attached} processes re-attached ${fmtS(c.attached_s)}`);
  }
  L(`- idle agent spawn → ready: ${fmtS(r.idle.ready_s)}${r.compiled ? ` (dist/kloak ${fmtS(r.compiled.idle.ready_s)})` : ""}`);
  const warn = Object.entries(r.agent_log.warn);
  const error = Object.entries(r.agent_log.error);
  L(
    `- the agents' logs over the whole run: ${error.length ? error.map(([m, n]) => `${n} × error "${m}"`).join(", ") : "no error lines"}; ` +
      `${warn.length ? warn.map(([m, n]) => `${n} × warn "${m}"`).join(", ") : "no warn lines"}`,
  );
  L();
}

function notesSection(md: Markdown): void {
  const L = md.line;
  L("### Notes");
  L();
  L(
    "- The API server is a test double in the bench process, on the same machine; a real cluster adds network round trips to the shadow writes and the watches, so the load times here are a lower bound. " +
      "The agent runs as in the DaemonSet (default --log-level info: one log line per patched pod) with --bind-address 127.0.0.1.",
  );
  L(
    "- The baseline server is what any admission webhook on Bun.serve costs here (TLS, HTTP parsing, reading the body); the difference to kloak is the review parsing, the decision from the Secret cache, the JSON patch, the log line and the metrics.",
  );
  L("- Secret values are random (32-64 bytes) and never printed; the report holds counts, sizes and timings only.");
}

export function agentMarkdown(r: AgentBenchResult): string {
  const md = new Markdown();
  agentHeader(md, r);
  webhookSection(md, r);
  memorySection(md, r);
  loadTimesSection(md, r);
  notesSection(md);
  return md.toString();
}

/** Replaces (or adds) the Agent section of report.md and the `agent` entry of report.json in `dir`. */
export function writeAgentReport(dir: string, r: AgentBenchResult): string {
  const s = summarizeAgent(r);
  return writeReportSection(dir, "agent", agentMarkdown(r), {
    ...r,
    targets: s.targets.map(({ id, what, value, pass }) => ({ id, what, value, pass })),
    correctness: { pass: s.correctness.length === 0, problems: s.correctness },
    summary: { kloak: s.kloak, baseline: s.baseline },
  });
}
