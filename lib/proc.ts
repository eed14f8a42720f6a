/** Reading process facts from /proc. All functions return null for a process that is gone. */
import { closeSync, openSync, readFileSync, readlinkSync, readSync, statSync } from "node:fs";

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

/** /proc/PID/maps, or null when the process is gone. */
export function processMaps(pid: number): string | null {
  return readOrNull(`/proc/${pid}/maps`);
}

/** Distinct file paths mapped into the process (libraries, the executable). */
export function mappedFiles(pid: number): string[] | null {
  const maps = processMaps(pid);
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

/**
 * How the text (the r-xp mapping) of the first file matching `name` in pid
 * differs from that file: bytes that differ, and how many of them are int3
 * (0xcc, a uprobe's breakpoint). The file is read through
 * /proc/PID/map_files, so it is the very file mapped. null when pid maps no
 * such file (or is gone).
 */
export function textChanges(pid: number, name: RegExp): { path: string; length: number; differ: number; int3: number } | null {
  const maps = processMaps(pid);
  if (maps === null) return null;
  for (const line of maps.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) r-xp ([0-9a-f]+) \S+ \d+\s+(\S+)$/.exec(line);
    if (!m || !name.test(m[4]!)) continue;
    const start = BigInt(`0x${m[1]}`);
    const length = Number(BigInt(`0x${m[2]}`) - start);
    const file = Buffer.alloc(length);
    const mem = Buffer.alloc(length);
    try {
      readAll(`/proc/${pid}/map_files/${m[1]}-${m[2]}`, file, parseInt(m[3]!, 16));
      readAll(`/proc/${pid}/mem`, mem, start);
    } catch {
      return null;
    }
    let differ = 0;
    let int3 = 0;
    for (let i = 0; i < length; i++)
      if (file[i] !== mem[i]) {
        differ++;
        if (mem[i] === 0xcc) int3++;
      }
    return { path: m[4]!, length, differ, int3 };
  }
  return null;
}

function readAll(path: string, into: Buffer, position: number | bigint): void {
  const fd = openSync(path, "r");
  try {
    for (let done = 0; done < into.length;) {
      const n = readSync(fd, into, done, into.length - done, typeof position === "bigint" ? position + BigInt(done) : position + done);
      if (n <= 0) throw new Error(`${path}: short read`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}
