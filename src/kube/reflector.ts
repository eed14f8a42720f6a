/**
 * List + watch of one resource into a local cache, like client-go's
 * reflector: list, then watch from the list's resourceVersion with bookmarks;
 * on a closed stream, watch again from the last version seen; on 410 Gone
 * (history compacted), list again and deliver the difference.
 *
 * API load: every list (the first and each one after a 410) asks for
 * resourceVersion "0", resourceVersionMatch NotOlderThan, in pages. RV 0 is
 * what kube-apiserver answers from its watch cache on every version; any
 * other list of a paged request goes to etcd before 1.33 (with N agents
 * relisting after an API server restart, N full reads of etcd). Servers
 * before 1.33 ignore `limit` at RV 0 and send everything in one reply;
 * newer ones page from the cache, so `limit` is always sent. The price is
 * that a lagging API server's cache may be older than what this reflector
 * saw; the watch that follows replays from the list's version, so the cache
 * catches up (client-go makes the same choice for its first list).
 *
 * Why not client-node's informer: kloak must keep only a trimmed copy of most
 * objects (every Secret in the cluster is read, but only enabled ones keep
 * their data), and it must keep serving its last good cache, with backoff,
 * while the API server is away. `transform` does the trimming.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import { Watch } from "@kubernetes/client-node";
import type { LogFn } from "../log.ts";
import { statusOf } from "./http.ts";

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
}

/** The metadata a trimmed cache keeps (no managedFields, no timestamps). */
export function trimMeta(m: ObjectMeta | undefined): ObjectMeta {
  return {
    name: m?.name,
    namespace: m?.namespace,
    uid: m?.uid,
    resourceVersion: m?.resourceVersion,
    labels: m?.labels ?? undefined,
    annotations: m?.annotations ?? undefined,
    ownerReferences: m?.ownerReferences?.map((o) => ({ apiVersion: o.apiVersion, kind: o.kind, name: o.name, uid: o.uid, controller: o.controller })),
  };
}

/**
 * One page of a list, as query parameters of the typed client's list call:
 * big lists are read in pages and trimmed page by page. The first page
 * carries resourceVersion "0" + NotOlderThan (watch cache); the next pages
 * carry only the continue token, as kube-apiserver requires.
 */
export interface ListPage {
  limit: number;
  _continue?: string;
  resourceVersion?: string;
  resourceVersionMatch?: string;
}

/** The first page of every list: served from the API server's watch cache, not etcd. */
export const FROM_WATCH_CACHE = { resourceVersion: "0", resourceVersionMatch: "NotOlderThan" } as const;
/** A list whose continue token expired (410 mid-list) starts over this many times before it counts as failed. */
const LIST_RESTARTS = 3;

const PAGE = 500;

export interface Handlers<T> {
  add?(obj: T): void;
  update?(obj: T, old: T): void;
  delete?(obj: T): void;
  /** the first complete list is in the cache */
  synced?(): void;
}

export interface ReflectorOptions<T> {
  /** in logs and metrics, e.g. "secrets" */
  name: string;
  kc: KubeConfig;
  /** e.g. /api/v1/secrets */
  path: string;
  /** labelSelector / fieldSelector of the watch; `list` must apply the same */
  query?: Record<string, string>;
  /** the typed client's list call, e.g. (page) => core.listSecretForAllNamespaces(page); called once per page */
  list: (page: ListPage) => Promise<{ metadata?: { resourceVersion?: string; _continue?: string }; items: unknown[] }>;
  transform: (raw: { metadata?: ObjectMeta } & Record<string, unknown>) => T;
  meta: (obj: T) => ObjectMeta;
  log: LogFn;
  /** the server ends each watch after this long (randomised ±20%) */
  watchTimeoutSeconds?: number;
  /** objects per list page (default 500): smaller for big objects, so one page stays small in memory */
  pageSize?: number;
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

export function objectKey(m: ObjectMeta): string {
  return m.namespace ? `${m.namespace}/${m.name}` : `${m.name}`;
}

export class Reflector<T> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: Handlers<T>[] = [];
  private resourceVersion = "";
  private stopped = true;
  private abort?: AbortController;
  private timer?: ReturnType<typeof setTimeout>;
  private failures = 0;
  private syncedOnce = false;
  private syncWaiters: (() => void)[] = [];
  /** true while a watch stream is open */
  connected = false;
  /** lists and watch restarts that failed, for metrics */
  errors = 0;

  constructor(private readonly o: ReflectorOptions<T>) {}

  /** the resource, as in logs and metrics */
  get name(): string {
    return this.o.name;
  }

  on(h: Handlers<T>): void {
    this.handlers.push(h);
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.cache.get(namespace ? `${namespace}/${name}` : name);
  }

  values(): IterableIterator<T> {
    return this.cache.values();
  }

  get size(): number {
    return this.cache.size;
  }

  get synced(): boolean {
    return this.syncedOnce;
  }

  whenSynced(): Promise<void> {
    if (this.syncedOnce) return Promise.resolve();
    return new Promise((r) => this.syncWaiters.push(r));
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.relist();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort?.abort();
    this.connected = false;
  }

  private async list(): Promise<{ rv: string; items: T[] }> {
    for (let restart = 0; ; restart++) {
      try {
        return await this.listOnce();
      } catch (e) {
        // The continue token outlived the API server's history (410 on a later page): the pages read
        // so far are no consistent snapshot with the rest, so start over from the watch cache.
        if (!(e instanceof ContinueExpired) || restart >= LIST_RESTARTS) throw e instanceof ContinueExpired ? e.cause : e;
        this.o.log("info", "list continue token expired; listing again from the start", { resource: this.o.name });
      }
    }
  }

  private async listOnce(): Promise<{ rv: string; items: T[] }> {
    const items: T[] = [];
    let cont: string | undefined;
    let rv = "";
    const limit = this.o.pageSize ?? PAGE;
    do {
      let body: Awaited<ReturnType<ReflectorOptions<T>["list"]>>;
      try {
        body = await this.o.list(cont === undefined ? { limit, ...FROM_WATCH_CACHE } : { limit, _continue: cont });
      } catch (e) {
        if (cont !== undefined && statusOf(e) === 410) throw new ContinueExpired(e);
        throw e;
      }
      for (const x of body.items) items.push(this.o.transform(x as never));
      // The list's resourceVersion is the first page's (the snapshot every page comes from).
      rv ||= body.metadata?.resourceVersion ?? "";
      cont = body.metadata?._continue || undefined;
    } while (cont);
    return { rv, items };
  }

  private async relist(): Promise<void> {
    if (this.stopped) return;
    let listed: { rv: string; items: T[] };
    try {
      listed = await this.list();
    } catch (e) {
      this.retry(`list failed: ${(e as Error).message}`, () => this.relist());
      return;
    }
    if (this.stopped) return;
    this.replace(listed.items);
    this.resourceVersion = listed.rv;
    if (!this.syncedOnce) {
      this.syncedOnce = true;
      for (const h of this.handlers) h.synced?.();
      for (const w of this.syncWaiters.splice(0)) w();
    }
    void this.watch();
  }

  /** Swap in a fresh list, delivering only what changed. */
  private replace(items: T[]): void {
    const seen = new Set<string>();
    for (const obj of items) {
      const key = objectKey(this.o.meta(obj));
      seen.add(key);
      this.upsert(key, obj);
    }
    for (const [key, old] of [...this.cache]) {
      if (seen.has(key)) continue;
      this.cache.delete(key);
      for (const h of this.handlers) h.delete?.(old);
    }
  }

  private upsert(key: string, obj: T): void {
    const old = this.cache.get(key);
    this.cache.set(key, obj);
    if (old === undefined) for (const h of this.handlers) h.add?.(obj);
    else if (this.o.meta(old).resourceVersion !== this.o.meta(obj).resourceVersion)
      for (const h of this.handlers) h.update?.(obj, old);
  }

  private async watch(): Promise<void> {
    if (this.stopped) return;
    const base = this.o.watchTimeoutSeconds ?? 300;
    const timeout = Math.round(base * (0.8 + Math.random() * 0.4));
    let expired = false;
    const query: Record<string, string> = {
      ...this.o.query,
      resourceVersion: this.resourceVersion,
      allowWatchBookmarks: "true",
      timeoutSeconds: String(timeout),
    };
    // A stream that dies without a FIN would otherwise hang forever.
    const watchdog = setTimeout(() => this.abort?.abort(), (timeout + 30) * 1000);
    const done = (err: unknown) => {
      clearTimeout(watchdog);
      this.connected = false;
      if (this.stopped) return;
      if (expired) {
        this.o.log("info", "watch history expired; listing again", { resource: this.o.name });
        void this.relist();
      } else if (err && !(err instanceof Error && err.name === "AbortError")) {
        this.retry(`watch failed: ${(err as Error).message ?? err}`, () => this.watch());
      } else {
        // The server ended the stream (timeoutSeconds): carry on from where we are.
        void this.watch();
      }
    };
    try {
      this.abort = await new Watch(this.o.kc).watch(
        this.o.path,
        query,
        (type, obj) => {
          // An aborted stream may still deliver what was buffered.
          if (this.stopped) return;
          this.connected = true;
          this.failures = 0;
          if (type === "ERROR") {
            if ((obj as { code?: number })?.code === 410) expired = true;
            else this.o.log("warn", "watch error", { resource: this.o.name, status: (obj as { message?: string })?.message });
            this.abort?.abort();
            return;
          }
          const rv = (obj as { metadata?: ObjectMeta })?.metadata?.resourceVersion;
          if (rv) this.resourceVersion = rv;
          if (type === "BOOKMARK") return;
          const t = this.o.transform(obj);
          const key = objectKey(this.o.meta(t));
          if (type === "DELETED") {
            const old = this.cache.get(key);
            this.cache.delete(key);
            if (old !== undefined) for (const h of this.handlers) h.delete?.(old);
          } else this.upsert(key, t);
        },
        done,
      );
      this.connected = true;
    } catch (e) {
      done(e);
    }
  }

  private retry(why: string, again: () => Promise<void>): void {
    this.errors++;
    this.failures++;
    this.connected = false;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.failures - 1, 10));
    // The first failure of a streak is a warning; repeats are debug until it recovers.
    this.o.log(this.failures === 1 ? "warn" : "debug", `${this.o.name}: ${why}; keeping the last state, retrying`, {
      resource: this.o.name,
      retryInMs: delay,
      cached: this.cache.size,
    });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void again(), delay * (0.8 + Math.random() * 0.4));
  }
}

/** 410 Gone on a continued page: the list must start again. */
class ContinueExpired extends Error {
  constructor(override readonly cause: unknown) {
    super("continue token expired");
  }
}
