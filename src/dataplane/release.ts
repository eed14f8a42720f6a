/**
 * Releasing processes that kloak stopped and can no longer resume itself.
 *
 * In stop mode a writer waits, stopped, for the agent. If the agent dies
 * there, something else must send SIGCONT: `kloak exec` pins its process map
 * in bpffs and leaves a guardian process that, when the agent is gone, resumes
 * every stopped process of that map. A later kloak start does the same for
 * pins whose agent is dead (the guardian died too).
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { mapKeys, objGet } from "../../lib/libbpf.ts";
import { close, kill, SIGCONT } from "../../lib/libc.ts";
import { isStopped } from "../../lib/proc.ts";

export const PIN_DIR = "/sys/fs/bpf/kloak";

export function execPinPath(agentPid: number): string {
  return `${PIN_DIR}/exec-${agentPid}-procs`;
}

/** The node agent's pin: same release path as kloak exec's. */
export function agentPinPath(agentPid: number): string {
  return `${PIN_DIR}/agent-${agentPid}-procs`;
}

export function ensurePinDir(): void {
  mkdirSync(PIN_DIR, { recursive: true, mode: 0o700 });
}

/** SIGCONT every stopped process in the pinned map; returns how many were resumed. */
export function releasePinned(pinPath: string): number {
  const fd = objGet(pinPath);
  try {
    let resumed = 0;
    for (const key of mapKeys(fd, 4)) {
      const pid = new DataView(key.buffer).getUint32(0, true);
      if (isStopped(pid) && kill(pid, SIGCONT)) resumed++;
    }
    return resumed;
  } finally {
    close(fd);
  }
}

/**
 * Release, then keep releasing for a short while: a probe that was running
 * when the agent died may still stop its writer after the first pass.
 * Bound: every process is resumed within the last round (1 s after start).
 */
export async function releaseUntilQuiet(pinPath: string, rounds = [0, 20, 50, 100, 200, 300, 330]): Promise<number> {
  let total = 0;
  for (const wait of rounds) {
    if (wait) await Bun.sleep(wait);
    if (!existsSync(pinPath)) break;
    total += releasePinned(pinPath);
  }
  rmSync(pinPath, { force: true });
  return total;
}

/** Pins left by kloak exec or agent processes that no longer exist. */
export function stalePins(): string[] {
  let names: string[];
  try {
    names = readdirSync(PIN_DIR);
  } catch {
    return [];
  }
  return names
    .map((n) => /^(?:exec|agent)-(\d+)-procs$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null && !existsSync(`/proc/${m[1]}`))
    .map((m) => `${PIN_DIR}/${m[0]}`);
}
