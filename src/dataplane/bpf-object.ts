/** The prebuilt CO-RE object, embedded in the executable, and how to load it in either mode. */
import { createHash } from "node:crypto";
import { BpfError, BpfObject, BPF_FUNC, BPF_PROG_TYPE_KPROBE, probeHelper } from "../../lib/libbpf.ts";
import { readFileSync } from "node:fs";
import { BPF_TRACE_UPROBE_MULTI } from "../../lib/uprobe.ts";
import objectPath from "../../bpf/kloak.bpf.o" with { type: "file" };
import { EnvironmentError } from "../errors.ts";
import { LAYOUT, Mode } from "./abi.ts";

export type RewriteMode = "kernel" | "stop";

export async function objectBytes(): Promise<Uint8Array> {
  return Bun.file(objectPath).bytes();
}

/** Identifies the embedded object: the first 16 hex digits of its SHA-256. */
export function objectBuildId(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 16);
}

/** The uprobe programs of each rewrite mode (entry, return); the other mode's are not loaded. */
export const MODE_PROGRAMS: Record<RewriteMode, readonly [entry: string, ret: string]> = {
  kernel: ["kloak_tls_kernel", "kloak_tls_ret_kernel"],
  stop: ["kloak_tls_stop", "kloak_tls_ret_stop"],
};

/** Process lifecycle: scopes follow fork, exec is held until attached, exit detaches. */
export const PROCESS_TRACEPOINTS = ["kloak_fork", "kloak_exec", "kloak_exit"] as const;
/** Sends inside TLS calls, which tie a connection to its socket. */
export const SEND_TRACEPOINTS = ["kloak_send_write", "kloak_send_writev", "kloak_send_sendto", "kloak_send_sendmsg"] as const;

/** How uprobes are attached: one multi-uprobe link per file (6.6+), or a perf event per offset. */
export type UprobeKind = "multi" | "single";

function capEffective(): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "latin1"));
  return m ? BigInt(`0x${m[1]}`) : 0n;
}
const CAP_SYS_ADMIN = 21n;

/** The bracketed level of /sys/kernel/security/lockdown, or null when it cannot be read. */
export function lockdownLevel(): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync("/sys/kernel/security/lockdown", "latin1"))?.[1] ?? null;
  } catch {
    return null;
  }
}

/**
 * What the kernel allows: `kernel` needs bpf_probe_write_user (denied by
 * lockdown=integrity and above) and CAP_SYS_ADMIN. libbpf 1.1's helper probe
 * misreads the lockdown refusal as support, so lockdown is read as well, and
 * a failed trial load still falls back to stop.
 */
export function probeRewriteMode(): { mode: RewriteMode; reason: string } {
  if (!((capEffective() >> CAP_SYS_ADMIN) & 1n)) return { mode: "stop", reason: "CAP_SYS_ADMIN not effective" };
  const lockdown = lockdownLevel();
  if (lockdown && lockdown !== "none") return { mode: "stop", reason: `lockdown=${lockdown} denies bpf_probe_write_user` };
  if (!probeHelper(BPF_PROG_TYPE_KPROBE, BPF_FUNC.probe_write_user))
    return { mode: "stop", reason: "the kernel denies bpf_probe_write_user (lockdown)" };
  return { mode: "kernel", reason: "bpf_probe_write_user available" };
}

export interface LoadOptions {
  mode: RewriteMode | "auto";
  scanCap: number;
  uprobes: UprobeKind;
}

export interface LoadedObject {
  obj: BpfObject;
  mode: RewriteMode;
  reason: string;
}

function tryLoad(bytes: Uint8Array, mode: RewriteMode, o: LoadOptions): BpfObject {
  const obj = BpfObject.openMem(bytes, "kloak");
  try {
    for (const [m, progs] of Object.entries(MODE_PROGRAMS)) if (m !== mode) for (const p of progs) obj.program(p).setAutoload(false);
    if (o.uprobes === "multi") for (const p of MODE_PROGRAMS[mode]) obj.program(p).setExpectedAttachType(BPF_TRACE_UPROBE_MULTI);
    const cfg = obj.map(".rodata.config").initialValue();
    if (cfg.byteLength < LAYOUT.kloak_config.size) throw new Error(".rodata.config is smaller than struct kloak_config");
    cfg.setUint32(LAYOUT.kloak_config.fields.mode, mode === "kernel" ? Mode.KERNEL : Mode.STOP, true);
    cfg.setUint32(LAYOUT.kloak_config.fields.scan_cap, o.scanCap, true);
    // Real values live in the kernel only in kernel mode.
    if (mode === "stop") obj.map("kloak_values").setMaxEntries(1);
    obj.load();
    return obj;
  } catch (e) {
    obj.close();
    throw e;
  }
}

/** Load in the requested mode; `auto` probes and falls back from kernel to stop on a failed trial load. */
export function loadObject(bytes: Uint8Array, o: LoadOptions): LoadedObject {
  const probe = probeRewriteMode();
  if (o.mode === "kernel" && probe.mode !== "kernel")
    throw new EnvironmentError(
      `--rewrite-mode kernel is not possible here: ${probe.reason}; use --rewrite-mode stop (or auto), or boot with lockdown=none`,
    );
  const mode = o.mode === "auto" ? probe.mode : o.mode;
  try {
    return { obj: tryLoad(bytes, mode, o), mode, reason: o.mode === "auto" ? probe.reason : "forced by --rewrite-mode" };
  } catch (e) {
    if (o.mode === "auto" && mode === "kernel") {
      const obj = tryLoad(bytes, "stop", o);
      return { obj, mode: "stop", reason: `kernel mode failed its trial load (${(e as Error).message.split("\n")[0]})` };
    }
    if (e instanceof BpfError)
      throw new EnvironmentError(
        `cannot load the eBPF object (${e.message.split("\n")[0]}); run \`kloak doctor\` to see what this node lacks\n${e.log.slice(-15).join("\n")}`,
      );
    throw e;
  }
}
