/**
 * Hand kernel objects to a process that outlives this one, so that their
 * release happens there. Closing the last fd of a tracepoint perf event or a
 * uprobe link waits for RCU grace periods (tens of ms each); a process that
 * exits holding them waits the same in its exit, and whoever waits for it
 * (a shell, a CI step) waits too. With a holder child, this process drops
 * non-final references (cheap) and exits at once; the holder reads its stdin
 * until this process is gone (EOF), then exits and pays for the release.
 */
import { readdirSync, readlinkSync } from "node:fs";

/** This process's fds whose files are BPF objects or perf events (anon inodes). */
export function bpfAndPerfFds(): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc/self/fd")) {
    const fd = Number(name);
    if (fd < 3) continue;
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // the fd readdir itself used, closed since
    }
    if (/^anon_inode:(bpf[-_]|\[perf_event\])/.test(target)) out.push(fd);
  }
  return out;
}

/**
 * Start the holder with copies of fds. Returns false when it could not be
 * started (no `cat` on this system): the caller then closes the fds itself.
 * The holder's stdout and stderr are /dev/null: a parent reading this
 * process's output to its end must not wait for the holder.
 */
export function handOffToHolder(fds: number[]): boolean {
  if (fds.length === 0) return true;
  try {
    const holder = Bun.spawn(["cat"], {
      stdio: ["pipe", "ignore", "ignore", ...fds],
    } as Parameters<typeof Bun.spawn>[1]);
    holder.unref();
    return true;
  } catch {
    return false;
  }
}
