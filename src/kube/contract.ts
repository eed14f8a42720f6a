/**
 * The user-facing contract shared with getkloak.io: label and annotation
 * names, shadow Secret naming, and what "enabled" means. Everything that reads
 * or writes these names imports them from here.
 */

export const DOMAIN = "getkloak.io";
/** label or annotation on Secrets, Pods, Namespaces (label) and workloads */
export const ENABLED = `${DOMAIN}/enabled`;
/** annotation (comma separated rules) or label (a single host: label values cannot hold commas) */
export const HOSTS = `${DOMAIN}/hosts`;
/** Secret annotation: what a violation with this Secret's values does (pass, block, kill). */
export const ON_VIOLATION = `${DOMAIN}/on-violation`;
/** Secret annotation: comma-separated data keys kloak protects; the others are copied into the shadow as they are */
export const KEYS = `${DOMAIN}/keys`;
/** label on shadow Secrets */
export const MANAGED = `${DOMAIN}/managed`;
/** label on shadow Secrets: the original's name */
export const OWNER = `${DOMAIN}/owner`;
export const SHADOW_SUFFIX = "-kloak";

export interface Meta {
  name?: string;
  namespace?: string;
  labels?: Record<string, string> | null;
  annotations?: Record<string, string> | null;
}

export function shadowName(original: string): string {
  return original + SHADOW_SUFFIX;
}

/**
 * What an object's getkloak.io/enabled says. Only the exact string "true"
 * enables; any other value is "invalid" so callers can tell the operator
 * (a typo such as "yes" or "True" must not silently protect nothing).
 */
export type Enablement = "enabled" | "absent" | "invalid";

export function enablement(meta: Meta | undefined, where: "label" | "label-or-annotation" = "label-or-annotation"): Enablement {
  const values = [meta?.labels?.[ENABLED]];
  if (where === "label-or-annotation") values.push(meta?.annotations?.[ENABLED]);
  let seen = false;
  for (const v of values) {
    if (v === undefined) continue;
    if (v === "true") return "enabled";
    seen = true;
  }
  return seen ? "invalid" : "absent";
}

export function isEnabled(meta: Meta | undefined, where?: "label" | "label-or-annotation"): boolean {
  return enablement(meta, where) === "enabled";
}

/** The value that made enablement "invalid", for messages. */
export function enabledValue(meta: Meta | undefined): string | undefined {
  const l = meta?.labels?.[ENABLED];
  if (l !== undefined && l !== "true") return l;
  const a = meta?.annotations?.[ENABLED];
  return a !== undefined && a !== "true" ? a : undefined;
}

export function invalidEnablementMessage(kind: string, meta: Meta, value: string): string {
  const id = meta.namespace ? `${meta.namespace}/${meta.name}` : `${meta.name}`;
  return (
    `${kind} ${id} has ${ENABLED}=${JSON.stringify(value)}; only "true" enables kloak, ` +
    `so kloak ignores it: set it to "true" or remove it`
  );
}

/** A Secret kloak wrote (labelled managed): never itself an original. */
export function isShadow(meta: Meta | undefined): boolean {
  return meta?.labels?.[MANAGED] === "true";
}

/** The original a shadow belongs to; undefined when `meta` is not a shadow kloak wrote. */
export function shadowOwner(meta: Meta | undefined): string | undefined {
  return isShadow(meta) ? meta?.labels?.[OWNER] : undefined;
}

/** The hosts rule text of a Secret: the annotation wins over the single-host label. */
export function hostsText(meta: Meta | undefined): string | undefined {
  return meta?.annotations?.[HOSTS] ?? meta?.labels?.[HOSTS];
}

/**
 * Secrets are enabled by label only (the agent watches them by label
 * selector, and the validating webhook selects them by label): true for a
 * Secret that still carries only the annotation, which kloak used to read.
 */
export function secretEnabledByAnnotationOnly(meta: Meta | undefined): boolean {
  return meta?.labels?.[ENABLED] === undefined && meta?.annotations?.[ENABLED] !== undefined;
}

export function annotationMovedMessage(namespace: string | undefined, name: string | undefined): string {
  return (
    `secret "${namespace}/${name}" has the ${ENABLED} annotation, which kloak no longer reads on Secrets: ` +
    `label it instead (kubectl -n ${namespace} label secret ${name} ${ENABLED}=true) and remove the annotation`
  );
}
