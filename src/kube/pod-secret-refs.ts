/**
 * Every place in a pod spec that names a Secret its workload can read. The
 * one walker of a pod's Secret references: the webhook rewrites what it finds
 * to shadows, the pod controller grants the keys it finds.
 *
 *   volumes[i].secret.secretName                          items narrow to their keys
 *   volumes[i].projected.sources[j].secret.name           items narrow to their keys
 *   containers/initContainers/ephemeralContainers[i]:
 *     env[j].valueFrom.secretKeyRef.name                  one key
 *     envFrom[j].secretRef.name                           all keys
 *
 * (imagePullSecrets and CSI/driver secret refs are read by the node, not the
 * workload.) Reads the spec defensively: unknown shapes are skipped, never
 * thrown on, so it serves a spec checked against a schema as well as one
 * straight from a watch.
 */

/** The fields of a pod spec references live in. */
export interface PodSpecLike {
  volumes?: unknown[] | null;
  containers?: unknown[] | null;
  initContainers?: unknown[] | null;
  ephemeralContainers?: unknown[] | null;
}

const CONTAINER_LISTS = ["containers", "initContainers", "ephemeralContainers"] as const;
export type ContainerList = (typeof CONTAINER_LISTS)[number];

/** One place in a pod spec that names a Secret. */
export interface PodSecretRef {
  /** the Secret's name (never empty) */
  name: string;
  kind: "volume" | "projected" | "env" | "envFrom";
  /**
   * The keys it reads: a volume's items (all when it lists none), an env
   * var's key (none when the key is missing or empty), all for envFrom.
   */
  keys: string[] | "all";
  /** for env and envFrom: the container's list, and its name when it has one */
  container?: { list: ContainerList; name?: string };
  /** where the name sits, from the spec down: ["volumes", 0, "secret", "secretName"] */
  path: (string | number)[];
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | undefined => (v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : undefined);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);

/** A secret volume source: its items' keys, or all keys when it lists none. */
function volumeKeys(source: Obj): string[] | "all" {
  const items = list(source.items);
  if (items.length === 0) return "all";
  return items.map((i) => str(obj(i)?.key)).filter((k): k is string => k !== undefined);
}

/** Every Secret reference of `spec`, in spec order: volumes, then each container list in CONTAINER_LISTS order. */
export function podSecretRefs(spec: PodSpecLike | null | undefined): PodSecretRef[] {
  const out: PodSecretRef[] = [];
  if (!spec) return out;
  list(spec.volumes).forEach((v, i) => {
    const vol = obj(v);
    const secret = obj(vol?.secret);
    const name = str(secret?.secretName);
    if (secret && name) out.push({ name, kind: "volume", keys: volumeKeys(secret), path: ["volumes", i, "secret", "secretName"] });
    list(obj(vol?.projected)?.sources).forEach((src, j) => {
      const s = obj(obj(src)?.secret);
      const name = str(s?.name);
      if (s && name) out.push({ name, kind: "projected", keys: volumeKeys(s), path: ["volumes", i, "projected", "sources", j, "secret", "name"] });
    });
  });
  for (const which of CONTAINER_LISTS) {
    list(spec[which]).forEach((c, i) => {
      const container = obj(c);
      if (!container) return;
      const where = { list: which, name: str(container.name) };
      list(container.env).forEach((e, j) => {
        const ref = obj(obj(obj(e)?.valueFrom)?.secretKeyRef);
        const name = str(ref?.name);
        const key = str(ref?.key);
        if (name) out.push({ name, kind: "env", keys: key === undefined ? [] : [key], container: where, path: [which, i, "env", j, "valueFrom", "secretKeyRef", "name"] });
      });
      list(container.envFrom).forEach((e, j) => {
        const name = str(obj(obj(e)?.secretRef)?.name);
        if (name) out.push({ name, kind: "envFrom", keys: "all", container: where, path: [which, i, "envFrom", j, "secretRef", "name"] });
      });
    });
  }
  return out;
}
