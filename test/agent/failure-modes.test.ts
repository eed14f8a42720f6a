/**
 * What an agent outage blocks, and what it does not: the real `kloak agent`
 * against the test API server, which calls the webhooks the agent registered
 * the way kube-apiserver does (selectors, caBundle, timeout, failurePolicy)
 * and stores what they return. Each outcome here is a row of the failure
 * table in docs/kubernetes.md.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { cgroupV2Root } from "../../src/node/cgroups.ts";
import { policyFor, startKubeApiServer, type KubeApiServer, type KubeObject } from "../support/kube-api-server.ts";
import { fakeSecret, ROOT, spawnKloak } from "../support/kloak.ts";

const b64 = (s: string) => Buffer.from(s).toString("base64");

let api: KubeApiServer;
let agent: ReturnType<typeof spawnKloak> | undefined;
let agentLog = "";
let opsPort = 0;
let webhookPort = 0;
let base = "";

async function freePort(): Promise<number> {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
  const p = s.port!;
  s.stop(true);
  return p;
}

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log tail:\n${agentLog.split("\n").slice(-15).join("\n")}`);
    await Bun.sleep(50);
  }
}

/** A write through the API server's HTTP front, so admission runs. */
async function write(method: "POST" | "PUT" | "DELETE", path: string, body?: unknown): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(api.url + path, {
    method,
    headers: { authorization: "Bearer test", "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    tls: { ca: api.ca },
  } as RequestInit);
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

const podIn = (namespace: string, secret: string) => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { generateName: "app-", namespace },
  spec: { containers: [{ name: "app", image: "app", env: [{ name: "TOKEN", valueFrom: { secretKeyRef: { name: secret, key: "token" } } }] }] },
});
const createPod = (namespace: string, secret: string) => write("POST", `/api/v1/namespaces/${namespace}/pods`, podIn(namespace, secret));
const secretIn = (namespace: string, name: string, data: Record<string, string>, labels: Record<string, string> = {}) => ({
  apiVersion: "v1",
  kind: "Secret",
  metadata: { name, namespace, labels },
  type: "Opaque",
  data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
});
const createSecret = (namespace: string, name: string, data: Record<string, string>, labels?: Record<string, string>) =>
  write("POST", `/api/v1/namespaces/${namespace}/secrets`, secretIn(namespace, name, data, labels));
const ENABLED = { "getkloak.io/enabled": "true" };

function startAgent() {
  agentLog = "";
  agent = spawnKloak(
    [
      "agent",
      "--kubeconfig", api.kubeconfigPath,
      "--node-name", "node-fm",
      "--pod-name", "kloak-fm",
      "--ops-port", String(opsPort),
      "--webhook-port", String(webhookPort),
      "--bind-address", "127.0.0.1",
      "--cgroup-root", base,
      "--lease-duration", "5",
    ],
    { env: { KLOAK_NODE_NAME: undefined } },
  );
  const p = agent;
  void (async () => {
    for await (const chunk of p.stderr as ReadableStream<Uint8Array>) agentLog += new TextDecoder().decode(chunk);
  })();
}

beforeAll(async () => {
  opsPort = await freePort();
  webhookPort = await freePort();
  // Cluster DNS + kube-proxy of the test: Service kloak/kloak-webhook:443 is the agent's webhook port.
  // The agent may do exactly what deploy/base/rbac.yaml grants ServiceAccount kloak/kloak.
  const rbac = parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8")).map((d) => d.toJS() as KubeObject);
  api = await startKubeApiServer({
    bookmarkIntervalMs: 1000,
    rbac: policyFor(rbac, "kloak", "kloak"),
    resolveService: (s) => (s.namespace === "kloak" && s.name === "kloak-webhook" && s.port === 443 ? { host: "127.0.0.1", port: webhookPort } : undefined),
  });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "shop", labels: ENABLED } });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "plain" } });
  for (const doc of parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8"))) {
    const o = doc.toJS() as KubeObject;
    if (o.kind === "ClusterRole") api.create(o);
  }
  api.create(secretIn("shop", "api", { token: fakeSecret(32) }, ENABLED) as KubeObject);
  api.create(secretIn("plain", "cfg", { token: fakeSecret(32) }) as KubeObject);
  base = join(cgroupV2Root(), `kloak-fm-${process.pid}`);
  mkdirSync(base, { recursive: true });
}, 30_000);

afterAll(async () => {
  agent?.kill("SIGTERM");
  await agent?.exited;
  await api?.stop();
  try {
    rmdirSync(base);
  } catch {}
}, 30_000);

describe("install, outage, uninstall: what is blocked", () => {
  test("before an agent serves, no webhook configuration exists: nothing is blocked", async () => {
    expect(api.get("MutatingWebhookConfiguration", undefined, "kloak")).toBeUndefined();
    expect(api.get("ValidatingWebhookConfiguration", undefined, "kloak")).toBeUndefined();
    expect((await createPod("plain", "cfg")).status).toBe(201);
    expect((await createSecret("plain", "other", { k: "v" })).status).toBe(201);
  });

  test("a serving agent registers both; pods in opted-in namespaces are pointed at shadows by the API server", async () => {
    startAgent();
    await waitFor("readyz", async () => {
      if (agent!.exitCode !== null) throw new Error(`agent exited ${agent!.exitCode}:\n${agentLog}`);
      return (await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined))?.status === 200;
    }, 60_000);
    await waitFor("registered with a caBundle", () => {
      const m = api.get("MutatingWebhookConfiguration", undefined, "kloak") as (KubeObject & { webhooks: { clientConfig: { caBundle?: string } }[] }) | undefined;
      return m?.webhooks[0]?.clientConfig.caBundle && api.get("ValidatingWebhookConfiguration", undefined, "kloak");
    });
    await waitFor("shadow", () => api.get("Secret", "shop", "api-kloak"));

    const r = await createPod("shop", "api");
    expect(r.status).toBe(201);
    const stored = api.get("Pod", "shop", r.body.metadata.name) as KubeObject & { spec: any };
    expect(stored.spec.containers[0].env[0].valueFrom.secretKeyRef.name).toBe("api-kloak");
    expect(stored.metadata.annotations?.["getkloak.io/enabled"]).toBe("true");

    const calls = api.admissionCalls.length;
    const p = await createPod("plain", "cfg");
    expect(p.status).toBe(201);
    expect((api.get("Pod", "plain", p.body.metadata.name) as KubeObject & { spec: any }).spec.containers[0].env[0].valueFrom.secretKeyRef.name).toBe("cfg");
    // Not opted in: the API server did not even call kloak.
    expect(api.admissionCalls.length).toBe(calls);
  }, 90_000);

  test("in an opted-in namespace a pod naming a Secret that does not exist yet is refused (whatever the creation order)", async () => {
    const r = await createPod("shop", "later");
    expect(r.status).toBe(403);
    expect(r.body.message).toStartWith('admission webhook "mutate.getkloak.io" denied the request: secret "shop/later" does not exist yet');
    // Created afterwards, enabled: the retried pod gets the shadow.
    expect((await createSecret("shop", "later", { token: fakeSecret(32) }, ENABLED)).status).toBe(201);
    await waitFor("shadow of later", () => api.get("Secret", "shop", "later-kloak"));
    const again = await createPod("shop", "later");
    expect(again.status).toBe(201);
    expect((api.get("Pod", "shop", again.body.metadata.name) as KubeObject & { spec: any }).spec.containers[0].env[0].valueFrom.secretKeyRef.name).toBe("later-kloak");
  }, 30_000);

  test("Secrets: only labelled ones are checked; enabling one outside an opted-in namespace, or with no servable key, is refused", async () => {
    const calls = api.admissionCalls.length;
    expect((await createSecret("shop", "unlabelled", { k: "x" })).status).toBe(201);
    expect(api.admissionCalls.length).toBe(calls);
    const outside = await createSecret("plain", "key", { token: fakeSecret(32) }, ENABLED);
    expect(outside.status).toBe(403);
    expect(outside.body.message).toContain("kubectl label namespace plain getkloak.io/enabled=true");
    const tiny = await createSecret("shop", "tiny", { pin: "123" }, ENABLED);
    expect(tiny.status).toBe(422);
    expect(tiny.body.message).toContain('key "pin" is 3 bytes');
  });

  test("bad input: a huge Secret is refused naming the key and the way out; a namespace deleted while its pods start is the API server's NotFound", async () => {
    const huge = await createSecret("shop", "huge", { blob: "x".repeat(400 * 1024) }, ENABLED);
    expect(huge.status).toBe(422);
    expect(huge.body.message).toContain('key "blob" is 409600 bytes');
    expect(huge.body.message).toContain("leave the key out of getkloak.io/keys");
    expect(api.get("Secret", "shop", "huge")).toBeUndefined();
    // The same Secret with the blob left out of the protected keys is accepted and shadowed, blob as it is.
    const ok = secretIn("shop", "huge", { blob: "x".repeat(400 * 1024), token: fakeSecret(32) }, ENABLED) as KubeObject;
    ok.metadata.annotations = { "getkloak.io/keys": "token" };
    expect((await write("POST", "/api/v1/namespaces/shop/secrets", ok)).status).toBe(201);
    const shadow = await waitFor("shadow of huge", () => api.get("Secret", "shop", "huge-kloak") as (KubeObject & { data: Record<string, string> }) | undefined);
    expect(shadow.data.blob).toBe(b64("x".repeat(400 * 1024)));

    api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "brief", labels: ENABLED } });
    api.delete("Namespace", undefined, "brief");
    const r = await createPod("brief", "api");
    expect(r.status).toBe(404);
    expect(r.body.reason).toBe("NotFound");
  }, 30_000);

  test("watch lag: a pod created right after its enabled Secret, before the agent has seen it, is not admitted unchanged", async () => {
    api.setWatchLag("secrets", 3000);
    expect((await createSecret("shop", "fresh", { token: fakeSecret(32) }, ENABLED)).status).toBe(201);
    // The agent's cache does not have it: the webhook asks the API server, finds it enabled and its shadow missing.
    const r = await createPod("shop", "fresh");
    expect(r.status).toBe(403);
    expect(r.body.message).toContain('secret "shop/fresh" is enabled for kloak but its shadow "fresh-kloak" does not exist yet');
    api.setWatchLag("secrets", 0);
    await waitFor("shadow of fresh", () => api.get("Secret", "shop", "fresh-kloak"), 15_000);
    await waitFor("the agent's cache has the shadow", async () => (await createPod("shop", "fresh")).status === 201, 15_000);
  }, 40_000);

  test("agent down (crashed, not ready): opted-in scope is refused with the reason; everything else goes on", async () => {
    agent!.kill("SIGKILL");
    await agent!.exited;
    const blocked = await createPod("shop", "api");
    expect(blocked.status).toBe(500);
    expect(blocked.body.message).toStartWith('Internal error occurred: failed calling webhook "mutate.getkloak.io"');
    expect((await createSecret("shop", "labelled", { token: fakeSecret(32) }, ENABLED)).status).toBe(500);
    // Outside opted-in scope nothing calls kloak.
    expect((await createPod("plain", "cfg")).status).toBe(201);
    expect((await createSecret("shop", "plain-two", { k: "v" })).status).toBe(201);
    expect((await createSecret("plain", "plain-three", { k: "v" })).status).toBe(201);
  }, 30_000);

  test("uninstall: deleting ClusterRole kloak (kubectl delete -k deploy) deletes both configurations; nothing stays blocked", async () => {
    expect((await write("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles/kloak")).status).toBe(200);
    expect(api.get("MutatingWebhookConfiguration", undefined, "kloak")).toBeUndefined();
    expect(api.get("ValidatingWebhookConfiguration", undefined, "kloak")).toBeUndefined();
    expect((await createPod("shop", "api")).status).toBe(201);
    expect((await createSecret("shop", "after", { token: fakeSecret(32) }, ENABLED)).status).toBe(201);
  });

  test("the agent never needed more than deploy/base/rbac.yaml grants", () => {
    expect(api.forbidden).toEqual([]);
  });
});
