/**
 * Every agent's view of protected secrets: for each enabled original with a
 * valid shadow, each key becomes one kernel secret (placeholder from the
 * shadow, value from the original, rules from getkloak.io/hosts). Driven by
 * watch events of originals and shadows, so a rotated value is live as soon
 * as the watch delivers it; nothing runs on a timer.
 *
 * Fail closed: a key is loaded only when the original is enabled and
 * servable, the shadow is kloak's (managed, owned by this original's uid) and
 * its placeholder has the value's length. Anything else unloads the key.
 */
import { createHash } from "node:crypto";
import { isEnabled, isShadow, shadowName, shadowOwner } from "../kube/contract.ts";
import { WorkQueue } from "../kube/work-queue.ts";
import { checkSecret, describeProblems, type CheckedSecret } from "../secrets/secret-check.ts";
import { placeholderFits, placeholderKey, PlaceholderRegistry, valueShape } from "../secrets/placeholder.ts";
import { kernelRules } from "../policy/policy-engine.ts";
import type { Rule } from "../policy/rules.ts";
import type { KernelRule } from "../dataplane/abi.ts";
import type { SecretEntry } from "../dataplane/dataplane.ts";
import type { ViolationAction } from "../dataplane/refusals.ts";
import type { LogFn } from "../log.ts";
import type { SecretView } from "../kube/secret-view.ts";

export interface CatalogSink {
  setSecret(s: SecretEntry): Promise<void>;
  setViolationAction(id: number, action: ViolationAction | null): void;
  deleteSecret(id: number): Promise<void> | void;
  holdAtNewSni(on: boolean): void;
  /** a data plane taken over from a previous agent: the id it gave this placeholder, kept so grants and writes in flight stay valid */
  adoptedSecretId?(placeholder: Uint8Array): number | undefined;
  /** ids from here on are not the previous agent's */
  firstFreeSecretId?(): number;
}

export interface SecretSource {
  get(namespace: string, name: string): SecretView | undefined;
}

export interface PolicySource {
  add(rules: readonly Rule[]): Promise<void>;
}

interface Wanted {
  placeholder: string;
  value: Uint8Array;
  rules: Rule[] | null;
  onViolation: ViolationAction | null;
}

interface Loaded {
  id: number;
  placeholder: string;
  /** sha256 of value + rules + violation action: what was loaded, without keeping a copy of the value */
  fingerprint: string;
  wildcard: boolean;
}

export interface SecretKeyRef {
  namespace: string;
  name: string;
  key: string;
}

export class SecretCatalog {
  /** `${ns}/${name}` -> key -> loaded entry */
  private readonly loaded = new Map<string, Map<string, Loaded>>();
  private readonly byId = new Map<number, SecretKeyRef>();
  private readonly registry = new PlaceholderRegistry();
  private nextId = 1;
  /** `${ns}/${name}` of originals to sync: one sync of an original at a time, different originals at once */
  private readonly queue = new WorkQueue<string>((key) => this.syncKey(key), { concurrency: Infinity });
  private readonly listeners: ((namespace: string, name: string) => void)[] = [];
  private wildcards = 0;

  constructor(
    private readonly sink: CatalogSink,
    private readonly secrets: SecretSource,
    private readonly policy: PolicySource,
    private readonly log: LogFn,
  ) {}

  private freshId(): number {
    this.nextId = Math.max(this.nextId, this.sink.firstFreeSecretId?.() ?? 1);
    return this.nextId++;
  }

  /** Called after a Secret's loaded keys changed (pods re-grant). */
  onChange(fn: (namespace: string, name: string) => void): void {
    this.listeners.push(fn);
  }

  /**
   * A Secret (original or shadow) changed: bring its original's keys up to
   * date. Resolves once a sync of the original that began after this call is
   * done; syncs of one original never overlap. A failed sync is logged, not
   * retried: the next watch event of the pair syncs it again.
   */
  touch(s: SecretView): Promise<void> {
    const ns = s.metadata.namespace ?? "";
    const original = isShadow(s.metadata) ? (shadowOwner(s.metadata) ?? "") : (s.metadata.name ?? "");
    if (!original) return Promise.resolve();
    return this.queue.add(`${ns}/${original}`);
  }

  /** ids of the loaded keys of ns/name (keys: "all" or a subset). */
  idsFor(namespace: string, name: string, keys: Set<string> | "all"): number[] {
    const m = this.loaded.get(`${namespace}/${name}`);
    if (!m) return [];
    const out: number[] = [];
    for (const [k, l] of m) if (keys === "all" || keys.has(k)) out.push(l.id);
    return out;
  }

  describe(id: number): SecretKeyRef | undefined {
    return this.byId.get(id);
  }

  /** Protected secrets (originals) and keys loaded into the kernel. */
  stats(): { secrets: number; keys: number } {
    let keys = 0;
    for (const m of this.loaded.values()) keys += m.size;
    return { secrets: this.loaded.size, keys };
  }

  private async syncKey(key: string): Promise<void> {
    // Neither a namespace nor a Secret's name can hold a slash.
    const [ns, name] = key.split("/") as [string, string];
    try {
      await this.sync(ns, name);
    } catch (e) {
      this.log("error", "secret sync failed", { secret: key, error: (e as Error).message });
    }
  }

  private async sync(ns: string, name: string): Promise<void> {
    const key = `${ns}/${name}`;
    const original = this.secrets.get(ns, name);
    const shadow = this.secrets.get(ns, shadowName(name));
    const want = new Map<string, Wanted>();
    const pair = this.servable(original, shadow);
    if ("checked" in pair) {
      for (const [k, value] of pair.checked.values) {
        const b64 = pair.shadow.data?.[k];
        const placeholder = b64 === undefined ? undefined : Buffer.from(b64, "base64").toString("latin1");
        if (placeholder === undefined || !placeholderFits(placeholder, valueShape(value))) {
          // The leader writes a fitting placeholder; until then the key stays unloaded.
          this.log("debug", "shadow placeholder does not fit the value yet; key not loaded", { secret: key, key: k });
          continue;
        }
        want.set(k, { placeholder, value, rules: pair.checked.rules, onViolation: pair.checked.onViolation });
      }
    } else if (original && isEnabled(original.metadata, "label")) {
      this.log("info", "enabled secret not served", { secret: key, reason: pair.why });
    }
    await this.apply(ns, name, want);
  }

  /** The checked original and its shadow when the pair can be served, else why not. */
  private servable(
    original: SecretView | undefined,
    shadow: SecretView | undefined,
  ): { why: string } | { checked: CheckedSecret; shadow: SecretView } {
    if (!original) return { why: "the Secret is gone" };
    if (isShadow(original.metadata) || !isEnabled(original.metadata, "label")) return { why: "not enabled" };
    const checked = checkSecret(original);
    if (checked.problems.length) return { why: describeProblems(checked.problems) };
    if (!shadow) return { why: "no shadow yet" };
    if (shadowOwner(shadow.metadata) !== original.metadata.name)
      return { why: `${shadowName(original.metadata.name ?? "")} is not kloak's shadow of this Secret` };
    const owned = shadow.metadata.ownerReferences?.some((o) => o.kind === "Secret" && o.uid === original.metadata.uid);
    if (!owned) return { why: "the shadow belongs to an earlier Secret of this name" };
    return { checked, shadow };
  }

  private async apply(ns: string, name: string, want: Map<string, Wanted>): Promise<void> {
    const key = `${ns}/${name}`;
    const have = this.loaded.get(key) ?? new Map<string, Loaded>();
    let changed = false;
    for (const [k, l] of [...have]) {
      const w = want.get(k);
      if (w && w.placeholder === l.placeholder) continue;
      // Gone, or a new placeholder (length change): unfindable before anything else.
      await this.sink.deleteSecret(l.id);
      this.registry.release(l.placeholder);
      this.byId.delete(l.id);
      if (l.wildcard) this.wildcards--;
      have.delete(k);
      changed = true;
    }
    for (const [k, w] of want) {
      const fingerprint = fingerprintOf(w.value, w.rules, w.onViolation);
      const l = have.get(k);
      if (l && l.fingerprint === fingerprint) continue;
      if (!l) {
        try {
          this.registry.adopt(`${key}:${k}`, w.placeholder);
        } catch (e) {
          this.log("warn", "placeholder overlaps another secret's; key not loaded", { secret: key, key: k, error: (e as Error).message });
          continue;
        }
      }
      const rules: KernelRule[] | null = w.rules ? kernelRules(w.rules) : null;
      if (w.rules) await this.policy.add(w.rules);
      const bytes = new TextEncoder().encode(w.placeholder);
      const id = l?.id ?? this.sink.adoptedSecretId?.(bytes) ?? this.freshId();
      // Before the placeholder is findable (setSecret makes it so last).
      this.sink.setViolationAction(id, w.onViolation);
      await this.sink.setSecret({ id, placeholder: bytes, key: placeholderKey(w.placeholder), value: w.value, rules });
      const wildcard = (w.rules ?? []).some((r) => r.kind === "wildcard");
      if (l?.wildcard) this.wildcards--;
      if (wildcard) this.wildcards++;
      have.set(k, { id, placeholder: w.placeholder, fingerprint, wildcard });
      this.byId.set(id, { namespace: ns, name, key: k });
      if (!l) changed = true;
      this.log("info", l ? "secret value or hosts updated" : "secret key loaded", { secret: key, key: k, id, restricted: rules !== null });
    }
    this.sink.holdAtNewSni(this.wildcards > 0);
    if (have.size) this.loaded.set(key, have);
    else this.loaded.delete(key);
    if (changed) for (const fn of this.listeners) fn(ns, name);
  }
}

function fingerprintOf(value: Uint8Array, rules: Rule[] | null, onViolation: ViolationAction | null): string {
  const h = createHash("sha256");
  h.update(value);
  h.update(JSON.stringify([rules, onViolation]));
  return h.digest("hex");
}


