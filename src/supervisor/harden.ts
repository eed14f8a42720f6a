/**
 * What makes kloak (exec, the agent) and its guardian hard to subvert from the
 * processes they protect: not dumpable (no core file; /proc/<pid>/mem, environ
 * and ptrace closed to everyone but root), not the OOM killer's first choice,
 * deaf to the terminal's stop signals, and no secret value left in the
 * command line or environment the process was started with.
 */
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { setNotDumpable } from "../../lib/libc.ts";

/** Signals a terminal (or a process group mate) sends to stop a job: kloak does not stop for them. */
const JOB_STOPS = ["SIGTSTP", "SIGTTIN", "SIGTTOU"] as const;

export function hardenSupervisor(): void {
  setNotDumpable();
  for (const sig of JOB_STOPS) process.on(sig, () => {});
  try {
    // Needs CAP_SYS_RESOURCE to go below 0; best effort where it is missing.
    writeFileSync("/proc/self/oom_score_adj", "-1000");
  } catch {
    // keep the default
  }
}

/**
 * Overwrite every occurrence of each value in this process's original
 * command line and environment (what /proc/<pid>/cmdline and environ show),
 * e.g. a value given as --secret NAME=VALUE or read from kloak's environment.
 * Returns how many occurrences were overwritten.
 */
export function scrubStartArgs(values: readonly Uint8Array[]): number {
  const stat = readFileSync("/proc/self/stat", "latin1");
  // Fields after "(comm) ": field 3 is the first; arg_start..env_end are fields 48-51.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const region = (a: number, b: number) => [Number(f[a - 3]), Number(f[b - 3])] as const;
  let n = 0;
  let fd: number;
  try {
    fd = openSync("/proc/self/mem", "r+");
  } catch {
    return 0; // not root: kloak will not start anyway (the requirements say why)
  }
  try {
    for (const [start, end] of [region(48, 49), region(50, 51)]) {
      if (!(end > start)) continue;
      const buf = Buffer.alloc(end - start);
      readSync(fd, buf, 0, buf.length, start);
      for (const v of values) {
        if (v.length === 0) continue;
        for (let at = buf.indexOf(v); at >= 0; at = buf.indexOf(v, at + v.length)) {
          writeSync(fd, Buffer.alloc(v.length, "*"), 0, v.length, start + at);
          n++;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return n;
}
