/**
 * Uprobes on TLS library functions, attached per process: each protected
 * process has its own links (pid-filtered: uprobe_multi's pid, or a
 * perf event opened for the process), so the kernel writes the breakpoints
 * into that process's memory only, and a process outside every scope that
 * maps the same libssl never traps (DESIGN section 3: attach per process).
 * Each probe's cookie names the process it is for, and the programs act only
 * there (bpf/kloak.h: kernels differ in what their pid filter lets through).
 *
 * A process keeps its links across exec (the kernel's filter follows the
 * process, and a file the new image maps again is probed again); sync()
 * after an exec attaches what the new image adds and detaches what it no
 * longer maps. A fork child has no links of its own: it is attached while
 * held at its first stop (dataplane.ts, FORK). Detaching hands the fds to a
 * closer thread: the kernel's unregister waits for a grace period, and
 * processes held at exec must not wait for that.
 */
import { FdCloser } from "../../lib/fd-closer.ts";
import { attachUprobe, attachUprobeMulti } from "../../lib/uprobe.ts";
import { probeCookie } from "./abi.ts";
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
  /** functions newly attached (0 when every file of the process was attached for it already) */
  attached: number;
  /** ids of the process's TLS files */
  files: string[];
  errors: string[];
  /** files of the process kloak refused to probe (Go binaries it cannot handle) */
  refused: RefusedTarget[];
}

function noResult(): AttachResult {
  return { attached: 0, files: [], errors: [], refused: [] };
}

/** The links of one file for one process. */
interface Attachment {
  /** the fds that hold its probes */
  fds: number[];
  /** taken over from a predecessor (handover.ts): every fd is a link */
  adopted?: boolean;
}

/** An attachment's key, as handover pins name it: `<pid>-<dev:ino>`. */
function attachmentKey(pid: number, fileId: string): string {
  return `${pid}-${fileId}`;
}

function parseAttachmentKey(key: string): { pid: number; fileId: string } | null {
  const m = /^(\d+)-(.+)$/.exec(key);
  return m ? { pid: Number(m[1]), fileId: m[2]! } : null;
}

export class ProbeAttacher {
  /** pid -> file id -> its links for that process */
  private readonly byPid = new Map<number, Map<string, Attachment>>();
  /** pid -> the targets its last sync found (a fork child starts with exactly these) */
  private readonly targetsOf = new Map<number, TlsTarget[]>();
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
    return this.byPid.size;
  }

  /** processes kloak has looked at */
  pids(): number[] {
    return [...this.byPid.keys()];
  }

  /** fds holding probes: one per multi-uprobe link, or a link + perf event per single uprobe */
  get links(): number {
    let n = 0;
    for (const files of this.byPid.values()) for (const a of files.values()) n += a.fds.length;
    return n;
  }

  /**
   * Make sure every TLS file of pid's current image is attached for pid
   * (after exec, the files of its old image are detached). `o` as in
   * TlsTargetFinder.targetsFor.
   */
  sync(pid: number, o: { systemLibssl?: boolean; extra?: string[] } = {}): AttachResult {
    const result = noResult();
    const targets = this.finder.targetsFor(pid, o);
    for (const r of this.finder.refused) {
      result.refused.push(r);
      this.refusedFiles.set(r.path, r);
    }
    return this.attachAll(pid, targets, result);
  }

  /**
   * Attach a fork child to what its parent was attached to: it maps what its
   * parent mapped, so the parent's targets are its own (no /proc walk, no
   * stat of every mapping: the fork hold waits for this). null when the
   * parent was never synced.
   */
  inherit(child: number, parent: number): AttachResult | null {
    const targets = this.targetsOf.get(parent);
    if (!targets) return null;
    return this.attachAll(child, targets, noResult());
  }

  /**
   * Like sync, but only adds: what pid has stays attached (a file it is
   * opening, attached through `extra` earlier, may not be mapped yet).
   */
  extend(pid: number, o: { systemLibssl?: boolean } = {}): AttachResult {
    const result = noResult();
    const have = new Map((this.targetsOf.get(pid) ?? []).map((t) => [t.id, t]));
    for (const t of this.finder.targetsFor(pid, o)) if (!have.has(t.id)) have.set(t.id, t);
    return this.attachAll(pid, [...have.values()], result);
  }

  private attachAll(pid: number, targets: TlsTarget[], result: AttachResult): AttachResult {
    this.targetsOf.set(pid, targets);
    let mine = this.byPid.get(pid);
    if (!mine) this.byPid.set(pid, (mine = new Map()));
    const wanted = new Set(targets.map((t) => t.id));
    for (const [id, a] of mine) {
      if (wanted.has(id)) continue;
      this.closer.close(a.fds);
      mine.delete(id);
    }
    for (const t of targets) {
      if (!mine.has(t.id)) mine.set(t.id, { fds: this.attachTarget(pid, t, result) });
      result.files.push(t.id);
    }
    return result;
  }

  /** ids (dev:ino) of the system's libssl as pid's root has it */
  systemLibsslIds(pid: number): string[] {
    return this.finder.systemLibsslIds(pid);
  }

  /** ids (dev:ino) of the TLS files attached for pid */
  filesOf(pid: number): ReadonlySet<string> {
    return new Set(this.byPid.get(pid)?.keys() ?? []);
  }

  private attachTarget(pid: number, t: TlsTarget, result: AttachResult): number[] {
    const fds: number[] = [];
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
    const cookie = (f: TlsTarget["functions"][number]) => probeCookie(f.cookie, pid, t.go?.layoutId);
    for (const { progFd, retprobe, fns } of groups) {
      // multi: one link for the group; single: one perf event per function
      const batches = this.kind === "multi" ? [fns] : fns.map((f) => [f]);
      for (const batch of batches) {
        if (batch.length === 0) continue;
        try {
          if (this.kind === "multi") {
            const spec = { progFd, pid, path: t.path, retprobe };
            fds.push(attachUprobeMulti({ ...spec, offsets: batch.map((f) => f.offset), cookies: batch.map(cookie) }));
          } else {
            const f = batch[0]!;
            const p = attachUprobe({ progFd, pid, path: t.path, offset: f.offset, retprobe, cookie: cookie(f) });
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

  /** pid exited or left its scope: its probes go. */
  detach(pid: number): void {
    const mine = this.byPid.get(pid);
    if (!mine) return;
    for (const a of mine.values()) this.closer.close(a.fds);
    this.byPid.delete(pid);
    this.targetsOf.delete(pid);
  }

  /**
   * Take over a predecessor's probes (its link fds, handover.ts), by
   * attachmentKey. A process synced later keeps them; dropUnused() detaches
   * those of processes gone meanwhile.
   */
  adopt(key: string, linkFds: number[]): void {
    const k = parseAttachmentKey(key);
    if (!k) {
      this.closer.close(linkFds);
      return;
    }
    let mine = this.byPid.get(k.pid);
    if (!mine) this.byPid.set(k.pid, (mine = new Map()));
    const have = mine.get(k.fileId);
    if (have) have.fds.push(...linkFds);
    else mine.set(k.fileId, { fds: [...linkFds], adopted: true });
  }

  /** Detach the adopted probes of processes that are gone; returns how many attachments went. */
  dropUnused(alive: (pid: number) => boolean): number {
    let n = 0;
    for (const [pid, mine] of this.byPid) {
      if (alive(pid)) continue;
      n += mine.size;
      this.detach(pid);
    }
    return n;
  }

  /** The link fds of every attachment (a perf-event uprobe's link holds its perf event), by attachmentKey, for pinning. */
  linksByAttachment(): Map<string, number[]> {
    const out = new Map<string, number[]>();
    for (const [pid, mine] of this.byPid)
      for (const [id, a] of mine) out.set(attachmentKey(pid, id), a.adopted || this.kind === "multi" ? [...a.fds] : a.fds.filter((_, i) => i % 2 === 0));
    return out;
  }

  async detachAll(): Promise<void> {
    for (const mine of this.byPid.values()) for (const a of mine.values()) this.closer.close(a.fds);
    this.byPid.clear();
    this.targetsOf.clear();
    await this.closer.stop();
  }
}
