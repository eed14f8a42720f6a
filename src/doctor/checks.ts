/**
 * `kloak doctor`: can this node run kloak, and in which rewrite mode?
 *
 * Every check looks at the real machine (trial loads through libbpf, sysfs,
 * /proc); none trusts the kernel version alone. A check that throws becomes a
 * "fail" carrying the error message, so the doctor itself never crashes.
 */
import { existsSync, readFileSync } from "node:fs";
import { release } from "node:os";
import {
  BPF_FUNC,
  BPF_MAP_TYPE_RINGBUF,
  BPF_PROG_TYPE_KPROBE,
  BpfError,
  BpfObject,
  libbpfVersion,
  probeHelper,
  probeMapType,
} from "../../lib/libbpf.ts";
import { mount } from "../../lib/libc.ts";
import { uprobeMultiSupported } from "../../lib/uprobe.ts";
import { MODE_PROGRAMS, SEND_TRACEPOINTS } from "../dataplane/bpf-object.ts";

/** the syscalls whose sends tie a TLS connection to its socket */
const SEND_SYSCALLS = SEND_TRACEPOINTS.map((p) => p.replace("kloak_send_", ""));

export { MODE_PROGRAMS };

export interface Check {
  id: string;
  title: string;
  status: "ok" | "warn" | "fail";
  detail: string;
  remedy?: string;
  required: boolean;
}

export type RewriteMode = "kernel" | "stop";

export interface DoctorResult {
  checks: Check[];
  rewriteMode: RewriteMode | null;
  /** No required check failed. */
  ok: boolean;
}

export interface DoctorOptions {
  /** The BPF object to trial-load (the embedded kloak.bpf.o). */
  objectBytes?: Uint8Array;
}


const BPF_PROG_TYPE_RAW_TRACEPOINT = 17;

// Capability numbers (linux/capability.h).
const CAP = { KILL: 5, SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_RESOURCE: 24, PERFMON: 38, BPF: 39 } as const;
type CapName = keyof typeof CAP;

const PRIV_REMEDY =
  "run kloak as root with these capabilities (DaemonSet: securityContext.privileged: true, " +
  "or capabilities.add: [BPF, PERFMON, SYS_PTRACE, KILL, SYS_ADMIN]; locally: sudo kloak ...)";

// Without CAP_BPF/CAP_SYS_ADMIN every trial load fails with EPERM, which libbpf
// reports as "helper supported" and "map type unsupported": neither means anything.
const UNPROBED = "trial loads need CAP_BPF or CAP_SYS_ADMIN";
const PROBE_REMEDY = "run kloak doctor as root (or with CAP_BPF) so the kernel can be probed";

// ---------------------------------------------------------------- facts

interface Mount {
  mountPoint: string;
  fstype: string;
  source: string;
}

/** Undo the octal escapes /proc uses for spaces, tabs, newlines and backslashes in paths. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mounts visible to this process, in mount order (later entries cover earlier ones). */
function readMounts(): Mount[] {
  try {
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
  } catch {
    // device mount-point fstype options dump pass
    return readFileSync("/proc/mounts", "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => {
        const f = line.split(" ");
        return { mountPoint: unescape(f[1] ?? ""), fstype: f[2] ?? "", source: unescape(f[0] ?? "") };
      });
  }
}

/** The file system visible at a mount point (the topmost mount there), if any. */
function mountedAt(mounts: Mount[], mountPoint: string): Mount | undefined {
  return mounts.filter((m) => m.mountPoint === mountPoint).at(-1);
}

function readCapEff(): bigint {
  const status = readFileSync("/proc/self/status", "utf8");
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  if (!m?.[1]) throw new Error("no CapEff line in /proc/self/status");
  return BigInt(`0x${m[1]}`);
}

function parseKernelVersion(rel: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  if (!m) throw new Error(`cannot parse kernel release "${rel}"`);
  return [Number(m[1]), Number(m[2])];
}

const atLeast = (v: [number, number], major: number, minor: number) =>
  v[0] > major || (v[0] === major && v[1] >= minor);

type LockdownLevel = "none" | "integrity" | "confidentiality";
interface Lockdown {
  /** null: could not be determined. */
  level: LockdownLevel | null;
  how: string;
}

const LOCKDOWN_FILE = "/sys/kernel/security/lockdown";

function readLockdownFile(): LockdownLevel {
  const text = readFileSync(LOCKDOWN_FILE, "utf8");
  const m = /\[(\w+)\]/.exec(text);
  const level = m?.[1];
  if (level !== "none" && level !== "integrity" && level !== "confidentiality") {
    throw new Error(`unexpected ${LOCKDOWN_FILE} contents: ${JSON.stringify(text.trim())}`);
  }
  return level;
}

/** Lazily computed facts shared by several checks. */
class Facts {
  private memo = new Map<string, unknown>();

  private once<T>(key: string, fn: () => T): T {
    if (!this.memo.has(key)) {
      try {
        this.memo.set(key, { value: fn() });
      } catch (error) {
        this.memo.set(key, { error });
      }
    }
    const r = this.memo.get(key) as { value?: T; error?: unknown };
    if ("error" in r) throw r.error;
    return r.value as T;
  }

  mounts = () => this.once("mounts", readMounts);
  capEff = () => this.once("capEff", readCapEff);
  kernel = () => this.once("kernel", () => parseKernelVersion(release()));
  helper = (progType: number, id: number) => this.once(`helper:${progType}:${id}`, () => probeHelper(progType, id));

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

  lockdown = () =>
    this.once("lockdown", (): Lockdown => {
      if (existsSync(LOCKDOWN_FILE)) return { level: readLockdownFile(), how: "" };
      const sec = mountedAt(this.mounts(), "/sys/kernel/security");
      if (sec?.fstype === "securityfs") {
        // securityfs is there but has no lockdown file: the lockdown LSM is not active.
        return { level: "none", how: "lockdown LSM not active" };
      }
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

// ---------------------------------------------------------------- checks

type Outcome = Pick<Check, "status" | "detail"> & { remedy?: string; required?: boolean };

interface CheckDef {
  id: string;
  title: string;
  required: boolean;
  /** Used when the check throws. */
  remedy: string;
  run: () => Outcome | Promise<Outcome>;
}

const ok = (detail: string): Outcome => ({ status: "ok", detail });
const warn = (detail: string, remedy?: string): Outcome => ({ status: "warn", detail, remedy });
const fail = (detail: string, remedy: string): Outcome => ({ status: "fail", detail, remedy });

const UPGRADE_KERNEL =
  "upgrade the node kernel to 5.17 or later, 6.1+ recommended (Ubuntu 22.04: apt-get install linux-generic-hwe-22.04; " +
  "Amazon Linux 2023, Ubuntu 24.04 and Debian 12 kernels qualify)";

function helperCheck(f: Facts, name: string, progTypes: [number, string][], why: string, minKernel: string): CheckDef {
  return {
    id: `helper.${name}`,
    title: `${name} helper`,
    required: true,
    remedy: UPGRADE_KERNEL,
    run: () => {
      if (!f.canProbe()) return warn(`unverified (${why}): ${UNPROBED}`, PROBE_REMEDY);
      const missing = progTypes.filter(([t]) => !f.helper(t, BPF_FUNC[name.replace(/^bpf_/, "") as keyof typeof BPF_FUNC]));
      const where = progTypes.map(([, n]) => n).join(", ");
      if (missing.length) {
        return fail(
          `not available to ${missing.map(([, n]) => n).join(", ")} programs (${why}; kernel >= ${minKernel})`,
          UPGRADE_KERNEL,
        );
      }
      return ok(`available to ${where} programs (${why})`);
    },
  };
}

function definitions(f: Facts, opts: DoctorOptions, decided: { mode: RewriteMode | null }): CheckDef[] {
  const defs: CheckDef[] = [
    {
      id: "kernel",
      title: "Kernel version",
      required: true,
      remedy: UPGRADE_KERNEL,
      run: () => {
        const rel = release();
        const v = f.kernel();
        if (!atLeast(v, 5, 17)) {
          let loop = false;
          try {
            loop = f.canProbe() && f.helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC.loop);
          } catch {
            // libbpf unusable: the version decides
          }
          if (loop) {
            return warn(
              `${rel}: below 5.17 but bpf_loop is available (backported, e.g. RHEL 9); untested, verify before production`,
              UPGRADE_KERNEL,
            );
          }
          return fail(`${rel}: kloak needs 5.17 or later (bpf_loop)`, UPGRADE_KERNEL);
        }
        if (!atLeast(v, 6, 1)) {
          return warn(`${rel}: supported; 6.1 or later is recommended for production`, UPGRADE_KERNEL);
        }
        return ok(rel);
      },
    },
    {
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
    },
    {
      id: "btf",
      title: "Kernel BTF",
      required: true,
      remedy: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distribution kernels since 5.x)",
      run: () => {
        const path = "/sys/kernel/btf/vmlinux";
        if (!existsSync(path)) {
          return fail(
            `${path} missing: CO-RE relocations cannot be resolved`,
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distribution kernels since 5.x)",
          );
        }
        return ok(path);
      },
    },
    helperCheck(f, "bpf_loop", [[BPF_PROG_TYPE_KPROBE, "uprobe"]], "scans TLS write buffers", "5.17"),
    helperCheck(
      f,
      "bpf_send_signal",
      [
        [BPF_PROG_TYPE_KPROBE, "uprobe"],
        [BPF_PROG_TYPE_RAW_TRACEPOINT, "raw tracepoint"],
      ],
      "stop-mode rewrites and holding exec'd processes",
      "5.3",
    ),
    helperCheck(f, "bpf_get_attach_cookie", [[BPF_PROG_TYPE_KPROBE, "uprobe"]], "tells SSL_write from SSL_write_ex", "5.15"),
    {
      id: "ringbuf",
      title: "BPF ring buffer",
      required: true,
      remedy: UPGRADE_KERNEL,
      run: () => {
        if (!f.canProbe()) return warn(`unverified: ${UNPROBED}`, PROBE_REMEDY);
        return probeMapType(BPF_MAP_TYPE_RINGBUF)
          ? ok("BPF_MAP_TYPE_RINGBUF available")
          : fail("BPF_MAP_TYPE_RINGBUF unavailable (kernel >= 5.8)", UPGRADE_KERNEL);
      },
    },
    {
      id: "bpffs",
      title: "bpffs (/sys/fs/bpf)",
      required: true,
      remedy: "mount -t bpf bpf /sys/fs/bpf",
      run: () => {
        const mounts = f.mounts();
        const top = mountedAt(mounts, "/sys/fs/bpf");
        if (top?.fstype === "bpf") return ok("mounted at /sys/fs/bpf");
        const elsewhere = mounts.filter((m) => m.fstype === "bpf").map((m) => m.mountPoint);
        const detail = top
          ? `/sys/fs/bpf holds ${top.fstype}, not bpf`
          : elsewhere.length
            ? `not mounted at /sys/fs/bpf (bpf found at ${elsewhere.join(", ")})`
            : "not mounted";
        return fail(detail, "mount -t bpf bpf /sys/fs/bpf (DaemonSet: hostPath mount of /sys/fs/bpf)");
      },
    },
    {
      id: "tracefs",
      title: "tracefs",
      required: false,
      remedy: "mount -t tracefs tracefs /sys/kernel/tracing",
      run: () => {
        const mounts = f.mounts();
        for (const at of ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]) {
          if (mountedAt(mounts, at)?.fstype === "tracefs") return ok(`mounted at ${at}`);
        }
        return warn(
          "not mounted: the syscall tracepoints that tie TLS connections to their sockets cannot attach, so secrets " +
            "with destination rules are refused for clients that do not call SSL_set_fd (curl, for one)",
          "mount -t tracefs tracefs /sys/kernel/tracing",
        );
      },
    },
    {
      id: "syscall-tracepoints",
      title: "Syscall tracepoints",
      required: false,
      remedy: "use a kernel built with CONFIG_FTRACE_SYSCALLS=y and mount tracefs at /sys/kernel/tracing",
      run: () => {
        const base = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].find((b) => existsSync(`${b}/events`));
        if (!base) return warn("tracefs not mounted: cannot tell (see the tracefs check)");
        const missing = SEND_SYSCALLS.filter((n) => !existsSync(`${base}/events/syscalls/sys_enter_${n}`));
        if (missing.length)
          return warn(
            `no sys_enter_${missing.join(", sys_enter_")}: connections are tied to sockets only through SSL_set_fd; ` +
              "secrets with destination rules are refused on other clients",
          );
        return ok(`sys_enter_${SEND_SYSCALLS.join(", sys_enter_")} (connection binding)`);
      },
    },
    {
      id: "uprobe-multi",
      title: "Multi-uprobe links",
      required: false,
      remedy: "a 6.6 or later kernel detaches faster; nothing else changes",
      run: () => {
        if (!f.canProbe()) return warn(UNPROBED, PROBE_REMEDY);
        if (uprobeMultiSupported()) return ok("one link per library and process (6.6+)");
        return warn(
          "unavailable: one perf event per probed function; works the same, but each process's detach waits one RCU grace period per probe",
        );
      },
    },
    {
      id: "uprobes",
      title: "uprobes",
      required: true,
      remedy: "use a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
      run: () => {
        const path = "/sys/bus/event_source/devices/uprobe/type";
        if (!existsSync(path)) {
          return fail(
            `${path} missing: the uprobe PMU is unavailable`,
            "use a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
          );
        }
        return ok(`uprobe PMU type ${readFileSync(path, "utf8").trim()}`);
      },
    },
    {
      id: "kprobes",
      title: "kprobes",
      required: false,
      remedy: "nothing to do: kloak does not need kprobes (a kernel built with CONFIG_KPROBES=y provides them)",
      run: () => {
        const path = "/sys/bus/event_source/devices/kprobe/type";
        if (!existsSync(path)) {
          return warn(
            "unavailable (CONFIG_KPROBES off); not required",
            "nothing to do: kloak does not need kprobes (a kernel built with CONFIG_KPROBES=y provides them)",
          );
        }
        return ok("available; not required");
      },
    },
    {
      id: "cgroup2",
      title: "cgroup v2",
      required: false,
      remedy: "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line",
      run: () => {
        const mounts = f.mounts();
        if (mountedAt(mounts, "/sys/fs/cgroup")?.fstype === "cgroup2") return ok("unified hierarchy at /sys/fs/cgroup");
        const v2 = mounts.filter((m) => m.fstype === "cgroup2").map((m) => m.mountPoint);
        if (v2.length) {
          return warn(
            `hybrid: cgroup2 at ${v2.join(", ")}, v1 controllers at /sys/fs/cgroup; the cluster agent needs the unified ` +
              "hierarchy (kloak exec does not)",
            "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line (unified hierarchy at /sys/fs/cgroup)",
          );
        }
        return warn(
          "no cgroup2 mount; the cluster agent needs the unified hierarchy at /sys/fs/cgroup (kloak exec does not)",
          "mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1",
        );
      },
    },
    {
      id: "capabilities",
      title: "Capabilities",
      required: true,
      remedy: PRIV_REMEDY,
      run: () => {
        const has = (n: CapName) => f.hasCap(n);
        const admin = has("SYS_ADMIN");
        const missing: string[] = [];
        if (!has("BPF") && !admin) missing.push("CAP_BPF or CAP_SYS_ADMIN (load programs, create maps)");
        if (!has("PERFMON") && !admin) missing.push("CAP_PERFMON or CAP_SYS_ADMIN (attach uprobes)");
        if (!has("SYS_PTRACE")) missing.push("CAP_SYS_PTRACE (process_vm_writev into other processes)");
        if (!has("KILL")) missing.push("CAP_KILL (SIGCONT to stopped processes of other users)");
        if (missing.length) return fail(`missing: ${missing.join("; ")}`, PRIV_REMEDY);
        const present = (["SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE", "KILL"] as const)
          .filter(has)
          .map((n) => `CAP_${n}`);
        return ok(`effective: ${present.join(", ")}`);
      },
    },
    {
      id: "memlock",
      title: "Locked memory",
      required: false,
      remedy: "grant CAP_SYS_RESOURCE or raise the limit (ulimit -l unlimited; systemd: LimitMEMLOCK=infinity)",
      run: () => {
        const limit = /^Max locked memory\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1] ?? "?";
        const shown = limit === "unlimited" || limit === "?" ? limit : `${limit} bytes`;
        if (f.hasCap("SYS_RESOURCE")) return ok(`CAP_SYS_RESOURCE present; memlock limit ${shown} can be raised`);
        if (atLeast(f.kernel(), 5, 11)) {
          return ok(
            `CAP_SYS_RESOURCE absent (memlock limit ${shown} cannot be raised); not needed: BPF memory is charged ` +
              "to the memory cgroup (kernel >= 5.11)",
          );
        }
        return warn(
          `CAP_SYS_RESOURCE absent and kernel < 5.11 counts BPF memory against the memlock limit (${shown})`,
          "grant CAP_SYS_RESOURCE or raise the limit (ulimit -l unlimited; systemd: LimitMEMLOCK=infinity)",
        );
      },
    },
    {
      id: "lockdown",
      title: "Kernel lockdown",
      required: false,
      remedy: "mount -t securityfs securityfs /sys/kernel/security (as root) so the lockdown level can be read",
      run: () => {
        const { level, how } = f.lockdown();
        if (level === null) {
          return warn(
            `unknown (${how}); kernel rewrite mode will not be chosen`,
            "mount -t securityfs securityfs /sys/kernel/security (as root) so the lockdown level can be read",
          );
        }
        const effect =
          level === "none" ? "bpf_probe_write_user permitted" : "bpf_probe_write_user denied; stop mode is used";
        return ok(`${level} (${how ? `${how}; ` : ""}${effect})`);
      },
    },
    {
      id: "rewrite-mode",
      title: "Rewrite mode",
      required: true,
      remedy:
        "stop mode needs bpf_send_signal (kernel >= 5.3); kernel mode needs lockdown=none and CAP_SYS_ADMIN",
      run: () => {
        const reasons: string[] = [];
        let lockdown: Lockdown;
        try {
          lockdown = f.lockdown();
        } catch (e) {
          lockdown = { level: null, how: (e as Error).message };
        }
        const guard = (fn: () => boolean) => {
          try {
            return fn();
          } catch {
            return false;
          }
        };
        const writeUser = guard(() => f.helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC.probe_write_user));
        const admin = guard(() => f.hasCap("SYS_ADMIN"));
        const signal = guard(
          () =>
            f.helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC.send_signal) &&
            f.helper(BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_FUNC.send_signal),
        );
        // libbpf 1.1's probe only recognises "unknown func"; newer kernels refuse a
        // locked-down helper with "program of this type cannot use helper", which it
        // reports as supported. The lockdown level is therefore checked on its own.
        if (lockdown.level === null) reasons.push("lockdown level unknown");
        else if (lockdown.level !== "none") reasons.push(`lockdown=${lockdown.level} denies bpf_probe_write_user`);
        if (!writeUser) reasons.push("bpf_probe_write_user unavailable");
        if (!admin) reasons.push("CAP_SYS_ADMIN not effective");

        if (!reasons.length) {
          decided.mode = "kernel";
          return ok("kernel (bpf_probe_write_user in the probe: lockdown=none, CAP_SYS_ADMIN)");
        }
        if (signal) {
          decided.mode = "stop";
          return ok(`stop (${reasons.join("; ")})`);
        }
        decided.mode = null;
        return fail(
          `none: kernel mode impossible (${reasons.join("; ")}) and bpf_send_signal unavailable for stop mode`,
          "stop mode needs bpf_send_signal (kernel >= 5.3, CONFIG_BPF_EVENTS=y); kernel mode needs lockdown=none " +
            "(boot without Secure Boot lockdown or with lockdown=none) and CAP_SYS_ADMIN",
        );
      },
    },
  ];

  if (opts.objectBytes) {
    const bytes = opts.objectBytes;
    defs.push({
      id: "object",
      title: "BPF object load",
      required: true,
      remedy: "run kloak doctor with KLOAK_LIBBPF_DEBUG=1 for the full libbpf log",
      run: () => loadObject(bytes, decided.mode),
    });
  }
  return defs;
}

/** The lines of a libbpf log worth showing: first, the verifier's verdict, the failing programs, last. */
export function summarizeLog(log: string[]): string[] {
  const lines = log.flatMap((entry) => entry.split("\n")).filter((l) => l.trim() !== "");
  if (lines.length === 0) return [];
  const picked = new Set<number>([0, lines.length - 1]);
  lines.forEach((line, i) => {
    // The verifier's reason is the line before "processed N insns" (or before END PROG LOAD LOG).
    if (/^processed \d+ insns/.test(line) && i > 0) picked.add(i - 1);
    if (/failed to load/.test(line)) picked.add(i);
  });
  return [...picked].sort((a, b) => a - b).map((i) => lines[i] ?? "");
}

function loadObject(bytes: Uint8Array, mode: RewriteMode | null): Outcome {
  const used: RewriteMode = mode ?? "stop";
  const skipped: RewriteMode = used === "stop" ? "kernel" : "stop";
  const obj = BpfObject.openMem(bytes, "kloak");
  try {
    for (const name of MODE_PROGRAMS[skipped]) obj.program(name).setAutoload(false);
    try {
      obj.load();
    } catch (e) {
      const log = e instanceof BpfError ? summarizeLog(e.log) : [];
      const head = (e as Error).message.split("\n")[0] ?? String(e);
      return fail(
        [`${head} (${used}-mode programs)`, ...log].join("\n"),
        "run kloak doctor with KLOAK_LIBBPF_DEBUG=1 for the full libbpf log; check the kernel and libbpf checks above",
      );
    }
    return ok(`loaded with ${used}-mode programs (${skipped}-mode programs not loaded)${mode ? "" : "; no rewrite mode"}`);
  } finally {
    obj.close();
  }
}

export async function runChecks(opts: DoctorOptions = {}): Promise<DoctorResult> {
  const facts = new Facts();
  const decided: { mode: RewriteMode | null } = { mode: null };
  const checks: Check[] = [];
  for (const def of definitions(facts, opts, decided)) {
    let out: Outcome;
    try {
      out = await def.run();
    } catch (e) {
      out = fail(e instanceof Error ? e.message : String(e), def.remedy);
    }
    const check: Check = { id: def.id, title: def.title, status: out.status, detail: out.detail, required: out.required ?? def.required };
    if (out.remedy !== undefined) check.remedy = out.remedy;
    else if (out.status !== "ok") check.remedy = def.remedy;
    checks.push(check);
  }
  return {
    checks,
    rewriteMode: decided.mode,
    ok: !checks.some((c) => c.required && c.status === "fail"),
  };
}
