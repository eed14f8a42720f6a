/**
 * Keeps the kernel's view of destination policy current: which addresses kloak
 * resolved for which names. Exact host rules are resolved up front and on every
 * TTL expiry; names under a wildcard rule are resolved when a protected client
 * first sends them as SNI (a wildcard names no address of its own).
 *
 * An address that drops out of the answers keeps matching connections bound
 * before it dropped, for a grace period: DNS rotation must not cut connections
 * that were verified, while new connections follow the new answers at once.
 */
import { monotonicNs } from "../../lib/libc.ts";
import { VALID_FOREVER, type KernelRule } from "../dataplane/abi.ts";
import { NameResolver, type Addr, type LookupFn } from "./resolver.ts";
import { hostMatches, mappedAddress, mappedBytes, type Rule } from "./rules.ts";

/** What the engine needs of the data plane. */
export interface ResolvedSink {
  setResolved(name: string, addr: Uint8Array, validUntilNs: bigint): void;
  deleteResolved(name: string, addr: Uint8Array): void;
}

export interface PolicyEngineOptions {
  lookup: LookupFn;
  /** how long a dropped address still matches connections bound before the drop; default 300 s */
  graceSeconds?: number;
  /** at most this many names learned from SNI are tracked; default 4096 */
  maxSniNames?: number;
  warn?: (msg: string) => void;
}

/** The kernel form of a secret's rules; null when it has none (any destination). */
export function kernelRules(rules: readonly Rule[]): KernelRule[] | null {
  if (rules.length === 0) return null;
  return rules.map((r): KernelRule => {
    const port = r.port ?? 0;
    if (r.kind === "cidr") {
      const { bytes, prefix } = mappedAddress(r);
      return { kind: "cidr", addr: bytes, prefix, port };
    }
    return r.kind === "host" ? { kind: "host", name: r.host, port } : { kind: "wildcard", name: r.suffix, port };
  });
}

export class PolicyEngine {
  private readonly resolver: NameResolver;
  private readonly wildcards: Rule[] = [];
  private readonly ruleNames = new Set<string>();
  /** names learned from SNI, oldest first */
  private readonly sniNames = new Map<string, true>();
  /** `${name}|${address}` -> delete timer of a dropped address */
  private readonly dropping = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly graceNs: bigint;
  private closed = false;

  constructor(
    private readonly sink: ResolvedSink,
    private readonly opts: PolicyEngineOptions,
  ) {
    this.graceNs = BigInt(Math.round((opts.graceSeconds ?? 300) * 1e9));
    this.resolver = new NameResolver({
      lookup: opts.lookup,
      onChange: (name, change) => this.apply(name, change.added, change.removed),
      warn: opts.warn,
    });
  }

  /** Track the names of these rules; resolves once every exact name had its first answer (or failure). */
  async add(rules: readonly Rule[]): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const r of rules) {
      if (r.kind === "wildcard") this.wildcards.push(r);
      if (r.kind !== "host" || this.ruleNames.has(r.host)) continue;
      this.ruleNames.add(r.host);
      waits.push(this.resolver.watch(r.host));
    }
    await Promise.all(waits);
  }

  /** A protected client sent this SNI: resolve it if a wildcard rule covers it; settles once resolved. */
  async sawSni(name: string): Promise<void> {
    if (this.closed || this.ruleNames.has(name)) return;
    if (this.sniNames.has(name)) {
      this.sniNames.delete(name); // refresh its place in the LRU order
      this.sniNames.set(name, true);
      return;
    }
    if (!this.wildcards.some((w) => hostMatches(w, name))) return;
    this.sniNames.set(name, true);
    const max = this.opts.maxSniNames ?? 4096;
    for (const old of this.sniNames.keys()) {
      if (this.sniNames.size <= max) break;
      this.sniNames.delete(old);
      this.resolver.unwatch(old); // reports its addresses removed: they age out like any dropped answer
    }
    await this.resolver.watch(name);
  }

  /** The addresses currently allowed for a name (for reports and tests). */
  addresses(name: string): Addr[] {
    return this.resolver.current(name);
  }

  private apply(name: string, added: Addr[], removed: Addr[]): void {
    if (this.closed) return;
    for (const a of added) {
      const key = `${name}|${a.address}`;
      clearTimeout(this.dropping.get(key));
      this.dropping.delete(key);
      this.sink.setResolved(name, mappedBytes(a.address, a.family), VALID_FOREVER);
    }
    const now = monotonicNs();
    for (const a of removed) {
      const key = `${name}|${a.address}`;
      const bytes = mappedBytes(a.address, a.family);
      this.sink.setResolved(name, bytes, now);
      const t = setTimeout(() => {
        this.dropping.delete(key);
        if (!this.closed) this.sink.deleteResolved(name, bytes);
      }, Number(this.graceNs / 1_000_000n));
      t.unref();
      this.dropping.set(key, t);
    }
  }

  close(): void {
    this.closed = true;
    this.resolver.close();
    for (const t of this.dropping.values()) clearTimeout(t);
    this.dropping.clear();
  }
}
