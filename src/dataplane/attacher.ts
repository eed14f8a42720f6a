/**
 * Per-process uprobes on TLS write functions. Probes are filtered by pid in
 * the kernel, so processes kloak does not protect never run them. Detaching
 * hands the fds to a closer thread: the kernel's unregister waits for a grace
 * period, and processes held at exec must not wait for that.
 */
import { FdCloser } from "../../lib/fd-closer.ts";
import { attachUprobe, type UprobeFds } from "../../lib/uprobe.ts";
import type { TlsTarget, TlsTargetFinder } from "./tls-targets.ts";

export interface AttachResult {
  attached: number;
  /** the process went away before or while attaching */
  vanished: boolean;
  errors: string[];
}

const ESRCH = 3;

export class Attacher {
  /** pid -> target id -> probes */
  private readonly probes = new Map<number, Map<string, UprobeFds[]>>();
  private readonly closer = new FdCloser();
  attachErrors = 0;

  constructor(
    private readonly entryFd: number,
    private readonly retFd: number,
    private readonly finder: TlsTargetFinder,
  ) {}

  get processes(): number {
    return this.probes.size;
  }

  get probeCount(): number {
    let n = 0;
    for (const m of this.probes.values()) for (const l of m.values()) n += l.length;
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

  private attachTarget(pid: number, t: TlsTarget, result: AttachResult): UprobeFds[] {
    const fds: UprobeFds[] = [];
    for (const f of t.functions) {
      for (const [progFd, retprobe] of [
        [this.entryFd, false],
        [this.retFd, true],
      ] as const) {
        try {
          fds.push(attachUprobe({ progFd, pid, path: t.path, offset: f.offset, retprobe, cookie: BigInt(f.cookie) }));
          result.attached++;
        } catch (e) {
          if ((e as { errno?: number }).errno === ESRCH) {
            result.vanished = true;
            return fds;
          }
          this.attachErrors++;
          result.errors.push(`${f.name} in ${t.path}: ${(e as Error).message}`);
        }
      }
    }
    return fds;
  }

  private release(fds: UprobeFds[]): void {
    this.closer.close(fds.flatMap((f) => [f.linkFd, f.perfFd]));
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
