/**
 * The validating webhook's decision for a Secret: an enabled Secret that kloak
 * could not serve (a value of the wrong length, bad hosts rules) is refused at
 * the API server, with the same words the shadow writer would put in an Event.
 * Messages name keys and annotations, never values.
 */
import { enabledValue, enablement, invalidEnablementMessage, isShadow } from "../kube/contract.ts";
import { checkSecret, describeProblems } from "../secrets/secret-check.ts";
import { SecretSchema, allow, checkKind, deny, objectId, parseObject, type AdmissionRequest, type Decision } from "./review.ts";

/** The /validate decision for one request (throws BadReview for malformed input). */
export function validateSecret(request: AdmissionRequest): Decision {
  // DELETE and CONNECT carry no new Secret; subresources are not Secrets.
  if ((request.operation !== "CREATE" && request.operation !== "UPDATE") || request.subResource) return allow();
  checkKind(request, "Secret");
  const secret = parseObject(request, SecretSchema, "Secret");
  const meta = secret.metadata ?? {};
  // kloak's own shadows hold placeholders, not values to check.
  if (isShadow(meta)) return allow();
  const namespace = request.namespace || meta.namespace;
  switch (enablement(meta)) {
    case "absent":
      return allow();
    case "invalid":
      return allow([invalidEnablementMessage("secret", { ...meta, namespace }, enabledValue(meta) ?? "")]);
    case "enabled": {
      const { problems } = checkSecret({ metadata: meta, data: secret.data, stringData: secret.stringData });
      if (problems.length === 0) return allow();
      return deny(422, "Invalid", `kloak cannot serve secret "${objectId(namespace, meta)}": ${describeProblems(problems)}`);
    }
  }
}
