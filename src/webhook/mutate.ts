/**
 * The mutating webhook's decision for a Pod: every reference to a Secret that
 * is enabled for kloak is pointed at its shadow (`<name>-kloak`: same keys,
 * placeholder values), so the pod never mounts a real value. Fail closed: an
 * enabled Secret whose shadow is not there yet denies the pod rather than let
 * it mount the original.
 *
 * Idempotent: the patched pod references only shadows and carries
 * getkloak.io/enabled=true, so a reinvocation returns no patch.
 *
 * The API server calls this only for pods in namespaces labelled
 * getkloak.io/enabled=true (see registration.ts). There, whatever the order in
 * which a pod and its Secrets appear, no pod is admitted that could later
 * receive an enabled Secret's real value: a Secret the agent's cache does
 * not hold (the cache holds enabled Secrets and shadows only) is asked of the
 * API server; one that does not exist yet denies the pod (it might be
 * created enabled, and the kubelet would then mount its value); when the API
 * server cannot answer, the pod is denied too.
 */
import {
  ENABLED,
  SHADOW_SUFFIX,
  annotationMovedMessage,
  enabledValue,
  enablement,
  secretEnabledByAnnotationOnly,
  invalidEnablementMessage,
  isShadow,
  shadowName,
  shadowOwner,
} from "../kube/contract.ts";
import { podSecretRefs, type PodSecretRef } from "../kube/pod-secret-refs.ts";
import type { SecretView } from "../kube/secret-view.ts";
import {
  BadReview,
  PodSchema,
  allow,
  checkKind,
  deny,
  parseObject,
  pointer,
  type AdmissionRequest,
  type Decision,
  type JsonPatchOp,
  type Pod,
} from "./review.ts";

export interface SecretLookup {
  /** the cache; in the agent it holds enabled Secrets and shadows only */
  get(namespace: string, name: string): SecretView | undefined;
  /** false until the agent's first list of Secrets completed */
  synced(): boolean;
  /**
   * Asks the API server for a Secret the cache does not hold: its view, or
   * null when it does not exist; throws when the API server cannot answer.
   * Without it a cache miss means "does not exist" (a cache of everything).
   */
  fetch?(namespace: string, name: string): Promise<SecretView | null>;
}

export function secretAbsentMessage(namespace: string, names: string[]): string {
  const list = names.map((n) => `"${namespace}/${n}"`).join(", ");
  return (
    `${names.length > 1 ? "secrets" : "secret"} ${list} ${names.length > 1 ? "do" : "does"} not exist yet; in namespace ${namespace}, ` +
    `where kloak is enabled, a pod may only reference Secrets that exist (one created later with ${ENABLED}=true ` +
    `would reach the pod with its real value): create the Secret first; a Deployment or Job retries the pod by itself`
  );
}

export function lookupFailedMessage(namespace: string, name: string, why: string): string {
  return (
    `kloak could not ask the API server whether secret "${namespace}/${name}" is enabled (${why}), so it cannot ` +
    `admit the pod safely; retry in a few seconds`
  );
}

export const NOT_SYNCED_MESSAGE = "kloak is starting and has not read the cluster's Secrets yet; retry in a few seconds";

/**
 * The references a request can add: all of a created pod's, or those of the
 * ephemeral containers a pods/ephemeralcontainers update adds (the ones in
 * `oldObject` are already admitted, the rest of the pod is immutable).
 */
function referencesToCheck(pod: Pod, ephemeralUpdate: boolean, old: unknown): PodSecretRef[] {
  const refs = podSecretRefs(pod.spec);
  if (!ephemeralUpdate) return refs;
  const existing = existingEphemeral(old);
  return refs.filter((r) => r.container?.list === "ephemeralContainers" && !(r.container.name && existing.has(r.container.name)));
}

export function shadowMissingMessage(namespace: string, name: string): string {
  return (
    `secret "${namespace}/${name}" is enabled for kloak but its shadow "${shadowName(name)}" does not exist yet; ` +
    `kloak writes it within seconds (check \`kubectl -n ${namespace} get events --field-selector ` +
    `involvedObject.name=${name}\` if it does not appear: the Secret may have a value kloak cannot serve)`
  );
}

export function shadowTakenMessage(namespace: string, name: string): string {
  return (
    `secret "${namespace}/${name}" is enabled for kloak but "${shadowName(name)}" is not kloak's shadow ` +
    `(it lacks the getkloak.io/managed=true label), so kloak cannot write the shadow: rename or delete ` +
    `"${namespace}/${shadowName(name)}"`
  );
}

export function directShadowWarning(shadow: string, original: string): string {
  return `pod references kloak's shadow secret "${shadow}" directly; reference "${original}" instead and kloak swaps it`;
}

function originalOf(shadow: SecretView, name: string): string {
  const owner = shadowOwner(shadow.metadata);
  if (owner) return owner;
  return name.endsWith(SHADOW_SUFFIX) ? name.slice(0, -SHADOW_SUFFIX.length) : name;
}

/** Names of the ephemeral containers a pods/ephemeralcontainers update already had. */
function existingEphemeral(old: unknown): Set<string> {
  const names = new Set<string>();
  const list = (old as { spec?: { ephemeralContainers?: unknown } } | null)?.spec?.ephemeralContainers;
  if (!Array.isArray(list)) return names;
  for (const c of list) {
    const n = (c as { name?: unknown } | null)?.name;
    if (typeof n === "string") names.add(n);
  }
  return names;
}

/** The cache, then the API server; records what does not exist and what could not be asked. */
async function resolve(
  secrets: SecretLookup,
  namespace: string,
  name: string,
  absent: Set<string>,
): Promise<SecretView | undefined | { failed: string }> {
  const cached = secrets.get(namespace, name);
  if (cached !== undefined || !secrets.fetch) {
    if (cached === undefined) absent.add(name);
    return cached;
  }
  try {
    const got = await secrets.fetch(namespace, name);
    if (got === null) absent.add(name);
    return got ?? undefined;
  } catch (e) {
    return { failed: e instanceof Error ? e.message : String(e) };
  }
}

/** The /mutate decision for one request (throws BadReview for malformed input). */
export async function mutatePod(request: AdmissionRequest, secrets: SecretLookup): Promise<Decision> {
  // CREATE: the whole pod. UPDATE of pods/ephemeralcontainers (kubectl debug):
  // only the ephemeral containers being added, the rest of the pod is immutable.
  // Anything else (other operations, other subresources) cannot add a reference.
  const ephemeralUpdate = request.operation === "UPDATE" && request.subResource === "ephemeralcontainers";
  const create = request.operation === "CREATE" && !request.subResource;
  if (!create && !ephemeralUpdate) return allow();
  checkKind(request, "Pod");

  const pod = parseObject(request, PodSchema, "Pod");
  const namespace = request.namespace || pod.metadata?.namespace;
  if (!namespace) throw new BadReview("request.namespace is missing: pods are namespaced");

  const refs = referencesToCheck(pod, ephemeralUpdate, request.oldObject);
  if (refs.length === 0) return allow();
  // Without the cache kloak cannot tell an enabled Secret from another: fail closed.
  if (!secrets.synced()) return deny(503, "ServiceUnavailable", NOT_SYNCED_MESSAGE);

  const annotations = pod.metadata?.annotations;
  const annotated = annotations?.[ENABLED] === "true";
  const found = await examine(refs, secrets, namespace, annotated);
  if ("decision" in found) return found.decision;
  const uniqueWarnings = [...new Set(found.warnings)];
  const { missing, taken, absent, moved } = found;
  if (missing.size > 0 || taken.size > 0 || absent.size > 0 || moved.length > 0) {
    const reasons = [
      ...[...missing].map((n) => shadowMissingMessage(namespace, n)),
      ...[...taken].map((n) => shadowTakenMessage(namespace, n)),
      ...(absent.size > 0 ? [secretAbsentMessage(namespace, [...absent])] : []),
      ...new Set(moved),
    ];
    return deny(403, "Forbidden", reasons.join("; "), uniqueWarnings);
  }
  // The annotation tells the agent to serve this pod; the ephemeralcontainers
  // subresource cannot change metadata (and the pod has it from its creation).
  if (found.shadowed && !annotated && !ephemeralUpdate) found.ops.push(annotationOp(pod.metadata, annotations));
  return allow(uniqueWarnings, found.ops);
}

/** What the references of one pod come to: swaps to shadows, and every reason to warn or deny. */
interface Findings {
  ops: JsonPatchOp[];
  warnings: string[];
  /** enabled Secrets without their shadow yet */
  missing: Set<string>;
  /** enabled Secrets whose shadow's name another Secret holds */
  taken: Set<string>;
  /** names that do not exist */
  absent: Set<string>;
  /** Secrets enabled by the old annotation only */
  moved: string[];
  /** the pod names a shadow (swapped here or named directly) */
  shadowed: boolean;
}

/** Look every reference up (once per name) and sort it; a look-up that failed decides at once (503). */
async function examine(refs: PodSecretRef[], secrets: SecretLookup, namespace: string, annotated: boolean): Promise<Findings | { decision: Decision }> {
  const f: Findings = { ops: [], warnings: [], missing: new Set(), taken: new Set(), absent: new Set(), moved: [], shadowed: false };
  // One look-up per name, however often the pod names it.
  const seen = new Map<string, Promise<SecretView | undefined | { failed: string }>>();
  const lookup = (name: string) => {
    let p = seen.get(name);
    if (!p) seen.set(name, (p = resolve(secrets, namespace, name, f.absent)));
    return p;
  };
  for (const ref of refs) {
    const secret = await lookup(ref.name);
    if (secret !== undefined && "failed" in secret) return { decision: deny(503, "ServiceUnavailable", lookupFailedMessage(namespace, ref.name, secret.failed)) };
    // Does not exist (optional or not): denied below, whatever else the pod names.
    if (secret === undefined) continue;
    if (isShadow(secret.metadata)) {
      f.shadowed = true;
      if (!annotated) f.warnings.push(directShadowWarning(ref.name, originalOf(secret, ref.name)));
      continue;
    }
    if (secretEnabledByAnnotationOnly(secret.metadata)) {
      // It was protected before the move to labels: mounting it now would hand out its real value.
      f.moved.push(annotationMovedMessage(namespace, ref.name));
      continue;
    }
    const state = enablement(secret.metadata, "label");
    if (state === "invalid") {
      const meta = { ...secret.metadata, name: ref.name, namespace };
      f.warnings.push(invalidEnablementMessage("secret", meta, enabledValue(secret.metadata) ?? ""));
      continue;
    }
    if (state === "absent") continue;
    const shadow = await lookup(shadowName(ref.name));
    if (shadow !== undefined && "failed" in shadow) return { decision: deny(503, "ServiceUnavailable", lookupFailedMessage(namespace, shadowName(ref.name), shadow.failed)) };
    f.absent.delete(shadowName(ref.name));
    if (shadow === undefined) f.missing.add(ref.name);
    else if (!isShadow(shadow.metadata)) f.taken.add(ref.name);
    else {
      // `items` narrowing stays: the shadow has the same keys.
      f.ops.push({ op: "replace", path: pointer("spec", ...ref.path), value: shadowName(ref.name) });
      f.shadowed = true;
    }
  }
  return f;
}

/** The patch that sets the enablement annotation, whatever of metadata the pod has. */
function annotationOp(metadata: Pod["metadata"], annotations: Record<string, string> | null | undefined): JsonPatchOp {
  if (metadata == null) return { op: "add", path: "/metadata", value: { annotations: { [ENABLED]: "true" } } };
  if (annotations == null) return { op: "add", path: "/metadata/annotations", value: { [ENABLED]: "true" } };
  const op = annotations[ENABLED] === undefined ? "add" : "replace";
  return { op, path: pointer("metadata", "annotations", ENABLED), value: "true" };
}
