/**
 * kloak's own name resolution for destination policy. A secret may only reach a peer IP that
 * kloak itself resolved for an allowed name, so kloak keeps, per watched name, the addresses DNS
 * currently gives and reports every change (the caller mirrors them into a kernel map).
 *
 * Refreshes follow the answers' TTL. A failing refresh keeps the last good addresses for a while
 * (a DNS hiccup must not cut off every connection), then drops them: fail closed, without flapping.
 */
import * as dns from "node:dns";

export interface Answer {
  address: string;
  family: 4 | 6;
  /** Seconds, as the DNS answer said. */
  ttl: number;
}
/** Rejects on failure; [] = the name has no addresses (NXDOMAIN / NODATA). */
export type LookupFn = (name: string) => Promise<Answer[]>;

export interface Addr {
  address: string;
  family: 4 | 6;
}

export interface AddrChange {
  added: Addr[];
  removed: Addr[];
  current: Addr[];
  /** When the change was observed (ms, from `now`): the start of the kernel-side grace for `removed`. */
  at: number;
}

export interface ResolverOptions {
  lookup: LookupFn;
  /** Default 1: answers with ttl 0 are refreshed at this pace. */
  minTtlSeconds?: number;
  /** Default 3600. */
  maxTtlSeconds?: number;
  /** How long past their expiry the addresses survive failing refreshes; default 2 × TTL, at least 30 s. */
  maxStaleSeconds?: number;
  /** How soon a name that has no addresses is asked again; default 30 (clamped like a TTL). */
  negativeTtlSeconds?: number;
  /** Called only when a name's set changes, including its first resolution and `unwatch`. Must not throw (if it does, the error is warned and resolution carries on). */
  onChange: (name: string, change: AddrChange) => void;
  /** One line per failure streak of a name, and for an onChange that threw. */
  warn?: (msg: string) => void;
  /** ms; injectable for tests. */
  now?: () => number;
}

interface Entry {
  addrs: Addr[];
  /** From this time on a failed refresh removes `addrs`. */
  staleAt: number;
  /** Consecutive failed attempts (0 = last attempt succeeded). */
  failures: number;
  timer?: ReturnType<typeof setTimeout>;
  /** The first attempt; what a repeated `watch` returns. */
  first: Promise<void>;
}

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30_000;

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

export class NameResolver {
  readonly #opts: ResolverOptions;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();
  // Keyed by name, not entry: an unwatch + watch during a lookup shares it instead of starting another.
  readonly #inflight = new Map<string, Promise<Answer[]>>();
  #closed = false;

  constructor(opts: ResolverOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Start tracking a name and keep refreshing it at its TTL. Settles after the first attempt,
   * success or failure (it rejects only after close()); a known name returns at once.
   */
  watch(name: string): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("NameResolver is closed"));
    const key = normalizeName(name);
    const known = this.#entries.get(key);
    if (known) return known.first;
    const e: Entry = { addrs: [], staleAt: 0, failures: 0, first: Promise.resolve() };
    this.#entries.set(key, e);
    e.first = this.#refresh(key, e);
    return e.first;
  }

  /** Stop tracking a name; its addresses are reported removed. */
  unwatch(name: string): void {
    const key = normalizeName(name);
    const e = this.#entries.get(key);
    if (!e) return;
    clearTimeout(e.timer);
    this.#entries.delete(key);
    this.#set(key, e, []);
  }

  current(name: string): Addr[] {
    return [...(this.#entries.get(normalizeName(name))?.addrs ?? [])];
  }

  names(): string[] {
    return [...this.#entries.keys()];
  }

  /** Stop all timers. Nothing is reported: the caller is shutting down. */
  close(): void {
    this.#closed = true;
    for (const e of this.#entries.values()) clearTimeout(e.timer);
    this.#entries.clear();
  }

  async #refresh(key: string, e: Entry): Promise<void> {
    let answers: Answer[];
    try {
      let p = this.#inflight.get(key);
      if (!p) {
        p = Promise.resolve()
          .then(() => this.#opts.lookup(key))
          .finally(() => this.#inflight.delete(key));
        this.#inflight.set(key, p);
      }
      answers = await p;
    } catch (err) {
      if (this.#entries.get(key) === e) this.#failed(key, e, err);
      return;
    }
    if (this.#entries.get(key) === e) this.#succeeded(key, e, answers);
  }

  #succeeded(key: string, e: Entry, answers: Answer[]): void {
    const ttl = this.#clampTtl(answers.length ? Math.min(...answers.map((a) => a.ttl)) : (this.#opts.negativeTtlSeconds ?? 30));
    e.failures = 0;
    e.staleAt = this.#now() + (ttl + (this.#opts.maxStaleSeconds ?? Math.max(30, 2 * ttl))) * 1000;
    this.#schedule(key, e, ttl * 1000);
    this.#set(key, e, dedupe(answers));
  }

  #failed(key: string, e: Entry, err: unknown): void {
    e.failures++;
    if (e.failures === 1) {
      const keep = e.addrs.length
        ? `; keeping its ${e.addrs.length} address(es) for at most ${Math.max(0, Math.ceil((e.staleAt - this.#now()) / 1000))} s`
        : "";
      this.#opts.warn?.(`kloak: resolving ${key} failed: ${err instanceof Error ? err.message : String(err)}${keep}`);
    }
    this.#dropIfStale(key, e);
    let delay = Math.min(BACKOFF_MIN_MS * 2 ** (e.failures - 1), BACKOFF_MAX_MS);
    // Retry no later than the stale deadline, so the addresses go on time even with a long backoff.
    if (e.addrs.length) delay = Math.min(delay, Math.max(0, e.staleAt - this.#now()));
    this.#schedule(key, e, delay);
  }

  #dropIfStale(key: string, e: Entry): void {
    if (e.failures > 0 && e.addrs.length && this.#now() >= e.staleAt) this.#set(key, e, []);
  }

  #schedule(key: string, e: Entry, delayMs: number): void {
    clearTimeout(e.timer);
    e.timer = setTimeout(() => {
      // The deadline may pass while a slow lookup is still in flight: drop first, then ask.
      this.#dropIfStale(key, e);
      void this.#refresh(key, e);
    }, delayMs);
    e.timer.unref();
  }

  #set(key: string, e: Entry, next: Addr[]): void {
    const before = new Set(e.addrs.map((a) => a.address));
    const after = new Set(next.map((a) => a.address));
    const added = next.filter((a) => !before.has(a.address));
    const removed = e.addrs.filter((a) => !after.has(a.address));
    e.addrs = next;
    if (!added.length && !removed.length) return;
    try {
      this.#opts.onChange(key, { added, removed, current: [...next], at: this.#now() });
    } catch (err) {
      this.#opts.warn?.(`kloak: onChange for ${key} threw: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  #clampTtl(ttl: number): number {
    const min = this.#opts.minTtlSeconds ?? 1;
    const max = this.#opts.maxTtlSeconds ?? 3600;
    return Math.min(max, Math.max(min, Number.isFinite(ttl) ? ttl : min));
  }
}

function dedupe(answers: Answer[]): Addr[] {
  const byAddress = new Map<string, Addr>();
  for (const a of answers) byAddress.set(a.address, { address: a.address, family: a.family });
  return [...byAddress.values()].sort((x, y) => x.family - y.family || (x.address < y.address ? -1 : 1));
}

export interface DnsLookupOptions {
  /** Per try; Bun rounds it to whole seconds, at least 1 s. Default 2000. */
  timeoutMs?: number;
  /** Default 2. */
  tries?: number;
  /** Ask getaddrinfo (/etc/hosts) when DNS has no address at all. Default: only when no servers are given. */
  hostsFallback?: boolean;
}

/** TTL given to getaddrinfo answers, which carry none. */
const HOSTS_TTL_SECONDS = 60;

/**
 * The default LookupFn: A and AAAA through c-ares (node:dns Resolver) with their TTLs, from
 * `servers` (e.g. ["127.0.0.1:5353"]) or else resolv.conf. No such name / no such record -> [] for
 * that family; any other error of either family rejects (a half answer would drop the other
 * family's addresses at once instead of after maxStale).
 */
export function dnsLookup(servers?: string[], opts: DnsLookupOptions = {}): LookupFn {
  const hostsFallback = opts.hostsFallback ?? !servers?.length;
  return async (name) => {
    // A fresh Resolver per lookup: each Bun Resolver caches answers for their TTL, so a refresh at
    // expiry (or before it, under maxTtlSeconds) could be handed the very answer it is replacing.
    // Measured cost: ~0.2 ms, no descriptors kept.
    const r = new dns.promises.Resolver({ timeout: opts.timeoutMs ?? 2000, tries: opts.tries ?? 2 });
    if (servers?.length) r.setServers(servers);
    const [v4, v6] = await Promise.all([
      r.resolve4(name, { ttl: true }).then((rs) => rs.map((x) => ({ address: x.address, family: 4 as const, ttl: x.ttl })), noAddress),
      r.resolve6(name, { ttl: true }).then((rs) => rs.map((x) => ({ address: x.address, family: 6 as const, ttl: x.ttl })), noAddress),
    ]);
    const answers: Answer[] = [...v4, ...v6];
    if (answers.length || !hostsFallback) return answers;
    const found = await dns.promises.lookup(name, { all: true }).catch(noAddress);
    return found.flatMap((a) => (a.family === 4 || a.family === 6 ? [{ address: a.address, family: a.family, ttl: HOSTS_TTL_SECONDS }] : []));
  };
}

// Bun reports NODATA as ENOTFOUND too (Node says ENODATA); both mean "no address", not failure.
function noAddress(err: unknown): never[] {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ENOTFOUND" || code === "ENODATA") return [];
  throw err;
}
