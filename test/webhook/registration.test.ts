/**
 * WebhookRegistrar against the test API server: nothing is written until it
 * is active (Lease holder whose server serves), then both configurations are
 * created and kept; in cert-manager mode the injector's caBundle is left alone.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { AdmissionregistrationV1Api, RbacAuthorizationV1Api } from "@kubernetes/client-node";
import { WebhookRegistrar, type RegistrationOptions } from "../../src/webhook/registration.ts";
import { startKubeApiServer, type KubeApiServer, type KubeObject } from "../support/kube-api-server.ts";

let api: KubeApiServer;
beforeAll(async () => {
  api = await startKubeApiServer();
  api.create({ apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", metadata: { name: "kloak" }, rules: [] });
});
afterAll(() => api.stop());

type Cfg = KubeObject & { webhooks: { clientConfig: { caBundle?: string } }[] };
const get = (kind: string) => api.get(kind, undefined, "kloak") as Cfg | undefined;

function registrar(ca: RegistrationOptions["ca"]) {
  const kc = api.kubeConfig();
  const logs: string[] = [];
  const r = new WebhookRegistrar(
    kc.makeApiClient(AdmissionregistrationV1Api),
    kc.makeApiClient(RbacAuthorizationV1Api),
    { name: "kloak", namespace: "kloak", service: "kloak-webhook", clusterRole: "kloak", ca },
    (_level, msg) => logs.push(msg),
    100,
  );
  return { r, logs };
}

describe("WebhookRegistrar", () => {
  test("self mode: nothing before it is active and has a CA; then both, owned by the ClusterRole; a second pass writes nothing", async () => {
    const { r } = registrar({ mode: "self" });
    await r.reconcile();
    expect(get("MutatingWebhookConfiguration")).toBeUndefined();
    r.setCa("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n");
    await r.reconcile();
    expect(get("MutatingWebhookConfiguration")).toBeUndefined(); // not active: not the writer
    r.setActive(true);
    await r.reconcile();
    const m = get("MutatingWebhookConfiguration")!;
    expect(m.webhooks[0]!.clientConfig.caBundle).toBe(Buffer.from("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n").toString("base64"));
    expect(m.metadata.ownerReferences?.[0]).toMatchObject({ kind: "ClusterRole", name: "kloak", uid: api.get("ClusterRole", undefined, "kloak")!.metadata.uid });
    expect(get("ValidatingWebhookConfiguration")).toBeDefined();
    const rv = m.metadata.resourceVersion;
    const writes = r.writes;
    await r.reconcile();
    expect(r.writes).toBe(writes);
    expect(get("MutatingWebhookConfiguration")!.metadata.resourceVersion).toBe(rv);
    await r.stop();
    api.delete("MutatingWebhookConfiguration", undefined, "kloak");
    api.delete("ValidatingWebhookConfiguration", undefined, "kloak");
  });

  test("cert-manager mode: the inject-ca-from annotation is set and the injector's caBundle survives the agent's updates", async () => {
    const { r } = registrar({ mode: "cert-manager", certificate: "kloak/kloak-webhook-ca" });
    r.setActive(true);
    await r.reconcile();
    const m = get("MutatingWebhookConfiguration")!;
    expect(m.metadata.annotations?.["cert-manager.io/inject-ca-from"]).toBe("kloak/kloak-webhook-ca");
    expect(m.webhooks[0]!.clientConfig.caBundle).toBeUndefined();
    // cainjector fills it; someone else edits the selector: the agent restores the selector, keeps the CA.
    const injected = structuredClone(m) as Cfg & { webhooks: Record<string, unknown>[] };
    injected.webhooks[0]!.clientConfig = { ...(injected.webhooks[0]!.clientConfig as object), caBundle: "aW5qZWN0ZWQ=" };
    injected.webhooks[0]!.namespaceSelector = {};
    api.update(injected);
    await r.reconcile();
    const after = get("MutatingWebhookConfiguration")! as Cfg & { webhooks: Record<string, any>[] };
    expect(after.webhooks[0]!.clientConfig.caBundle).toBe("aW5qZWN0ZWQ=");
    expect(after.webhooks[0]!.namespaceSelector.matchExpressions[0]).toEqual({ key: "getkloak.io/enabled", operator: "In", values: ["true"] });
    await r.stop();
  });
});
