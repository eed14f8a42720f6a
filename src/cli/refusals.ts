/**
 * Collects refused substitutions of one run and summarises them: one line per
 * secret, destination and reason. Destinations are what the kernel saw (peer
 * IP:port, the client's SNI); never a value.
 */
import type { RefusalEvent } from "../dataplane/abi.ts";
import { describeDestination, describeRefusal, type ViolationAction } from "../dataplane/refusals.ts";

export interface RefusalEntry {
  secret: string;
  destination: string;
  reason: string;
  action: ViolationAction;
  count: number;
}

export class RefusalLog {
  private readonly entries = new Map<string, RefusalEntry>();

  constructor(private readonly secretNames: Map<number, string>) {}

  add(e: RefusalEvent): void {
    const secret = e.secretId ? (this.secretNames.get(e.secretId) ?? `secret #${e.secretId}`) : "";
    const destination = describeDestination(e);
    const key = `${secret}\u0000${destination}\u0000${e.reason}\u0000${e.action}`;
    const entry = this.entries.get(key) ?? { secret, destination, reason: e.reason, action: e.action, count: 0 };
    entry.count++;
    this.entries.set(key, entry);
  }

  get total(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.count;
    return n;
  }

  /** One entry per secret, destination, reason and action, in order of first sight. */
  list(): RefusalEntry[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }

  summary(): string[] {
    return [...this.entries.values()].map(({ secret, destination, reason, action, count }) => {
      const what = secret === "" ? "a write" : `secret ${secret}`;
      return `refused ${count}x: ${what} to ${destination}: ${describeRefusal({ reason, action }, "exec")}`;
    });
  }
}
