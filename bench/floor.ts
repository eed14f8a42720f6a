/**
 * The "floor" variant: the baseline client with a BPF program that does
 * nothing (`r0 = 0; exit`) on every site where kloak probes its libssl, entry
 * and, where kloak probes it, return: the same sites (TlsTargetFinder, the
 * placement of probe-sites.ts), the same link kind (a pid-filtered
 * multi-uprobe link per file, as kloak makes on kernels with them) and no
 * kloak. What the client pays there is the uprobe mechanism itself (the int3
 * trap, the kernel's filter and cookie lookup, running a program, the return
 * trampoline); what kloak pays above it is its programs (the scan, the
 * connection's bookkeeping) and its syscall and scheduler tracepoints. A
 * target below this floor cannot be met by any uprobe-based design on the
 * machine.
 */
import { close, errno, SysError } from "../lib/libc.ts";
import { attachUprobeMulti, loadEmptyUprobeMultiProgram, uprobeMultiSupported } from "../lib/uprobe.ts";
import { TlsTargetFinder } from "../src/dataplane/tls-targets.ts";
import { LIBSSL } from "./outside.ts";

/** The floor variant's check that the client really carried the empty probes. */
export const FLOOR_PROBED = "the client's libssl has an int3 on every entry site (the empty probes)";

export interface EmptyProbes {
  /** the libssl file probed */
  path: string;
  /** sites probed at entry, and of them at return */
  entries: number;
  returns: number;
  detach(): void;
}

/**
 * Empty programs on kloak's probe sites of process pid's libssl (the system
 * one, attached by path before the process maps it, as kloak does). Throws
 * when the kernel has no multi-uprobe links or pid has no libssl target.
 */
export function attachEmptyProbes(pid: number): EmptyProbes {
  if (!uprobeMultiSupported()) throw new Error("floor variant: this kernel has no multi-uprobe links (6.6+)");
  const target = new TlsTargetFinder().targetsFor(pid).find((t) => LIBSSL.test(t.path));
  if (!target) throw new Error(`floor variant: no libssl target for pid ${pid}`);
  const fns = target.functions;
  const rets = fns.filter((f) => f.ret);
  const progFd = loadEmptyUprobeMultiProgram();
  if (progFd < 0) throw new SysError("BPF_PROG_LOAD(empty multi-uprobe program)", errno());
  const fds: number[] = [];
  try {
    fds.push(attachUprobeMulti({ progFd, pid, path: target.path, offsets: fns.map((f) => f.offset), cookies: fns.map(() => 0n), retprobe: false }));
    if (rets.length)
      fds.push(attachUprobeMulti({ progFd, pid, path: target.path, offsets: rets.map((f) => f.offset), cookies: rets.map(() => 0n), retprobe: true }));
  } catch (e) {
    for (const fd of [...fds, progFd]) close(fd);
    throw e;
  }
  return {
    path: target.path,
    entries: fns.length,
    returns: rets.length,
    detach() {
      for (const fd of [...fds, progFd]) close(fd);
    },
  };
}
