/** Small /proc readers for the benchmark harness (all return null/empty for a process that is gone). */
import { readdirSync, readFileSync } from "node:fs";

function read(path: string): string | null {
  try {
    return readFileSync(path, "latin1");
  } catch {
    return null;
  }
}

export interface MemStatus {
  /** peak resident set size, bytes */
  hwm: number;
  /** current resident set size, bytes */
  rss: number;
  threads: number;
}

/** VmHWM / VmRSS / Threads of /proc/<pid>/status. */
export function memStatus(pid: number): MemStatus | null {
  const s = read(`/proc/${pid}/status`);
  if (s === null) return null;
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(s);
    return m ? Number(m[1]) * 1024 : 0;
  };
  const t = /^Threads:\s+(\d+)/m.exec(s);
  return { hwm: kb("VmHWM"), rss: kb("VmRSS"), threads: t ? Number(t[1]) : 0 };
}

let clkTck: number | undefined;
function ticksPerSecond(): number {
  if (clkTck === undefined) {
    const r = Bun.spawnSync(["getconf", "CLK_TCK"]);
    const n = r.success ? Number(r.stdout.toString().trim()) : NaN;
    clkTck = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return clkTck;
}

function statFields(text: string): { comm: string; fields: string[] } {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  return { comm: text.slice(open + 1, close), fields: text.slice(close + 2).trim().split(" ") };
}

/** user+sys CPU seconds of the whole process (all threads, not children). */
export function cpuSeconds(pid: number): { user: number; sys: number } | null {
  const s = read(`/proc/${pid}/stat`);
  if (s === null) return null;
  const { fields } = statFields(s);
  // fields[0] is field 3 (state); utime is field 14, stime 15.
  const hz = ticksPerSecond();
  return { user: Number(fields[11]) / hz, sys: Number(fields[12]) / hz };
}

/** CPU seconds per thread: tid -> {comm, cpu}. */
export function threadCpu(pid: number): Map<number, { comm: string; cpu: number }> {
  const out = new Map<number, { comm: string; cpu: number }>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  const hz = ticksPerSecond();
  for (const tid of tids) {
    const s = read(`/proc/${pid}/task/${tid}/stat`);
    if (s === null) continue;
    const { comm, fields } = statFields(s);
    out.set(Number(tid), { comm, cpu: (Number(fields[11]) + Number(fields[12])) / hz });
  }
  return out;
}

/** Direct children of pid (from every thread's children list). */
export function childrenOf(pid: number): number[] {
  const out = new Set<number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  for (const tid of tids) {
    const s = read(`/proc/${pid}/task/${tid}/children`);
    if (s === null) continue;
    for (const c of s.trim().split(/\s+/)) if (c) out.add(Number(c));
  }
  return [...out];
}

export function cmdline(pid: number): string[] {
  const s = read(`/proc/${pid}/cmdline`);
  return s === null ? [] : s.split("\0").filter((x) => x !== "");
}

/** Machine-wide CPU seconds from /proc/stat (all CPUs summed). */
export function systemCpu(): { busy: number; idle: number; steal: number } | null {
  const s = read("/proc/stat");
  if (s === null) return null;
  const line = s.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) return null;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const hz = ticksPerSecond();
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  return { busy: (user + nice + system + irq + softirq) / hz, idle: (idle + iowait) / hz, steal: steal / hz };
}

/** Other `kloak` processes on the machine (pid + command line), excluding the given pids. */
export function foreignKloaks(exclude: Set<number>): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (exclude.has(pid) || pid === process.pid) continue;
    const args = cmdline(pid);
    if (args.length === 0) continue;
    const isKloak =
      (args[0]!.endsWith("/kloak") || args.some((a) => a.endsWith("src/main.ts"))) && args.includes("exec");
    const isTest = args.includes("test") && /bun(\.exe)?$/.test(args[0]!);
    if (isKloak || isTest) out.push({ pid, cmd: args.join(" ").slice(0, 120) });
  }
  return out;
}
