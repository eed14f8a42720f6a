/** Reading process facts from /proc. All functions return null for a process that is gone. */
import { readFileSync, readlinkSync, statSync } from "node:fs";

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

/**
 * Whether [addr, addr+len) lies inside one private, writable mapping that no
 * file backs (heap, stack, anonymous mmap) of pid, as /proc/<pid>/maps says
 * now. false when it does not, or when the maps cannot be read.
 */
export function inPrivateAnonymousMapping(pid: number, addr: bigint, len: number): boolean {
  const maps = readOrNull(`/proc/${pid}/maps`);
  if (maps === null) return false;
  const end = addr + BigInt(len);
  for (const line of maps.split("\n")) {
    // start-end perms offset dev inode [path]
    const dash = line.indexOf("-");
    const sp = line.indexOf(" ");
    if (dash < 0 || sp < dash) continue;
    const lo = BigInt(`0x${line.slice(0, dash)}`);
    const hi = BigInt(`0x${line.slice(dash + 1, sp)}`);
    if (addr < lo || addr >= hi) continue;
    const [perms, , , inode] = line.slice(sp + 1).split(/\s+/);
    return end <= hi && perms?.[1] === "w" && perms[3] === "p" && inode === "0";
  }
  return false;
}

/** Inode of the network namespace of pid (what /proc/<pid>/ns/net names). */
export function netnsInode(pid: number): bigint {
  return BigInt(statSync(`/proc/${pid}/ns/net`).ino);
}

/** A file as the kernel names it: its inode, and its filesystem's dev_t in the kernel's own encoding (major << 20 | minor). */
export function kernelFileId(path: string): { dev: number; ino: bigint } | null {
  try {
    const st = statSync(path, { bigint: true });
    // st_dev is glibc's encoding of major:minor; the kernel's dev_t is another.
    const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & 0xfffff000n);
    const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & 0xffffff00n);
    return { dev: Number((major << 20n) | minor), ino: st.ino };
  } catch {
    return null;
  }
}

/** Inode of the mount namespace of pid (what /proc/<pid>/ns/mnt names). */
export function mntnsInode(pid: number): number | null {
  try {
    return Number(statSync(`/proc/${pid}/ns/mnt`).ino);
  } catch {
    return null;
  }
}
