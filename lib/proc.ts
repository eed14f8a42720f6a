/** Reading process facts from /proc. All functions return null for a process that is gone. */
import { readFileSync, readlinkSync } from "node:fs";

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, "latin1");
  } catch {
    return null;
  }
}

/** The one-letter state of /proc/<pid>/task/<tid>/stat ("R", "S", "T", "t", "Z", ...). */
export function threadState(pid: number, tid: number = pid): string | null {
  const stat = readOrNull(`/proc/${pid}/task/${tid}/stat`);
  if (!stat) return null;
  // comm may contain spaces and parentheses: the state follows the last ')'.
  return stat.charAt(stat.lastIndexOf(")") + 2) || null;
}

/** True for job-control stop ("T"); a ptrace stop ("t") is someone else's. */
export function isStopped(pid: number, tid: number = pid): boolean {
  return threadState(pid, tid) === "T";
}

export function parentPid(pid: number): number | null {
  const stat = readOrNull(`/proc/${pid}/stat`);
  if (!stat) return null;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[1]);
}

export function exePath(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return null;
  }
}

/** Distinct file paths mapped into the process (libraries, the executable). */
export function mappedFiles(pid: number): string[] | null {
  const maps = readOrNull(`/proc/${pid}/maps`);
  if (maps === null) return null;
  const files = new Set<string>();
  for (const line of maps.split("\n")) {
    const i = line.indexOf("/");
    if (i > 0 && !line.endsWith(" (deleted)")) files.add(line.slice(i));
  }
  return [...files];
}
