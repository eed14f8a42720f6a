/**
 * What this node lets kloak do, probed in one place. `kloak exec` and the
 * agent run the required checks before they load anything (a missing piece is
 * one line and exit code 1, with nothing loaded or pinned); `kloak doctor`
 * shows the same checks, and both pick the rewrite mode with the same probe
 * and the same trial load (bpf-object.ts), so they cannot disagree.
 *
 * Every check looks at the real machine (trial loads through libbpf, sysfs,
 * /proc); none trusts the kernel version alone.
 */
import { existsSync, readFileSync } from "node:fs";
import { BPF_FUNC, BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_KPROBE, probeHelper, probeMapType } from "../../lib/libbpf.ts";
import { mount } from "../../lib/libc.ts";

export type RewriteMode = "kernel" | "stop";

export interface Check {
  id: string;
  title: string;
  status: "ok" | "warn" | "fail";
  detail: string;
  remedy?: string;
  required: boolean;
}

/**
 * Kernel series the VM matrix (test/vm, `bun run test:kernels`) proves on
 * every CI run, and in which rewrite modes. 6.18 runs on the CI host itself,
 * which is locked down, and Debian's archive no longer carries a 6.18 kernel
 * to boot with lockdown=none.
 */
export const TESTED_KERNELS: readonly { series: string; modes: readonly RewriteMode[] }[] = [
  { series: "6.1", modes: ["kernel", "stop"] },
  { series: "6.12", modes: ["kernel", "stop"] },
  { series: "6.18", modes: ["stop"] },
  { series: "7.2", modes: ["kernel", "stop"] },
  { series: "7.3", modes: ["kernel", "stop"] },
];

/** The oldest kernel kloak is expected to run on: bpf_loop arrived in 5.17. */
export const MIN_KERNEL: readonly [number, number] = [5, 17];

export const BPF_PROG_TYPE_RAW_TRACEPOINT = 17;

// Capability numbers (linux/capability.h).
const CAP = { KILL: 5, SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_RESOURCE: 24, PERFMON: 38, BPF: 39 } as const;
export type CapName = keyof typeof CAP;

export const UPGRADE_KERNEL =
  "upgrade the node kernel to 5.17 or later, 6.1+ recommended (Ubuntu 22.04: apt-get install linux-generic-hwe-22.04; " +
  "Amazon Linux 2023, Ubuntu 24.04 and Debian 12 kernels qualify)";
const PRIV_REMEDY =
  "run kloak as root with these capabilities (DaemonSet: securityContext.privileged: true, " +
  "or capabilities.add: [BPF, PERFMON, SYS_PTRACE, KILL, SYS_ADMIN]; locally: sudo kloak ...)";
// Without CAP_BPF/CAP_SYS_ADMIN every trial load fails with EPERM, which libbpf
// reports as "helper supported" and "map type unsupported": neither means anything.
export const UNPROBED = "trial loads need CAP_BPF or CAP_SYS_ADMIN";
export const PROBE_REMEDY = "run as root (or with CAP_BPF) so the kernel can be probed";

export interface Mount {
  mountPoint: string;
  fstype: string;
  source: string;
}

/** Undo the octal escapes /proc uses for spaces, tabs, newlines and backslashes in paths. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mounts visible to this process, in mount order (later entries cover earlier ones). */
function readMounts(): Mount[] {
  // id parent maj:min root mount-point options [optional...] - fstype source super-options
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [left = "", right = ""] = line.split(" - ");
      const l = left.split(" ");
      const r = right.split(" ");
      return { mountPoint: unescape(l[4] ?? ""), fstype: r[0] ?? "", source: unescape(r[1] ?? "") };
    });
}

/** The file system visible at a mount point (the topmost mount there), if any. */
export function mountedAt(mounts: Mount[], mountPoint: string): Mount | undefined {
  return mounts.filter((m) => m.mountPoint === mountPoint).at(-1);
}

export function parseKernelVersion(rel: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  if (!m) throw new Error(`cannot parse kernel release "${rel}"`);
  return [Number(m[1]), Number(m[2])];
}

export const atLeast = (v: readonly [number, number], w: readonly [number, number]) =>
  v[0] > w[0] || (v[0] === w[0] && v[1] >= w[1]);

/**
 * Whether programs on syscall tracepoints can be skipped on this kernel.
 * From 7.0 (measured: 7.2 and 7.3 yes, 6.18 and 6.12 no) they run
 * preemptibly, and one preempted on a CPU makes every run of the same program
 * on that CPU skip until it resumes (the kernel's recursion guard; `bpftool
 * prog` counts recursion_misses): a 7.3 VM with one CPU skipped ~1,000 runs in
 * one test, among them a client's open of libssl, which then ran unattached.
 * Disabling preemption inside the program does not help (the preemption point
 * is the kernel's, before the program runs). There kloak runs a backup of its
 * syscall program (bpf/sysruns.h) and does not rely on seeing every open.
 */
export const syscallRunsSkippable = (kernel: readonly [number, number]): boolean => atLeast(kernel, [7, 0]);

export type LockdownLevel = "none" | "integrity" | "confidentiality";
export interface Lockdown {
  /** null: could not be determined. */
  level: LockdownLevel | null;
  how: string;
}

const LOCKDOWN_FILE = "/sys/kernel/security/lockdown";

function readLockdownFile(): LockdownLevel {
  const text = readFileSync(LOCKDOWN_FILE, "utf8");
  const level = /\[(\w+)\]/.exec(text)?.[1];
  if (level !== "none" && level !== "integrity" && level !== "confidentiality")
    throw new Error(`unexpected ${LOCKDOWN_FILE} contents: ${JSON.stringify(text.trim())}`);
  return level;
}

/** Facts about this node, each computed once (a fact that throws throws again). */
export class NodeFacts {
  private memo = new Map<string, { value?: unknown; error?: unknown }>();

  private once<T>(key: string, fn: () => T): T {
    let r = this.memo.get(key);
    if (!r) {
      try {
        r = { value: fn() };
      } catch (error) {
        r = { error };
      }
      this.memo.set(key, r);
    }
    if ("error" in r) throw r.error;
    return r.value as T;
  }

  release = () => this.once("release", () => readFileSync("/proc/sys/kernel/osrelease", "utf8").trim());
  kernel = () => this.once("kernel", () => parseKernelVersion(this.release()));
  mounts = () => this.once("mounts", readMounts);
  capEff = () =>
    this.once("capEff", () => {
      const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(readFileSync("/proc/self/status", "utf8"));
      if (!m?.[1]) throw new Error("no CapEff line in /proc/self/status");
      return BigInt(`0x${m[1]}`);
    });
  helper = (progType: number, id: number) => this.once(`helper:${progType}:${id}`, () => probeHelper(progType, id));
  ringbuf = () => this.once("ringbuf", () => probeMapType(BPF_MAP_TYPE_RINGBUF));

  hasCap(name: CapName): boolean {
    return (this.capEff() & (1n << BigInt(CAP[name]))) !== 0n;
  }

  /** CAP_BPF or CAP_SYS_ADMIN: without either, libbpf's trial loads fail and it guesses "supported". */
  canProbe(): boolean {
    try {
      return this.hasCap("BPF") || this.hasCap("SYS_ADMIN");
    } catch {
      return true;
    }
  }

  /** The lockdown level; mounts securityfs to read it when that is possible (root). */
  lockdown = () =>
    this.once("lockdown", (): Lockdown => {
      if (existsSync(LOCKDOWN_FILE)) return { level: readLockdownFile(), how: "" };
      const sec = mountedAt(this.mounts(), "/sys/kernel/security");
      // securityfs is there but has no lockdown file: the lockdown LSM is not active.
      if (sec?.fstype === "securityfs") return { level: "none", how: "lockdown LSM not active" };
      let root = process.getuid?.() === 0;
      try {
        root ||= this.hasCap("SYS_ADMIN");
      } catch {
        // keep the uid answer
      }
      if (!root) return { level: null, how: "securityfs is not mounted and mounting it needs root" };
      try {
        mount("securityfs", "/sys/kernel/security", "securityfs");
      } catch (e) {
        return { level: null, how: `securityfs is not mounted and mounting it failed: ${(e as Error).message}` };
      }
      if (existsSync(LOCKDOWN_FILE)) return { level: readLockdownFile(), how: "mounted securityfs to read it" };
      return { level: "none", how: "mounted securityfs; lockdown LSM not active" };
    });
}

export type Outcome = Pick<Check, "status" | "detail"> & { remedy?: string };
export const ok = (detail: string): Outcome => ({ status: "ok", detail });
export const warn = (detail: string, remedy?: string): Outcome => ({ status: "warn", detail, remedy });
/** Without a remedy of its own, a failure (or warning) carries its check's (runCheck). */
export const fail = (detail: string, remedy?: string): Outcome => ({ status: "fail", detail, remedy });

/** A check before it runs. */
export interface CheckDef {
  id: string;
  title: string;
  required: boolean;
  /** Used when the check itself throws, and for a non-ok outcome without its own. */
  remedy: string;
  run: (f: NodeFacts) => Outcome;
}

/** Run one check; one that throws is a failure carrying the error's message, never a crash. */
export function runCheck(d: CheckDef, f: NodeFacts): Check {
  let out: Outcome;
  try {
    out = d.run(f);
  } catch (e) {
    out = fail(e instanceof Error ? e.message : String(e), d.remedy);
  }
  const check: Check = { id: d.id, title: d.title, status: out.status, detail: out.detail, required: d.required };
  if (out.status !== "ok") check.remedy = out.remedy ?? d.remedy;
  return check;
}

type Requirement = Omit<CheckDef, "required">;

function helperRequirement(name: keyof typeof BPF_FUNC, progTypes: [number, string][], why: string, since: string): Requirement {
  return {
    id: `helper.bpf_${name}`,
    title: `bpf_${name} helper`,
    remedy: UPGRADE_KERNEL,
    run: (f) => {
      if (!f.canProbe()) return warn(`unverified (${why}): ${UNPROBED}`, PROBE_REMEDY);
      const missing = progTypes.filter(([t]) => !f.helper(t, BPF_FUNC[name]));
      if (missing.length)
        return fail(`this kernel has no bpf_${name} for ${missing.map(([, n]) => n).join(", ")} programs (${why}; Linux >= ${since})`);
      return ok(`available to ${progTypes.map(([, n]) => n).join(", ")} programs (${why})`);
    },
  };
}

/**
 * What the eBPF object needs to load and work at all, cheapest first. Each
 * failure says in one line what is missing and what to do.
 */
const REQUIREMENTS: readonly Requirement[] = [
  {
    id: "capabilities",
    title: "Capabilities",
    remedy: PRIV_REMEDY,
    run: (f) => {
      const admin = f.hasCap("SYS_ADMIN");
      const missing: string[] = [];
      if (!f.hasCap("BPF") && !admin) missing.push("CAP_BPF or CAP_SYS_ADMIN (load programs, create maps)");
      if (!f.hasCap("PERFMON") && !admin) missing.push("CAP_PERFMON or CAP_SYS_ADMIN (attach uprobes)");
      if (!f.hasCap("SYS_PTRACE")) missing.push("CAP_SYS_PTRACE (process_vm_writev into other processes)");
      if (!f.hasCap("KILL")) missing.push("CAP_KILL (SIGCONT to stopped processes of other users)");
      if (missing.length)
        return fail(`${process.getuid?.() === 0 ? "" : "not root; "}missing ${missing.join("; ")}`);
      const present = (["SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE", "KILL"] as const).filter((n) => f.hasCap(n));
      return ok(`effective: ${present.map((n) => `CAP_${n}`).join(", ")}`);
    },
  },
  {
    id: "btf",
    title: "Kernel BTF",
    remedy: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distribution kernels since 5.x)",
    run: () => {
      const path = "/sys/kernel/btf/vmlinux";
      if (!existsSync(path))
        return fail(`this kernel has no BTF (${path} missing): the object's CO-RE relocations cannot be resolved`);
      return ok(path);
    },
  },
  {
    id: "lockdown",
    title: "Kernel lockdown",
    remedy: "mount -t securityfs securityfs /sys/kernel/security (as root) so the lockdown level can be read",
    run: (f) => {
      const { level, how } = f.lockdown();
      if (level === null) return warn(`unknown (${how}); kernel rewrite mode will not be chosen`);
      if (level === "confidentiality")
        return fail(
          "lockdown=confidentiality: eBPF may not read kernel memory, so kloak cannot find a write's socket",
          "boot with lockdown=integrity (stop mode) or none (kernel mode); Secure Boot defaults to integrity",
        );
      const effect = level === "none" ? "bpf_probe_write_user permitted" : "bpf_probe_write_user denied; stop mode is used";
      return ok(`${level} (${how ? `${how}; ` : ""}${effect})`);
    },
  },
  {
    id: "bpffs",
    title: "bpffs (/sys/fs/bpf)",
    remedy: "mount -t bpf bpf /sys/fs/bpf",
    run: (f) => {
      const mounts = f.mounts();
      const top = mountedAt(mounts, "/sys/fs/bpf");
      if (top?.fstype === "bpf") return ok("mounted at /sys/fs/bpf");
      const elsewhere = mounts.filter((m) => m.fstype === "bpf").map((m) => m.mountPoint);
      const detail = top
        ? `/sys/fs/bpf holds ${top.fstype}, not bpffs`
        : elsewhere.length
          ? `bpffs is not mounted at /sys/fs/bpf (found at ${elsewhere.join(", ")})`
          : "bpffs is not mounted at /sys/fs/bpf";
      return fail(
        `${detail}: kloak pins the map that lets a stopped process be released if kloak dies`,
        "mount -t bpf bpf /sys/fs/bpf (DaemonSet: hostPath mount of /sys/fs/bpf)",
      );
    },
  },
  {
    id: "uprobes",
    title: "uprobes",
    remedy: "use a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
    run: () => {
      const path = "/sys/bus/event_source/devices/uprobe/type";
      if (!existsSync(path))
        return fail(`this kernel has no uprobe PMU (${path} missing)`);
      return ok(`uprobe PMU type ${readFileSync(path, "utf8").trim()}`);
    },
  },
  {
    id: "ringbuf",
    title: "BPF ring buffer",
    remedy: UPGRADE_KERNEL,
    run: (f) => {
      if (!f.canProbe()) return warn(`unverified: ${UNPROBED}`, PROBE_REMEDY);
      return f.ringbuf()
        ? ok("BPF_MAP_TYPE_RINGBUF available")
        : fail("this kernel has no BPF ring buffer (Linux >= 5.8)");
    },
  },
  helperRequirement("loop", [[BPF_PROG_TYPE_KPROBE, "uprobe"]], "scans TLS write buffers", "5.17"),
  helperRequirement(
    "send_signal",
    [
      [BPF_PROG_TYPE_KPROBE, "uprobe"],
      [BPF_PROG_TYPE_RAW_TRACEPOINT, "raw tracepoint"],
    ],
    "stop-mode rewrites and holding exec'd processes",
    "5.3",
  ),
  helperRequirement("get_attach_cookie", [[BPF_PROG_TYPE_KPROBE, "uprobe"]], "tells SSL_write from SSL_write_ex", "5.15"),
];

/** Every requirement's outcome on this node. */
export function requirementChecks(f: NodeFacts): Check[] {
  return REQUIREMENTS.map((r) => runCheck({ ...r, required: true }, f));
}

/** The failed requirements as one line: the first in full, and how many more (`kloak doctor` lists them). */
export function requirementFailure(checks: Check[]): string | null {
  const failed = checks.filter((c) => c.status === "fail");
  const first = failed[0];
  if (!first) return null;
  const more = failed.length > 1 ? ` (and ${failed.length - 1} more problem(s): run \`kloak doctor\`)` : "";
  return `this node cannot run kloak: ${first.detail}; ${first.remedy}${more}`;
}

/**
 * The rewrite mode the kernel allows: `kernel` needs bpf_probe_write_user
 * (denied by lockdown=integrity and above) and CAP_SYS_ADMIN. libbpf 1.1's
 * helper probe misreads the lockdown refusal as support, so the lockdown
 * level decides first; the trial load (bpf-object.ts) has the last word.
 */
export function probeRewriteMode(f: NodeFacts): { mode: RewriteMode; reason: string } {
  const reasons: string[] = [];
  const guard = (fn: () => boolean) => {
    try {
      return fn();
    } catch {
      return false;
    }
  };
  let lockdown: Lockdown;
  try {
    lockdown = f.lockdown();
  } catch (e) {
    lockdown = { level: null, how: (e as Error).message };
  }
  if (!guard(() => f.hasCap("SYS_ADMIN"))) reasons.push("CAP_SYS_ADMIN not effective");
  if (lockdown.level === null) reasons.push("lockdown level unknown");
  else if (lockdown.level !== "none") reasons.push(`lockdown=${lockdown.level} denies bpf_probe_write_user`);
  else if (!guard(() => f.helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC.probe_write_user)))
    reasons.push("bpf_probe_write_user unavailable");
  if (reasons.length) return { mode: "stop", reason: reasons.join("; ") };
  return { mode: "kernel", reason: "lockdown=none and CAP_SYS_ADMIN: bpf_probe_write_user in the probe" };
}

/** Is this kernel's series one the VM matrix tests, and in which modes? */
export function testedStatus(release: string): { tested: boolean; detail: string } {
  const [major, minor] = parseKernelVersion(release);
  const series = `${major}.${minor}`;
  const t = TESTED_KERNELS.find((k) => k.series === series);
  const list = TESTED_KERNELS.map((k) => k.series).join(", ");
  if (t) return { tested: true, detail: `tested series (${t.modes.join(" and ")} mode${t.modes.length > 1 ? "s" : ""})` };
  if (!atLeast([major, minor], MIN_KERNEL))
    return { tested: false, detail: `below ${MIN_KERNEL.join(".")}: works only with backported bpf_loop (e.g. RHEL 9)` };
  return { tested: false, detail: `not a tested series (tested: ${list}); expected to work: >= 5.17 with BTF and bpf_loop` };
}
