/**
 * The validating webhook's decision for a Secret: an enabled Secret that kloak
 * could not serve (a value of the wrong length, bad hosts rules) is refused at
 * the API server, with the same words the shadow writer would put in an Event.
 * Messages name keys and annotations, never values.
 */
import { ENABLED, enabledValue, enablement, invalidEnablementMessage, isShadow, type Meta } from "../kube/contract.ts";
import { checkSecret, describeProblems } from "../secrets/secret-check.ts";
import { SecretSchema, allow, checkKind, deny, objectId, parseObject, type AdmissionRequest, type Decision } from "./review.ts";

/** A namespace's metadata (null: it does not exist); throws when it cannot be known. */
export type NamespaceLookup = (name: string) => Promise<Meta | null>;

export function namespaceNotEnabledMessage(namespace: string, secret: string): string {
  return (
    `secret "${namespace}/${secret}" is enabled for kloak but namespace ${namespace} is not: kloak's webhook only sees ` +
    `pods in namespaces labelled ${ENABLED}=true, so a pod here would get the real value. Label the namespace first ` +
    `(kubectl label namespace ${namespace} ${ENABLED}=true)`
  );
}

/** The /validate decision for one request (throws BadReview for malformed input). */
export async function validateSecret(request: AdmissionRequest, namespaces?: NamespaceLookup): Promise<Decision> {
  // DELETE and CONNECT carry no new Secret; subresources are not Secrets.
  if ((request.operation !== "CREATE" && request.operation !== "UPDATE") || request.subResource) return allow();
  checkKind(request, "Secret");
  const secret = parseObject(request, SecretSchema, "Secret");
  const meta = secret.metadata ?? {};
  // kloak's own shadows hold placeholders, not values to check.
  if (isShadow(meta)) return allow();
  const namespace = request.namespace || meta.namespace;
  switch (enablement(meta, "label")) {
    case "absent":
      return allow();
    case "invalid":
      return allow([invalidEnablementMessage("secret", { ...meta, namespace }, enabledValue(meta) ?? "")]);
    case "enabled": {
      const { problems } = checkSecret({ metadata: meta, type: secret.type ?? undefined, data: secret.data, stringData: secret.stringData });
      if (problems.length > 0) return deny(422, "Invalid", `kloak cannot serve secret "${objectId(namespace, meta)}": ${describeProblems(problems)}`);
      if (namespaces && namespace) {
        let ns: Meta | null;
        try {
          ns = await namespaces(namespace);
        } catch (e) {
          return deny(503, "ServiceUnavailable", `kloak could not read namespace ${namespace} (${(e as Error).message}); retry in a few seconds`);
        }
        // null: the namespace is gone; the API server refuses the write itself.
        if (ns && enablement(ns, "label") !== "enabled") return deny(403, "Forbidden", namespaceNotEnabledMessage(namespace, meta.name ?? request.name ?? ""));
      }
      return allow();
    }
  }
}
