/**
 * Uprobes on TLS library functions, one set per file for every process that
 * maps it: a uprobe lives on the inode, and the programs return at once for a
 * process outside every scope (kloak_procs). So a process costs nothing to
 * attach once its files are attached — an exec of a known program, a fork —
 * and a file's probes go only when the last protected process using it does.
 * Detaching hands the fds to a closer thread: the kernel's unregister waits
 * for a grace period, and processes held at exec must not wait for that.
 */
import { FdCloser } from "../../lib/fd-closer.ts";
import { attachUprobe, attachUprobeMulti } from "../../lib/uprobe.ts";
import type { UprobeKind } from "./bpf-object.ts";
import type { GoLayout } from "./go-targets.ts";
import type { RefusedTarget, TlsTarget, TlsTargetFinder } from "./tls-targets.ts";

/** Go executables: their program (entry and RETs alike), and how a binary's layout reaches the kernel. */
export interface GoPrograms {
  progFd: number;
  register(layoutId: number, layout: GoLayout): void;
}

/**
 * The programs probes run. Each getter may load its programs on first use
 * (bpf-object.ts loadGroup) and throws when they cannot be loaded: the
 * file is then not attached, and its processes' writes keep their placeholders.
 */
export interface AttachPrograms {
  /** TLS library functions: entry, and return (uretprobe) */
  tls(): { entryFd: number; retFd: number };
  go(): GoPrograms;
}

export interface AttachResult {
  /** functions newly attached (0 when every file of the process was attached already) */
  attached: number;
  /** ids of the process's TLS files */
  files: string[];
  errors: string[];
  /** files of the process kloak refused to probe (Go binaries it cannot handle) */
  refused: RefusedTarget[];
}

/** Who keeps a file attached: a protected process (its pid), a known image (its key), or SYSTEM_LIBSSL. */
type User = number | string;
const SYSTEM_LIBSSL = "system-libssl";

interface AttachedFile {
  /** the fds that hold its probes */
  fds: number[];
  users: Set<User>;
  /** taken over from a predecessor (handover.ts): every fd is a link */
  adopted?: boolean;
}

/** uprobe_multi's "every process"; perf_event_open's is -1. */
const EVERY_PROCESS = { multi: 0, single: -1 } as const;

export class ProbeAttacher {
  private readonly files = new Map<string, AttachedFile>();
  /** user -> ids of the files it keeps */
  private readonly byUser = new Map<User, Set<string>>();
  private readonly closer = new FdCloser();
  attachErrors = 0;
  /** refused files, by path: each counted once */
  readonly refusedFiles = new Map<string, RefusedTarget>();

  constructor(
    private readonly programs: AttachPrograms,
    private readonly finder: TlsTargetFinder,
    private readonly kind: UprobeKind,
  ) {}

  /** protected processes kloak has looked at (attached to their TLS files, or to none) */
  get processes(): number {
    let n = 0;
    for (const u of this.byUser.keys()) if (typeof u === "number") n++;
    return n;
  }

  /** fds holding probes: one per multi-uprobe link, or a link + perf event per single uprobe */
  get links(): number {
    let n = 0;
    for (const f of this.files.values()) n += f.fds.length;
    return n;
  }

  /** files with probes */
  get attachedFiles(): number {
    return this.files.size;
  }

  /**
   * Make sure every TLS file of pid's current image is attached (after exec,
   * the files of its old image are no longer counted as its). `o` as in
   * TlsTargetFinder.targetsFor.
   */
  sync(pid: number, o: { systemLibssl?: boolean; extra?: string[] } = {}): AttachResult {
    const result: AttachResult = { attached: 0, files: [], errors: [], refused: [] };
    const targets = this.finder.targetsFor(pid, o);
    for (const r of this.finder.refused) {
      result.refused.push(r);
      this.refusedFiles.set(r.path, r);
    }
    const wanted = new Set(targets.map((t) => t.id));
    for (const id of this.byUser.get(pid) ?? []) if (!wanted.has(id)) this.drop(pid, id);
    for (const t of targets) {
      if (!this.files.has(t.id)) this.files.set(t.id, { fds: this.attachTarget(t, result), users: new Set() });
      this.use(pid, t.id);
      result.files.push(t.id);
    }
    return result;
  }

  /** ids (dev:ino) of the attached TLS files pid is counted as using */
  filesOf(pid: number): ReadonlySet<string> {
    return this.byUser.get(pid) ?? new Set();
  }

  /** Keep these files attached for a known image until unpin(image). */
  pin(image: string, files: string[]): void {
    for (const id of files) if (this.files.has(id)) this.use(image, id);
  }

  unpin(image: string): void {
    this.detach(image);
  }

  /**
   * Keep the system's libssl (as pid's root has it) attached until close:
   * processes released before the TLS programs were loaded may dlopen it at
   * any time, and no hold announces that once the open watch is off.
   */
  keepSystemLibssl(pid: number): void {
    this.pin(SYSTEM_LIBSSL, this.finder.systemLibsslIds(pid));
  }

  private use(user: User, id: string): void {
    this.files.get(id)!.users.add(user);
    let mine = this.byUser.get(user);
    if (!mine) this.byUser.set(user, (mine = new Set()));
    mine.add(id);
  }

  private attachTarget(t: TlsTarget, result: AttachResult): number[] {
    const fds: number[] = [];
    const pid = EVERY_PROCESS[this.kind];
    let groups: { progFd: number; retprobe: boolean; fns: TlsTarget["functions"] }[];
    try {
      if (t.go) {
        // Go: no uretprobes (they break its stacks); every RET is an entry probe.
        const go = this.programs.go();
        go.register(t.go.layoutId, t.go.layout);
        groups = [{ progFd: go.progFd, retprobe: false, fns: t.functions }];
      } else {
        const { entryFd, retFd } = this.programs.tls();
        groups = [
          { progFd: entryFd, retprobe: false, fns: t.functions },
          { progFd: retFd, retprobe: true, fns: t.functions.filter((f) => f.ret) },
        ];
      }
    } catch (e) {
      this.attachErrors++;
      result.errors.push(`${t.path}: ${(e as Error).message}`);
      return fds;
    }
    for (const { progFd, retprobe, fns } of groups) {
      // multi: one link for the group; single: one perf event per function
      const batches = this.kind === "multi" ? [fns] : fns.map((f) => [f]);
      for (const batch of batches) {
        if (batch.length === 0) continue;
        try {
          if (this.kind === "multi") {
            const spec = { progFd, pid, path: t.path, retprobe };
            fds.push(attachUprobeMulti({ ...spec, offsets: batch.map((f) => f.offset), cookies: batch.map((f) => BigInt(f.cookie)) }));
          } else {
            const f = batch[0]!;
            const p = attachUprobe({ progFd, pid, path: t.path, offset: f.offset, retprobe, cookie: BigInt(f.cookie) });
            fds.push(p.linkFd, p.perfFd);
          }
          result.attached += batch.length;
        } catch (e) {
          this.attachErrors++;
          result.errors.push(`${batch.map((f) => f.name).join(", ")} in ${t.path}: ${(e as Error).message}`);
        }
      }
    }
    return fds;
  }

  /** user no longer uses file id; the file's probes go with its last user. */
  private drop(user: User, id: string): void {
    this.byUser.get(user)?.delete(id);
    const f = this.files.get(id);
    if (!f) return;
    f.users.delete(user);
    if (f.users.size === 0) {
      this.closer.close(f.fds);
      this.files.delete(id);
    }
  }

  /** pid exited or left its scope (or an image is forgotten). */
  detach(user: User): void {
    const mine = this.byUser.get(user);
    if (!mine) return;
    for (const id of [...mine]) this.drop(user, id);
    this.byUser.delete(user);
  }

  /**
   * Take over a predecessor's probes of file id (its link fds, handover.ts).
   * It has no user until a process using it is synced; dropUnused() detaches
   * what none claimed.
   */
  adoptFile(id: string, linkFds: number[]): void {
    const have = this.files.get(id);
    if (have) have.fds.push(...linkFds);
    else this.files.set(id, { fds: [...linkFds], users: new Set(), adopted: true });
  }

  /** Detach files nobody uses (adopted ones no process claimed); returns how many. */
  dropUnused(): number {
    let n = 0;
    for (const [id, f] of this.files) {
      if (f.users.size) continue;
      this.closer.close(f.fds);
      this.files.delete(id);
      n++;
    }
    return n;
  }

  /** The link fds of every attached file (a perf-event uprobe's link holds its perf event), for pinning. */
  linksByFile(): Map<string, number[]> {
    const out = new Map<string, number[]>();
    for (const [id, f] of this.files)
      out.set(id, f.adopted || this.kind === "multi" ? [...f.fds] : f.fds.filter((_, i) => i % 2 === 0));
    return out;
  }

  async detachAll(): Promise<void> {
    for (const f of this.files.values()) this.closer.close(f.fds);
    this.files.clear();
    this.byUser.clear();
    await this.closer.stop();
  }
}
