/**
 * Uprobes as plain file descriptors: perf_event_open on the uprobe PMU plus a
 * BPF perf-event link carrying a cookie. Unlike libbpf's links, detaching is
 * just close(2) on two fds, which any thread may do: unregistering a uprobe
 * waits for an RCU grace period (hundreds of ms here), and that wait must not
 * block the thread that attaches new processes.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readFileSync } from "node:fs";
import { close, errno, SysError } from "./libc.ts";

const sys = dlopen("libc.so.6", {
  // syscall(2) is variadic; on x86-64 integer and pointer arguments travel alike.
  syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64 },
}).symbols;

const SYS_perf_event_open = 298; // x86-64
const SYS_bpf = 321;
const BPF_LINK_CREATE = 28;
const BPF_PERF_EVENT = 41;
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
  const perfFd = Number(sys.syscall(SYS_perf_event_open, ptr(attr), s.pid, -1, -1, PERF_FLAG_FD_CLOEXEC));
  if (perfFd < 0) throw new SysError(`perf_event_open(${what})`, errno());
  // union bpf_attr.link_create: prog_fd@0 target_fd@4 attach_type@8 flags@12 perf_event.bpf_cookie@16
  const la = Buffer.alloc(64);
  la.writeUInt32LE(s.progFd, 0);
  la.writeUInt32LE(perfFd, 4);
  la.writeUInt32LE(BPF_PERF_EVENT, 8);
  la.writeBigUInt64LE(s.cookie, 16);
  const linkFd = Number(sys.syscall(SYS_bpf, BPF_LINK_CREATE, ptr(la), la.length, 0, 0));
  if (linkFd < 0) {
    const e = errno();
    close(perfFd);
    throw new SysError(`BPF_LINK_CREATE(${what})`, e);
  }
  return { perfFd, linkFd };
}

const BPF_MAP_UPDATE_ELEM = 2;

/** bpf(BPF_MAP_UPDATE_ELEM, BPF_ANY) without libbpf, for threads that must not call it. */
export function mapUpdateRaw(mapFd: number, key: Uint8Array, value: Uint8Array): boolean {
  // union bpf_attr: map_fd@0 key@8 value@16 flags@24
  const attr = Buffer.alloc(32);
  attr.writeUInt32LE(mapFd, 0);
  attr.writeBigUInt64LE(BigInt(ptr(key)), 8);
  attr.writeBigUInt64LE(BigInt(ptr(value)), 16);
  return Number(sys.syscall(SYS_bpf, BPF_MAP_UPDATE_ELEM, ptr(attr), attr.length, 0, 0)) === 0;
}

export function detachUprobe(fds: UprobeFds): void {
  close(fds.linkFd);
  close(fds.perfFd);
}
