/**
 * `bun run test:kernels`: the kernel matrix. Every cell boots a Debian kernel
 * under qemu (or, for this host's 6.18, runs natively) and runs test/vm/cell.ts:
 * trial loads of every mode at the default and the largest scan cap with the
 * verifier's counts, `kloak doctor`, and one `kloak exec` of real curl and
 * Python clients against real TLS servers. Cells that must be refused (no
 * bpf_loop, lockdown=confidentiality) check the one-line refusal instead.
 *
 *   bun run test:kernels [--only 6.1/none,7.3/integrity] [--jobs 2] [--write-docs]
 *
 * Exit code 0 only when every cell ran and passed: a cell that cannot run
 * (no qemu, no route to Debian's archive, a boot that never reached its
 * command) is a failure, never a skip. docs/kernels.md holds the verifier
 * table this run measures; a stale table fails the run (--write-docs
 * rewrites it).
 */
import { $ } from "bun";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { ProgramBudget } from "../../src/dataplane/bpf-object.ts";
import type { RewriteMode } from "../../src/dataplane/kernel-support.ts";
import { TESTED_KERNELS } from "../../src/dataplane/kernel-support.ts";
import type { CellResult } from "./cell.ts";
import { fetchKernel, kernelSpec } from "./kernels.ts";
import { initramfs } from "./initramfs.ts";
import { runVm, type Lockdown } from "./qemu.ts";

const ROOT = join(import.meta.dir, "../..");
const REPORT = join(import.meta.dir, "report");
const DOC = join(ROOT, "docs/kernels.md");

interface Cell {
  id: string;
  /** a KERNELS id, or "host" for this machine's own kernel */
  kernel: string;
  lockdown: Lockdown;
  expect: RewriteMode | "refused";
  perf?: boolean;
  threads?: boolean;
  /** test/security files run inside the cell */
  security?: string[];
  /** bad-input test files run inside the cell */
  edges?: string[];
  /** series label in the docs */
  series: string;
}

/** The attacks whose outcome rests on kernel facts, run in the oldest and the newest kernel. */
const KERNEL_ATTACKS = ["test/security/binding.test.ts", "test/security/left-behind.test.ts", "test/security/identity.test.ts"];

/** Bad input at the write probe (issue 14): run in each mode on the oldest and the newest series. */
const EDGES = ["test/dataplane/write-edges.test.ts"];

type Extras = { none?: boolean; integrity?: boolean };
const both = (kernel: string, security: Extras = {}, edges: Extras = {}): Cell[] => [
  {
    id: `${kernel}/none`,
    kernel,
    series: kernel,
    lockdown: "none",
    expect: "kernel",
    perf: true,
    ...(security.none ? { security: KERNEL_ATTACKS } : {}),
    ...(edges.none ? { edges: EDGES } : {}),
  },
  {
    id: `${kernel}/integrity`,
    kernel,
    series: kernel,
    lockdown: "integrity",
    expect: "stop",
    ...(security.integrity ? { security: KERNEL_ATTACKS } : {}),
    ...(edges.integrity ? { edges: EDGES } : {}),
  },
];

export const CELLS: readonly Cell[] = [
  { id: "6.18/host", kernel: "host", series: "6.18", lockdown: "integrity", expect: "stop", threads: true },
  ...both("6.1", { none: true }, { none: true, integrity: true }),
  ...both("6.12"),
  ...both("7.2"),
  ...both("7.3", { integrity: true }, { none: true, integrity: true }),
  { id: "6.12-rt/integrity", kernel: "6.12-rt", series: "6.12-rt", lockdown: "integrity", expect: "stop", threads: true },
  { id: "7.3/confidentiality", kernel: "7.3", series: "7.3", lockdown: "confidentiality", expect: "refused" },
  { id: "5.10/none", kernel: "5.10", series: "5.10", lockdown: "none", expect: "refused" },
];

interface Outcome {
  cell: Cell;
  ok: boolean;
  /** why the cell failed when it has no checks to show (boot, fetch, timeout) */
  error?: string;
  result?: CellResult;
  bootMs?: number | null;
  totalMs: number;
}

const CELL_TIMEOUT_MS = 20 * 60_000;

function cellArgs(c: Cell): string[] {
  return [
    "test/vm/cell.ts",
    "--expect",
    c.expect,
    ...(c.perf ? ["--perf"] : []),
    ...(c.threads ? ["--threads"] : []),
    ...(c.security ? ["--security", c.security.join(",")] : []),
    ...(c.edges ? ["--edges", c.edges.join(",")] : []),
  ];
}


async function runCell(c: Cell, log: (s: string) => void): Promise<Outcome> {
  const t0 = performance.now();
  const logFile = join(REPORT, `${c.id.replace("/", "-")}.log`);
  try {
    if (c.kernel === "host") {
      const out = join(REPORT, c.id.replace("/", "-"));
      mkdirSync(out, { recursive: true });
      const p = Bun.spawn([process.execPath, ...cellArgs(c), "--out", out], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
      const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      writeFileSync(logFile, stdout + stderr);
      for (const line of stdout.split("\n")) if (line.startsWith("cell: ")) log(`[${c.id}] ${line}`);
      const result = JSON.parse(readFileSync(join(out, "result.json"), "utf8")) as CellResult;
      return { cell: c, ok: code === 0, result, totalMs: Math.round(performance.now() - t0) };
    }
    const bun = process.execPath;
    let partial = "";
    const r = await runVm({
      kernel: kernelSpec(c.kernel),
      lockdown: c.lockdown,
      script: [bun, ...cellArgs(c)].map((a) => `'${a}'`).join(" "),
      cwd: ROOT,
      env: { KLOAK_BIN: join(ROOT, "dist/kloak") },
      timeoutMs: CELL_TIMEOUT_MS,
      onOutput: (s) => {
        const lines = (partial + s).split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) if (line.startsWith("cell: ") || line.startsWith("kloak-vm: ")) log(`[${c.id}] ${line}`);
      },
    });
    writeFileSync(logFile, r.console);
    const json = r.files.get("result.json");
    const result = json ? (JSON.parse(json.toString()) as CellResult) : undefined;
    const error = r.timedOut
      ? `timed out after ${CELL_TIMEOUT_MS / 60_000} min (console: ${logFile})`
      : r.code === null
        ? `the VM never ran the cell (console: ${logFile}): ${r.console.trim().split("\n").slice(-5).join(" | ")}`
        : !result
          ? `the cell exited ${r.code} without a result (console: ${logFile})`
          : undefined;
    return { cell: c, ok: r.code === 0 && !!result, error, result, bootMs: r.bootMs, totalMs: r.totalMs };
  } catch (e) {
    return { cell: c, ok: false, error: (e as Error).message, totalMs: Math.round(performance.now() - t0) };
  }
}

/** Run cells with at most `jobs` at a time, in order. */
async function pool<T, R>(items: readonly T[], jobs: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(jobs, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

// ---------------------------------------------------------------- docs

const BEGIN = "<!-- BEGIN verifier table: generated by `bun run test:kernels --write-docs` -->";
const END = "<!-- END verifier table -->";
const COST_BEGIN = "<!-- BEGIN kernel-mode cost: generated by `bun run test:kernels --write-docs` -->";
const COST_END = "<!-- END kernel-mode cost -->";

const fmt = (n: number) => n.toLocaleString("en-US");

/** Per program and kernel: instructions the verifier processed (the larger of both scan caps). */
export function budgetTable(outcomes: Outcome[]): string {
  const cols = outcomes.filter((o) => o.result && o.cell.expect !== "refused" && o.cell.lockdown !== "confidentiality");
  const version = (s: string) => s.split(/[.-]/).map((x) => (/^\d+$/.test(x) ? Number(x).toString().padStart(4, "0") : x)).join(".");
  const series = [...new Set(cols.map((o) => o.cell.series))].sort((a, b) => version(a).localeCompare(version(b)));
  const cell = new Map<string, number>();
  let limit = 0;
  const programs = new Set<string>();
  for (const o of cols)
    for (const byCap of Object.values(o.result!.budget))
      for (const list of Object.values(byCap ?? {}))
        for (const b of list as ProgramBudget[]) {
          const key = `${o.cell.series}|${b.program}`;
          cell.set(key, Math.max(cell.get(key) ?? 0, b.insns));
          programs.add(b.program);
          limit = Math.max(limit, b.limit);
        }
  const order = [...programs].sort((a, b) => {
    const max = (p: string) => Math.max(...series.map((s) => cell.get(`${s}|${p}`) ?? 0));
    return max(b) - max(a) || a.localeCompare(b);
  });
  const rows = [`| program | ${series.join(" | ")} |`, `|---|${series.map(() => "---:").join("|")}|`];
  for (const p of order) rows.push(`| \`${p}\` | ${series.map((s) => (cell.has(`${s}|${p}`) ? fmt(cell.get(`${s}|${p}`)!) : "—")).join(" | ")} |`);
  const worst = Math.max(...[...cell.values()]);
  rows.push(
    "",
    `Limit: ${fmt(limit)} instructions per program on every kernel. Largest count: ${fmt(worst)}, ` +
      `${Math.floor(limit / worst)}x headroom (each cell requires at least 2x). "—": not run there (kernel mode needs ` +
      "lockdown=none, which the 6.18 host does not have; the PREEMPT_RT cell runs stop mode).",
  );
  return rows.join("\n");
}

function costTable(outcomes: Outcome[]): string {
  const rows = [
    "| kernel | stop mode | kernel mode | egress proxy | kernel ÷ stop | kernel mode's throughput, % of the proxy's |",
    "|---|---:|---:|---:|---:|---:|",
  ];
  for (const o of outcomes) {
    const p = o.result?.perf;
    if (!p) continue;
    // times per request, so throughput over the proxy's is the proxy's time over kloak's
    rows.push(
      `| ${o.cell.series} | ${p.stop.toFixed(2)}× | ${p.kernel.toFixed(2)}× | ${p.proxy.toFixed(2)}× | ${(p.kernel / p.stop).toFixed(2)} | ${((p.proxy / p.kernel) * 100).toFixed(0)}% |`,
    );
  }
  return rows.join("\n");
}

function replaceSection(doc: string, begin: string, end: string, body: string): string {
  const a = doc.indexOf(begin);
  const b = doc.indexOf(end);
  if (a < 0 || b < a) throw new Error(`${DOC} lacks the markers ${begin} ... ${end}`);
  return `${doc.slice(0, a + begin.length)}\n${body}\n${doc.slice(b)}`;
}

function section(doc: string, begin: string, end: string): string {
  const a = doc.indexOf(begin);
  const b = doc.indexOf(end);
  return a < 0 || b < a ? "" : doc.slice(a + begin.length, b).trim();
}

// ---------------------------------------------------------------- main

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      only: { type: "string" },
      jobs: { type: "string", default: process.env.KLOAK_VM_JOBS ?? "2" },
      "write-docs": { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(`usage: bun run test:kernels [--only CELL[,CELL]] [--jobs N] [--write-docs]\ncells: ${CELLS.map((c) => c.id).join(", ")}`);
    process.exit(0);
  }
  const only = values.only?.split(",").map((s) => s.trim());
  for (const id of only ?? []) if (!CELLS.some((c) => c.id === id)) throw new Error(`no cell ${id}; cells: ${CELLS.map((c) => c.id).join(", ")}`);
  const cells = CELLS.filter((c) => !only || only.includes(c.id));
  mkdirSync(REPORT, { recursive: true });
  const log = (s: string) => console.log(s);
  const started = performance.now();

  // What every cell needs, once: the executable of this tree, the kernels and their initramfs.
  const build = await $`bun run build`.cwd(ROOT).nothrow().quiet();
  if (build.exitCode !== 0) throw new Error(`bun run build failed:\n${build.stderr}`);
  const prepared = new Map<string, string | null>();
  await Promise.all(
    [...new Set(cells.map((c) => c.kernel).filter((k) => k !== "host"))].map(async (k) => {
      try {
        await initramfs(await fetchKernel(kernelSpec(k)));
        prepared.set(k, null);
        log(`kernel ${k}: ready`);
      } catch (e) {
        prepared.set(k, (e as Error).message);
        log(`kernel ${k}: FAILED to prepare: ${(e as Error).message}`);
      }
    }),
  );

  // The host cell first, alone: it measures on this machine's own CPU.
  const host = cells.filter((c) => c.kernel === "host");
  const vms = cells.filter((c) => c.kernel !== "host");
  const outcomes: Outcome[] = [];
  for (const c of host) outcomes.push(await runCell(c, log));
  outcomes.push(
    ...(await pool(vms, Number(values.jobs), async (c) => {
      const why = prepared.get(c.kernel);
      if (why) return { cell: c, ok: false, error: `kernel not available: ${why}`, totalMs: 0 };
      const o = await runCell(c, log);
      log(`[${c.id}] ${o.ok ? "PASS" : "FAIL"} in ${Math.round(o.totalMs / 1000)} s${o.error ? `: ${o.error}` : ""}`);
      return o;
    })),
  );

  // Every series the docs call tested must have passed here in each mode they name.
  const missing: string[] = [];
  if (!only)
    for (const t of TESTED_KERNELS)
      for (const mode of t.modes)
        if (!outcomes.some((o) => o.ok && o.cell.series === t.series && o.cell.expect === mode)) missing.push(`${t.series}/${mode}`);

  writeFileSync(join(REPORT, "report.json"), JSON.stringify(outcomes, null, 2));
  console.log("\nkernel matrix:");
  for (const o of outcomes) {
    const checks = o.result?.checks ?? [];
    const failed = checks.filter((c) => !c.ok);
    console.log(
      `  ${o.ok ? "PASS" : "FAIL"}  ${o.cell.id.padEnd(20)} ${(o.result?.release ?? "").padEnd(24)} ` +
        `${checks.length - failed.length}/${checks.length} checks, ${Math.round(o.totalMs / 1000)} s` +
        (o.bootMs ? ` (boot ${Math.round(o.bootMs / 1000)} s)` : ""),
    );
    for (const f of failed) console.log(`        FAIL ${f.name}: ${f.detail}`);
    if (o.error) console.log(`        ${o.error}`);
  }
  if (missing.length) console.log(`  FAIL  tested series without a passing cell: ${missing.join(", ")}`);

  let stale = false;
  if (!only) {
    const doc = readFileSync(DOC, "utf8");
    const table = budgetTable(outcomes);
    if (values["write-docs"]) {
      writeFileSync(DOC, replaceSection(replaceSection(doc, BEGIN, END, table), COST_BEGIN, COST_END, costTable(outcomes)));
      console.log(`wrote the verifier table and the kernel-mode cost to ${DOC}`);
    } else if (section(doc, BEGIN, END) !== table.trim()) {
      stale = true;
      console.log(`  FAIL  ${DOC}'s verifier table differs from what this run measured: run bun run test:kernels --write-docs`);
      writeFileSync(join(REPORT, "verifier-table.md"), table + "\n");
    }
  }
  const ok = outcomes.every((o) => o.ok) && !missing.length && !stale;
  console.log(`\nkernel matrix: ${ok ? "PASS" : "FAIL"} in ${Math.round((performance.now() - started) / 60_000)} min (${REPORT})`);
  process.exit(ok ? 0 : 1);
}

