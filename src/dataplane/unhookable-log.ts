/**
 * The data plane's record of processes whose TLS kloak cannot hook: one report
 * per process (a Bun binary without signature is reported when it is
 * attached, before its first ClientHello; the kernel's event for that same
 * process adds nothing), counted by reason for kloak_tls_unhookable_total.
 */
import type { UnhookedEvent } from "./abi.ts";
import type { UnrecognisedBun } from "./tls-targets.ts";
import { describeUnhooked, type UnhookableReason, type UnhookableReport } from "./unhookable.ts";

export class UnhookableLog {
  private readonly listeners: ((r: UnhookableReport) => void)[] = [];
  private readonly byReason = new Map<UnhookableReason, number>();
  /** live processes already reported */
  private readonly reported = new Set<number>();

  on(fn: (r: UnhookableReport) => void): void {
    this.listeners.push(fn);
  }

  /** reports so far, by reason */
  counts(): Record<string, number> {
    return Object.fromEntries(this.byReason);
  }

  /** The attacher found a Bun binary without signature in pid. */
  bunUnrecognised(b: UnrecognisedBun, scopeId: number | undefined): void {
    if (this.reported.has(b.pid)) return;
    this.emit(describeUnhooked(b.pid, scopeId ?? 0, undefined, `Bun ${b.version} at ${b.path}: ${b.why}`));
  }

  /** The kernel saw a ClientHello no hooked library made. */
  unhooked(ev: UnhookedEvent): void {
    if (this.reported.has(ev.tgid)) return;
    this.emit(describeUnhooked(ev.tgid, ev.scopeId, ev.peer));
  }

  exited(tgid: number): void {
    this.reported.delete(tgid);
  }

  private emit(r: UnhookableReport): void {
    this.reported.add(r.tgid);
    this.byReason.set(r.reason, (this.byReason.get(r.reason) ?? 0) + 1);
    for (const l of this.listeners) l(r);
  }
}
