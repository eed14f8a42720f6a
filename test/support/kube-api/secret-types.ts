/**
 * What kube-apiserver's validation says about a Secret (core/v1
 * ValidateSecret), for the test double's HTTP creates and updates: a shadow
 * kloak writes must pass the same checks as on a cluster.
 */
import type { KubeObject } from "../kube-api-server.ts";
import { KubeApiError } from "./status.ts";

const KEY = /^[-._a-zA-Z0-9]+$/;
const MAX_TOTAL = 1024 * 1024;

export function validateSecretObject(o: KubeObject, old?: KubeObject): void {
  const name = o.metadata.name ?? o.metadata.generateName ?? "";
  const problems: string[] = [];
  const data = (o.data ?? {}) as Record<string, string>;
  const stringData = (o.stringData ?? {}) as Record<string, string>;
  const keys = new Set([...Object.keys(data), ...Object.keys(stringData)]);
  let total = 0;
  for (const k of keys) {
    if (!KEY.test(k) || k.length > 253) problems.push(`data[${k}]: Invalid value: "${k}": a valid config key must consist of alphanumeric characters, '-', '_' or '.'`);
    total += k in stringData ? Buffer.byteLength(stringData[k]!) : Buffer.from(data[k] ?? "", "base64").length;
  }
  if (total > MAX_TOTAL) problems.push(`data: Too long: must have at most ${MAX_TOTAL} bytes`);
  const type = (o.type as string | undefined) ?? "Opaque";
  const value = (k: string) => (k in stringData ? stringData[k]! : k in data ? Buffer.from(data[k]!, "base64").toString("utf8") : undefined);
  const need = (k: string) => {
    if (!keys.has(k)) problems.push(`data[${k}]: Required value`);
  };
  switch (type) {
    case "kubernetes.io/tls":
      need("tls.crt");
      need("tls.key");
      break;
    case "kubernetes.io/dockerconfigjson":
    case "kubernetes.io/dockercfg": {
      const k = type.endsWith("json") ? ".dockerconfigjson" : ".dockercfg";
      need(k);
      const v = value(k);
      if (v !== undefined) {
        try {
          JSON.parse(v);
        } catch (e) {
          problems.push(`data[${k}]: Invalid value: "<secret contents redacted>": ${(e as Error).message}`);
        }
      }
      break;
    }
    case "kubernetes.io/basic-auth":
      if (!keys.has("username") && !keys.has("password")) problems.push("data[username]: Required value");
      break;
    case "kubernetes.io/ssh-auth":
      need("ssh-privatekey");
      break;
    case "kubernetes.io/service-account-token":
      if (!o.metadata.annotations?.["kubernetes.io/service-account.name"]) problems.push(`metadata.annotations[kubernetes.io/service-account.name]: Required value`);
      break;
  }
  if (old && ((old.type as string | undefined) ?? "Opaque") !== type) problems.push(`type: Invalid value: "${type}": field is immutable`);
  if (problems.length) {
    throw new KubeApiError(422, "Invalid", `Secret "${name}" is invalid: ${problems.length > 1 ? `[${problems.join(", ")}]` : problems[0]}`);
  }
}
