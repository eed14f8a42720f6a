/**
 * The leader's job: keep one shadow Secret `<name>-kloak` per enabled
 * original, with the same type and keys, placeholders as the protected values
 * and the other values (getkloak.io/keys) copied as they are.
 * Placeholders survive updates unless a value's length changes, so pods that
 * mounted the shadow keep working across rotations.
 *
 * Writes are optimistic (resourceVersion); a 409 means the cache is behind,
 * and the key is retried once the watch catches up. The writer never touches
 * a Secret it did not label as its own. Originals are reconciled one at a
 * time, through a work queue that retries failures with backoff.
 */
import { setHeaderOptions, type CoreV1Api, type V1Secret } from "@kubernetes/client-node";
import { isEnabled, isShadow, MANAGED, OWNER, shadowName, shadowOwner } from "../kube/contract.ts";
import { WorkQueue } from "../kube/work-queue.ts";
import { checkSecret, describeProblems } from "../secrets/secret-check.ts";
import { isPlaceholderShaped, placeholderFits, PlaceholderRegistry, valueShape } from "../secrets/placeholder.ts";
import type { LogFn } from "../log.ts";
import { PLACEHOLDER_B64_MAX, isDigest, sameShadowValue } from "./secret-view.ts";
import type { SecretView } from "../kube/secret-view.ts";

export interface SecretCache {
  get(namespace: string, name: string): SecretView | undefined;
  values(): IterableIterator<SecretView>;
}

export interface EventSink {
  record(
    obj: { apiVersion: string; kind: string; namespace: string; name: string; uid?: string },
    type: "Normal" | "Warning",
    reason: string,
    message: string,
  ): void;
}

const RETRY_MS = [200, 1000, 5000, 15_000, 30_000];

/** A key's delay after its n-th failure in a row; a taken name waits the longest. */
function retryDelay(failures: number, e: unknown): number {
  return e instanceof NameTaken ? RETRY_MS.at(-1)! : RETRY_MS[Math.min(failures - 1, RETRY_MS.length - 1)]!;
}

/** Accept header for a metadata-only read: the API server leaves data out. */
export const METADATA_ONLY = setHeaderOptions("Accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json");

/** The shadow's name is someone else's Secret: retried on the slow end of the backoff, reported by Event. */
class NameTaken extends Error {}

export class ShadowWriter {
  private leader = false;
  /** `${ns}/${name}` of originals to reconcile, one at a time */
  private readonly queue = new WorkQueue<string>((key) => this.reconcileKey(key), {
    backoff: retryDelay,
    onFailure: (key, e, delay) => this.failed(key, e, delay),
  });
  /** every shadow placeholder, built once per leadership and kept in step with this writer's writes */
  private registry?: PlaceholderRegistry;
  /** shadow writes (create/update/delete) done, for metrics */
  writes = 0;
  errors = 0;
  /** enabled Secrets this writer refuses to serve now (a value with no fitting placeholder, bad rules), for metrics */
  readonly unservable = new Set<string>();

  constructor(
    private readonly core: CoreV1Api,
    private readonly cache: SecretCache,
    private readonly events: EventSink,
    private readonly log: LogFn,
  ) {}

  setLeader(on: boolean): void {
    if (on === this.leader) return;
    this.leader = on;
    this.log("info", on ? "elected shadow writer" : "no longer the shadow writer", {});
    // Another leader may have written meanwhile: rebuild from the cache when next needed.
    this.registry = undefined;
    if (!on) {
      this.queue.clear();
      return;
    }
    // A new leader reconciles everything: originals, and shadows whose original is gone.
    for (const s of this.cache.values()) this.observe(s);
  }

  get isLeader(): boolean {
    return this.leader;
  }

  /** A Secret changed (or was deleted): reconcile the original it concerns. */
  observe(s: SecretView): void {
    const ns = s.metadata.namespace ?? "";
    const owner = shadowOwner(s.metadata);
    const name = owner ?? s.metadata.name ?? "";
    // Only enabled originals, or what has or had a shadow, concern the writer.
    if (!owner && !isEnabled(s.metadata, "label") && !this.cache.get(ns, shadowName(name))) return;
    this.enqueue(ns, name);
  }

  enqueue(ns: string, name: string): void {
    if (!this.leader) return;
    void this.queue.add(`${ns}/${name}`);
  }

  /** Resolves when nothing is queued (tests). */
  idle(): Promise<void> {
    return this.queue.idle();
  }

  private async reconcileKey(key: string): Promise<void> {
    if (!this.leader) return;
    const [ns, name] = splitKey(key);
    await this.reconcile(ns, name);
  }

  private failed(key: string, e: unknown, delay: number): void {
    this.errors++;
    const status = (e as { code?: number }).code;
    this.log(status === 409 || e instanceof NameTaken ? "debug" : "warn", "shadow write failed; retrying", {
      secret: key,
      status,
      error: errorText(e),
      retryInMs: delay,
    });
  }

  private async reconcile(ns: string, name: string): Promise<void> {
    const original = this.cache.get(ns, name);
    const shadow = this.cache.get(ns, shadowName(name));
    const ours = shadowOwner(shadow?.metadata) === name;

    if (!original || isShadow(original.metadata) || !isEnabled(original.metadata, "label")) {
      this.unservable.delete(`${ns}/${name}`);
      if (ours) await this.deleteShadow(ns, name, shadow!);
      return;
    }
    const ref = { apiVersion: "v1", kind: "Secret", namespace: ns, name, uid: original.metadata.uid };
    if (shadow && !ours) {
      this.takenEvent(ref, name);
      return;
    }
    const checked = checkSecret(original);
    if (checked.problems.length) this.unservable.add(`${ns}/${name}`);
    else this.unservable.delete(`${ns}/${name}`);
    if (checked.problems.length) {
      this.events.record(
        ref,
        "Warning",
        "KloakCannotServe",
        `kloak cannot serve this Secret: ${describeProblems(checked.problems)}. ` +
          (shadow ? "The shadow is left as it was and its values are not substituted until this is fixed." : "No shadow is written until this is fixed."),
      );
      return;
    }
    const { data, created, replaced } = this.placeholders(ns, name, checked.values, shadow);
    // Keys kloak does not protect (getkloak.io/keys, a TLS key pair): the workload gets them as they are.
    for (const k of checked.passthrough) {
      const v = original.data?.[k];
      if (v !== undefined) data[k] = v;
    }
    try {
      // Long copied values are digests in the cache: read them only when a write is due.
      if (!(shadow && this.sameAsShadow(shadow, original, data)) && checked.passthrough.some((k) => isDigest(data[k] ?? ""))) {
        await this.fillCopied(ns, name, original, checked.passthrough, data);
      }
      await this.write(ns, name, ref, original, shadow, data);
    } catch (e) {
      // Not written: the new placeholders are free again.
      for (const ph of created) this.registry?.release(ph);
      throw e;
    }
    for (const ph of replaced) this.registry?.release(ph);
  }

  private async write(
    ns: string,
    name: string,
    ref: { apiVersion: string; kind: string; namespace: string; name: string; uid?: string },
    original: SecretView,
    shadow: SecretView | undefined,
    data: Record<string, string>,
  ): Promise<void> {
    const body: V1Secret = {
      apiVersion: "v1",
      kind: "Secret",
      metadata: {
        name: shadowName(name),
        namespace: ns,
        labels: { [MANAGED]: "true", [OWNER]: name },
        ownerReferences: [{ apiVersion: "v1", kind: "Secret", name, uid: original.metadata.uid ?? "", controller: true, blockOwnerDeletion: false }],
      },
      type: original.type,
      data,
    };
    if (shadow && sameShadow(shadow, body)) return;
    if (!shadow) {
      try {
        await this.core.createNamespacedSecret({ namespace: ns, body });
      } catch (e) {
        // Only kloak's shadows are watched: a Secret of that name that is not one is met here.
        if ((e as { code?: number }).code === 409 && (await this.nameTaken(ns, name))) {
          this.takenEvent(ref, name);
          throw new NameTaken(`${ns}/${shadowName(name)} exists and is not kloak's shadow`);
        }
        throw e;
      }
      this.writes++;
      this.log("info", "shadow created", { secret: `${ns}/${name}`, keys: Object.keys(data).length });
      this.events.record(ref, "Normal", "KloakShadowWritten", `kloak wrote shadow Secret ${shadowName(name)} with ${Object.keys(data).length} placeholder(s)`);
      return;
    }
    body.metadata!.resourceVersion = shadow.metadata.resourceVersion;
    // Keep labels others added to the shadow; ours win.
    body.metadata!.labels = { ...shadow.metadata.labels, ...body.metadata!.labels };
    await this.core.replaceNamespacedSecret({ name: shadowName(name), namespace: ns, body });
    this.writes++;
    this.log("info", "shadow updated", { secret: `${ns}/${name}`, keys: Object.keys(data).length });
  }

  private sameAsShadow(shadow: SecretView, original: SecretView, data: Record<string, string>): boolean {
    return sameShadow(shadow, {
      type: original.type,
      metadata: { labels: { [OWNER]: original.metadata.name ?? "" }, ownerReferences: [{ apiVersion: "v1", kind: "Secret", name: original.metadata.name ?? "", uid: original.metadata.uid ?? "" }] },
      data,
    });
  }

  /** Reads the original for the values its cached view holds as digests; it must be the version the cache has. */
  private async fillCopied(ns: string, name: string, original: SecretView, keys: string[], data: Record<string, string>): Promise<void> {
    const full = await this.core.readNamespacedSecret({ namespace: ns, name });
    if (full.metadata?.resourceVersion !== original.metadata.resourceVersion) {
      // The watch brings the newer version and queues this Secret again.
      throw Object.assign(new Error("the original changed since the cache saw it"), { code: 409 });
    }
    for (const k of keys) {
      const v = full.data?.[k] as unknown;
      if (v === undefined) continue;
      data[k] = typeof v === "string" ? v : Buffer.from(v as Uint8Array).toString("base64");
    }
  }

  private takenEvent(ref: { apiVersion: string; kind: string; namespace: string; name: string; uid?: string }, name: string): void {
    this.events.record(
      ref,
      "Warning",
      "KloakShadowNameTaken",
      `Secret ${shadowName(name)} exists and is not kloak's, so kloak cannot write this Secret's shadow: rename or delete it`,
    );
  }

  /** Whether ns/<name>-kloak exists without kloak's label (metadata only: its values are none of kloak's business). */
  private async nameTaken(ns: string, name: string): Promise<boolean> {
    try {
      const s = await this.core.readNamespacedSecret({ namespace: ns, name: shadowName(name) }, METADATA_ONLY);
      return !isShadow(s.metadata ?? undefined);
    } catch {
      return false;
    }
  }

  /**
   * Existing placeholders where the length still fits; new ones, prefix-free
   * against every shadow, elsewhere. `replaced` are old placeholders to free
   * once the write succeeded.
   */
  private placeholders(
    ns: string,
    name: string,
    values: Map<string, Uint8Array>,
    shadow: SecretView | undefined,
  ): { data: Record<string, string>; created: string[]; replaced: string[] } {
    const data: Record<string, string> = {};
    const created: string[] = [];
    const kept = new Set<string>();
    for (const [k, value] of values) {
      const old = shadow?.data?.[k];
      const ph = old === undefined || old.length > PLACEHOLDER_B64_MAX ? undefined : Buffer.from(old, "base64").toString("latin1");
      // A rotated value keeps its placeholder only if the Huffman code length
      // still matches too: else HTTP/2 headers would carry a code of the
      // wrong length (upstream Kloak #269).
      if (ph !== undefined && placeholderFits(ph, valueShape(value))) {
        data[k] = old!;
        kept.add(ph);
        continue;
      }
      this.registry ??= this.registryOfAllShadows();
      const fresh = this.registry.create(`${ns}/${name}:${k}`, value);
      created.push(fresh);
      data[k] = Buffer.from(fresh, "latin1").toString("base64");
    }
    // Only what was a placeholder: a key that became unprotected held one, a copied value never was.
    const replaced = Object.values(shadow?.data ?? {})
      .filter((b64) => b64.length <= PLACEHOLDER_B64_MAX)
      .map((b64) => Buffer.from(b64, "base64").toString("latin1"))
      .filter((ph) => isPlaceholderShaped(ph) && !kept.has(ph));
    return { data, created, replaced };
  }

  private registryOfAllShadows(): PlaceholderRegistry {
    const r = new PlaceholderRegistry();
    for (const s of this.cache.values()) {
      if (!isShadow(s.metadata)) continue;
      for (const b64 of Object.values(s.data ?? {})) {
        if (b64.length > PLACEHOLDER_B64_MAX) continue;
        const text = Buffer.from(b64, "base64").toString("latin1");
        // Values copied as they are (unprotected keys) are not placeholders.
        if (!isPlaceholderShaped(text)) continue;
        try {
          r.adopt("shadow", text);
        } catch {
          // Malformed or overlapping: the agents do not load it either; a new one gets written.
        }
      }
    }
    return r;
  }

  private async deleteShadow(ns: string, name: string, shadow: SecretView): Promise<void> {
    try {
      await this.core.deleteNamespacedSecret({
        name: shadowName(name),
        namespace: ns,
        body: { preconditions: { uid: shadow.metadata.uid, resourceVersion: shadow.metadata.resourceVersion } },
      });
    } catch (e) {
      if ((e as { code?: number }).code !== 404) throw e;
    }
    this.writes++;
    for (const b64 of Object.values(shadow.data ?? {})) {
      if (b64.length > PLACEHOLDER_B64_MAX) continue;
      const text = Buffer.from(b64, "base64").toString("latin1");
      if (isPlaceholderShaped(text)) this.registry?.release(text);
    }
    this.log("info", "shadow deleted: the Secret is no longer enabled", { secret: `${ns}/${name}` });
  }
}

function sameShadow(have: SecretView, want: V1Secret): boolean {
  const l = have.metadata.labels ?? {};
  const o = have.metadata.ownerReferences ?? [];
  const wantOwner = want.metadata!.ownerReferences![0]!;
  return (
    have.type === want.type &&
    l[MANAGED] === "true" &&
    l[OWNER] === want.metadata!.labels![OWNER] &&
    o.length === 1 &&
    o[0]!.uid === wantOwner.uid &&
    sameData(have.data ?? {}, want.data ?? {})
  );
}

/** `have` is the cached view (long copied values as digests), `want` the body to write. */
function sameData(have: Record<string, string>, want: Record<string, string>): boolean {
  const ka = Object.keys(have);
  return ka.length === Object.keys(want).length && ka.every((k) => want[k] !== undefined && sameShadowValue(have[k]!, want[k]!));
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

function errorText(e: unknown): string {
  const body = (e as { body?: unknown }).body;
  if (typeof body === "string") {
    try {
      return (JSON.parse(body) as { message?: string }).message ?? body.slice(0, 200);
    } catch {
      return body.slice(0, 200);
    }
  }
  return (e as Error).message?.split("\n")[0] ?? String(e);
}
