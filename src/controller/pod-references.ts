/**
 * Which Secrets (and which of their keys) a pod spec references: what its
 * scope may redeem. The places come from the one walker of a pod's Secret
 * references (kube/pod-secret-refs.ts); this module merges their keys.
 */
import { podSecretRefs, type PodSpecLike } from "../kube/pod-secret-refs.ts";

/** Secret name -> the keys referenced, or "all" of them. */
export type ReferencedKeys = Map<string, Set<string> | "all">;

function add(refs: ReferencedKeys, name: string, keys: Iterable<string> | "all"): void {
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

/** The keys of each Secret the spec references; a reference naming several keys, or all, adds them up. */
export function referencedKeys(spec: PodSpecLike | null | undefined): ReferencedKeys {
  const refs: ReferencedKeys = new Map();
  for (const ref of podSecretRefs(spec)) {
    // An env var without a key reads nothing, and names no Secret to grant.
    if (ref.kind === "env" && ref.keys !== "all" && ref.keys.length === 0) continue;
    add(refs, ref.name, ref.keys);
  }
  return refs;
}
