/**
 * The prebuilt CO-RE object, embedded in the executable, and how it is
 * loaded: the node's requirements first (kernel-support.ts), then the rewrite
 * mode, then the load itself with the verifier's statistics captured for every
 * program. This is the only place that decides the mode: `kloak exec`, the
 * agent and `kloak doctor` all call loadObject().
 */
import { createHash } from "node:crypto";
import { BPF_LOG_STATS, BpfError, BpfObject, setLibbpfDebug, type BpfMap, type BpfProgram } from "../../lib/libbpf.ts";
import { BPF_TRACE_UPROBE_MULTI, uprobeMultiSupported } from "../../lib/uprobe.ts";
import objectPath from "../../bpf/kloak.bpf.o" with { type: "file" };
import { EnvironmentError } from "../errors.ts";
import { LAYOUT, Mode } from "./abi.ts";
import type { DataSectionName, MapName, ProgramName } from "./abi.generated.ts";
import { violationMask } from "./refusals.ts";
import {
  NodeFacts,
  syscallRunsSkippable,
  probeRewriteMode,
  requirementChecks,
  requirementFailure,
  testedStatus,
  type RewriteMode,
} from "./kernel-support.ts";


// KLOAK_LIBBPF_DEBUG=1: libbpf's full log on stderr (doctor's remedies point
// there). Set as this module loads: every command that calls libbpf imports it.
setLibbpfDebug(Boolean(process.env.KLOAK_LIBBPF_DEBUG));

/**
 * The object as loaded: its maps and programs by the names the generated ABI
 * lists (abi.generated.ts), so a name the object lacks is a type error.
 */
export interface KloakObject extends BpfObject {
  map(name: MapName | DataSectionName): BpfMap;
  program(name: ProgramName): BpfProgram;
}

export async function objectBytes(): Promise<Uint8Array> {
  return Bun.file(objectPath).bytes();
}

/** Identifies the embedded object: the first 16 hex digits of its SHA-256. */
export function objectBuildId(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 16);
}

/**
 * What a successor must share with a running object to take over its maps and
 * links (handover.ts): the same object bytes and the same load-time settings
 * (.rodata.config, map sizes, attach types). 16 hex digits.
 */
export function handoverIdentity(bytes: Uint8Array, s: { mode: RewriteMode; uprobes: UprobeKind; scanCap: number }): string {
  return createHash("sha256")
    .update(bytes)
    .update(JSON.stringify({ mode: s.mode, uprobes: s.uprobes, scanCap: s.scanCap, violations: violationMask() }))
    .digest("hex")
    .slice(0, 16);
}

/** The uprobe programs of each rewrite mode (entry, return); the other mode's are not loaded. */
export const MODE_PROGRAMS: Record<RewriteMode, readonly [entry: ProgramName, ret: ProgramName]> = {
  kernel: ["kloak_tls_kernel", "kloak_tls_ret_kernel"],
  stop: ["kloak_tls_stop", "kloak_tls_ret_stop"],
};

/** The Go crypto/tls program of each mode (bpf/golang.h): entry and every RET, all plain uprobes. */
export const GO_PROGRAMS: Record<RewriteMode, ProgramName> = { kernel: "kloak_go_kernel", stop: "kloak_go_stop" };

/** Process lifecycle: scopes follow fork, exec is held until attached, exit detaches; signals to traced threads wake the tracer. */
export const PROCESS_TRACEPOINTS = ["kloak_fork", "kloak_exec", "kloak_exit", "kloak_signal"] as const satisfies readonly ProgramName[];
/**
 * Stop mode only: a writer held for its request wakes the ring worker once it
 * is off its CPU in the stop (sched_switch), so the worker never polls for the
 * stop. It runs at every context switch of the machine, so kernel mode, which
 * holds no writer for a write, does not load it.
 */
export const STOP_WAKE_PROGRAM: ProgramName = "kloak_switch";

/** The process group's tracepoint programs in a mode. */
export function processTracepoints(mode: RewriteMode): readonly ProgramName[] {
  return mode === "stop" ? [...PROCESS_TRACEPOINTS, STOP_WAKE_PROGRAM] : PROCESS_TRACEPOINTS;
}
/**
 * The syscalls kloak looks at, one raw tracepoint (sys_enter): sends inside
 * TLS calls, which tie a connection to its socket (write, writev, sendto,
 * sendmsg), and opens of TLS libraries while the tls programs are not loaded
 * (open, openat: bpf/libopen.h).
 */
export const SYSCALL_PROGRAM: ProgramName = "kloak_sys_enter";
/**
 * Kernels whose syscall programs can be skipped (kernel-support.ts
 * syscallRunsSkippable): a second program on sys_enter, attached after
 * SYSCALL_PROGRAM, that does its work for the syscalls it was skipped for
 * (bpf/sysruns.h).
 */
export const SYSCALL_BACKUP_PROGRAM: ProgramName = "kloak_sys_enter_backup";
/** The send syscalls of SYSCALL_PROGRAM. */
export const SEND_SYSCALLS = ["write", "writev", "sendto", "sendmsg"] as const;

/** How uprobes are attached: one multi-uprobe link per file (6.6+), or a perf event per offset. */
export type UprobeKind = "multi" | "single";

export interface LoadOptions {
  mode: RewriteMode | "auto";
  scanCap: number;
  /** default: multi-uprobe links where the kernel has them */
  uprobes?: UprobeKind | "auto";
  /** facts already gathered (doctor shares its own) */
  facts?: NodeFacts;
  /** maps to take over (by name -> fd) instead of creating them: a predecessor's, handover.ts */
  reuseMaps?: ReadonlyMap<string, number>;
  /**
   * Load program groups later, when a process first needs them (loadGroup):
   * the go programs when a Go executable appears; in stop mode the tls
   * programs too, when a process opens a TLS library or execs a program that
   * has TLS inside (the caller then watches opens: bpf/libopen.h).
   * Kernel mode's tls programs are its trial (auto falls back to stop mode
   * when they fail), so they load now.
   */
  onDemand?: boolean;
}

/** What the verifier spent on one program: instructions processed, against its limit. */
export interface ProgramBudget {
  program: string;
  insns: number;
  limit: number;
}

export interface LoadedObject {
  obj: KloakObject;
  mode: RewriteMode;
  /** why this mode (probe result, forced, or the fallback and its cause) */
  reason: string;
  uprobes: UprobeKind;
  /** every loaded program, largest first */
  budget: ProgramBudget[];
  /** the groups not loaded yet (onDemand): load each with loadGroup before attaching its programs */
  deferred: ProgramGroup[];
  /** SYSCALL_BACKUP_PROGRAM is loaded: attach it after SYSCALL_PROGRAM */
  backupSyscalls: boolean;
}

/** The object did not load. The message names the mode, the program and the verifier's last lines. */
export class ObjectLoadError extends EnvironmentError {
  constructor(
    message: string,
    readonly mode: RewriteMode,
    /** the program the kernel rejected; null when the failure came before any program (maps, BTF) */
    readonly program: string | null,
    /** the last lines the verifier (or libbpf) printed */
    readonly tail: string[],
  ) {
    super(message);
  }
}

/** Verifier log lines kept in errors: the tail, where the verdict is. */
const TAIL_LINES = 8;
/** Level BPF_LOG_STATS prints only errors and statistics: a few hundred bytes per program. */
const LOG_SIZE = 64 * 1024;

const STATS = /processed (\d+) insns \(limit (\d+)\)/;
/** Lines of a stats-level log that are statistics, not the verdict. */
const STATS_LINE = /^(processed \d+ insns|verification time|stack depth)/;

/**
 * The object's programs in groups loaded together. The first load creates
 * every map; a group can follow later in an object of its own that reuses
 * those maps (loadGroup): a command tree that never does TLS, or never runs
 * a Go executable, never waits for their verification (the two largest
 * programs: ~150 and ~170 ms on this machine).
 */
export type ProgramGroup = "process" | "tls" | "go";
export const PROGRAM_GROUPS: readonly ProgramGroup[] = ["process", "tls", "go"];

function groupPrograms(group: ProgramGroup, mode: RewriteMode, backupSyscalls: boolean): readonly ProgramName[] {
  switch (group) {
    case "process":
      return [...processTracepoints(mode), SYSCALL_PROGRAM, ...(backupSyscalls ? [SYSCALL_BACKUP_PROGRAM] : [])];
    case "tls":
      return MODE_PROGRAMS[mode];
    case "go":
      return [GO_PROGRAMS[mode]];
  }
}

/** Verifier statistics of the programs that were loaded, largest first. */
function budgetOf(programs: BpfProgram[]): ProgramBudget[] {
  return programs
    .map((p) => {
      const m = STATS.exec(p.verifierLog());
      return { program: p.name, insns: m ? Number(m[1]) : 0, limit: m ? Number(m[2]) : 0 };
    })
    .sort((a, b) => b.insns - a.insns);
}

/**
 * Load the programs of `groups` (all by default) and nothing else, then
 * close the object on failure. `prepare` runs before load (config, map reuse).
 */
function loadPrograms(
  bytes: Uint8Array,
  mode: RewriteMode,
  uprobes: UprobeKind,
  groups: readonly ProgramGroup[],
  backupSyscalls: boolean,
  prepare: (obj: KloakObject) => void,
): { obj: KloakObject; budget: ProgramBudget[] } {
  let obj: KloakObject;
  try {
    obj = BpfObject.openMem(bytes, "kloak");
  } catch (e) {
    throw describeFailure(e, mode, []);
  }
  try {
    const wanted = new Set<string>(groups.flatMap((g) => groupPrograms(g, mode, backupSyscalls)));
    for (const p of obj.programs()) if (!wanted.has(p.name)) p.setAutoload(false);
    if (uprobes === "multi")
      for (const p of [...MODE_PROGRAMS[mode], GO_PROGRAMS[mode]]) if (wanted.has(p)) obj.program(p).setExpectedAttachType(BPF_TRACE_UPROBE_MULTI);
    prepare(obj);
    const programs = obj.programs().filter((p) => p.autoload);
    for (const p of programs) p.captureVerifierLog(BPF_LOG_STATS, LOG_SIZE);
    try {
      obj.load();
    } catch (e) {
      throw describeFailure(e, mode, programs.map((p) => ({ name: p.name, log: p.verifierLog() })));
    }
    return { obj, budget: budgetOf(programs) };
  } catch (e) {
    obj.close();
    throw e;
  }
}

/**
 * Load in exactly this mode, without the node checks or the mode probe (the
 * VM matrix measures each mode's verifier budget with it). Creates every map;
 * loads the programs of `groups` (all by default), with the syscall backup
 * when `o.backupSyscalls`. Throws ObjectLoadError when the kernel refuses the
 * object.
 */
export function loadInMode(
  bytes: Uint8Array,
  mode: RewriteMode,
  o: { scanCap: number; reuseMaps?: ReadonlyMap<string, number>; backupSyscalls?: boolean },
  uprobes: UprobeKind,
  groups: readonly ProgramGroup[] = PROGRAM_GROUPS,
): { obj: KloakObject; budget: ProgramBudget[] } {
  const backup = o.backupSyscalls === true;
  return loadPrograms(bytes, mode, uprobes, groups, backup, (obj) => {
    // A predecessor's maps (handover): their entries are the state this load takes over.
    // Named by a predecessor of the same object (handoverIdentity), not known statically.
    const byName: BpfObject = obj;
    for (const [name, fd] of o.reuseMaps ?? []) byName.map(name).reuseFd(fd);
    const cfg = obj.map(".rodata.config").initialValue();
    if (cfg.byteLength < LAYOUT.kloak_config.size) throw new Error(".rodata.config is smaller than struct kloak_config");
    cfg.setUint32(LAYOUT.kloak_config.fields.mode, mode === "kernel" ? Mode.KERNEL : Mode.STOP, true);
    cfg.setUint32(LAYOUT.kloak_config.fields.scan_cap, o.scanCap, true);
    cfg.setUint32(LAYOUT.kloak_config.fields.violations, violationMask(), true);
    cfg.setUint32(LAYOUT.kloak_config.fields.backup_syscalls, backup ? 1 : 0, true);
    // Real values live in the kernel only in kernel mode.
    if (mode === "stop") obj.map("kloak_values").setMaxEntries(1);
  });
}

/**
 * Load one more group into an object of its own whose maps are base's
 * (every map reused, the frozen config included: the programs see exactly
 * what base's see). The returned object owns the group's programs: keep it
 * open while they are attached or may be.
 */
export function loadGroup(
  bytes: Uint8Array,
  base: BpfObject,
  mode: RewriteMode,
  uprobes: UprobeKind,
  group: ProgramGroup,
): { obj: KloakObject; budget: ProgramBudget[] } {
  return loadPrograms(bytes, mode, uprobes, [group], false, (obj) => {
    for (const m of obj.maps()) m.reuseFd(base.map(m.name).fd);
  });
}

const lines = (text: string) => text.split("\n").map((l) => l.trimEnd()).filter((l) => l !== "");

/** Turn a failed load into an error that says which program, in which mode, and why (the log's tail). */
function describeFailure(e: unknown, mode: RewriteMode, logs: { name: string; log: string }[]): unknown {
  if (!(e instanceof BpfError)) return e;
  // libbpf names the program the kernel refused; the rest never ran the verifier.
  const program = /prog '(\w+)': failed to load/.exec(e.log.join("\n"))?.[1] ?? null;
  const verifier = lines(logs.find((l) => l.name === program)?.log ?? "");
  const tail = (verifier.length ? verifier : e.log.flatMap(lines)).slice(-TAIL_LINES);
  const release = new NodeFacts().release();
  const tested = testedStatus(release);
  const what = program ? `the kernel's verifier rejected ${program}` : e.message.split("\n")[0];
  const todo = [
    "run `kloak doctor` to check this node",
    ...(mode === "kernel" ? ["--rewrite-mode stop avoids the kernel-mode programs"] : []),
    ...(tested.tested ? [] : [`Linux ${release}: ${tested.detail}`]),
    ...(program ? ["report the lines above with the output of `kloak version` and `uname -r`"] : []),
  ];
  return new ObjectLoadError(
    `cannot load the eBPF object in ${mode} mode on Linux ${release}: ${what}:\n${tail.map((l) => `  ${l}`).join("\n")}\n` +
      `what to do: ${todo.join("; ")}`,
    mode,
    program,
    tail,
  );
}

/**
 * Load in the requested mode. `auto` takes the mode the kernel allows and,
 * when kernel mode fails its trial load, falls back to stop mode and says why.
 * Throws EnvironmentError (one line) when the node lacks a requirement, and
 * ObjectLoadError when the kernel rejects the object; nothing stays loaded.
 */
export function loadObject(bytes: Uint8Array, o: LoadOptions): LoadedObject {
  const facts = o.facts ?? new NodeFacts();
  const problem = requirementFailure(requirementChecks(facts));
  if (problem) throw new EnvironmentError(problem);
  const want = o.uprobes ?? "auto";
  const uprobes: UprobeKind = want === "auto" ? (uprobeMultiSupported() ? "multi" : "single") : want;
  const probe = probeRewriteMode(facts);
  if (o.mode === "kernel" && probe.mode !== "kernel")
    throw new EnvironmentError(
      `--rewrite-mode kernel is not possible here: ${probe.reason}; use --rewrite-mode stop (or auto), or boot with lockdown=none`,
    );
  const mode = o.mode === "auto" ? probe.mode : o.mode;
  const reason = o.mode === "auto" ? probe.reason : "forced by --rewrite-mode";
  // The TLS programs wait for a process to open a TLS library only where every open is seen;
  // where syscall programs can be skipped, a backup runs after the syscall program.
  let skippable: boolean;
  try {
    skippable = syscallRunsSkippable(facts.kernel());
  } catch {
    skippable = true;
  }
  const lo = { ...o, backupSyscalls: skippable };
  const deferredIn = (m: RewriteMode): ProgramGroup[] => (!o.onDemand ? [] : m === "stop" && !skippable ? ["tls", "go"] : ["go"]);
  const now = (m: RewriteMode) => PROGRAM_GROUPS.filter((g) => !deferredIn(m).includes(g));
  try {
    return { ...loadInMode(bytes, mode, lo, uprobes, now(mode)), mode, reason, uprobes, deferred: deferredIn(mode), backupSyscalls: skippable };
  } catch (e) {
    if (!(o.mode === "auto" && mode === "kernel" && e instanceof ObjectLoadError)) throw e;
    const verdict = e.tail.filter((l) => !STATS_LINE.test(l)).at(-1) ?? "rejected";
    const why = `kernel mode failed its trial load (${e.program ?? "object"}: ${verdict})`;
    try {
      return {
        ...loadInMode(bytes, "stop", lo, uprobes, now("stop")),
        mode: "stop",
        reason: `${why}; stop mode instead`,
        uprobes,
        deferred: deferredIn("stop"),
        backupSyscalls: skippable,
      };
    } catch (e2) {
      if (e2 instanceof ObjectLoadError)
        throw new ObjectLoadError(`${why}, and stop mode failed too: ${e2.message}`, "stop", e2.program, e2.tail);
      throw e2;
    }
  }
}
