/**
 * `kloak doctor`: can this node run kloak, and in which rewrite mode?
 *
 * The required checks are the ones `kloak exec` and the agent run before they
 * load anything (dataplane/kernel-support.ts), and the verdict is the trial
 * load that they do (dataplane/bpf-object.ts loadObject): the doctor never
 * decides on its own, so it cannot say "ok" where kloak does not load. The
 * other checks are informational. A check that throws becomes a "fail"
 * carrying the error message, so the doctor itself never crashes.
 */
import { coveredGoVersions } from "../dataplane/go-targets.ts";
import { existsSync, readFileSync } from "node:fs";
import { libbpfVersion } from "../../lib/libbpf.ts";
import { uprobeMultiSupported } from "../../lib/uprobe.ts";
import { DEFAULT_SCAN_CAP } from "../dataplane/scan-cap.ts";
import { bunCheck } from "./bun-check.ts";
import {
  loadObject,
  MODE_PROGRAMS,
  ObjectLoadError,
  SEND_SYSCALLS,
  SYSCALL_PROGRAM,
  type ProgramBudget,
} from "../dataplane/bpf-object.ts";
import {
  atLeast,
  fail,
  MIN_KERNEL,
  mountedAt,
  NodeFacts,
  ok,
  PROBE_REMEDY,
  UNPROBED,
  requirementChecks,
  runCheck,
  testedStatus,
  UPGRADE_KERNEL,
  warn,
  type Check,
  type CheckDef,
  type RewriteMode,
} from "../dataplane/kernel-support.ts";

export type { Check };

export interface DoctorResult {
  checks: Check[];
  /** The mode `kloak exec` would use here; null when it could not run. */
  rewriteMode: RewriteMode | null;
  /** Verifier instructions per loaded program of that mode (empty without a trial load). */
  verifier: ProgramBudget[];
  /** No required check failed. */
  ok: boolean;
}

export interface DoctorOptions {
  /** The BPF object to trial-load (the embedded kloak.bpf.o). */
  objectBytes?: Uint8Array;
  /** Scan cap the trial load uses (default: kloak exec's default). */
  scanCap?: number;
}

/** What the trial load found: the same call `kloak exec` makes. */
type Trial =
  | {
      kind: "loaded";
      mode: RewriteMode;
      reason: string;
      budget: ProgramBudget[];
      other: string | null;
      /** why the syscall program did not attach in the trial; null: it did */
      syscalls: string | null;
    }
  | { kind: "failed"; error: Error }
  | { kind: "skipped"; why: string };

const fmt = (n: number) => n.toLocaleString("en-US");

function budgetLine(b: ProgramBudget[]): string {
  const top = b[0];
  if (!top || !top.limit) return "";
  return `; largest program ${top.program}: ${fmt(top.insns)} of ${fmt(top.limit)} verifier instructions (${Math.floor(top.limit / Math.max(top.insns, 1))}x headroom)`;
}

function trialLoad(f: NodeFacts, opts: DoctorOptions, requirementsMet: boolean): Trial {
  if (!opts.objectBytes) return { kind: "skipped", why: "no object given" };
  if (!requirementsMet) return { kind: "skipped", why: "not tried: a required check above failed" };
  const scanCap = opts.scanCap ?? DEFAULT_SCAN_CAP;
  let loaded;
  try {
    loaded = loadObject(opts.objectBytes, { mode: "auto", scanCap, facts: f });
  } catch (e) {
    return { kind: "failed", error: e as Error };
  }
  const { obj, mode, reason, budget } = loaded;
  // The raw tracepoint exists where it attaches: attach and detach it (no process is in a scope).
  let syscalls: string | null = null;
  try {
    obj.program(SYSCALL_PROGRAM).attach().destroy();
  } catch (e) {
    syscalls = (e as Error).message.split("\n")[0]!;
  }
  obj.close();
  // Where kernel mode was chosen, say whether stop mode (its fallback) loads too.
  let other: string | null = null;
  if (mode === "kernel") {
    try {
      loadObject(opts.objectBytes, { mode: "stop", scanCap, facts: f }).obj.close();
      other = "stop mode also loads";
    } catch (e) {
      other = `stop mode does not load: ${(e as Error).message.split("\n")[0]}`;
    }
  }
  return { kind: "loaded", mode, reason, budget, other, syscalls };
}

/*
 * The informational checks, and the required ones that are not kernel
 * requirements (kernel version, libbpf, rewrite mode, the object load). Each
 * is its own definition: those that read the trial load take it as an
 * argument; the others get the node's facts from runCheck, like the
 * requirement checks do.
 */

/** Kernel version: the trial load outranks the number (an older kernel where the object loads passes). */
function kernelCheck(trial: Trial): CheckDef {
  return {
    id: "kernel",
    title: "Kernel version",
    required: true,
    remedy: UPGRADE_KERNEL,
    run: (f) => {
      const rel = f.release();
      const tested = testedStatus(rel);
      if (trial.kind === "failed")
        return fail(`${rel}: the eBPF object does not load on this kernel (see "BPF object load")`, UPGRADE_KERNEL);
      if (!atLeast(f.kernel(), MIN_KERNEL) && trial.kind !== "loaded")
        return fail(`${rel}: kloak needs ${MIN_KERNEL.join(".")} or later (bpf_loop)`, UPGRADE_KERNEL);
      if (!tested.tested) return warn(`${rel}: ${tested.detail}`, "the trial load below decides; run kloak's tests before production use");
      return ok(`${rel}: ${tested.detail}`);
    },
  };
}

const libbpfCheck: CheckDef = {
  id: "libbpf",
  title: "libbpf",
  required: true,
  remedy: "apt-get install libbpf1 (dnf install libbpf; the library must be libbpf.so.1, version 1.0 or later)",
  run: () => {
    const version = libbpfVersion();
    const [major = 0] = version.split(".").map(Number);
    if (major < 1) return fail(`libbpf ${version}: 1.0 or later is required`, "apt-get install libbpf1");
    return ok(`libbpf.so.1 version ${version}`);
  },
};

/** Whether the trial load's syscall program attached: without it, connections are bound through SSL_set_fd only. */
function syscallTracepointCheck(trial: Trial): CheckDef {
  return {
    id: "syscall-tracepoints",
    title: "Syscall tracepoint",
    required: false,
    remedy: "use a kernel built with CONFIG_HAVE_SYSCALL_TRACEPOINTS (every x86-64 kernel has it)",
    run: () => {
      if (trial.kind !== "loaded") return warn(`not tried: the trial load did not run (see "BPF object load")`);
      if (trial.syscalls)
        return warn(
          `raw tracepoint sys_enter does not attach (${trial.syscalls}): connections are tied to sockets only through ` +
            "SSL_set_fd (secrets with destination rules are refused on other clients), and kloak exec loads its TLS programs at start",
        );
      return ok(`raw tracepoint sys_enter attaches (connection binding: ${SEND_SYSCALLS.join(", ")}; opens of TLS libraries)`);
    },
  };
}

const uprobeMultiCheck: CheckDef = {
  id: "uprobe-multi",
  title: "Multi-uprobe links",
  required: false,
  remedy: "a 6.6 or later kernel detaches faster; nothing else changes",
  run: (f) => {
    if (!f.canProbe()) return warn(`unverified: ${UNPROBED}`, PROBE_REMEDY);
    if (uprobeMultiSupported()) return ok("one link per library and process (6.6+)");
    return warn(
      "unavailable: one perf event per probed function; works the same, but each process's detach waits one RCU grace period per probe",
    );
  },
};

const kprobesCheck: CheckDef = {
  id: "kprobes",
  title: "kprobes",
  required: false,
  remedy: "nothing to do: kloak does not need kprobes (a kernel built with CONFIG_KPROBES=y provides them)",
  run: () =>
    existsSync("/sys/bus/event_source/devices/kprobe/type")
      ? ok("available; not required")
      : warn("unavailable (CONFIG_KPROBES off); not required"),
};

/** kloak exec works under any cgroup layout; the cluster agent needs the unified hierarchy. */
const cgroup2Check: CheckDef = {
  id: "cgroup2",
  title: "cgroup v2",
  required: false,
  remedy: "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line",
  run: (f) => {
    const mounts = f.mounts();
    if (mountedAt(mounts, "/sys/fs/cgroup")?.fstype === "cgroup2") return ok("unified hierarchy at /sys/fs/cgroup");
    const v2 = mounts.filter((m) => m.fstype === "cgroup2").map((m) => m.mountPoint);
    if (v2.length)
      return warn(
        `hybrid: cgroup2 at ${v2.join(", ")}, v1 controllers at /sys/fs/cgroup; the cluster agent needs the unified ` +
          "hierarchy (kloak exec does not)",
        "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line (unified hierarchy at /sys/fs/cgroup)",
      );
    return warn(
      "no cgroup2 mount; the cluster agent needs the unified hierarchy at /sys/fs/cgroup (kloak exec does not)",
      "mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1",
    );
  },
};

const MEMLOCK_REMEDY = "grant CAP_SYS_RESOURCE or raise the limit (ulimit -l unlimited; systemd: LimitMEMLOCK=infinity)";

/** The memlock limit matters only before 5.11, where BPF memory was charged to it rather than to the memory cgroup. */
const memlockCheck: CheckDef = {
  id: "memlock",
  title: "Locked memory",
  required: false,
  remedy: MEMLOCK_REMEDY,
  run: (f) => {
    const limit = /^Max locked memory\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1] ?? "?";
    const shown = limit === "unlimited" || limit === "?" ? limit : `${limit} bytes`;
    if (f.hasCap("SYS_RESOURCE")) return ok(`CAP_SYS_RESOURCE present; memlock limit ${shown} can be raised`);
    if (atLeast(f.kernel(), [5, 11]))
      return ok(
        `CAP_SYS_RESOURCE absent (memlock limit ${shown} cannot be raised); not needed: BPF memory is charged ` +
          "to the memory cgroup (kernel >= 5.11)",
      );
    return warn(`CAP_SYS_RESOURCE absent and kernel < 5.11 counts BPF memory against the memlock limit (${shown})`, MEMLOCK_REMEDY);
  },
};

/** The mode kloak exec would use: the trial load's choice, never one the doctor works out itself. */
function rewriteModeCheck(trial: Trial): CheckDef {
  return {
    id: "rewrite-mode",
    title: "Rewrite mode",
    required: true,
    remedy: "stop mode needs bpf_send_signal (kernel >= 5.3); kernel mode needs lockdown=none and CAP_SYS_ADMIN",
    run: () => {
      if (trial.kind === "loaded") return ok(`${trial.mode} (${trial.reason})`);
      if (trial.kind === "failed")
        return fail("none: the object loads in no mode (see \"BPF object load\")", "see \"BPF object load\"");
      return trial.why === "no object given"
        ? warn("not decided: no trial load")
        : fail(`none: ${trial.why}`, "fix the failed checks above");
    },
  };
}

const goCheck: CheckDef = {
  id: "go",
  title: "Go executables",
  required: false,
  remedy: "bun scripts/go-offsets.ts with the Go toolchain added (src/dataplane/go-offsets.ts)",
  run: () =>
    ok(
      `crypto/tls probed in Go ${coveredGoVersions().join(", ")} binaries (amd64, stripped or not, PIE or not); ` +
        "a Go binary of another version runs unprobed and is reported (go_binary_unsupported)",
    ),
};

const OBJECT_REMEDY = "run kloak doctor with KLOAK_LIBBPF_DEBUG=1 for the full libbpf log";

/** The trial load itself; a load error's "what to do:" tail becomes the remedy. */
function objectCheck(trial: Trial): CheckDef {
  return {
    id: "object",
    title: "BPF object load",
    required: true,
    remedy: OBJECT_REMEDY,
    run: () => {
      if (trial.kind === "loaded")
        return ok(
          `loaded in ${trial.mode} mode (${MODE_PROGRAMS[trial.mode].join(", ")})${budgetLine(trial.budget)}` +
            (trial.other ? `; ${trial.other}` : ""),
        );
      if (trial.kind === "skipped") return fail(trial.why, "fix the failed checks above");
      const remedy =
        trial.error instanceof ObjectLoadError
          ? (/what to do: (.*)$/s.exec(trial.error.message)?.[1] ?? "run with KLOAK_LIBBPF_DEBUG=1")
          : OBJECT_REMEDY;
      return fail(trial.error.message.replace(/\nwhat to do: .*$/s, ""), remedy);
    },
  };
}

function infoChecks(trial: Trial): CheckDef[] {
  return [
    bunCheck,
    kernelCheck(trial),
    libbpfCheck,
    syscallTracepointCheck(trial),
    uprobeMultiCheck,
    kprobesCheck,
    cgroup2Check,
    memlockCheck,
    rewriteModeCheck(trial),
    goCheck,
    objectCheck(trial),
  ];
}

/** Display order: what a reader checks first. */
const ORDER = [
  "kernel",
  "libbpf",
  "btf",
  "helper.bpf_loop",
  "helper.bpf_send_signal",
  "helper.bpf_get_attach_cookie",
  "ringbuf",
  "bpffs",
  "syscall-tracepoints",
  "uprobe-multi",
  "uprobes",
  "kprobes",
  "cgroup2",
  "capabilities",
  "memlock",
  "lockdown",
  "rewrite-mode",
  "go",
  "object",
  "bun",
];

export async function runChecks(opts: DoctorOptions = {}): Promise<DoctorResult> {
  const facts = new NodeFacts();
  const required = requirementChecks(facts);
  const trial = trialLoad(facts, opts, !required.some((c) => c.status === "fail"));
  const info = infoChecks(trial)
    .filter((d) => d.id !== "object" || opts.objectBytes)
    .map((d) => runCheck(d, facts));
  const checks = [...required, ...info].sort((a, b) => ORDER.indexOf(a.id) - ORDER.indexOf(b.id));
  return {
    checks,
    rewriteMode: trial.kind === "loaded" ? trial.mode : null,
    verifier: trial.kind === "loaded" ? trial.budget : [],
    ok: !checks.some((c) => c.required && c.status === "fail"),
  };
}

