/**
 * Which Secrets (and which of their keys) a pod spec references: what its
 * scope may redeem. Reads the spec defensively (it comes from the API server
 * as JSON; unknown shapes are skipped, never thrown on).
 *
 *   volumes[].secret                    {secretName, items?}  items narrow to their keys
 *   volumes[].projected.sources[].secret {name, items?}
 *   containers/initContainers/ephemeralContainers:
 *     env[].valueFrom.secretKeyRef      {name, key}           one key
 *     envFrom[].secretRef               {name}                all keys
 */

/** Secret name -> the keys referenced, or "all" of them. */
export type SecretReferences = Map<string, Set<string> | "all">;

export interface PodSpecLike {
  volumes?: unknown[] | null;
  containers?: unknown[] | null;
  initContainers?: unknown[] | null;
  ephemeralContainers?: unknown[] | null;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | undefined => (v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : undefined);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);

function add(refs: SecretReferences, name: string | undefined, keys: Iterable<string> | "all"): void {
  if (name === undefined) return;
  const have = refs.get(name);
  if (have === "all") return;
  if (keys === "all") {
    refs.set(name, "all");
    return;
  }
  const set = have ?? new Set<string>();
  for (const k of keys) set.add(k);
  refs.set(name, set);
}

/** A secret volume source: its items' keys, or all keys when it lists none. */
function volumeKeys(source: Obj): Iterable<string> | "all" {
  const items = list(source.items);
  if (items.length === 0) return "all";
  return items.map((i) => str(obj(i)?.key)).filter((k): k is string => k !== undefined);
}

export function secretReferences(spec: PodSpecLike | null | undefined): SecretReferences {
  const refs: SecretReferences = new Map();
  if (!spec) return refs;
  for (const v of list(spec.volumes)) {
    const vol = obj(v);
    const secret = obj(vol?.secret);
    if (secret) add(refs, str(secret.secretName), volumeKeys(secret));
    for (const src of list(obj(vol?.projected)?.sources)) {
      const s = obj(obj(src)?.secret);
      if (s) add(refs, str(s.name), volumeKeys(s));
    }
  }
  for (const c of [...list(spec.containers), ...list(spec.initContainers), ...list(spec.ephemeralContainers)]) {
    const container = obj(c);
    for (const e of list(container?.env)) {
      const ref = obj(obj(obj(e)?.valueFrom)?.secretKeyRef);
      const key = str(ref?.key);
      if (ref && key !== undefined) add(refs, str(ref.name), [key]);
    }
    for (const e of list(container?.envFrom)) {
      const ref = obj(obj(e)?.secretRef);
      if (ref) add(refs, str(ref.name), "all");
    }
  }
  return refs;
}
