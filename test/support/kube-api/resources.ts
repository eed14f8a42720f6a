/**
 * Resource table of the kube-apiserver test double: which group/version/
 * plural/Kind it serves, whether each is namespaced, has a status
 * subresource, and which field selectors it accepts (the same labels the real
 * API registers for these types).
 */
import type { KubeObject } from "../kube-api-server.ts";

export type FieldGetter = (o: KubeObject) => string | undefined;

export interface ResourceDef {
  group: string; // "" for core
  version: string;
  apiVersion: string; // "v1" or "group/version"
  plural: string;
  singular: string;
  kind: string;
  listKind: string;
  namespaced: boolean;
  statusSubresource: boolean;
  shortNames: string[];
  /** Field selector labels beyond metadata.name / metadata.namespace. */
  fields: Record<string, FieldGetter>;
}

function path(o: unknown, dotted: string): unknown {
  let cur: unknown = o;
  for (const part of dotted.split(".")) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function str(dotted: string): FieldGetter {
  return (o) => {
    const v = path(o, dotted);
    return v === undefined || v === null ? undefined : String(v);
  };
}

function def(
  group: string,
  version: string,
  plural: string,
  kind: string,
  namespaced: boolean,
  extra: { status?: boolean; shortNames?: string[]; fields?: Record<string, FieldGetter> } = {},
): ResourceDef {
  return {
    group,
    version,
    apiVersion: group === "" ? version : `${group}/${version}`,
    plural,
    singular: kind.toLowerCase(),
    kind,
    listKind: `${kind}List`,
    namespaced,
    statusSubresource: extra.status ?? false,
    shortNames: extra.shortNames ?? [],
    fields: extra.fields ?? {},
  };
}

const coreEventFields: Record<string, FieldGetter> = {
  "involvedObject.kind": str("involvedObject.kind"),
  "involvedObject.namespace": str("involvedObject.namespace"),
  "involvedObject.name": str("involvedObject.name"),
  "involvedObject.uid": str("involvedObject.uid"),
  "involvedObject.apiVersion": str("involvedObject.apiVersion"),
  "involvedObject.resourceVersion": str("involvedObject.resourceVersion"),
  "involvedObject.fieldPath": str("involvedObject.fieldPath"),
  reason: str("reason"),
  reportingComponent: str("reportingComponent"),
  source: str("source.component"),
  type: str("type"),
};

export const RESOURCES: ResourceDef[] = [
  def("", "v1", "namespaces", "Namespace", false, {
    status: true,
    shortNames: ["ns"],
    fields: { "status.phase": str("status.phase") },
  }),
  def("", "v1", "secrets", "Secret", true, { fields: { type: str("type") } }),
  def("", "v1", "pods", "Pod", true, {
    status: true,
    shortNames: ["po"],
    fields: {
      "spec.nodeName": str("spec.nodeName"),
      "spec.restartPolicy": str("spec.restartPolicy"),
      "spec.schedulerName": str("spec.schedulerName"),
      "spec.serviceAccountName": str("spec.serviceAccountName"),
      "spec.hostNetwork": (o) => String(path(o, "spec.hostNetwork") === true),
      "status.phase": str("status.phase"),
      "status.podIP": str("status.podIP"),
      "status.nominatedNodeName": str("status.nominatedNodeName"),
    },
  }),
  def("", "v1", "events", "Event", true, { shortNames: ["ev"], fields: coreEventFields }),
  def("", "v1", "services", "Service", true, { status: true, shortNames: ["svc"] }),
  def("", "v1", "configmaps", "ConfigMap", true, { shortNames: ["cm"] }),
  def("apps", "v1", "replicasets", "ReplicaSet", true, {
    status: true,
    shortNames: ["rs"],
    fields: { "status.replicas": str("status.replicas") },
  }),
  def("apps", "v1", "deployments", "Deployment", true, { status: true, shortNames: ["deploy"] }),
  def("apps", "v1", "statefulsets", "StatefulSet", true, { status: true, shortNames: ["sts"] }),
  def("apps", "v1", "daemonsets", "DaemonSet", true, { status: true, shortNames: ["ds"] }),
  def("coordination.k8s.io", "v1", "leases", "Lease", true),
  def("events.k8s.io", "v1", "events", "Event", true, {
    shortNames: ["ev"],
    fields: {
      "regarding.kind": str("regarding.kind"),
      "regarding.namespace": str("regarding.namespace"),
      "regarding.name": str("regarding.name"),
      "regarding.uid": str("regarding.uid"),
      reason: str("reason"),
      reportingController: str("reportingController"),
      type: str("type"),
    },
  }),
  def("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false),
  def("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", false),
  // Stored only (no authorization): kloak's webhook configurations name its ClusterRole as their owner.
  def("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false),
];

/** `secrets` / `leases.coordination.k8s.io`: how the real API names a resource in messages. */
export function groupResource(res: ResourceDef): string {
  return res.group === "" ? res.plural : `${res.plural}.${res.group}`;
}

export function findByPath(group: string, version: string, plural: string): ResourceDef | undefined {
  return RESOURCES.find((r) => r.group === group && r.version === version && r.plural === plural);
}

export function findByApiVersionKind(apiVersion: string, kind: string): ResourceDef | undefined {
  return RESOURCES.find((r) => r.apiVersion === apiVersion && r.kind === kind);
}

/**
 * Direct-API kind lookup: "Secret", "Lease", ... A bare "Event" is the core
 * v1 Event; "Event.events.k8s.io" (Kind.group, as kubectl spells it) picks a
 * group explicitly.
 */
export function findByKind(kind: string): ResourceDef | undefined {
  const dot = kind.indexOf(".");
  if (dot >= 0) {
    const k = kind.slice(0, dot);
    const g = kind.slice(dot + 1);
    return RESOURCES.find((r) => r.kind === k && r.group === g);
  }
  return RESOURCES.find((r) => r.kind === kind && r.group === "") ?? RESOURCES.find((r) => r.kind === kind);
}

export function groupsServed(): { group: string; version: string }[] {
  const seen = new Map<string, { group: string; version: string }>();
  for (const r of RESOURCES) seen.set(`${r.group}/${r.version}`, { group: r.group, version: r.version });
  return [...seen.values()];
}
