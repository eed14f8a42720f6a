/**
 * The few libc calls Bun does not expose: memory mapping, epoll, eventfd,
 * cross-process memory writes and raw signals. Each wrapper turns a -1 return
 * into a SysError carrying errno and the call.
 */
import { dlopen, FFIType, ptr, read, type Pointer } from "bun:ffi";

const libc = dlopen("libc.so.6", {
  __errno_location: { args: [], returns: FFIType.ptr },
  strerror: { args: [FFIType.i32], returns: FFIType.cstring },
  mmap: { args: [FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.ptr },
  munmap: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
  epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  process_vm_writev: {
    args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.u64, FFIType.u64],
    returns: FFIType.i64,
  },
  process_vm_readv: {
    args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.u64, FFIType.u64],
    returns: FFIType.i64,
  },
  pread: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i64], returns: FFIType.i64 },
  kill: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  mount: { args: [FFIType.cstring, FFIType.cstring, FFIType.cstring, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  vsnprintf: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  sysconf: { args: [FFIType.i32], returns: FFIType.i64 },
  clock_gettime: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  pwrite: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i64], returns: FFIType.i64 },
  open: { args: [FFIType.cstring, FFIType.i32], returns: FFIType.i32 },
  syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64 },
  prctl: { args: [FFIType.i32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
});
const c = libc.symbols;

export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}: ${strerror(errno)} (errno ${errno})`);
    this.name = "SysError";
  }
}

export function errno(): number {
  return read.i32(c.__errno_location()!, 0);
}

export function strerror(e: number): string {
  return String(c.strerror(e));
}

function check(call: string, rc: number | bigint): number {
  const n = Number(rc);
  if (n < 0) throw new SysError(call, errno());
  return n;
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
const MAP_FAILED = 0xffffffffffffffffn;

export function pageSize(): number {
  return Number(c.sysconf(30 /* _SC_PAGESIZE */));
}

export function mmap(length: number, prot: number, flags: number, fd: number, offset: number): Pointer {
  const p = c.mmap(null, length, prot, flags, fd, offset) as Pointer | null;
  if (p === null || BigInt(p) === MAP_FAILED) throw new SysError("mmap", errno());
  return p;
}

export function munmap(p: Pointer, length: number): void {
  check("munmap", c.munmap(p, length));
}

export const EPOLLIN = 1;
const EPOLL_CTL_ADD = 1;
const EPOLL_CLOEXEC = 0o2000000;

export function epollCreate(): number {
  return check("epoll_create1", c.epoll_create1(EPOLL_CLOEXEC));
}

/** Register fd; the event's data is the fd itself so waiters can tell sources apart. */
export function epollAdd(epfd: number, fd: number, events = EPOLLIN): void {
  const ev = Buffer.alloc(12); // struct epoll_event is packed on x86-64
  ev.writeUInt32LE(events, 0);
  ev.writeUInt32LE(fd, 4);
  check("epoll_ctl", c.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ptr(ev)));
}

const epollOut = Buffer.alloc(12 * 8);

/** Wait up to timeoutMs; returns the fds that are ready (EINTR counts as none). */
export function epollWait(epfd: number, timeoutMs: number): number[] {
  const n = c.epoll_wait(epfd, ptr(epollOut), 8, timeoutMs);
  if (n < 0) {
    if (errno() === 4 /* EINTR */) return [];
    throw new SysError("epoll_wait", errno());
  }
  const fds: number[] = [];
  for (let i = 0; i < n; i++) fds.push(epollOut.readUInt32LE(i * 12 + 4));
  return fds;
}

export function eventfd(): number {
  return check("eventfd", c.eventfd(0, 0o2000000 /* EFD_CLOEXEC */ | 0o4000 /* EFD_NONBLOCK */));
}

const u64buf = Buffer.alloc(8);

export function eventfdSignal(fd: number): void {
  u64buf.writeBigUInt64LE(1n);
  c.write(fd, ptr(u64buf), 8);
}

export function eventfdDrain(fd: number): void {
  c.read(fd, ptr(u64buf), 8);
}

export function close(fd: number): void {
  c.close(fd);
}

const iovLocal = Buffer.alloc(16);
const iovRemote = Buffer.alloc(16);

/** Write data into another process at addr; returns bytes written (may be short). */
export function processVmWrite(pid: number, addr: bigint, data: Uint8Array): number {
  return processVm("process_vm_writev", pid, addr, data);
}

/** Read len bytes of another process at addr into data; returns bytes read (may be short). */
export function processVmRead(pid: number, addr: bigint, data: Uint8Array): number {
  return processVm("process_vm_readv", pid, addr, data);
}

/**
 * The NUL-terminated string at addr in pid, at most max bytes (latin1), or
 * null when it cannot be read or has no NUL within max. Read a page at a
 * time: process_vm_readv does not split one transfer, so a read running
 * past the end of a mapping would fail as a whole.
 */
export function processVmReadString(pid: number, addr: bigint, max: number): string | null {
  const out: Uint8Array[] = [];
  let at = addr;
  let left = max;
  while (left > 0) {
    const chunk = new Uint8Array(Math.min(left, Number(4096n - (at % 4096n))));
    let n: number;
    try {
      n = processVmRead(pid, at, chunk);
    } catch {
      return null;
    }
    if (n <= 0) return null;
    const nul = chunk.subarray(0, n).indexOf(0);
    if (nul >= 0) {
      out.push(chunk.subarray(0, nul));
      return Buffer.concat(out).toString("latin1");
    }
    out.push(chunk.subarray(0, n));
    at += BigInt(n);
    left -= n;
  }
  return null;
}

/** One process_vm_readv/writev call: data, here, against as many bytes at addr in pid. */
function processVm(call: "process_vm_readv" | "process_vm_writev", pid: number, addr: bigint, data: Uint8Array): number {
  iovLocal.writeBigUInt64LE(BigInt(ptr(data)), 0);
  iovLocal.writeBigUInt64LE(BigInt(data.byteLength), 8);
  iovRemote.writeBigUInt64LE(addr, 0);
  iovRemote.writeBigUInt64LE(BigInt(data.byteLength), 8);
  return check(call, c[call](pid, ptr(iovLocal), 1, ptr(iovRemote), 1, 0));
}

/** Read another process's memory at addr through /proc/<pid>/mem (also where process_vm_readv cannot). */
export function procMemRead(pid: number, addr: bigint, data: Uint8Array): number {
  return procMem("pread", pid, addr, data);
}

export const SIGKILL = 9;
export const SIGCONT = 18;
export const SIGSTOP = 19;

/**
 * Write data into another process at addr through /proc/<pid>/mem, which
 * (unlike process_vm_writev) writes through read-only protections, as a
 * debugger does. Returns bytes written.
 */
export function procMemWrite(pid: number, addr: bigint, data: Uint8Array): number {
  return procMem("pwrite", pid, addr, data);
}

/** One pread or pwrite of data at addr through /proc/<pid>/mem, opened for just that. */
function procMem(call: "pread" | "pwrite", pid: number, addr: bigint, data: Uint8Array): number {
  const mode = call === "pwrite" ? 1 /* O_WRONLY */ : 0 /* O_RDONLY */;
  const fd = c.open(Buffer.from(`/proc/${pid}/mem\0`), mode | 0o2000000 /* O_CLOEXEC */);
  if (fd < 0) throw new SysError(`open /proc/${pid}/mem`, errno());
  try {
    return check(`${call} /proc/<pid>/mem`, c[call](fd, ptr(data), data.byteLength, addr));
  } finally {
    c.close(fd);
  }
}

const SYS_pidfd_open = 434;
const SYS_pidfd_getfd = 438;

/** A pidfd for pid (the process, even if its number is reused later). */
export function pidfdOpen(pid: number): number {
  return check(`pidfd_open(${pid})`, c.syscall(SYS_pidfd_open, pid, 0, 0));
}

/** A duplicate, in this process, of fd of the process behind pidfd. */
export function pidfdGetfd(pidfd: number, fd: number): number {
  return check(`pidfd_getfd(${fd})`, c.syscall(SYS_pidfd_getfd, pidfd, fd, 0));
}

const SYS_bpf = 321; // x86-64

/** bpf(2) with attr as its union bpf_attr: the raw result, -1 with errno set on failure. */
export function bpfSyscall(cmd: number, attr: Uint8Array): number {
  return Number(c.syscall(SYS_bpf, cmd, ptr(attr), attr.length));
}

export const SHUT_RDWR = 2;

export function shutdown(fd: number, how: number): void {
  check("shutdown", c.shutdown(fd, how));
}

const PR_SET_DUMPABLE = 4;
const PR_SET_NO_NEW_PRIVS = 38;

/** This process and every descendant: execve never grants privileges again (setuid, file caps). */
export function setNoNewPrivs(): void {
  check("prctl(PR_SET_NO_NEW_PRIVS, 1)", c.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
}

/** Not dumpable: no core file, and /proc/<pid>/{mem,environ,...} owned by root, closed to ptrace by others. */
export function setNotDumpable(): void {
  check("prctl(PR_SET_DUMPABLE, 0)", c.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
}

/** kill(2) without Node's argument checks; false when the process is gone. */
export function kill(pid: number, sig: number): boolean {
  if (c.kill(pid, sig) === 0) return true;
  const e = errno();
  if (e === 3 /* ESRCH */) return false;
  throw new SysError(`kill(${pid}, ${sig})`, e);
}

export function mount(source: string, target: string, fstype: string): void {
  check(
    `mount ${fstype} on ${target}`,
    c.mount(Buffer.from(source + "\0"), Buffer.from(target + "\0"), Buffer.from(fstype + "\0"), 0, null),
  );
}

/** Format a printf-style (fmt, va_list) pair, as handed to C log callbacks. */
// libbpf prints a whole verifier log in one call; a va_list cannot be replayed,
// so format once into a buffer large enough for any log libbpf keeps.
const formatBuf = Buffer.alloc(1 << 20);

export function vformat(fmt: Pointer, args: Pointer): string {
  const out = formatBuf;
  const n = c.vsnprintf(ptr(out), out.length, fmt, args);
  return out.toString("utf8", 0, Math.max(0, Math.min(n, out.length - 1)));
}

const CLOCK_MONOTONIC = 1;
const timespec = new BigInt64Array(2);

/** CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns (Bun's hrtime is not it). */
export function monotonicNs(): bigint {
  if (c.clock_gettime(CLOCK_MONOTONIC, ptr(timespec)) !== 0) throw new SysError("clock_gettime", errno());
  return BigInt(timespec[0]!) * 1_000_000_000n + BigInt(timespec[1]!);
}
