/**
 * Per-process uprobes on TLS library functions. Probes are filtered by pid in
 * the kernel, so processes kloak does not protect never run them. Detaching
 * hands the fds to a closer thread: the kernel's unregister waits for a grace
 * period, and processes held at exec must not wait for that.
 */
import { FdCloser } from "../../lib/fd-closer.ts";
import { attachUprobe, attachUprobeMulti } from "../../lib/uprobe.ts";
import type { UprobeKind } from "./bpf-object.ts";
import type { TlsTarget, TlsTargetFinder } from "./tls-targets.ts";

export interface AttachResult {
  attached: number;
  /** the process went away before or while attaching */
  vanished: boolean;
  errors: string[];
}

const ESRCH = 3;

export class Attacher {
  /** pid -> target id -> the fds that hold its probes */
  private readonly probes = new Map<number, Map<string, number[]>>();
  private readonly closer = new FdCloser();
  attachErrors = 0;

  constructor(
    private readonly entryFd: number,
    private readonly retFd: number,
    private readonly finder: TlsTargetFinder,
    private readonly kind: UprobeKind,
  ) {}

  /** processes kloak tracks (attached to their TLS files, or to none yet) */
  get processes(): number {
    return this.probes.size;
  }

  /** fds holding probes: one per multi-uprobe link, or a link + perf event per single uprobe */
  get links(): number {
    let n = 0;
    for (const m of this.probes.values()) for (const fds of m.values()) n += fds.length;
    return n;
  }

  /**
   * Make the probes of pid match its current image: attach new targets, drop
   * those it no longer has (after exec). Probes survive exec for files the new
   * image also uses, since a pid-filtered uprobe follows the task.
   */
  sync(pid: number): AttachResult {
    const result: AttachResult = { attached: 0, vanished: false, errors: [] };
    const targets = this.finder.targetsFor(pid);
    let mine = this.probes.get(pid);
    if (!mine) this.probes.set(pid, (mine = new Map()));
    const wanted = new Set(targets.map((t) => t.id));
    for (const [id, fds] of mine) {
      if (!wanted.has(id)) {
        this.release(fds);
        mine.delete(id);
      }
    }
    for (const t of targets) {
      if (mine.has(t.id)) continue;
      mine.set(t.id, this.attachTarget(pid, t, result));
      if (result.vanished) {
        this.detach(pid);
        break;
      }
    }
    return result;
  }

  private attachTarget(pid: number, t: TlsTarget, result: AttachResult): number[] {
    const fds: number[] = [];
    const groups = [
      { progFd: this.entryFd, retprobe: false, fns: t.functions },
      { progFd: this.retFd, retprobe: true, fns: t.functions.filter((f) => f.ret) },
    ];
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
          if ((e as { errno?: number }).errno === ESRCH) {
            result.vanished = true;
            return fds;
          }
          this.attachErrors++;
          result.errors.push(`${batch.map((f) => f.name).join(", ")} in ${t.path}: ${(e as Error).message}`);
        }
      }
    }
    return fds;
  }

  private release(fds: number[]): void {
    this.closer.close(fds);
  }

  detach(pid: number): void {
    const mine = this.probes.get(pid);
    if (!mine) return;
    for (const fds of mine.values()) this.release(fds);
    this.probes.delete(pid);
  }

  async detachAll(): Promise<void> {
    for (const pid of [...this.probes.keys()]) this.detach(pid);
    await this.closer.stop();
  }
}
