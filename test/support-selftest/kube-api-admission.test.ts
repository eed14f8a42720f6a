/**
 * The test API server's admission, RBAC and paging (what hid kloak's
 * install and outage bugs): checked against small webhooks served here.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CoreV1Api, RbacAuthorizationV1Api } from "@kubernetes/client-node";
import { describeAccess, startKubeApiServer, unusedGrants, type KubeApiServer, type KubeObject, type RbacPolicy } from "../support/kube-api-server.ts";
import { testCerts } from "../support/certs.ts";

let api: KubeApiServer;
let hook: ReturnType<typeof Bun.serve>;
let ca = "";
let slow = false;
let answer: (req: any) => Record<string, unknown> = () => ({ allowed: true });
const policy: RbacPolicy = {
  user: "system:serviceaccount:kloak:kloak",
  roles: [
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: "r" },
      rules: [
        { apiGroups: [""], resources: ["secrets"], verbs: ["get", "list"] },
        { apiGroups: [""], resources: ["configmaps"], verbs: ["watch"] },
        { apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], resourceNames: ["kloak"], verbs: ["get"] },
      ],
    },
  ],
};

beforeAll(async () => {
  const certs = await testCerts();
  ca = certs.ca;
  hook = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    tls: { cert: certs.cert, key: certs.key },
    async fetch(req) {
      const review = (await req.json()) as { request: { uid: string } };
      if (slow) await Bun.sleep(1500);
      return Response.json({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", response: { uid: review.request.uid, ...answer(review.request) } });
    },
  });
  api = await startKubeApiServer({
    // The test certificate names localhost, so the "Service" is reached under that name.
    resolveService: (s) => (s.name === "hook" ? { host: "127.0.0.1", port: hook.port!, serverName: "localhost" } : undefined),
    rbac: policy,
  });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "in", labels: { opt: "yes" } } });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "out" } });
});
afterAll(async () => {
  await api.stop();
  hook.stop(true);
});

function config(name: string, o: { failurePolicy?: string; timeoutSeconds?: number; service?: string; caBundle?: string } = {}): KubeObject {
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name },
    webhooks: [
      {
        name: `${name}.example.com`,
        clientConfig: { service: { namespace: "default", name: o.service ?? "hook", path: "/" }, caBundle: o.caBundle ?? Buffer.from(ca).toString("base64") },
        rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"] }],
        failurePolicy: o.failurePolicy ?? "Fail",
        timeoutSeconds: o.timeoutSeconds ?? 5,
        namespaceSelector: { matchLabels: { opt: "yes" } },
        sideEffects: "None",
        admissionReviewVersions: ["v1"],
      },
    ],
  };
}

async function createCm(ns: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${api.url}/api/v1/namespaces/${ns}/configmaps`, {
    method: "POST",
    headers: { authorization: "Bearer admin", "content-type": "application/json" },
    body: JSON.stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { generateName: "c-", namespace: ns }, data: { a: "1" } }),
    tls: { ca: api.ca },
  } as RequestInit);
  return { status: res.status, body: await res.json() };
}

describe("admission", () => {
  test("a matching webhook's JSONPatch is applied to what is stored; a namespace the selector skips is not sent", async () => {
    api.create(config("m"));
    answer = () => ({ allowed: true, patchType: "JSONPatch", patch: Buffer.from(JSON.stringify([{ op: "add", path: "/data/b", value: "2" }])).toString("base64") });
    const r = await createCm("in");
    expect(r.status).toBe(201);
    expect(api.get("ConfigMap", "in", r.body.metadata.name)!.data).toEqual({ a: "1", b: "2" });
    const calls = api.admissionCalls.length;
    expect((await createCm("out")).status).toBe(201);
    expect(api.admissionCalls.length).toBe(calls);
  });

  test("a denial is the webhook's code and message, as upstream words it", async () => {
    answer = () => ({ allowed: false, status: { code: 403, message: "no" } });
    const r = await createCm("in");
    expect(r.status).toBe(403);
    expect(r.body.message).toBe('admission webhook "m.example.com" denied the request: no');
  });

  test("unreachable, untrusted or too slow: Fail refuses, Ignore admits", async () => {
    answer = () => ({ allowed: true });
    api.delete("MutatingWebhookConfiguration", undefined, "m");
    api.create(config("gone", { service: "nowhere" }));
    const r = await createCm("in");
    expect(r.status).toBe(500);
    expect(r.body.message).toStartWith('Internal error occurred: failed calling webhook "gone.example.com"');
    api.delete("MutatingWebhookConfiguration", undefined, "gone");
    api.create(config("untrusted", { caBundle: "" }));
    expect((await createCm("in")).status).toBe(500);
    api.delete("MutatingWebhookConfiguration", undefined, "untrusted");
    slow = true;
    api.create(config("slow", { timeoutSeconds: 1 }));
    const t = await createCm("in");
    expect(t.status).toBe(500);
    expect(t.body.message).toContain("context deadline exceeded");
    api.delete("MutatingWebhookConfiguration", undefined, "slow");
    api.create(config("lenient", { timeoutSeconds: 1, failurePolicy: "Ignore" }));
    expect((await createCm("in")).status).toBe(201);
    slow = false;
    api.delete("MutatingWebhookConfiguration", undefined, "lenient");
  }, 20_000);
});

describe("RBAC and paging", () => {
  test("the kubeconfig's token gets only what its roles grant, worded as upstream", async () => {
    const kc = api.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    await core.listSecretForAllNamespaces();
    await expect(core.createNamespacedSecret({ namespace: "in", body: { metadata: { name: "x" } } })).rejects.toMatchObject({ code: 403 });
    expect(api.forbidden.at(-1)).toBe(
      '403 secrets "x" is forbidden: User "system:serviceaccount:kloak:kloak" cannot create resource "secrets" in API group "" in the namespace "in"',
    );
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    await expect(rbac.readClusterRole({ name: "other" })).rejects.toMatchObject({ code: 403 });
    await expect(rbac.readClusterRole({ name: "kloak" })).rejects.toMatchObject({ code: 404 }); // allowed, absent
  });

  test("every request with the token is recorded as the authorizer saw it; unusedGrants names what nothing needed", () => {
    expect(api.accesses.map(describeAccess)).toEqual([
      "list secrets (cluster or all namespaces)",
      'create secrets "x" (ns in)',
      'get clusterroles.rbac.authorization.k8s.io "other" (cluster or all namespaces)',
      'get clusterroles.rbac.authorization.k8s.io "kloak" (cluster or all namespaces)',
    ]);
    expect(api.accesses.map((a) => a.forbidden ?? false)).toEqual([false, true, true, false]);
    // get secrets and watch configmaps were granted and never asked for; a refused create uses nothing.
    expect(unusedGrants(policy, api.accesses)).toEqual(["ClusterRole r: get secrets", "ClusterRole r: watch configmaps"]);
  });

  test("limit/continue pages in name order with one resourceVersion", async () => {
    for (let i = 0; i < 5; i++) api.create({ apiVersion: "v1", kind: "Secret", metadata: { name: `p${i}`, namespace: "in" }, type: "Opaque" });
    const core = api.kubeConfig().makeApiClient(CoreV1Api);
    const first = await core.listNamespacedSecret({ namespace: "in", limit: 2 });
    expect(first.items.map((s) => s.metadata!.name)).toEqual(["p0", "p1"]);
    expect(first.metadata!.remainingItemCount).toBe(3);
    const second = await core.listNamespacedSecret({ namespace: "in", limit: 2, _continue: first.metadata!._continue });
    expect(second.items.map((s) => s.metadata!.name)).toEqual(["p2", "p3"]);
    expect(second.metadata!.resourceVersion).toBe(first.metadata!.resourceVersion);
    const last = await core.listNamespacedSecret({ namespace: "in", limit: 2, _continue: second.metadata!._continue });
    expect(last.items.map((s) => s.metadata!.name)).toEqual(["p4"]);
    expect(last.metadata!._continue).toBeUndefined();
  });
});

describe("Secret validation and watch lag", () => {
  const post = (body: unknown) =>
    fetch(`${api.url}/api/v1/namespaces/in/secrets`, {
      method: "POST",
      headers: { authorization: "Bearer admin", "content-type": "application/json" },
      body: JSON.stringify(body),
      tls: { ca: api.ca },
    } as RequestInit).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));

  test("built-in types need their keys; a dockerconfigjson must be JSON", async () => {
    const tls = await post({ apiVersion: "v1", kind: "Secret", metadata: { name: "t" }, type: "kubernetes.io/tls", data: { "tls.crt": "YQ==" } });
    expect(tls.status).toBe(422);
    expect(tls.body.message).toBe('Secret "t" is invalid: data[tls.key]: Required value');
    const docker = await post({ apiVersion: "v1", kind: "Secret", metadata: { name: "d" }, type: "kubernetes.io/dockerconfigjson", data: { ".dockerconfigjson": Buffer.from("kloak:xyz").toString("base64") } });
    expect(docker.status).toBe(422);
    expect(docker.body.message).toStartWith('Secret "d" is invalid: data[.dockerconfigjson]: Invalid value: "<secret contents redacted>"');
    expect((await post({ apiVersion: "v1", kind: "Secret", metadata: { name: "ok" }, type: "Opaque", data: { a: "YQ==" } })).status).toBe(201);
  });

  test("a lagging watch delivers late", async () => {
    const seen: string[] = [];
    const { Watch } = await import("@kubernetes/client-node");
    const abort = await new Watch(api.kubeConfig()).watch("/api/v1/namespaces/in/configmaps", {}, (type, obj) => seen.push(`${type} ${obj.metadata.name}`), () => {});
    await Bun.sleep(200);
    seen.length = 0;
    api.setWatchLag("configmaps", 700);
    api.create({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "late", namespace: "in" } });
    await Bun.sleep(300);
    expect(seen).toEqual([]);
    const end = Date.now() + 5000;
    while (!seen.length && Date.now() < end) await Bun.sleep(50);
    expect(seen).toEqual(["ADDED late"]);
    api.setWatchLag("configmaps", 0);
    abort.abort();
  });
});
