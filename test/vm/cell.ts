/**
 * One cell of the kernel matrix, run inside a test VM (test/vm/matrix.ts
 * boots it) or natively for this host's own kernel. Writes result.json into
 * $KLOAK_JOB (or --out) and exits 0 only when every check passed.
 *
 *   bun test/vm/cell.ts --expect kernel|stop|refused [--perf] [--threads] [--security FILES] [--edges FILES]
 *
 * Work under software emulation is 15-40x slower than on the host, so a cell
 * runs few processes: one trial load per mode and scan cap, one `kloak
 * doctor`, one `kloak exec` for the whole client suite, and, with --perf, three
 * short measured runs.
 *
 * Every check compares counts, never values: no secret value is ever printed.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { uprobeMultiSupported } from "../../lib/uprobe.ts";
import { loadInMode, objectBytes, type ProgramBudget } from "../../src/dataplane/bpf-object.ts";
import type { RewriteMode } from "../../src/dataplane/kernel-support.ts";
import { NodeFacts, parseKernelVersion, syscallRunsSkippable } from "../../src/dataplane/kernel-support.ts";
import { DEFAULT_SCAN_CAP, MAX_SCAN_CAP } from "../../src/dataplane/scan-cap.ts";
import { startBenchServer } from "../../bench/server.ts";
import { startEgressProxy } from "../../bench/nginx.ts";
import { testCerts } from "../support/certs.ts";
import { buildHttpRequest, curlArgs, parseClientOutput, pythonClientArgs, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, ROOT, runKloak } from "../support/kloak.ts";
import { startTlsServer } from "../support/tls-server.ts";

export interface CellCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface CellResult {
  release: string;
  lockdown: string;
  expect: RewriteMode | "refused";
  checks: CellCheck[];
  /** mode -> scan cap -> programs */
  budget: Partial<Record<RewriteMode, Record<string, ProgramBudget[]>>>;
  /** mean time per request, relative to the run without kloak (same cell, same VM); proxy: the egress proxy (bench/nginx.ts) instead of kloak */
  perf?: { baseline: number; stop: number; kernel: number; proxy: number; writes: number };
  seconds: Record<string, number>;
}

const { values: args } = parseArgs({
  options: {
    expect: { type: "string" },
    perf: { type: "boolean", default: false },
    threads: { type: "boolean", default: false },
    security: { type: "string" },
    edges: { type: "string" },
    out: { type: "string" },
  },
});
const expect = args.expect as CellResult["expect"];
if (!["kernel", "stop", "refused"].includes(expect ?? "")) {
  console.error("usage: bun test/vm/cell.ts --expect kernel|stop|refused [--perf] [--threads] [--out DIR]");
  process.exit(2);
}
const KLOAK = process.env.KLOAK_BIN ?? join(ROOT, "dist/kloak");
if (!existsSync(KLOAK)) {
  console.error(`cell: ${KLOAK} does not exist (bun run build)`);
  process.exit(2);
}
process.env.KLOAK_BIN = KLOAK;

const facts = new NodeFacts();
const result: CellResult = {
  release: facts.release(),
  lockdown: facts.lockdown().level ?? "unknown",
  expect,
  checks: [],
  budget: {},
  seconds: {},
};

function check(name: string, ok: boolean, detail: string): boolean {
  result.checks.push({ name, ok, detail });
  console.log(`cell: ${ok ? "ok  " : "FAIL"} ${name}: ${detail}`);
  return ok;
}

async function timed<T>(name: string, fn: () => Promise<T> | T): Promise<T | undefined> {
  const t0 = performance.now();
  try {
    return await fn();
  } catch (e) {
    check(name, false, `threw: ${(e as Error).message.split("\n").slice(0, 12).join(" | ")}`);
    return undefined;
  } finally {
    result.seconds[name] = Math.round((performance.now() - t0) / 100) / 10;
  }
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const bpfPins = () => (existsSync("/sys/fs/bpf/kloak") ? readdirSync("/sys/fs/bpf/kloak") : []);

/** The object loads in each mode this kernel allows, at the default and the largest scan cap. */
function budgets(): void {
  const uprobes = uprobeMultiSupported() ? "multi" : "single";
  const modes: RewriteMode[] = expect === "kernel" ? ["kernel", "stop"] : ["stop"];
  for (const mode of modes) {
    for (const scanCap of [DEFAULT_SCAN_CAP, MAX_SCAN_CAP]) {
      // with the syscall backup where this kernel would load it (bpf-object.ts loadObject)
      const backupSyscalls = syscallRunsSkippable(new NodeFacts().kernel());
      const { obj, budget } = loadInMode(bytes, mode, { scanCap, backupSyscalls }, uprobes);
      obj.close();
      (result.budget[mode] ??= {})[String(scanCap)] = budget;
      const top = budget[0]!;
      check(
        `load ${mode} scan cap ${scanCap}`,
        top.insns > 0 && top.insns * 2 <= top.limit,
        `${budget.length} programs; largest ${top.program} ${top.insns} of ${top.limit} instructions (${uprobes} uprobes)`,
      );
    }
  }
}

/** `kloak doctor` reports what exec will do (the same probe and trial load). */
async function doctor(): Promise<string | null> {
  const r = await runKloak(["doctor", "--json"], { timeoutMs: 300_000 });
  const d = JSON.parse(r.stdout) as { ok: boolean; rewriteMode: string | null; checks: { id: string; status: string; detail: string }[] };
  const byId = (id: string) => d.checks.find((c) => c.id === id);
  check("doctor verdict", r.code === 0 && d.ok && d.rewriteMode === expect, `exit ${r.code}, ok ${d.ok}, mode ${d.rewriteMode}`);
  check("doctor kernel check", byId("kernel")?.status !== "fail", `${byId("kernel")?.status}: ${byId("kernel")?.detail}`);
  const [major, minor] = parseKernelVersion(result.release);
  const multi = byId("uprobe-multi")?.status === "ok";
  check(
    "uprobe kind",
    multi === (major > 6 || (major === 6 && minor >= 6)),
    `${multi ? "multi-uprobe links" : "single uprobes (perf events), the fallback before 6.6"}`,
  );
  return d.rewriteMode;
}

/**
 * One `kloak exec` runs the client suite: curl and Python's ssl, header and
 * body, to the allowed address; curl to a second address that the secret may
 * not reach. Every client is exec'd by the shell, so its first write can only
 * be substituted if the exec was held until kloak attached.
 */
async function execSuite(doctorMode: string | null): Promise<void> {
  const certs = await testCerts();
  const allowed = await startTlsServer({ host: "127.0.0.1" });
  const other = await startTlsServer({ host: "127.0.0.2" });
  const pinsBefore = bpfPins().length;
  try {
    const secret = fakeSecret(32);
    const dir = mkdtempSync(join(tmpdir(), "kloak-cell-"));
    const req = join(dir, "py.req");
    writeFileSync(req, buildHttpRequest({ host: "x", headers: { "X-Api-Key": "{{API_KEY}}" }, body: "k={{API_KEY}}" }));
    const curl = (url: string) =>
      curlArgs(url, { caFile: certs.caFile, headers: { "X-Api-Key": "$API_KEY" }, body: "key=$API_KEY" })
        .map(q)
        .join(" ")
        .replaceAll("$API_KEY", `'"$API_KEY"'`);
    const py = pythonClientArgs({ port: allowed.port, caFile: certs.caFile, requestFile: req, placeholderEnv: "API_KEY", repeat: 2 })
      .map(q)
      .join(" ");
    const script = [`${curl(`${allowed.url}/a`)} >/dev/null`, py, `${curl(`${other.url}/b`)} >/dev/null`, 'echo "APP=$API_KEY"'].join(" && ");
    // bash with job control, as an interactive shell has it: it would report any stop of its children.
    const r = await runKloak(["exec", "--verbose", "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--", "bash", "-c", `set -m; ${script}`], {
      timeoutMs: 600_000,
    });
    const got = allowed.received();
    const out = parseClientOutput(r.stdout);
    const mode = /rewrite mode (\w+)/.exec(r.stderr)?.[1];
    check("exec exit code", r.code === 0, `exit ${r.code}${r.code ? `: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}` : ""}`);
    check("exec mode = doctor mode", mode === expect && mode === doctorMode, `exec ${mode}, doctor ${doctorMode}`);
    check(
      "curl header and body substituted",
      occurrences(got, `X-Api-Key: ${secret}\r\n`) === 3 && occurrences(got, `key=${secret}`) === 1,
      `header ${occurrences(got, `X-Api-Key: ${secret}\r\n`)}/3 (curl once, python twice), body ${occurrences(got, `key=${secret}`)}/1`,
    );
    check(
      "python header and body substituted, bytes restored",
      occurrences(got, `k=${secret}`) === 2 && out.APP_UNCHANGED?.[0] === "yes" && out.APP_SENDS?.[0] === "2",
      `body ${occurrences(got, `k=${secret}`)}/2, sends ${out.APP_SENDS}, bytes object unchanged: ${out.APP_UNCHANGED}`,
    );
    check("no placeholder reached the allowed server", placeholderCount(got) === 0, `${placeholderCount(got)} placeholder(s)`);
    const refused = other.received();
    check(
      "not-allowed destination refused",
      occurrences(refused, secret) === 0 && placeholderCount(refused) === 2 && r.stderr.includes("destination_not_allowed"),
      `value ${occurrences(refused, secret)}, placeholders ${placeholderCount(refused)}, reported: ${r.stderr.includes("destination_not_allowed")}`,
    );
    check("the app saw only the placeholder", occurrences(r.stdout, secret) === 0 && /^APP=kloak:/m.test(r.stdout), "stdout checked");
    const stops = (r.stdout + r.stderr).split("\n").filter((l) => /stopped/i.test(l));
    check("holds invisible to the parent (bash with job control)", stops.length === 0, stops.length ? stops.slice(0, 3).join(" | ") : "no stop reported");
    check("nothing left pinned", bpfPins().length === pinsBefore, `${bpfPins().length} pin(s) under /sys/fs/bpf/kloak`);
  } finally {
    await allowed.close();
    await other.close();
  }
}

/**
 * Writers on four threads at once (PREEMPT_RT preempts uprobe programs, so
 * the per-CPU work slots are contended): every request arrives with the
 * value or, counted and reported, with the placeholder; never corrupted.
 */
async function threadSuite(): Promise<void> {
  const certs = await testCerts();
  const server = await startTlsServer({ host: "127.0.0.1" });
  try {
    const secret = fakeSecret(24);
    const dir = mkdtempSync(join(tmpdir(), "kloak-cell-"));
    const req = join(dir, "t.req");
    writeFileSync(req, buildHttpRequest({ host: "x", headers: { "X-Api-Key": "{{API_KEY}}" } }));
    const metrics = join(dir, "m.prom");
    const py = pythonClientArgs({
      port: server.port,
      caFile: certs.caFile,
      requestFile: req,
      placeholderEnv: "API_KEY",
      threads: 4,
      repeat: 10,
    });
    const r = await runKloak(["exec", "--secret", `API_KEY=${secret}`, "--metrics-file", metrics, "--", ...py], { timeoutMs: 600_000 });
    const got = server.received();
    const values = occurrences(got, `X-Api-Key: ${secret}\r\n`);
    const kept = (got.toString("latin1").match(/X-Api-Key: kloak:[0-9A-Z]+\r\n/g) ?? []).length;
    const prom = existsSync(metrics) ? await Bun.file(metrics).text() : "";
    const counter = (name: string) =>
      [...prom.matchAll(new RegExp(`^kloak_${name}(?:\\{[^}]*\\})? (\\d+)`, "gm"))].reduce((a, m) => a + Number(m[1]), 0);
    check("threads exit code", r.code === 0, `exit ${r.code}`);
    check(
      "threads: every request whole",
      values + kept === 40 && parseClientOutput(r.stdout).APP_UNCHANGED?.[0] === "yes",
      `${values} substituted + ${kept} kept placeholders of 40 requests; writes skipped: ${counter("tls_writes_skipped_total")}; ` +
        `concurrent refusals: ${counter("substitutions_refused_total")}`,
    );
  } finally {
    await server.close();
  }
}

const PERF_REPS = 3;

/** Mean time per 1 KiB request with one placeholder: no kloak, stop mode, kernel mode (interleaved, median of each). */
/** The refusal reasons and skipped writes a metrics file counted, e.g. "nested_write 1". */
function notableCounts(prom: string): string {
  const out: string[] = [];
  for (const m of prom.matchAll(/^kloak_substitutions_refused_total\{reason="([a-z_]+)"\} (\d+)$/gm)) if (m[2] !== "0") out.push(`${m[1]} ${m[2]}`);
  const skipped = /^kloak_tls_writes_skipped_total (\d+)$/m.exec(prom)?.[1];
  if (skipped && skipped !== "0") out.push(`writes skipped ${skipped}`);
  // A client that died of SIGKILL: kloak's, when a placeholder could not be put back?
  const killed = /^kloak_writers_killed_total (\d+)$/m.exec(prom)?.[1];
  if (killed && killed !== "0") out.push(`writers killed ${killed}`);
  return out.join(", ");
}

async function perfSuite(): Promise<void> {
  const certs = await testCerts();
  const secret = fakeSecret(32);
  const server = await startBenchServer({
    key: certs.key,
    cert: certs.cert,
    value: Buffer.from(secret),
    marker: Buffer.from("kloak:"),
    recordSize: 1024,
  });
  try {
    const client = (placeholderEnv: boolean, port = server.httpPort) => [
      pythonPath(),
      join(ROOT, "bench/client.py"),
      "--port",
      String(port),
      "--cafile",
      certs.caFile,
      "--workload",
      "request",
      "--size",
      "1024",
      "--duration",
      "2",
      "--warmup",
      "0.5",
      "--token-len",
      "32",
      ...(placeholderEnv ? ["--placeholder-env", "API_KEY"] : []),
    ];
    const metricsDir = mkdtempSync(join(tmpdir(), "kloak-cell-perf-"));
    let runs = 0;
    const alone = async (argv: string[]) => {
      const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
      const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      return { code, stdout, stderr };
    };
    /** null: the client alone; "proxy": the client alone through an nginx that adds the value (the alternative to kloak) */
    const run = async (mode: RewriteMode | "proxy" | null) => {
      server.reset();
      const metrics = join(metricsDir, `${++runs}.prom`);
      let r: { code: number; stdout: string; stderr: string };
      if (mode === "proxy") {
        const proxy = await startEgressProxy({ upstreamPort: server.httpPort, certFile: certs.certFile, keyFile: certs.keyFile, caFile: certs.caFile, value: secret });
        try {
          r = await alone(client(false, proxy.port));
        } finally {
          await proxy.stop();
        }
      } else if (mode)
        r = await runKloak(["exec", "--quiet", "--rewrite-mode", mode, "--secret", `API_KEY=${secret}`, "--metrics-file", metrics, "--", ...client(true)], {
          timeoutMs: 300_000,
        });
      else r = await alone(client(false));
      const line = r.stdout.trim().split("\n").at(-1) ?? "{}";
      const res = JSON.parse(line) as { writes_total?: number; latency?: { mean_ns?: number } };
      const stats = server.snapshot();
      // warm-up writes carry the placeholder too: compare against every write
      // Why a write went out with the placeholder, should one have: the refusals kloak counted.
      const prom = mode && mode !== "proxy" && existsSync(metrics) ? readFileSync(metrics, "utf8") : "";
      const why = notableCounts(prom);
      // The one refusal a correct run may show: the writer's memory map was locked by the kernel
      // (e.g. khugepaged) when the buffer was to be checked, so kloak failed closed.
      const unchecked = Number(/^kloak_substitutions_refused_total\{reason="buffer_unchecked"\} (\d+)$/m.exec(prom)?.[1] ?? 0);
      return { code: r.code, count: res.writes_total ?? 0, mean: res.latency?.mean_ns ?? 0, valueHits: stats.valueHits, markers: stats.markerHits, unchecked, why };
    };
    // Interleaved repetitions, median of each variant: the VM shares the host's two cores.
    const reps: Record<"base" | "stop" | "kernel" | "proxy", Awaited<ReturnType<typeof run>>[]> = { base: [], stop: [], kernel: [], proxy: [] };
    for (let i = 0; i < PERF_REPS; i++) {
      reps.base.push(await run(null));
      reps.stop.push(await run("stop"));
      reps.kernel.push(await run("kernel"));
      reps.proxy.push(await run("proxy"));
    }
    const all = [...reps.base, ...reps.stop, ...reps.kernel, ...reps.proxy];
    const ok = all.every((x) => x.code === 0 && x.count > 0 && x.mean > 0);
    // Every write carried the value, or the placeholder of a counted buffer_unchecked refusal;
    // every proxied request carried the value the proxy added.
    const whole =
      [...reps.stop, ...reps.kernel].every((x) => x.valueHits + x.markers === x.count && x.markers <= x.unchecked) &&
      reps.proxy.every((x) => x.valueHits === x.count && x.markers === 0);
    const writes = (xs: typeof all) => xs.reduce((a, x) => a + x.count, 0);
    const show = (xs: typeof all) =>
      xs
        .map(
          (x) =>
            `${x.valueHits}/${x.count}${x.markers ? ` +${x.markers} placeholders (${x.why || "no refusal counted"})` : ""}` +
            (x.code ? ` exit ${x.code} (${x.why || "nothing counted"})` : ""),
        )
        .join(", ");
    check(
      "perf runs substituted every write",
      ok && whole,
      `${PERF_REPS} reps each: baseline ${writes(reps.base)} writes; writes with the value: stop ${show(reps.stop)}; kernel ${show(reps.kernel)}; proxy ${show(reps.proxy)}`,
    );
    const median = (xs: typeof all) => xs.map((x) => x.mean).sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    if (ok) {
      const base = median(reps.base);
      result.perf = {
        baseline: 1,
        stop: Math.round((median(reps.stop) / base) * 100) / 100,
        kernel: Math.round((median(reps.kernel) / base) * 100) / 100,
        proxy: Math.round((median(reps.proxy) / base) * 100) / 100,
        writes: writes(reps.stop) + writes(reps.kernel),
      };
    }
  } finally {
    await server.close();
  }
}

/**
 * Test files of this repository run on this kernel, under the cell's kloak
 * (KLOAK_BIN), as one check named `what`: every test must pass.
 */
async function testFilesSuite(what: string, files: string[]): Promise<void> {
  const p = Bun.spawn([process.execPath, "test", "--timeout", "900000", ...files.map((f) => join(ROOT, f))], {
    cwd: ROOT,
    env: { ...process.env, KLOAK_BIN: KLOAK },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  const text = out + err;
  const pass = Number(/^\s*(\d+) pass$/m.exec(text)?.[1] ?? 0);
  const fail = Number(/^\s*(\d+) fail$/m.exec(text)?.[1] ?? 0);
  const failed = [...text.matchAll(/^\(fail\) (.*?)(?: \[[\d.]+m?s\])?$/gm)].map((m) => m[1]);
  // What failed, for the console: each error and the lines that say what was expected.
  // The diff of a toEqual is indented ("  {", "    \"code\": 0,"), so indented lines belong to it.
  for (const m of text.matchAll(/^error: .*(?:\n(?:[-+] .*|\s+.*|))*/gm))
    console.log(`cell: test error: ${m[0].split("\n").filter((l) => l.trim()).join(" | ")}`);
  check(
    `${what} (${files.join(", ")})`,
    code === 0 && pass > 0 && fail === 0,
    `${pass} passed, ${fail} failed${failed.length ? `: ${[...new Set(failed)].join("; ")}` : ""}`,
  );
}

/** A node kloak cannot run on: one line, exit code 1, nothing loaded or pinned, for exec and doctor alike. */
async function refusedSuite(): Promise<void> {
  const pinsBefore = bpfPins().length;
  const r = await runKloak(["exec", "--secret", "API_KEY=abcdefghijkl", "--", "true"], { timeoutMs: 300_000 });
  const lines = r.stderr.trim().split("\n");
  check(
    "exec refuses in one line",
    r.code === 1 && lines.length === 1 && lines[0]!.startsWith("kloak: this node cannot run kloak: ") && !r.stderr.includes("    at "),
    `exit ${r.code}: ${r.stderr.trim()}`,
  );
  const d = await runKloak(["doctor", "--json"], { timeoutMs: 300_000 });
  const doc = JSON.parse(d.stdout) as { ok: boolean; rewriteMode: string | null };
  check("doctor says no", d.code === 1 && !doc.ok && doc.rewriteMode === null, `exit ${d.code}, ok ${doc.ok}, mode ${doc.rewriteMode}`);
  check("nothing left pinned", bpfPins().length === pinsBefore, `${bpfPins().length} pin(s)`);
}

const bytes = await objectBytes();
if (expect === "refused") {
  await timed("refused", refusedSuite);
} else {
  await timed("budget", budgets);
  const mode = await timed("doctor", doctor);
  await timed("exec", () => execSuite(mode ?? null));
  if (args.threads) await timed("threads", threadSuite);
  // Attacks from inside the tree (test/security/): they rest on kernel facts (BIO probes, a socket's
  // network namespace, the fd table's references, the writer's memory map, kernel-mode restores) that
  // differ by version. A subset, chosen by the matrix: each test costs a kloak exec.
  if (args.security) await timed("security", () => testFilesSuite("attacks from inside the tree", args.security!.split(",")));
  // Bad input at the write probe (0 and 1 byte, the scan cap +/- 1, a placeholder straddling it,
  // 10,000 placeholders in one write): the same defined outcomes on every kernel.
  if (args.edges) await timed("edges", () => testFilesSuite("writes at the edges", args.edges!.split(",")));
  if (args.perf) await timed("perf", perfSuite);
}
const out = args.out ?? process.env.KLOAK_JOB;
if (out) writeFileSync(join(out, "result.json"), JSON.stringify(result, null, 2));
const failed = result.checks.filter((c) => !c.ok);
console.log(`cell: ${result.checks.length - failed.length}/${result.checks.length} checks passed`);
process.exit(failed.length ? 1 : 0);
