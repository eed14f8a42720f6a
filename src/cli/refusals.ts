/** Collects refused substitutions of one run and summarises them, one line per secret and reason. */
import type { RefusalEvent } from "../dataplane/abi.ts";

export class RefusalLog {
  private readonly counts = new Map<string, number>();

  constructor(private readonly secretNames: Map<number, string>) {}

  add(e: RefusalEvent): void {
    const secret = e.secretId ? (this.secretNames.get(e.secretId) ?? `secret #${e.secretId}`) : "-";
    const key = `${secret}\u0000${e.reason}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }

  get total(): number {
    let n = 0;
    for (const c of this.counts.values()) n += c;
    return n;
  }

  summary(): string[] {
    return [...this.counts].map(([key, n]) => {
      const [secret, reason] = key.split("\u0000");
      const what = secret === "-" ? "a write" : `secret ${secret}`;
      return `refused ${n}x: ${what}: ${reason}${HINTS[reason!] ? ` (${HINTS[reason!]})` : ""}`;
    });
  }
}

const HINTS: Record<string, string> = {
  unknown_placeholder: "text shaped like a placeholder that kloak did not issue; left as is",
  beyond_scan_cap: "bytes past --scan-cap were not scanned; raise --scan-cap if placeholders can sit there",
  too_many_placeholders: "more than 16 placeholders in one write",
  truncated: "the placeholder was cut by the end of the write",
  scope_not_entitled: "this process may not use that secret",
  concurrent_write: "another thread of the process was mid-substitution; this write went out with the placeholder",
};
