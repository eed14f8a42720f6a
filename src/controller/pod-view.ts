/**
 * The agent's trimmed copy of a Pod on its node, and of the objects that can
 * enable one (Namespaces, workloads): metadata, the secret references of the
 * spec, and which containers run where.
 */
import type { PodSpecLike } from "../kube/pod-secret-refs.ts";
import { trimMeta, type ObjectMeta } from "../kube/reflector.ts";

export interface MetaView {
  metadata: ObjectMeta;
}

type Any = Record<string, unknown> & { metadata?: ObjectMeta };


export function metaView(raw: Any): MetaView {
  return { metadata: trimMeta(raw.metadata) };
}

export interface ContainerStatusView {
  name: string;
  containerID?: string;
  running: boolean;
}

export interface PodView {
  metadata: ObjectMeta;
  /** only the fields secret references live in (what kube/pod-secret-refs.ts walks) */
  spec: PodSpecLike;
  phase?: string;
  qosClass?: string;
  statuses: ContainerStatusView[];
}

type RawContainer = { name?: string; env?: unknown; envFrom?: unknown };
type RawStatus = { name?: string; containerID?: string; state?: { running?: unknown } };

function containers(list: unknown): unknown[] | undefined {
  if (!Array.isArray(list)) return undefined;
  return (list as RawContainer[]).map((c) => ({ name: c.name, env: c.env, envFrom: c.envFrom }));
}

export function podView(raw: Any): PodView {
  const spec = (raw.spec ?? {}) as Record<string, unknown>;
  const status = (raw.status ?? {}) as Record<string, unknown>;
  const statuses: ContainerStatusView[] = [];
  for (const field of ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"]) {
    for (const s of (status[field] as RawStatus[] | undefined) ?? []) {
      statuses.push({ name: s.name ?? "", containerID: s.containerID || undefined, running: s.state?.running != null });
    }
  }
  return {
    metadata: trimMeta(raw.metadata),
    spec: {
      volumes: Array.isArray(spec.volumes) ? (spec.volumes as unknown[]) : undefined,
      containers: containers(spec.containers),
      initContainers: containers(spec.initContainers),
      ephemeralContainers: containers(spec.ephemeralContainers),
    },
    phase: status.phase as string | undefined,
    qosClass: status.qosClass as string | undefined,
    statuses,
  };
}
