/**
 * Uprobes as plain file descriptors: perf_event_open on the uprobe PMU plus a
 * BPF perf-event link carrying a cookie. Unlike libbpf's links, detaching is
 * just close(2) on two fds, which any thread may do: unregistering a uprobe
 * waits for an RCU grace period (hundreds of ms here), and that wait must not
 * block the thread that attaches new processes.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readFileSync } from "node:fs";
import { bpfSyscall, close, errno, SysError } from "./libc.ts";

const sys = dlopen("libc.so.6", {
  // syscall(2) is variadic; on x86-64 integer and pointer arguments travel alike.
  syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64 },
}).symbols;

const SYS_perf_event_open = 298; // x86-64
const BPF_LINK_CREATE = 28;
const BPF_PERF_EVENT = 41;
export const BPF_TRACE_UPROBE_MULTI = 48;
const BPF_F_UPROBE_MULTI_RETURN = 1;
const PERF_FLAG_FD_CLOEXEC = 8;
const PERF_ATTR_SIZE = 128;

let pmu: { type: number; retprobeBit: number } | undefined;

function uprobePmu() {
  if (!pmu) {
    const base = "/sys/bus/event_source/devices/uprobe";
    const type = Number(readFileSync(`${base}/type`, "latin1").trim());
    const m = /config:(\d+)/.exec(readFileSync(`${base}/format/retprobe`, "latin1"));
    pmu = { type, retprobeBit: m ? Number(m[1]) : 0 };
  }
  return pmu;
}

export interface UprobeSpec {
  progFd: number;
  pid: number; // -1: every process
  path: string;
  offset: number;
  retprobe: boolean;
  cookie: bigint;
}

/** Both fds of an attached uprobe; close both to detach. */
export interface UprobeFds {
  perfFd: number;
  linkFd: number;
}

export function attachUprobe(s: UprobeSpec): UprobeFds {
  const { type, retprobeBit } = uprobePmu();
  const path = Buffer.from(s.path + "\0");
  const attr = Buffer.alloc(PERF_ATTR_SIZE);
  attr.writeUInt32LE(type, 0);
  attr.writeUInt32LE(PERF_ATTR_SIZE, 4);
  attr.writeBigUInt64LE(s.retprobe ? 1n << BigInt(retprobeBit) : 0n, 8); // config
  attr.writeBigUInt64LE(BigInt(ptr(path)), 56); // config1: uprobe_path
  attr.writeBigUInt64LE(BigInt(s.offset), 64); // config2: probe_offset
  const what = `${s.retprobe ? "uretprobe" : "uprobe"} ${s.path}+0x${s.offset.toString(16)} pid ${s.pid}`;
  // Every process (pid -1) takes one CPU: the kernel runs the program for every hit, on any CPU.
  const perfFd = Number(sys.syscall(SYS_perf_event_open, ptr(attr), s.pid, s.pid < 0 ? 0 : -1, -1, PERF_FLAG_FD_CLOEXEC));
  if (perfFd < 0) throw new SysError(`perf_event_open(${what})`, errno());
  // union bpf_attr.link_create: prog_fd@0 target_fd@4 attach_type@8 flags@12 perf_event.bpf_cookie@16
  const la = Buffer.alloc(64);
  la.writeUInt32LE(s.progFd, 0);
  la.writeUInt32LE(perfFd, 4);
  la.writeUInt32LE(BPF_PERF_EVENT, 8);
  la.writeBigUInt64LE(s.cookie, 16);
  const linkFd = bpfSyscall(BPF_LINK_CREATE, la);
  if (linkFd < 0) {
    const e = errno();
    close(perfFd);
    throw new SysError(`BPF_LINK_CREATE(${what})`, e);
  }
  return { perfFd, linkFd };
}

export interface UprobeMultiSpec {
  /** loaded with expected attach type BPF_TRACE_UPROBE_MULTI */
  progFd: number;
  pid: number; // 0: every process
  path: string;
  offsets: number[];
  cookies: bigint[];
  retprobe: boolean;
}

/**
 * One BPF link for many offsets of one file (kernel 6.6+). Besides one
 * syscall instead of two per offset, closing it unregisters every offset
 * behind a single RCU wait, not one wait per offset.
 */
export function attachUprobeMulti(s: UprobeMultiSpec): number {
  if (s.offsets.length === 0 || s.offsets.length !== s.cookies.length)
    throw new RangeError("attachUprobeMulti: need one cookie per offset, at least one offset");
  const path = Buffer.from(s.path + "\0");
  const offsets = new BigUint64Array(s.offsets.map(BigInt));
  const cookies = new BigUint64Array(s.cookies);
  // union bpf_attr.link_create: prog_fd@0 target_fd@4 attach_type@8 flags@12
  // uprobe_multi: path@16 offsets@24 ref_ctr_offsets@32 cookies@40 cnt@48 flags@52 pid@56
  const la = Buffer.alloc(64);
  la.writeUInt32LE(s.progFd, 0);
  la.writeUInt32LE(BPF_TRACE_UPROBE_MULTI, 8);
  la.writeBigUInt64LE(BigInt(ptr(path)), 16);
  la.writeBigUInt64LE(BigInt(ptr(offsets)), 24);
  la.writeBigUInt64LE(BigInt(ptr(cookies)), 40);
  la.writeUInt32LE(s.offsets.length, 48);
  la.writeUInt32LE(s.retprobe ? BPF_F_UPROBE_MULTI_RETURN : 0, 52);
  la.writeUInt32LE(s.pid, 56);
  const fd = bpfSyscall(BPF_LINK_CREATE, la);
  if (fd < 0) {
    const what = `${s.retprobe ? "uretprobe" : "uprobe"}.multi ${s.path} (${s.offsets.length} offsets) pid ${s.pid}`;
    throw new SysError(`BPF_LINK_CREATE(${what})`, errno());
  }
  return fd;
}

const BPF_PROG_LOAD = 5;
const BPF_PROG_TYPE_KPROBE = 2;
const EBADF = 9;
let multiSupported: boolean | undefined;

/**
 * A program for multi-uprobe links that does nothing (`r0 = 0; exit`): its
 * fd, or -1 with errno set when the kernel refuses it (no such links).
 */
export function loadEmptyUprobeMultiProgram(): number {
  const insns = Buffer.alloc(16);
  insns.writeUInt8(0xb7, 0); // r0 = 0
  insns.writeUInt8(0x95, 8); // exit
  const license = Buffer.from("GPL\0");
  // union bpf_attr (BPF_PROG_LOAD): prog_type@0 insn_cnt@4 insns@8 license@16 expected_attach_type@68
  const pa = Buffer.alloc(128);
  pa.writeUInt32LE(BPF_PROG_TYPE_KPROBE, 0);
  pa.writeUInt32LE(2, 4);
  pa.writeBigUInt64LE(BigInt(ptr(insns)), 8);
  pa.writeBigUInt64LE(BigInt(ptr(license)), 16);
  pa.writeUInt32LE(BPF_TRACE_UPROBE_MULTI, 68);
  return bpfSyscall(BPF_PROG_LOAD, pa);
}

/**
 * Whether this kernel has multi-uprobe links: load a two-instruction program
 * for them and link it to "/" — a kernel that knows the link type rejects the
 * directory (EBADF), an older one the attach type (EINVAL).
 */
export function uprobeMultiSupported(): boolean {
  if (multiSupported !== undefined) return multiSupported;
  const progFd = loadEmptyUprobeMultiProgram();
  if (progFd < 0) return (multiSupported = false);
  try {
    attachUprobeMulti({ progFd, pid: 0, path: "/", offsets: [0], cookies: [0n], retprobe: false });
    multiSupported = true; // cannot happen: "/" is no file
  } catch (e) {
    multiSupported = (e as SysError).errno === EBADF;
  } finally {
    close(progFd);
  }
  return multiSupported;
}
