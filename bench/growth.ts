/**
 * The cost-growth part of `bun run bench` (--only growth): what kloak adds to
 * one write, in µs, as one thing grows while the rest stays as in the
 * data-plane part (same client, server, pinning and checks; bench/run.ts runs
 * each point through its runOne):
 *
 *   size         bulk writes of 256 B .. 1 MiB
 *   secrets      1 .. 10,000 secrets loaded from a secrets file (the client
 *                uses one of them), 1 KiB request loop
 *   connections  1 .. 10,000 keep-alive TLS connections open, 1 KiB requests
 *                sent round-robin across them
 *
 * Each point runs the baseline (no kloak), kloak with no placeholder sent and
 * kloak with one placeholder per write, back to back in rotating order; the
 * cost per write is the difference of the mean write times (1 / throughput)
 * against that point's own baseline. A point is "flat" when its cost is within
 * 2x, or within FLAT_SLACK_US, of the first point's.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fmtBytes, fmtCount, fmtMiB, fmtSigned, Markdown, na, writeReportSection } from "./report.ts";
import { maxOf, median, perOpUs } from "./stats.ts";

export type GrowthTable = "size" | "secrets" | "connections";
export type GrowthVariant = "baseline" | "kloak" | "kloak+ph";

export const GROWTH_TABLES: GrowthTable[] = ["size", "secrets", "connections"];
export const GROWTH_DEFAULTS = {
  sizes: [256, 1024, 4096, 16384, 65536, 262144, 1048576],
  secrets: [1, 10, 100, 1000, 10000],
  connections: [1, 10, 100, 1000, 10000],
  durationS: 1,
  reps: 1,
  /** --quick: every other point */
  quick: {
    sizes: [256, 4096, 65536, 1048576],
    secrets: [1, 100, 10000],
    connections: [1, 100, 1000],
  },
};
/** kloak exec's default --scan-cap: longer writes are scanned this far only (docs/policy.md, beyond_scan_cap). */
export const KLOAK_DEFAULT_SCAN_CAP = 64 * 1024;
/** A cost within this many µs of the first point's is flat even when it is over 2x (small costs are noisy). */
export const FLAT_SLACK_US = 5;

/** One client run as the harness describes it (bench/run.ts's RunResult has these fields). */
export interface GrowthRunResult {
  client: {
    ops_per_s: number;
    measured: number;
    writes_total: number;
    connect_s?: number;
    prime_s?: number;
    latency: { p50_ns: number; p99_ns: number };
  };
  startupMs: number;
  kloak?: { hwm: number; substitutions?: number; tlsWrites?: number; cpuWindowS: number };
  /** CPU used by other processes during the measured window */
  window: { seconds: number; foreignS: number; stealS: number };
  checks: { name: string; ok: boolean; detail: string }[];
  stderr: string;
}

/** What the harness runs for one variant at one point. */
export interface GrowthSpec {
  table: GrowthTable;
  point: number;
  variant: GrowthVariant;
  rep: number;
  workload: "request" | "bulk";
  size: number;
  connections: number;
  /** bulk: where the placeholder (or filler) sits in each record */
  tokenOffset?: number;
  /** kloak exec --secrets-file (secrets table) */
  secretsFile?: string;
  /** more kloak exec options (--scan-cap) */
  kloakArgs: string[];
  durationS: number;
}

export interface GrowthOptions {
  tables: GrowthTable[];
  sizes: number[];
  secrets: number[];
  connections: number[];
  durationS: number;
  reps: number;
  /** kloak's --scan-cap for the size table; undefined: kloak's default */
  scanCap?: number;
  /** the secret the client uses: its name and real value (goes into the secrets files only) */
  secretName: string;
  value: string;
  log?: (line: string) => void;
}

export interface GrowthPoint {
  table: GrowthTable;
  point: number;
  /** medians over reps */
  baseline_us_per_write: number;
  kloak_cost_us: number;
  kloak_ph_cost_us: number;
  kloak_flat: boolean | null;
  kloak_ph_flat: boolean | null;
  p50_us: Record<GrowthVariant, number>;
  p99_us: Record<GrowthVariant, number>;
  /** connections table: seconds to open all connections, per variant (median) */
  connect_s: Record<GrowthVariant, number>;
  /** kloak exec's start (spawn -> client running), ms, median of the kloak variants */
  kloak_start_ms: number;
  /** CPU of kloak exec (all threads) during the measured window, µs per write, median */
  agent_cpu_us_per_write: { kloak: number; "kloak+ph": number };
  /** VmHWM of kloak exec, max over the point's kloak runs */
  agent_hwm_bytes: number;
  /** refusals kloak reported (its exit summary), by variant and reason, with the run's writes; e.g. beyond_scan_cap for writes longer than the scan cap */
  refusals: { variant: GrowthVariant; rep: number; reason: string; count: number; writes: number }[];
  runs: { variant: GrowthVariant; rep: number; ops_per_s: number; measured: number }[];
  /** median share of a CPU that other processes used during the point's measured windows, and that the hypervisor took (steal) */
  other_load: number;
  steal: number;
  failures: string[];
}

export interface GrowthResult {
  options: Omit<GrowthOptions, "value" | "log" | "secretName"> & { scan_cap_bytes: number };
  points: GrowthPoint[];
  elapsed_s: number;
  command: string;
}

/** A secrets file of n secrets in a 0700 dir: `name` with the real value, the others random (40 characters). */
function secretsFile(dir: string, n: number, name: string, value: string): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const secrets = [{ name, value }];
  for (let i = 1; i < n; i++) {
    const bytes = crypto.getRandomValues(new Uint8Array(40));
    secrets.push({ name: `KLOAK_BENCH_FILLER_${i}`, value: Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("") });
  }
  const file = join(dir, `secrets-${n}.json`);
  writeFileSync(file, JSON.stringify({ secrets }), { mode: 0o600 });
  return file;
}


export function flatVerdict(cost: number, first: number): boolean | null {
  if (!Number.isFinite(cost) || !Number.isFinite(first)) return null;
  return cost <= Math.max(2 * first, first + FLAT_SLACK_US);
}

type PlannedPoint = { table: GrowthTable; point: number; spec: Omit<GrowthSpec, "variant" | "rep"> };
type PointRun = { variant: GrowthVariant; rep: number; r: GrowthRunResult };
const VARIANTS: GrowthVariant[] = ["baseline", "kloak", "kloak+ph"];

/** Every point of the tables asked for, in order; the secrets table's files are written into `dir` now. */
function growthPlan(o: GrowthOptions, scanCap: number, dir: string): PlannedPoint[] {
  const plan: PlannedPoint[] = [];
  const base = { kloakArgs: [] as string[], durationS: o.durationS, connections: 1 };
  if (o.tables.includes("size"))
    for (const size of o.sizes)
      plan.push({
        table: "size",
        point: size,
        spec: {
          ...base,
          table: "size",
          point: size,
          workload: "bulk",
          size,
          // The middle of the record, or of its scanned part when the write is longer than the scan cap
          // (kloak never sees a placeholder past the cap).
          tokenOffset: Math.floor(Math.min(size, scanCap) / 2),
          kloakArgs: o.scanCap !== undefined ? ["--scan-cap", String(o.scanCap)] : [],
        },
      });
  if (o.tables.includes("secrets"))
    for (const n of o.secrets)
      plan.push({
        table: "secrets",
        point: n,
        spec: { ...base, table: "secrets", point: n, workload: "request", size: 1024, secretsFile: secretsFile(dir, n, o.secretName, o.value) },
      });
  if (o.tables.includes("connections"))
    for (const n of o.connections)
      plan.push({ table: "connections", point: n, spec: { ...base, table: "connections", point: n, workload: "request", size: 1024, connections: n } });
  return plan;
}

/** The point's runs, o.reps of each variant; a run that fails is a failure line, not an exception. */
async function measurePoint(
  p: PlannedPoint,
  index: number,
  o: GrowthOptions,
  measure: (s: GrowthSpec) => Promise<GrowthRunResult>,
  log: (line: string) => void,
): Promise<{ runs: PointRun[]; failures: string[] }> {
  const runs: PointRun[] = [];
  const failures: string[] = [];
  for (let rep = 0; rep < o.reps; rep++) {
    // Rotating order, as in the data-plane part, so no variant always runs first.
    for (let i = 0; i < VARIANTS.length; i++) {
      const variant = VARIANTS[(i + rep + index) % VARIANTS.length]!;
      try {
        const r = await measure({ ...p.spec, variant, rep });
        runs.push({ variant, rep, r });
        const bad = r.checks.filter((c) => !c.ok);
        for (const b of bad) failures.push(`${variant} rep ${rep + 1}: ${b.name}: ${b.detail}`);
        log(
          `  growth ${p.table} ${p.table === "size" ? fmtBytes(p.point) : fmtCount(p.point)} ${variant.padEnd(8)} ` +
            `${(1e6 / r.client.ops_per_s).toFixed(1)} µs/write (${r.client.ops_per_s.toFixed(0)}/s)` +
            (r.client.connect_s !== undefined && p.table === "connections" ? `, ${p.point} connections opened in ${r.client.connect_s.toFixed(1)} s` : "") +
            (bad.length ? `  CHECK FAILED: ${bad.map((b) => `${b.name} (${b.detail})`).join(", ")}` : "  ok"),
        );
      } catch (e) {
        const msg = (e as Error).message;
        failures.push(`${variant} rep ${rep + 1}: ${msg.split("\n")[0]}`);
        // kloak's warnings name every secret without rules: 10,000 names on one line
        const short = msg.split("\n").slice(0, 20).map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l));
        log(`  growth ${p.table} ${p.point} ${variant}: RUN FAILED: ${short.join("\n")}`);
      }
    }
  }
  return { runs, failures };
}

/** The point's medians: cost per write against its own baseline, latencies, kloak's start, CPU and memory, refusals. */
function pointSummary(p: PlannedPoint, runs: PointRun[], failures: string[]): GrowthPoint {
  const of = (v: GrowthVariant) => runs.filter((x) => x.variant === v).map((x) => x.r);
  const usPerWrite = (v: GrowthVariant) => median(of(v).map((r) => 1e6 / r.client.ops_per_s));
  const byVariant = (f: (r: GrowthRunResult) => number) => Object.fromEntries(VARIANTS.map((v) => [v, median(of(v).map(f))])) as Record<GrowthVariant, number>;
  const b = usPerWrite("baseline");
  const kloakRuns = [...of("kloak"), ...of("kloak+ph")];
  // "kloak: refused 742x: a write to 127.0.0.1:40251: beyond_scan_cap (…)"
  const refusals = runs.flatMap(({ variant, rep, r }) => {
    const by = new Map<string, number>();
    for (const m of r.stderr.matchAll(/refused (\d+)x: .*?: ([a-z_]+) \(/g)) by.set(m[2]!, (by.get(m[2]!) ?? 0) + Number(m[1]));
    return [...by].map(([reason, count]) => ({ variant, rep, reason, count, writes: r.client.writes_total }));
  });
  return {
    table: p.table,
    point: p.point,
    baseline_us_per_write: b,
    kloak_cost_us: usPerWrite("kloak") - b,
    kloak_ph_cost_us: usPerWrite("kloak+ph") - b,
    kloak_flat: null,
    kloak_ph_flat: null,
    p50_us: byVariant((r) => r.client.latency.p50_ns / 1000),
    p99_us: byVariant((r) => r.client.latency.p99_ns / 1000),
    connect_s: byVariant((r) => r.client.connect_s ?? NaN),
    kloak_start_ms: median(kloakRuns.map((r) => r.startupMs)),
    agent_cpu_us_per_write: {
      kloak: median(of("kloak").map((r) => perOpUs(r.kloak?.cpuWindowS ?? NaN, r.client.measured))),
      "kloak+ph": median(of("kloak+ph").map((r) => perOpUs(r.kloak?.cpuWindowS ?? NaN, r.client.measured))),
    },
    agent_hwm_bytes: maxOf(kloakRuns.map((r) => r.kloak?.hwm ?? 0)),
    refusals,
    runs: runs.map((x) => ({ variant: x.variant, rep: x.rep, ops_per_s: x.r.client.ops_per_s, measured: x.r.client.measured })),
    other_load: median(runs.map((x) => x.r.window.foreignS / x.r.window.seconds)),
    steal: median(runs.map((x) => x.r.window.stealS / x.r.window.seconds)),
    failures,
  };
}

/** Each point's verdict against the first point of its table. */
function markFlat(points: GrowthPoint[]): void {
  for (const t of GROWTH_TABLES) {
    const ps = points.filter((p) => p.table === t);
    const first = ps[0];
    if (!first) continue;
    for (const p of ps) {
      p.kloak_flat = flatVerdict(p.kloak_cost_us, first.kloak_cost_us);
      p.kloak_ph_flat = flatVerdict(p.kloak_ph_cost_us, first.kloak_ph_cost_us);
    }
  }
}

export async function runGrowthBench(o: GrowthOptions, measure: (s: GrowthSpec) => Promise<GrowthRunResult>): Promise<GrowthResult> {
  const t0 = Date.now();
  const log = o.log ?? (() => {});
  const scanCap = o.scanCap ?? KLOAK_DEFAULT_SCAN_CAP;
  const dir = mkdtempSync(join(tmpdir(), "kloak-bench-growth-")); // 0700: the secrets files hold real values
  const points: GrowthPoint[] = [];
  try {
    for (const p of growthPlan(o, scanCap, dir)) {
      const { runs, failures } = await measurePoint(p, points.length, o, measure, log);
      points.push(pointSummary(p, runs, failures));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  markFlat(points);
  const { value: _v, log: _l, secretName: _n, ...options } = o;
  return {
    options: { ...options, scan_cap_bytes: scanCap },
    points,
    elapsed_s: (Date.now() - t0) / 1000,
    command: `bun run bench${Bun.argv.length > 2 ? " " + Bun.argv.slice(2).join(" ") : ""}`,
  };
}

function fmtFlat(flat: boolean | null, cost: number, first: number): string {
  if (flat === null) return "n/a";
  if (flat) return "flat";
  return `**grows** (${first > 0 ? `${(cost / first).toFixed(1)}× the first` : `+${(cost - first).toFixed(1)} µs over the first`})`;
}

/** One table of the section: the points of table t, with `extra` columns after the cost columns. */
function growthTable(
  md: Markdown,
  r: GrowthResult,
  t: GrowthTable,
  title: string,
  note: string,
  head: string,
  extra: (p: GrowthPoint) => string[],
  extraHead: string[],
): void {
  const L = md.line;
  const ps = r.points.filter((p) => p.table === t);
  if (ps.length === 0) return;
  const first = ps[0]!;
  L();
  L(`### ${title}`);
  L();
  L(note);
  L();
  md.tableHead([
    head,
    "baseline µs/write",
    "kloak, no placeholder: µs/write added",
    "flat?",
    "kloak, 1 placeholder: µs/write added",
    "flat?",
    ...extraHead,
    "other load / steal",
  ]);
  for (const p of ps)
    md.row([
      t === "size" ? fmtBytes(p.point) : fmtCount(p.point),
      p.baseline_us_per_write.toFixed(1),
      fmtSigned(p.kloak_cost_us),
      fmtFlat(p.kloak_flat, p.kloak_cost_us, first.kloak_cost_us),
      fmtSigned(p.kloak_ph_cost_us),
      fmtFlat(p.kloak_ph_flat, p.kloak_ph_cost_us, first.kloak_ph_cost_us),
      ...extra(p),
      Number.isFinite(p.other_load) ? `${(p.other_load * 100).toFixed(0)}% / ${(p.steal * 100).toFixed(0)}%` : "n/a",
    ]);
  const fails = ps.flatMap((p) => p.failures.map((f) => `${fmtCount(p.point)}: ${f}`));
  if (fails.length) {
    L();
    md.fenced(fails.map((f) => `!!! ${t} ${f}`));
  }
}

export function growthMarkdown(r: GrowthResult): string {
  const md = new Markdown();
  const L = md.line;
  const o = r.options;
  L("## Cost growth (`bun run bench --only growth`)");
  L();
  L(
    `Cost per write = mean write time under kloak − the same point's baseline (1 / throughput; ${o.durationS} s measured per run, ` +
      `${o.reps} rep(s), medians; same client, server, pinning and correctness checks as the data-plane part). ` +
      `"flat": within 2× of the first point's cost, or within ${FLAT_SLACK_US} µs of it. ` +
      `"other load / steal": CPU used by other processes during the measured windows, and taken by the hypervisor (share of one CPU, medians; above ~15% the point is noisy). Generated ${new Date().toISOString()} in ${r.elapsed_s.toFixed(0)} s by \`${r.command}\`.`,
  );
  const busy = r.points.filter((p) => p.other_load + p.steal > 0.15);
  if (busy.length) {
    L();
    md.fenced([`!!! MACHINE NOT IDLE at ${busy.length} of ${r.points.length} point(s) (other load + steal above 15% of a CPU): those costs are noisy`]);
  }
  const cap = o.scan_cap_bytes;
  growthTable(
    md,
    r,
    "size",
    "Against write size (bulk loop)",
    `One SSL_write per record, back to back on one connection. kloak's scan cap: ${fmtBytes(cap)}` +
      (o.scanCap === undefined ? " (kloak exec's default)" : " (--growth-scan-cap)") +
      `; a longer write is scanned that far only, kloak counts a \`beyond_scan_cap\` refusal for it, and the placeholder sits in the middle of the scanned part ` +
      `(of the record when it is shorter).`,
    "write size",
    (p) => [
      `${p.p99_us.baseline.toFixed(0)} / ${p.p99_us.kloak.toFixed(0)} / ${p.p99_us["kloak+ph"].toFixed(0)}`,
      p.refusals.length ? p.refusals.map((x) => `${x.variant}: ${x.count} of ${x.writes} writes ${x.reason}`).join("; ") : "none",
    ],
    ["p99 µs (base / kloak / +ph)", "refusals kloak reported"],
  );
  growthTable(
    md,
    r,
    "secrets",
    "Against the number of loaded secrets (1 KiB request loop)",
    "kloak exec --secrets-file with N secrets of 40 characters (random, in a 0700 temp dir); the client uses one of them.",
    "secrets",
    (p) => [
      `${p.agent_cpu_us_per_write.kloak.toFixed(1)} / ${p.agent_cpu_us_per_write["kloak+ph"].toFixed(1)}`,
      `${p.kloak_start_ms.toFixed(0)}`,
      na(p.agent_hwm_bytes, fmtMiB),
    ],
    ["kloak exec CPU µs/write (kloak / +ph)", "spawn → client running under kloak, ms", "kloak exec VmHWM"],
  );
  growthTable(
    md,
    r,
    "connections",
    "Against the number of open connections (1 KiB request loop)",
    "The client opens N keep-alive TLS connections, sends one request on each, then sends requests round-robin across them; " +
      "the handshakes and that first round are not measured. Handshake time is for all N, sequential.",
    "connections",
    (p) => [
      `${p.connect_s.baseline.toFixed(2)} / ${p.connect_s.kloak.toFixed(2)} / ${p.connect_s["kloak+ph"].toFixed(2)}`,
      `${p.p99_us.baseline.toFixed(0)} / ${p.p99_us.kloak.toFixed(0)} / ${p.p99_us["kloak+ph"].toFixed(0)}`,
    ],
    ["handshakes, s (base / kloak / +ph)", "p99 µs (base / kloak / +ph)"],
  );
  return md.toString();
}

/** Writes the "growth" section of bench/report/report.md and the `growth` entry of report.json; returns the section. */
export function writeGrowthReport(dir: string, r: GrowthResult): string {
  return writeReportSection(dir, "growth", growthMarkdown(r), r);
}
