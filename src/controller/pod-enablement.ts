/**
 * Whether kloak protects a pod: getkloak.io/enabled=true on the pod (label
 * or annotation), on its namespace (label only), or on the workload that
 * controls it (label or annotation), following controller ownerReferences
 * ReplicaSet -> Deployment, StatefulSet, DaemonSet. Only "true" enables; any
 * other value is ignored and reported.
 */
import { ENABLED, enabledValue, enablement, invalidEnablementMessage, type Meta } from "../kube/contract.ts";

export interface OwnerReferenceLike {
  kind: string;
  name: string;
  controller?: boolean | null;
}

export type MetaWithOwners = Meta & { ownerReferences?: OwnerReferenceLike[] | null };

export interface EnablementLookup {
  namespace(name: string): Meta | undefined;
  owner(namespace: string, kind: string, name: string): { metadata: MetaWithOwners } | undefined;
}

export type EnabledVia = "pod" | "namespace" | "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet";

export interface PodEnablement {
  enabled: boolean;
  /** the first level that enables: the pod, its namespace, then its owners nearest first */
  via?: EnabledVia;
  /** invalid getkloak.io/enabled values seen on the way (each ignored) */
  problems: string[];
}

/** Controller owners followed, and the kinds each may in turn be controlled by. */
const FOLLOW: Record<string, readonly string[]> = {
  ReplicaSet: ["Deployment"],
  Deployment: [],
  StatefulSet: [],
  DaemonSet: [],
};

function controllerOf(meta: MetaWithOwners | undefined, kinds: readonly string[]): OwnerReferenceLike | undefined {
  return meta?.ownerReferences?.find((r) => r.controller === true && kinds.includes(r.kind) && r.name);
}

export function podEnablement(pod: { metadata: MetaWithOwners }, lookup: EnablementLookup): PodEnablement {
  const problems: string[] = [];
  let via: EnabledVia | undefined;
  const ns = pod.metadata.namespace ?? "";

  const check = (kind: string, level: EnabledVia, meta: Meta | undefined, where: "label" | "label-or-annotation") => {
    const e = enablement(meta, where);
    if (e === "enabled") via ??= level;
    else if (e === "invalid" && meta) {
      // For namespaces only the label counts, so only the label can be invalid.
      const value = where === "label" ? meta.labels?.[ENABLED] : enabledValue(meta);
      if (value !== undefined) problems.push(invalidEnablementMessage(kind, meta, value));
    }
  };

  check("Pod", "pod", { ...pod.metadata, namespace: ns }, "label-or-annotation");
  const nsMeta = ns ? lookup.namespace(ns) : undefined;
  if (nsMeta) check("Namespace", "namespace", { ...nsMeta, name: nsMeta.name ?? ns, namespace: undefined }, "label");

  // Owners, nearest first; bounded by the FOLLOW chain (at most two levels).
  let ref = controllerOf(pod.metadata, Object.keys(FOLLOW));
  for (let depth = 0; ref && depth < 4; depth++) {
    const owner = lookup.owner(ns, ref.kind, ref.name);
    if (!owner) break; // not (yet) in the cache: that level cannot enable
    check(ref.kind, ref.kind as EnabledVia, { ...owner.metadata, name: owner.metadata.name ?? ref.name, namespace: ns }, "label-or-annotation");
    ref = controllerOf(owner.metadata, FOLLOW[ref.kind] ?? []);
  }

  return via ? { enabled: true, via, problems } : { enabled: false, problems };
}
