/**
 * Program groups loaded on demand (bpf-object.ts): `kloak exec` loads the TLS
 * programs when a process first needs them, the Go programs when a Go
 * executable appears. The later group must run on
 * the very maps of the first load, or a Go write would look up placeholders
 * in maps nobody fills. Real loads on this kernel; the end-to-end case (a Go
 * client under `kloak exec`, substituted) is test/runtime/go.test.ts.
 */
import { afterEach, describe, expect, test } from "bun:test";
import {
  GO_PROGRAMS,
  loadGroup,
  loadInMode,
  loadObject,
  MODE_PROGRAMS,
  objectBytes,
  SYSCALL_BACKUP_PROGRAM,
  SYSCALL_PROGRAM,
} from "../../src/dataplane/bpf-object.ts";
import { LAYOUT } from "../../src/dataplane/abi.ts";
import { progRecursionMisses, type BpfObject } from "../../lib/libbpf.ts";
import { NodeFacts, syscallRunsSkippable } from "../../src/dataplane/kernel-support.ts";

const opened: BpfObject[] = [];
afterEach(() => {
  for (const o of opened.splice(0).reverse()) o.close();
});
const keep = <T extends { obj: BpfObject }>(r: T): T => {
  opened.push(r.obj);
  return r;
};
const u32 = (n: number) => new Uint8Array(new Uint32Array([n]).buffer);
/** kloak_cfg.backup_syscalls as loaded (the frozen .rodata.config map). */
const configFlag = (obj: BpfObject): number => {
  const value = new Uint8Array(LAYOUT.kloak_config.size);
  if (!obj.map(".rodata.config").lookup(u32(0), value)) throw new Error(".rodata.config has no entry 0");
  return new DataView(value.buffer).getUint32(LAYOUT.kloak_config.fields.backup_syscalls, true);
};

describe("program groups", () => {
  /** This node's facts, but told the kernel is `kernel` (the open watch and the syscall backup depend on it: kernel-support.ts syscallRunsSkippable). */
  const factsOn = (kernel: [number, number]) => {
    const facts = new NodeFacts();
    facts.kernel = () => kernel;
    return facts;
  };

  test("on demand in stop mode, the TLS and Go programs are left out of the first load; the process programs are in it", async () => {
    const loaded = keep(loadObject(await objectBytes(), { mode: "stop", scanCap: 16384, onDemand: true, facts: factsOn([6, 18]) }));
    expect(loaded.deferred).toEqual(["tls", "go"]);
    const names = loaded.budget.map((b) => b.program);
    expect(names).toContain("kloak_exec");
    expect(names).toContain("kloak_sys_enter");
    for (const p of [...MODE_PROGRAMS.stop, GO_PROGRAMS.stop]) {
      expect(names).not.toContain(p);
      expect(() => loaded.obj.program(p).fd).toThrow();
    }
  });

  test("on demand in stop mode on a kernel whose syscall programs can skip runs (7.0+), the TLS programs load at once: an open of libssl may go unseen", async () => {
    const loaded = keep(loadObject(await objectBytes(), { mode: "stop", scanCap: 16384, onDemand: true, facts: factsOn([7, 3]) }));
    expect(loaded.deferred).toEqual(["go"]);
    expect(loaded.budget.map((b) => b.program)).toEqual(expect.arrayContaining([...MODE_PROGRAMS.stop]));
  });

  test("the syscall program's backup (bpf/sysruns.h) loads, and its config flag is set, only where syscall runs can be skipped (7.0+)", async () => {
    const bytes = await objectBytes();
    const older = keep(loadObject(bytes, { mode: "stop", scanCap: 16384, onDemand: true, facts: factsOn([6, 18]) }));
    expect(older.backupSyscalls).toBe(false);
    expect(older.budget.map((b) => b.program)).not.toContain(SYSCALL_BACKUP_PROGRAM);
    expect(configFlag(older.obj)).toBe(0);
    const newer = keep(loadObject(bytes, { mode: "stop", scanCap: 16384, onDemand: true, facts: factsOn([7, 3]) }));
    expect(newer.backupSyscalls).toBe(true);
    expect(newer.budget.map((b) => b.program)).toEqual(expect.arrayContaining([SYSCALL_PROGRAM, SYSCALL_BACKUP_PROGRAM]));
    expect(configFlag(newer.obj)).toBe(1);
    expect(syscallRunsSkippable([6, 18])).toBe(false);
    expect(syscallRunsSkippable([7, 0])).toBe(true);
  });

  test("the kernel's count of a program's skipped runs reads as a number: 0 for one never attached; a bad fd is a clear error", async () => {
    const loaded = keep(loadObject(await objectBytes(), { mode: "stop", scanCap: 16384, onDemand: true }));
    expect(progRecursionMisses(loaded.obj.program("kloak_sys_enter").fd)).toBe(0n);
    expect(() => progRecursionMisses(999_999)).toThrow(/bpf_obj_get_info_by_fd\(fd 999999\)/);
  });

  test("without onDemand everything loads at once, as before", async () => {
    const loaded = keep(loadObject(await objectBytes(), { mode: "auto", scanCap: 16384 }));
    expect(loaded.deferred).toEqual([]);
    expect(loaded.budget.map((b) => b.program)).toContain(GO_PROGRAMS[loaded.mode]);
  });

  test("a group loaded later shares every map of the first load (an entry written through one is read through the other)", async () => {
    const bytes = await objectBytes();
    const base = keep(loadInMode(bytes, "stop", { scanCap: 16384 }, "single", ["process", "tls"]));
    const go = keep(loadGroup(bytes, base.obj, "stop", "single", "go"));
    expect(go.budget.map((b) => b.program)).toEqual([GO_PROGRAMS.stop]);
    expect(go.obj.program(GO_PROGRAMS.stop).fd).toBeGreaterThan(0);
    // A map the Go program reads (placeholders, by tail) and one it writes (in-flight Go writes): the same kernel maps.
    for (const name of ["kloak_go_layouts", "kloak_procs"] as const) {
      const key = u32(4242);
      const value = new Uint8Array(name === "kloak_procs" ? 8 : 40).fill(7);
      base.obj.map(name).update(key, value);
      const seen = new Uint8Array(value.length);
      expect(go.obj.map(name).lookup(key, seen)).toBe(true);
      expect(seen).toEqual(value);
      go.obj.map(name).delete(key);
      expect(base.obj.map(name).lookup(key, seen)).toBe(false);
    }
  });

  test("a group cannot be loaded onto an object that is not loaded: a clear error, nothing left open", async () => {
    const bytes = await objectBytes();
    const base = keep(loadInMode(bytes, "stop", { scanCap: 16384 }, "single", ["process"]));
    base.obj.close();
    expect(() => loadGroup(bytes, base.obj, "stop", "single", "go")).toThrow(/already closed/);
  });
});
