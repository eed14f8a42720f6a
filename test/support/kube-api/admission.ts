/**
 * Admission as kube-apiserver does it, for the test double: on a create or
 * update through HTTP, every stored Mutating- then ValidatingWebhookConfiguration
 * whose rules, namespaceSelector and objectSelector match is called with an
 * AdmissionReview v1 over HTTPS, verified against its caBundle under the
 * Service's DNS name, within its timeoutSeconds; a JSONPatch answer is
 * applied; a denial or (with failurePolicy Fail) a failed call refuses the
 * request with upstream's wording. Reinvocation and matchConditions are not
 * modelled; webhooks are called in configuration-name order.
 */
import { randomUUID } from "node:crypto";
import { applyPatch, type Operation } from "fast-json-patch";
import type { KubeObject } from "../kube-api-server.ts";
import type { ResourceDef } from "./resources.ts";
import { KubeApiError } from "./status.ts";

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

/** metav1.LabelSelector semantics; an absent or empty selector matches everything. */
export function selectorMatches(sel: LabelSelector | undefined | null, labels: Record<string, string> | undefined): boolean {
  const l = labels ?? {};
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (l[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = Object.hasOwn(l, e.key);
    const inValues = has && (e.values ?? []).includes(l[e.key]!);
    const ok = { In: inValues, NotIn: !inValues, Exists: has, DoesNotExist: !has }[e.operator];
    if (ok === undefined) throw new Error(`label selector operator ${e.operator} not modelled`);
    if (!ok) return false;
  }
  return true;
}

/** Where a Service's webhook really listens (the test's stand-in for cluster DNS and kube-proxy). */
export type ServiceResolver = (svc: { namespace: string; name: string; port: number }) =>
  | { host: string; port: number; /** checked against the certificate instead of <svc>.<ns>.svc (test certificates) */ serverName?: string }
  | undefined;

interface Webhook {
  name: string;
  clientConfig: { service?: { namespace: string; name: string; path?: string; port?: number }; url?: string; caBundle?: string };
  rules?: { operations: string[]; apiGroups: string[]; apiVersions: string[]; resources: string[] }[];
  failurePolicy?: "Fail" | "Ignore";
  namespaceSelector?: LabelSelector;
  objectSelector?: LabelSelector;
  timeoutSeconds?: number;
}

export interface AdmissionCall {
  webhook: string;
  operation: string;
  outcome: "allowed" | "patched" | "denied" | "failed-closed" | "failed-open";
}

export interface AdmissionContext {
  /** stored configurations of a kind */
  configs(kind: "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"): KubeObject[];
  namespaceLabels(name: string): Record<string, string> | undefined;
  resolve?: ServiceResolver;
  /** every call made, for tests */
  calls: AdmissionCall[];
}

function ruleMatches(w: Webhook, op: string, res: ResourceDef, subresource: string | undefined): boolean {
  const resource = subresource ? `${res.plural}/${subresource}` : res.plural;
  const any = (list: string[], v: string) => list.includes("*") || list.includes(v);
  return (w.rules ?? []).some(
    (r) => any(r.operations, op) && any(r.apiGroups, res.group) && any(r.apiVersions, res.version) && any(r.resources, resource),
  );
}

async function call(ctx: AdmissionContext, w: Webhook, review: unknown): Promise<{ allowed: boolean; patch?: string; status?: { code?: number; message?: string } }> {
  const svc = w.clientConfig.service;
  if (!svc) throw new Error("clientConfig.url is not modelled");
  const port = svc.port ?? 443;
  const target = ctx.resolve?.({ namespace: svc.namespace, name: svc.name, port });
  if (!target) throw new Error(`service "${svc.name}" not found`);
  const ca = w.clientConfig.caBundle ? Buffer.from(w.clientConfig.caBundle, "base64").toString("utf8") : undefined;
  const res = await fetch(`https://${target.host}:${target.port}${svc.path ?? "/"}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(review),
    // Without a caBundle the system roots are used, as upstream: a private CA then fails verification.
    tls: { ca, serverName: target.serverName ?? `${svc.name}.${svc.namespace}.svc` },
    signal: AbortSignal.timeout((w.timeoutSeconds ?? 10) * 1000),
  } as RequestInit);
  if (res.status !== 200) throw new Error(`received invalid webhook response: HTTP ${res.status}`);
  const body = (await res.json()) as { response?: { allowed: boolean; patch?: string; status?: { code?: number; message?: string } } };
  if (!body.response) throw new Error("received invalid webhook response: no response");
  return body.response;
}

/**
 * Runs admission for one write; returns the object to store (patched by
 * mutating webhooks) or throws the KubeApiError the API server would answer.
 */
export async function admit(
  ctx: AdmissionContext,
  o: { operation: "CREATE" | "UPDATE"; res: ResourceDef; subresource?: string; namespace?: string; object: KubeObject; oldObject?: KubeObject },
): Promise<KubeObject> {
  let object = structuredClone(o.object);
  for (const kind of ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] as const) {
    const configs = ctx.configs(kind).sort((a, b) => (a.metadata.name ?? "").localeCompare(b.metadata.name ?? ""));
    for (const cfg of configs) {
      for (const w of (cfg.webhooks ?? []) as Webhook[]) {
        if (!ruleMatches(w, o.operation, o.res, o.subresource)) continue;
        if (o.res.namespaced && o.namespace) {
          if (!selectorMatches(w.namespaceSelector, ctx.namespaceLabels(o.namespace))) continue;
        }
        // Upstream: the object selector matches if the new or the old object matches.
        const objMatch = selectorMatches(w.objectSelector, object.metadata.labels) || (o.oldObject !== undefined && selectorMatches(w.objectSelector, o.oldObject.metadata.labels));
        if (!objMatch) continue;
        const review = {
          apiVersion: "admission.k8s.io/v1",
          kind: "AdmissionReview",
          request: {
            uid: randomUUID(),
            kind: { group: o.res.group, version: o.res.version, kind: o.res.kind },
            resource: { group: o.res.group, version: o.res.version, resource: o.res.plural },
            ...(o.subresource ? { subResource: o.subresource } : {}),
            name: object.metadata.name ?? "",
            namespace: o.namespace,
            operation: o.operation,
            userInfo: { username: "kube-api-server-double" },
            object,
            oldObject: o.oldObject ?? null,
            dryRun: false,
          },
        };
        let response;
        try {
          response = await call(ctx, w, review);
        } catch (e) {
          const why = e instanceof Error ? (e.name === "TimeoutError" ? `context deadline exceeded (${w.timeoutSeconds ?? 10}s)` : e.message) : String(e);
          if (w.failurePolicy === "Ignore") {
            ctx.calls.push({ webhook: w.name, operation: o.operation, outcome: "failed-open" });
            continue;
          }
          ctx.calls.push({ webhook: w.name, operation: o.operation, outcome: "failed-closed" });
          throw new KubeApiError(500, "InternalError", `Internal error occurred: failed calling webhook "${w.name}": ${why}`);
        }
        if (!response.allowed) {
          ctx.calls.push({ webhook: w.name, operation: o.operation, outcome: "denied" });
          const code = response.status?.code ?? 403;
          throw new KubeApiError(code, code === 403 ? "Forbidden" : "BadRequest", `admission webhook "${w.name}" denied the request: ${response.status?.message ?? ""}`);
        }
        if (response.patch) {
          if (kind === "ValidatingWebhookConfiguration") throw new KubeApiError(500, "InternalError", `validating webhook "${w.name}" returned a patch`);
          const ops = JSON.parse(Buffer.from(response.patch, "base64").toString("utf8")) as Operation[];
          object = applyPatch(object, ops, true, false).newDocument;
          ctx.calls.push({ webhook: w.name, operation: o.operation, outcome: "patched" });
        } else ctx.calls.push({ webhook: w.name, operation: o.operation, outcome: "allowed" });
      }
    }
  }
  return object;
}
