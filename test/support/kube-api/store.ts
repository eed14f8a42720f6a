/**
 * Object store of the kube-apiserver test double: one global resourceVersion
 * counter, create/update/patch/delete with the real API's checks, a watch
 * history (for resuming watches and for 410 after compaction), live watchers
 * and an owner-reference garbage collector. No HTTP here; see
 * ../kube-api-server.ts for the header comment listing what is approximated.
 */
import { applyPatch, JsonPatchError, type Operation } from "fast-json-patch";
import type { KubeObject } from "../kube-api-server.ts";
import { findByKind, RESOURCES, type ResourceDef } from "./resources.ts";
import type { Matcher } from "./selectors.ts";
import {
  alreadyExists,
  badRequest,
  conflict,
  expired,
  invalid,
  KubeApiError,
  namespaceNotFound,
  notFound,
  STALE,
  unsupportedMediaType,
} from "./status.ts";

type EventType = "ADDED" | "MODIFIED" | "DELETED";

interface Change {
  rv: number;
  res: ResourceDef;
  type: EventType;
  obj?: KubeObject; // state after the change (absent for DELETED)
  prev?: KubeObject; // state before (absent for ADDED)
}

export interface WatchSink {
  send(line: string): void;
  /** Ends the stream: cleanly (terminating chunk) or abruptly (connection reset). */
  end(abrupt: boolean): void;
}

export interface WatchRequest {
  namespace?: string;
  labelSelector: Matcher;
  fieldSelector: Matcher;
  resourceVersion?: string;
  allowBookmarks: boolean;
  timeoutSeconds?: number;
  bookmarkIntervalMs: number;
  query: string;
}

export interface WatchInfo {
  kind: string;
  apiVersion: string;
  namespace?: string;
  query: string;
}

export type PropagationPolicy = "Background" | "Foreground" | "Orphan";

const NAMESPACE = RESOURCES.find((r) => r.kind === "Namespace")!;
const NS_LABEL = "kubernetes.io/metadata.name";
const GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789";

function clone<T>(o: T): T {
  return structuredClone(o);
}

function now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

function keyOf(ns: string | undefined, name: string): string {
  return `${ns ?? ""}/${name}`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function withoutMetaAndStatus(o: KubeObject): Record<string, unknown> {
  const { metadata: _m, status: _s, ...rest } = o;
  return rest;
}

class Watcher {
  private closed = false;
  private timers: ReturnType<typeof setTimeout>[] = [];

  constructor(
    private readonly store: Store,
    readonly res: ResourceDef,
    readonly req: WatchRequest,
    private readonly sink: WatchSink,
  ) {}

  get info(): WatchInfo {
    const info: WatchInfo = { kind: this.res.kind, apiVersion: this.res.apiVersion, query: this.req.query };
    if (this.req.namespace !== undefined) info.namespace = this.req.namespace;
    return info;
  }

  start(): void {
    if (this.req.allowBookmarks) {
      this.timers.push(setInterval(() => this.bookmark(), this.req.bookmarkIntervalMs));
    }
    if (this.req.timeoutSeconds !== undefined && this.req.timeoutSeconds > 0) {
      this.timers.push(setTimeout(() => this.stop(false), this.req.timeoutSeconds * 1000));
    }
  }

  matches(o: KubeObject): boolean {
    return this.req.labelSelector(o) && this.req.fieldSelector(o);
  }

  private emit(type: string, object: unknown): void {
    if (this.closed) return;
    this.sink.send(JSON.stringify({ type, object }) + "\n");
  }

  /** The upstream watch cache's translation of a change for one watcher's filter. */
  deliver(ch: Change): void {
    if (ch.res !== this.res) return;
    const ns = (ch.obj ?? ch.prev)!.metadata.namespace;
    if (this.req.namespace !== undefined && ns !== this.req.namespace) return;
    const curPasses = ch.obj !== undefined && this.matches(ch.obj);
    const oldPasses = ch.prev !== undefined && this.matches(ch.prev);
    if (curPasses && !oldPasses) this.emit("ADDED", ch.obj);
    else if (curPasses && oldPasses) this.emit("MODIFIED", ch.obj);
    else if (!curPasses && oldPasses) {
      // DELETED carries the last matching state, stamped with the change's resourceVersion.
      const o = clone(ch.prev!);
      o.metadata.resourceVersion = String(ch.rv);
      this.emit("DELETED", o);
    }
  }

  added(o: KubeObject): void {
    this.emit("ADDED", o);
  }

  error(e: KubeApiError): void {
    this.emit("ERROR", e.toStatus());
  }

  bookmark(): void {
    this.emit("BOOKMARK", {
      kind: this.res.kind,
      apiVersion: this.res.apiVersion,
      metadata: { resourceVersion: this.store.resourceVersion() },
    });
  }

  stop(abrupt: boolean): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.store.forget(this);
    this.sink.end(abrupt);
  }
}

export class Store {
  private rv = 0;
  private compactedRv = 0;
  private readonly buckets = new Map<ResourceDef, Map<string, KubeObject>>();
  private history: Change[] = [];
  private readonly watchers = new Set<Watcher>();

  constructor() {
    for (const r of RESOURCES) this.buckets.set(r, new Map());
  }

  resourceVersion(): string {
    return String(this.rv);
  }

  private bucket(res: ResourceDef): Map<string, KubeObject> {
    return this.buckets.get(res)!;
  }

  private stored(res: ResourceDef, ns: string | undefined, name: string): KubeObject | undefined {
    return this.bucket(res).get(keyOf(res.namespaced ? ns : undefined, name));
  }

  private commit(res: ResourceDef, type: EventType, obj: KubeObject | undefined, prev: KubeObject | undefined): void {
    this.rv++;
    const target = obj ?? prev!;
    const key = keyOf(target.metadata.namespace, target.metadata.name!);
    if (obj !== undefined) {
      obj.metadata.resourceVersion = String(this.rv);
      this.bucket(res).set(key, obj);
    } else {
      this.bucket(res).delete(key);
    }
    const ch: Change = { rv: this.rv, res, type };
    if (obj !== undefined) ch.obj = clone(obj);
    if (prev !== undefined) ch.prev = prev;
    this.history.push(ch);
    for (const w of [...this.watchers]) w.deliver(ch);
  }

  // ---- reads --------------------------------------------------------------

  get(res: ResourceDef, ns: string | undefined, name: string): KubeObject | undefined {
    const o = this.stored(res, ns, name);
    return o === undefined ? undefined : clone(o);
  }

  /** Matching objects in key order (namespace, name), as etcd returns them. */
  list(res: ResourceDef, ns: string | undefined, match: Matcher = () => true): KubeObject[] {
    const out: KubeObject[] = [];
    const keys = [...this.bucket(res).keys()].sort();
    for (const k of keys) {
      const o = this.bucket(res).get(k)!;
      if (ns !== undefined && res.namespaced && o.metadata.namespace !== ns) continue;
      if (match(o)) out.push(clone(o));
    }
    return out;
  }

  // ---- writes -------------------------------------------------------------

  private checkTypeMeta(res: ResourceDef, o: KubeObject): void {
    if (o.kind !== undefined && o.kind !== "" && o.kind !== res.kind) {
      throw badRequest(`the kind of the provided object (${String(o.kind)}) does not match the resource (${res.kind})`);
    }
    if (o.apiVersion !== undefined && o.apiVersion !== "" && o.apiVersion !== res.apiVersion) {
      throw badRequest(
        `the API version in the data (${String(o.apiVersion)}) does not match the expected API version (${res.apiVersion})`,
      );
    }
  }

  private generateName(res: ResourceDef, ns: string | undefined, prefix: string): string {
    for (;;) {
      let suffix = "";
      for (let i = 0; i < 5; i++) suffix += GENERATE_ALPHABET[Math.floor(Math.random() * GENERATE_ALPHABET.length)];
      if (this.stored(res, ns, prefix + suffix) === undefined) return prefix + suffix;
    }
  }

  /**
   * `ns` is the namespace from the URL (undefined for the direct API, which
   * takes it from the object). `http` applies the create-time rules of the
   * real API that test setup wants to bypass (status reset, resourceVersion
   * must be empty).
   */
  create(res: ResourceDef, ns: string | undefined, body: KubeObject, opts: { http?: boolean; dryRun?: boolean } = {}): KubeObject {
    if (!isObject(body)) throw badRequest("the request body must be a JSON object");
    const obj = clone(body);
    this.checkTypeMeta(res, obj);
    obj.apiVersion = res.apiVersion;
    obj.kind = res.kind;
    if (!isObject(obj.metadata)) obj.metadata = {};
    const md = obj.metadata;
    if (res.namespaced) {
      const bodyNs = md.namespace;
      if (ns === undefined) ns = bodyNs;
      if (bodyNs !== undefined && bodyNs !== "" && bodyNs !== ns) {
        throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
      }
      if (ns === undefined || ns === "") throw badRequest("an empty namespace may not be set during creation");
      if (this.stored(NAMESPACE, undefined, ns) === undefined) throw namespaceNotFound(ns);
      md.namespace = ns;
    } else {
      ns = undefined;
      delete md.namespace;
    }
    if (md.name === undefined || md.name === "") {
      if (md.generateName === undefined || md.generateName === "") {
        throw invalid(res, "", "metadata.name: Required value: name or generateName is required");
      }
      md.name = this.generateName(res, ns, md.generateName);
    }
    if (this.stored(res, ns, md.name) !== undefined) throw alreadyExists(res, md.name);
    if (opts.http && md.resourceVersion !== undefined && md.resourceVersion !== "") {
      throw new KubeApiError(500, "InternalError", "resourceVersion should not be set on objects to be created");
    }
    delete md.resourceVersion;
    delete md.deletionTimestamp;
    md.uid = crypto.randomUUID();
    md.creationTimestamp = now();
    md.generation = 1;
    if (res === NAMESPACE) {
      md.labels = { ...md.labels, [NS_LABEL]: md.name };
      obj.spec = { finalizers: ["kubernetes"], ...(isObject(obj.spec) ? obj.spec : {}) };
      obj.status = { phase: "Active" };
    } else if (opts.http && res.statusSubresource) {
      if (res.kind === "Pod") obj.status = { phase: "Pending" };
      else delete obj.status;
    }
    if (!opts.dryRun) this.commit(res, "ADDED", obj, undefined);
    return clone(obj);
  }

  /**
   * PUT semantics. `subresource: "status"` replaces only .status;
   * `keepStatus` (HTTP PUT on the main resource of a type with a status
   * subresource) ignores .status changes, as the real API does.
   */
  update(
    res: ResourceDef,
    ns: string | undefined,
    name: string,
    body: KubeObject,
    opts: { subresource?: "status"; keepStatus?: boolean; dryRun?: boolean } = {},
  ): KubeObject {
    if (!isObject(body)) throw badRequest("the request body must be a JSON object");
    const cur = this.stored(res, ns, name);
    if (cur === undefined) throw notFound(res, name);
    const incoming = clone(body);
    this.checkTypeMeta(res, incoming);
    const md = isObject(incoming.metadata) ? incoming.metadata : {};
    if (md.name !== undefined && md.name !== name) {
      throw badRequest(`the name of the object (${md.name}) does not match the name on the URL (${name})`);
    }
    if (res.namespaced && md.namespace !== undefined && md.namespace !== "" && md.namespace !== cur.metadata.namespace) {
      throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
    }
    if (md.resourceVersion !== undefined && md.resourceVersion !== "" && md.resourceVersion !== cur.metadata.resourceVersion) {
      throw conflict(res, name, STALE);
    }
    if (md.uid !== undefined && md.uid !== "" && md.uid !== cur.metadata.uid) {
      throw conflict(res, name, `Precondition failed: UID in precondition: ${md.uid}, UID in object meta: ${cur.metadata.uid}`);
    }

    let next: KubeObject;
    if (opts.subresource === "status") {
      next = clone(cur);
      if (incoming.status === undefined) delete next.status;
      else next.status = incoming.status;
    } else {
      next = incoming;
      next.apiVersion = res.apiVersion;
      next.kind = res.kind;
      const meta: KubeObject["metadata"] = { ...md, name };
      if (res.namespaced) meta.namespace = cur.metadata.namespace!;
      else delete meta.namespace;
      meta.uid = cur.metadata.uid!;
      meta.creationTimestamp = cur.metadata.creationTimestamp!;
      meta.generation = cur.metadata.generation ?? 1;
      if (cur.metadata.deletionTimestamp !== undefined) meta.deletionTimestamp = cur.metadata.deletionTimestamp;
      else delete meta.deletionTimestamp;
      if (res === NAMESPACE) meta.labels = { ...meta.labels, [NS_LABEL]: name };
      next.metadata = meta;
      if (opts.keepStatus && res.statusSubresource) {
        if (cur.status === undefined) delete next.status;
        else next.status = clone(cur.status);
      }
      if (!Bun.deepEquals(withoutMetaAndStatus(cur), withoutMetaAndStatus(next))) meta.generation += 1;
    }
    next.metadata.resourceVersion = cur.metadata.resourceVersion!;
    if (Bun.deepEquals(next, cur)) return clone(cur); // no-op: no new resourceVersion, no watch event
    if (!opts.dryRun) this.commit(res, "MODIFIED", next, cur);
    return clone(next);
  }

  patch(
    res: ResourceDef,
    ns: string | undefined,
    name: string,
    contentType: string,
    rawBody: string,
    opts: { subresource?: "status"; dryRun?: boolean } = {},
  ): KubeObject {
    const cur = this.stored(res, ns, name);
    if (cur === undefined) throw notFound(res, name);
    const ct = contentType.split(";")[0]!.trim().toLowerCase();
    const parse = (): unknown => {
      try {
        return JSON.parse(rawBody);
      } catch (e) {
        throw badRequest(`error decoding patch: ${(e as Error).message}`);
      }
    };
    let patched: unknown;
    switch (ct) {
      case "application/json-patch+json": {
        const ops = parse();
        if (!Array.isArray(ops)) throw badRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch");
        try {
          patched = applyPatch(clone(cur), ops as Operation[], true, true, true).newDocument;
        } catch (e) {
          if (!(e instanceof JsonPatchError)) throw e;
          const op = e.operation as { op?: string; path?: string } | undefined;
          const what =
            e.name === "TEST_OPERATION_FAILED"
              ? `test operation failed at ${op?.path ?? "?"}`
              : `${op?.op ?? "?"} operation does not apply: doc is missing path: "${op?.path ?? "?"}" (${e.name})`;
          throw new KubeApiError(422, "Invalid", `the server rejected our request due to an error in our request: ${what}`);
        }
        break;
      }
      case "application/merge-patch+json":
      case "application/strategic-merge-patch+json": {
        const p = parse();
        if (!isObject(p)) throw badRequest("the patch must be a JSON object");
        patched = mergePatch(clone(cur), p);
        break;
      }
      case "application/apply-patch+yaml":
      case "application/apply-patch+cbor":
        throw unsupportedMediaType(
          `the body of the request was in an unknown format - server-side apply (${ct}) is not implemented by the kube-api-server test double`,
        );
      default:
        throw unsupportedMediaType(
          `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`,
        );
    }
    if (!isObject(patched)) throw new KubeApiError(422, "Invalid", "the patched object is not a JSON object");
    const p = patched as KubeObject;
    if (!isObject(p.metadata)) p.metadata = {};
    if (p.metadata.namespace !== cur.metadata.namespace && res.namespaced) {
      throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
    }
    // The resulting metadata.resourceVersion, if present, is the precondition (as upstream).
    const updateOpts: { subresource?: "status"; keepStatus?: boolean; dryRun?: boolean } = { keepStatus: true };
    if (opts.subresource !== undefined) updateOpts.subresource = opts.subresource;
    if (opts.dryRun) updateOpts.dryRun = true;
    return this.update(res, ns, name, p, updateOpts);
  }

  delete(
    res: ResourceDef,
    ns: string | undefined,
    name: string,
    opts: { propagationPolicy?: PropagationPolicy; preconditions?: { uid?: string; resourceVersion?: string }; dryRun?: boolean } = {},
  ): KubeObject {
    const cur = this.stored(res, ns, name);
    if (cur === undefined) throw notFound(res, name);
    const pre = opts.preconditions ?? {};
    if (pre.uid && pre.uid !== cur.metadata.uid) {
      throw conflict(res, name, `Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${cur.metadata.uid}`);
    }
    if (pre.resourceVersion && pre.resourceVersion !== cur.metadata.resourceVersion) {
      throw conflict(
        res,
        name,
        `Precondition failed: ResourceVersion in precondition: ${pre.resourceVersion}, ResourceVersion in object meta: ${cur.metadata.resourceVersion}`,
      );
    }
    if (opts.dryRun) return clone(cur);
    this.remove(res, cur, opts.propagationPolicy ?? "Background");
    return clone(cur);
  }

  private remove(res: ResourceDef, cur: KubeObject, policy: PropagationPolicy): void {
    if (res === NAMESPACE) {
      // Namespace contents go first (upstream: asynchronously while the namespace is Terminating).
      for (const r of RESOURCES) {
        if (!r.namespaced) continue;
        for (const o of [...this.bucket(r).values()]) {
          if (o.metadata.namespace === cur.metadata.name && this.bucket(r).get(keyOf(o.metadata.namespace, o.metadata.name!)) === o) {
            this.remove(r, o, "Background");
          }
        }
      }
    }
    this.commit(res, "DELETED", undefined, cur);
    this.collectGarbage(cur.metadata.uid!, policy);
  }

  private uidExists(uid: string): boolean {
    for (const b of this.buckets.values()) for (const o of b.values()) if (o.metadata.uid === uid) return true;
    return false;
  }

  /** Dependents of a deleted owner: deleted (Background/Foreground) or released (Orphan), recursively. */
  private collectGarbage(ownerUid: string, policy: PropagationPolicy): void {
    const dependents: [ResourceDef, KubeObject][] = [];
    for (const [r, b] of this.buckets) {
      for (const o of b.values()) {
        if (o.metadata.ownerReferences?.some((ref) => ref.uid === ownerUid)) dependents.push([r, o]);
      }
    }
    for (const [r, o] of dependents) {
      const live = this.bucket(r).get(keyOf(o.metadata.namespace, o.metadata.name!));
      if (live !== o) continue; // already collected through another path
      const refs = o.metadata.ownerReferences!;
      const others = refs.filter((ref) => ref.uid !== ownerUid && this.uidExists(ref.uid));
      if (policy === "Orphan" || others.length > 0) {
        const next = clone(o);
        const kept = refs.filter((ref) => ref.uid !== ownerUid);
        if (kept.length > 0) next.metadata.ownerReferences = kept;
        else delete next.metadata.ownerReferences;
        this.commit(r, "MODIFIED", next, o);
      } else {
        this.remove(r, o, "Background");
      }
    }
  }

  // ---- watch --------------------------------------------------------------

  /** Replays or lists, then registers a live watcher. A too-old resourceVersion gets one ERROR 410 and a clean end. */
  watch(res: ResourceDef, req: WatchRequest, sink: WatchSink): { stop(): void } {
    const w = new Watcher(this, res, req, sink);
    const rv = req.resourceVersion;
    if (rv === undefined || rv === "" || rv === "0") {
      for (const o of this.list(res, req.namespace)) if (w.matches(o)) w.added(o);
    } else {
      if (!/^\d+$/.test(rv)) throw badRequest(`resourceVersion: Invalid value: "${rv}": must be an unsigned integer`);
      const from = Number(rv);
      if (from < this.compactedRv) {
        w.error(expired(from, this.compactedRv));
        w.stop(false);
        return { stop: () => undefined };
      }
      for (const ch of this.history) if (ch.rv > from) w.deliver(ch);
    }
    this.watchers.add(w);
    w.start();
    return { stop: () => w.stop(false) };
  }

  forget(w: Watcher): void {
    this.watchers.delete(w);
  }

  openWatches(): WatchInfo[] {
    return [...this.watchers].map((w) => w.info);
  }

  /** Ends every open watch (abruptly: connection reset; or cleanly). */
  closeWatches(abrupt: boolean): void {
    for (const w of [...this.watchers]) w.stop(abrupt);
  }

  /** resourceVersion of the last compact(): continue tokens and watches from before it get 410. */
  compactedAt(): number {
    return this.compactedRv;
  }

  /** Forgets the history: watches from a resourceVersion before now get 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history = [];
  }

  allOf(kind: string): KubeObject[] {
    const res = findByKind(kind);
    if (res === undefined) throw new Error(`kube-api-server double: unknown kind ${kind}`);
    return this.list(res, undefined);
  }
}
