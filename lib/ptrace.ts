/**
 * ptrace(2) as a tracer uses it with PTRACE_SEIZE: attach without stopping,
 * restart, listen in a group stop, interrupt, detach, and the wait4 loop that
 * reports the tracees' stops. Every call must come from the thread that
 * seized the tracee: ptrace binds a tracee to one tracer thread.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { errno, SysError } from "./libc.ts";

const c = dlopen("libc.so.6", {
  ptrace: { args: [FFIType.i64, FFIType.i32, FFIType.u64, FFIType.u64], returns: FFIType.i64 },
  wait4: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
}).symbols;

const PTRACE_CONT = 7;
const PTRACE_DETACH = 17;
const PTRACE_SETOPTIONS = 0x4200;
const PTRACE_GETEVENTMSG = 0x4201;
const PTRACE_GETSIGINFO = 0x4202;
const PTRACE_SEIZE = 0x4206;
const PTRACE_INTERRUPT = 0x4207;
const PTRACE_LISTEN = 0x4208;

export const PTRACE_O_TRACEFORK = 0x2;
export const PTRACE_O_TRACEVFORK = 0x4;
export const PTRACE_O_TRACECLONE = 0x8;
export const PTRACE_O_TRACEEXEC = 0x10;

export const PTRACE_EVENT_FORK = 1;
export const PTRACE_EVENT_VFORK = 2;
export const PTRACE_EVENT_CLONE = 3;
export const PTRACE_EVENT_EXEC = 4;
export const PTRACE_EVENT_STOP = 128;

/** si_code of a signal the kernel sent itself (bpf_send_signal among others). */
export const SI_KERNEL = 0x80;

const ESRCH = 3;

function call(name: string, req: number, tid: number, addr: number | bigint, data: number | bigint): void {
  if (Number(c.ptrace(req, tid, BigInt(addr), BigInt(data))) < 0) throw new SysError(`${name}(${tid})`, errno());
}

/** Attach to one thread without stopping it. */
export function seize(tid: number, options: number): void {
  call("PTRACE_SEIZE", PTRACE_SEIZE, tid, 0, options);
}

export function setOptions(tid: number, options: number): void {
  call("PTRACE_SETOPTIONS", PTRACE_SETOPTIONS, tid, 0, options);
}

/**
 * Restart a stopped tracee, delivering sig (0: none). False when the tracee
 * is gone (killed meanwhile: ESRCH); other errors throw.
 */
export function cont(tid: number, sig = 0): boolean {
  if (Number(c.ptrace(PTRACE_CONT, tid, 0n, BigInt(sig))) >= 0) return true;
  const e = errno();
  if (e === ESRCH) return false;
  throw new SysError(`PTRACE_CONT(${tid})`, e);
}

/** Leave a tracee in its group stop, but let SIGCONT end it as if untraced. */
export function listen(tid: number): boolean {
  if (Number(c.ptrace(PTRACE_LISTEN, tid, 0n, 0n)) >= 0) return true;
  if (errno() === ESRCH) return false;
  throw new SysError(`PTRACE_LISTEN(${tid})`, errno());
}

/** Ask a running tracee to stop for the tracer (it reports PTRACE_EVENT_STOP). */
export function interrupt(tid: number): boolean {
  return Number(c.ptrace(PTRACE_INTERRUPT, tid, 0n, 0n)) >= 0;
}

/** Detach a tracee in a ptrace stop, delivering sig. */
export function detach(tid: number, sig = 0): boolean {
  return Number(c.ptrace(PTRACE_DETACH, tid, 0n, BigInt(sig))) >= 0;
}

const siginfo = new Uint8Array(128);
const siview = new DataView(siginfo.buffer);

/** The signal a tracee stopped with: number, si_code and sender pid. */
export function signalInfo(tid: number): { signo: number; code: number; pid: number } | null {
  if (Number(c.ptrace(PTRACE_GETSIGINFO, tid, 0n, BigInt(ptr(siginfo)))) < 0) return null;
  return { signo: siview.getInt32(0, true), code: siview.getInt32(8, true), pid: siview.getInt32(16, true) };
}

const msg = new BigUint64Array(1);

/** The event message of the last ptrace event stop (a new child's pid, ...). */
export function eventMessage(tid: number): number | null {
  if (Number(c.ptrace(PTRACE_GETEVENTMSG, tid, 0n, BigInt(ptr(msg)))) < 0) return null;
  return Number(msg[0]!);
}

const WNOHANG = 1;
const __WNOTHREAD = 0x20000000;
const __WALL = 0x40000000;

export type WaitResult =
  | { tid: number; kind: "stopped"; sig: number; event: number }
  | { tid: number; kind: "exited"; code: number }
  | { tid: number; kind: "killed"; sig: number };

const status = new Int32Array(1);

/**
 * One pending state change of this thread's tracees (and children), without
 * blocking; null when none is pending. Only this thread's: another thread's
 * children are none of the tracer's business.
 */
export function waitAny(): WaitResult | null {
  const tid = c.wait4(-1, ptr(status), WNOHANG | __WALL | __WNOTHREAD, null);
  if (tid <= 0) return null; // 0: nothing pending; -1 ECHILD: no tracee at all
  const s = status[0]!;
  if ((s & 0xff) === 0x7f) return { tid, kind: "stopped", sig: (s >> 8) & 0xff, event: (s >>> 16) & 0xffff };
  if ((s & 0x7f) === 0) return { tid, kind: "exited", code: (s >> 8) & 0xff };
  return { tid, kind: "killed", sig: s & 0x7f };
}
