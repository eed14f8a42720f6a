/**
 * Pods on this node: which are enabled (pod, namespace or owning workload),
 * which secrets each may redeem, and where their containers run. The node
 * side (cgroups, processes, BPF maps) is PodAttacher's; this module only
 * decides and hands it targets, on watch events of pods, namespaces,
 * workloads and secrets.
 */
import { isShadow, shadowOwner } from "../kube/contract.ts";
import type { LogFn } from "../log.ts";
import type { PodTarget } from "../node/pod-attacher.ts";
import { podEnablement } from "./pod-enablement.ts";
import { referencedKeys } from "./pod-references.ts";
import type { MetaView, PodView } from "./pod-view.ts";
import type { SecretView } from "../kube/secret-view.ts";
import type { EventSink } from "./shadow-writer.ts";

export interface Lookup<T> {
  get(namespace: string | undefined, name: string): T | undefined;
  values(): IterableIterator<T>;
}

/** Where a pod's protection is applied (node/pod-attacher.ts PodAttacher): its containers' processes joined to its scope, or dropped. */
export interface PodTargets {
  sync(target: PodTarget): void;
  remove(uid: string): void;
}

export interface Entitlements {
  idsFor(namespace: string, name: string, keys: Set<string> | "all"): number[];
}

const OWNER_KINDS = ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet"] as const;
type OwnerKind = (typeof OWNER_KINDS)[number];

export interface PodControllerDeps {
  pods: Lookup<PodView>;
  namespaces: Lookup<MetaView>;
  owners: Record<OwnerKind, Lookup<MetaView>>;
  secrets: Lookup<SecretView>;
  catalog: Entitlements;
  attacher: PodTargets;
  events: EventSink;
  log: LogFn;
}

export class PodController {
  /** uid -> the pod as last handed to the attacher */
  private readonly attached = new Map<string, { namespace: string; name: string }>();
  /** pods already told about an invalid enablement value */
  private readonly warned = new Set<string>();

  constructor(private readonly d: PodControllerDeps) {}

  /** Pods enabled and handed to the attacher. */
  get trackedPods(): number {
    return this.attached.size;
  }

  /** Which attached pod a scope's uid is (for refusal Events). */
  podByUid(uid: string): { namespace: string; name: string } | undefined {
    return this.attached.get(uid);
  }

  podDeleted(p: PodView): void {
    const uid = p.metadata.uid ?? "";
    if (this.attached.delete(uid)) {
      this.d.attacher.remove(uid);
      this.d.log("info", "pod gone; detached", { pod: `${p.metadata.namespace}/${p.metadata.name}` });
    }
    this.warned.delete(uid);
  }

  /** Re-evaluate every pod in a namespace (a namespace, workload or secret there changed). */
  namespaceChanged(namespace: string): void {
    for (const p of this.d.pods.values()) if (p.metadata.namespace === namespace) this.podChanged(p);
  }

  all(): void {
    for (const p of this.d.pods.values()) this.podChanged(p);
  }

  podChanged(p: PodView): void {
    const uid = p.metadata.uid ?? "";
    const ns = p.metadata.namespace ?? "";
    const id = `${ns}/${p.metadata.name}`;
    if (p.phase === "Succeeded" || p.phase === "Failed") {
      this.podDeleted(p);
      return;
    }
    const en = podEnablement(p, {
      namespace: (name) => this.d.namespaces.get(undefined, name)?.metadata,
      owner: (namespace, kind, name) =>
        (OWNER_KINDS as readonly string[]).includes(kind) ? this.d.owners[kind as OwnerKind].get(namespace, name) : undefined,
    });
    if (en.problems.length && !this.warned.has(uid)) {
      this.warned.add(uid);
      for (const msg of en.problems) {
        this.d.log("warn", msg, { pod: id });
        this.d.events.record({ apiVersion: "v1", kind: "Pod", namespace: ns, name: p.metadata.name ?? "", uid }, "Warning", "KloakInvalidEnablement", msg);
      }
    }
    if (!en.enabled) {
      if (this.attached.has(uid)) this.podDeleted(p);
      return;
    }
    const target: PodTarget = {
      uid,
      namespace: ns,
      name: p.metadata.name ?? "",
      qosClass: p.qosClass,
      containers: p.statuses.map((s) => ({ name: s.name, containerId: s.containerID, running: s.running })),
      secretIds: this.entitlement(ns, p),
    };
    if (!this.attached.has(uid)) this.d.log("info", "pod enabled; attaching", { pod: id, via: en.via, secrets: target.secretIds.length });
    this.attached.set(uid, { namespace: ns, name: target.name });
    this.d.attacher.sync(target);
  }

  /** Secret ids the pod may redeem: the keys of the Secrets it references, originals or their shadows. */
  private entitlement(ns: string, p: PodView): number[] {
    const ids = new Set<number>();
    for (const [name, keys] of referencedKeys(p.spec)) {
      const s = this.d.secrets.get(ns, name);
      const original = s && isShadow(s.metadata) ? shadowOwner(s.metadata) : name;
      if (!original) continue;
      for (const id of this.d.catalog.idsFor(ns, original, keys)) ids.add(id);
    }
    return [...ids].sort((a, b) => a - b);
  }
}
