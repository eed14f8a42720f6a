/**
 * The startup part of `bun run bench` (--only startup): how long `kloak exec`
 * adds around a command, against plain `true` and `env -i true` measured in
 * the same run, with the compiled executable (dist/kloak, built first) — what
 * a user runs.
 *
 *   exec end to end     kloak exec --quiet --secret A=... -- true
 *   launch -> CMD       from spawning kloak to CMD's first instruction
 *   CMD exit -> kloak   from CMD's last instruction to kloak's exit seen
 *   version, --help     kloak version / kloak --help
 *
 * CMD's instants come from `date +%s%N` inside it; the harness's from
 * Date.now() around spawn and exit (realtime on both sides, ~1 ms apart at
 * worst). Medians of REPS runs after one warm-up run each.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tableHead, tableRow, writeReportSection } from "./report.ts";
import { median } from "./stats.ts";

const ROOT = join(import.meta.dir, "..");
const KLOAK = join(ROOT, "dist", "kloak");

/** Targets of issue 13, in ms. */
export const STARTUP_TARGETS = { execEndToEnd: 250, cmdExitToKloakExit: 100, version: 100, help: 100 } as const;

async function wall(argv: string[], env?: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  const p = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe", stdin: "ignore", env: env ?? (process.env as Record<string, string>) });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  const ms = performance.now() - t0;
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${err.slice(-500)}`);
  return ms;
}

async function repeat(reps: number, f: () => Promise<number>): Promise<number> {
  await f(); // warm-up: page cache, dynamic linker
  const xs: number[] = [];
  for (let i = 0; i < reps; i++) xs.push(await f());
  return median(xs);
}

/** kloak exec around a CMD that stamps its first and last instant; returns [launch->CMD, CMD exit->kloak exit]. */
async function execInstants(dir: string): Promise<[number, number]> {
  const first = join(dir, "first");
  const last = join(dir, "last");
  const script = `date +%s%N > ${first}; date +%s%N > ${last}`;
  const t0 = Date.now();
  const p = Bun.spawn([KLOAK, "exec", "--quiet", "--user", "root", "--secret", "A=abcdefXY", "--", "sh", "-c", script], {
    stdout: "ignore",
    stderr: "pipe",
    stdin: "ignore",
  });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  const t1 = Date.now();
  if (code !== 0) throw new Error(`kloak exec exited ${code}: ${err.slice(-500)}`);
  const ns = (f: string) => Number(BigInt(readFileSync(f, "utf8").trim()) / 1_000_000n);
  return [ns(first) - t0, t1 - ns(last)];
}

export interface StartupResult {
  reps: number;
  trueMs: number;
  envTrueMs: number;
  execMs: number;
  launchToCmdMs: number;
  cmdExitToKloakMs: number;
  versionMs: number;
  helpMs: number;
}

export async function runStartupBench(reps = 15): Promise<StartupResult> {
  const build = Bun.spawnSync(["bun", "run", "build"], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  if (!build.success || !existsSync(KLOAK)) throw new Error(`bun run build failed: ${build.stderr.toString().slice(-500)}`);
  const dir = mkdtempSync(join(tmpdir(), "kloak-startup-"));
  try {
    const trueMs = await repeat(reps, () => wall(["true"]));
    const envTrueMs = await repeat(reps, () => wall(["env", "-i", "true"]));
    const execMs = await repeat(reps, () => wall([KLOAK, "exec", "--quiet", "--user", "root", "--secret", "A=abcdefXY", "--", "true"]));
    const versionMs = await repeat(reps, () => wall([KLOAK, "version"]));
    const helpMs = await repeat(reps, () => wall([KLOAK, "--help"]));
    await execInstants(dir);
    const instants: [number, number][] = [];
    for (let i = 0; i < reps; i++) instants.push(await execInstants(dir));
    return {
      reps,
      trueMs,
      envTrueMs,
      execMs,
      launchToCmdMs: median(instants.map((x) => x[0])),
      cmdExitToKloakMs: median(instants.map((x) => x[1])),
      versionMs,
      helpMs,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function startupMarkdown(r: StartupResult): string {
  const f = (x: number) => x.toFixed(1);
  const row = (what: string, ms: number, target?: number) =>
    tableRow([what, f(ms), `${(ms / r.trueMs).toFixed(0)}x`, `${(ms / r.envTrueMs).toFixed(0)}x`, target === undefined ? "" : `${target} ms: ${ms <= target ? "met" : "MISSED"}`]);
  return [
    "## Startup (`bun run bench --only startup`)",
    "",
    `Medians of ${r.reps} runs of the compiled executable (dist/kloak), same run as the baselines.`,
    "",
    ...tableHead(["what", "ms", "/ `true`", "/ `env -i true`", "target"]),
    row("`true`", r.trueMs),
    row("`env -i true`", r.envTrueMs),
    row("`kloak exec --quiet --secret A=… -- true`", r.execMs, STARTUP_TARGETS.execEndToEnd),
    row("launch -> CMD's first instruction", r.launchToCmdMs),
    row("CMD's exit -> kloak's exit", r.cmdExitToKloakMs, STARTUP_TARGETS.cmdExitToKloakExit),
    row("`kloak version`", r.versionMs, STARTUP_TARGETS.version),
    row("`kloak --help`", r.helpMs, STARTUP_TARGETS.help),
  ].join("\n");
}

export function writeStartupReport(dir: string, r: StartupResult): string {
  return writeReportSection(dir, "startup", startupMarkdown(r), { ...r, targets: STARTUP_TARGETS });
}
