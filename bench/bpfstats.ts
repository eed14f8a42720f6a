/**
 * BPF program run-time statistics for the benchmark's diagnostic phase.
 *
 * enableBpfStats() calls libbpf's bpf_enable_stats(BPF_STATS_RUN_TIME): the
 * kernel then times every BPF program run until the returned fd is closed
 * (nothing global is left switched on if this process dies). programStats(pid)
 * finds the BPF programs the process holds (prog_id in /proc/<pid>/fdinfo) and
 * reads their names, run counts and run time with `bpftool prog show --json`.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dlopen, FFIType } from "bun:ffi";

const BPF_STATS_RUN_TIME = 0;

export interface StatsHandle {
  close(): void;
}

/** Turns on BPF run-time stats for as long as the handle is open; null (with why) when unavailable. */
export function enableBpfStats(): StatsHandle | string {
  let lib;
  try {
    lib = dlopen("libbpf.so.1", { bpf_enable_stats: { args: [FFIType.i32], returns: FFIType.i32 } });
  } catch (e) {
    return `libbpf.so.1: ${(e as Error).message}`;
  }
  const fd = lib.symbols.bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) {
    lib.close();
    return `bpf_enable_stats failed (${fd})`;
  }
  const libc = dlopen("libc.so.6", { close: { args: [FFIType.i32], returns: FFIType.i32 } });
  return {
    close() {
      libc.symbols.close(fd);
      libc.close();
      lib.close();
    },
  };
}

export interface ProgStat {
  id: number;
  name: string;
  type: string;
  runCnt: number;
  runTimeNs: number;
}

/** BPF programs held open by pid, with their run statistics. */
export function programStats(pid: number): ProgStat[] {
  const ids = new Set<number>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fdinfo`);
  } catch {
    return [];
  }
  for (const fd of fds) {
    let info: string;
    try {
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, "latin1");
    } catch {
      continue;
    }
    const m = /^prog_id:\s*(\d+)/m.exec(info);
    if (m) ids.add(Number(m[1]));
  }
  if (ids.size === 0) return [];
  const bpftool = Bun.which("bpftool") ?? (Bun.which("bpftool", { PATH: "/usr/sbin:/sbin" }) || null);
  if (!bpftool) return [];
  const r = Bun.spawnSync([bpftool, "prog", "show", "--json"]);
  if (!r.success) return [];
  let all: { id: number; name?: string; type: string; run_cnt?: number; run_time_ns?: number }[];
  try {
    all = JSON.parse(r.stdout.toString());
  } catch {
    return [];
  }
  return all
    .filter((p) => ids.has(p.id))
    .map((p) => ({ id: p.id, name: p.name ?? "?", type: p.type, runCnt: p.run_cnt ?? 0, runTimeNs: p.run_time_ns ?? 0 }));
}
