/**
 * Collects refused substitutions of one run and summarises them: one line per
 * secret, destination and reason. Destinations are what the kernel saw (peer
 * IP:port, the client's SNI); never a value.
 */
import type { RefusalEvent } from "../dataplane/abi.ts";

interface Entry {
  secret: string;
  destination: string;
  reason: string;
  count: number;
}

/** "10.0.0.1:443 (SNI api.example.com)", "[::1]:8443", or "unknown destination". */
export function describeDestination(e: Pick<RefusalEvent, "peer" | "sni">): string {
  const { address, port } = e.peer;
  const peer = address === "" ? "unknown destination" : address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
  return e.sni ? `${peer} (SNI ${e.sni})` : peer;
}

export class RefusalLog {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly secretNames: Map<number, string>) {}

  add(e: RefusalEvent): void {
    const secret = e.secretId ? (this.secretNames.get(e.secretId) ?? `secret #${e.secretId}`) : "";
    const destination = describeDestination(e);
    const key = `${secret}\u0000${destination}\u0000${e.reason}`;
    const entry = this.entries.get(key) ?? { secret, destination, reason: e.reason, count: 0 };
    entry.count++;
    this.entries.set(key, entry);
  }

  get total(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.count;
    return n;
  }

  summary(): string[] {
    return [...this.entries.values()].map(({ secret, destination, reason, count }) => {
      const what = secret === "" ? "a write" : `secret ${secret}`;
      return `refused ${count}x: ${what} to ${destination}: ${reason}${HINTS[reason] ? ` (${HINTS[reason]})` : ""}`;
    });
  }
}

export const HINTS: Record<string, string> = {
  unknown_placeholder: "text shaped like a placeholder that kloak did not issue; left as is",
  beyond_scan_cap: "bytes past --scan-cap were not scanned; raise --scan-cap if placeholders can sit there",
  too_many_placeholders: "more than 16 placeholders in one write",
  truncated: "the placeholder was cut by the end of the write",
  scope_not_entitled: "this process may not use that secret",
  concurrent_write: "another thread of the process was mid-substitution; this write went out with the placeholder",
  destination_not_allowed: "no rule of the secret allows this peer; add one with --allow NAME=HOST if it is meant to",
  sni_mismatch: "the peer is an allowed host's address, but the client asked it for another name",
  unknown_peer: "kloak could not tie this TLS connection to a connected socket, so it fails closed",
};
