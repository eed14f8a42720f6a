/**
 * Proves the kube-apiserver test double (test/support/kube-api-server.ts)
 * behaves like the real API for what kloak's controllers use, driven by real
 * @kubernetes/client-node 1.4.0 clients (typed APIs, Watch, informers) over
 * HTTPS with the test CA.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as k8s from "@kubernetes/client-node";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import {
  KubeApiError,
  startKubeApiServer,
  type KubeApiServer,
  type KubeObject,
} from "../support/kube-api-server.ts";

let srv: KubeApiServer;
let kc: k8s.KubeConfig;
let core: k8s.CoreV1Api;
let apps: k8s.AppsV1Api;
let coord: k8s.CoordinationV1Api;
let eventsApi: k8s.EventsV1Api;
let admission: k8s.AdmissionregistrationV1Api;

beforeAll(async () => {
  srv = await startKubeApiServer({ bookmarkIntervalMs: 150 });
  kc = srv.kubeConfig();
  core = kc.makeApiClient(k8s.CoreV1Api);
  apps = kc.makeApiClient(k8s.AppsV1Api);
  coord = kc.makeApiClient(k8s.CoordinationV1Api);
  eventsApi = kc.makeApiClient(k8s.EventsV1Api);
  admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
});
afterAll(async () => {
  await srv?.stop();
});

let nsCounter = 0;
/** A fresh namespace per test so tests do not see each other's objects. */
async function freshNamespace(): Promise<string> {
  const name = `t${++nsCounter}`;
  await core.createNamespace({ body: { metadata: { name } } });
  return name;
}

interface ApiErr {
  code: number;
  status: { reason?: string; message?: string; code?: number; details?: Record<string, unknown> };
}

/** Awaits a rejected client-node call; returns the HTTP code and the parsed Status body. */
async function apiError(p: Promise<unknown>): Promise<ApiErr> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof k8s.ApiException)) throw e;
    const body = e.body as unknown;
    return { code: e.code, status: typeof body === "string" && body !== "" ? JSON.parse(body) : {} };
  }
  throw new Error("expected the call to fail");
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

interface WatchEvent {
  type: string;
  object: KubeObject & { code?: number; reason?: string; message?: string };
}

/** A raw client-node Watch collecting its events. */
async function startWatch(path: string, query: Record<string, string | number | boolean> = {}) {
  const events: WatchEvent[] = [];
  let doneErr: unknown = "not done";
  const controller = await new k8s.Watch(kc).watch(
    path,
    query,
    (type, object) => events.push({ type, object }),
    (err) => {
      doneErr = err;
    },
  );
  return {
    events,
    done: () => doneErr !== "not done",
    doneErr: () => doneErr,
    abort: () => controller.abort(),
  };
}

function secret(ns: string, name: string, labels: Record<string, string> = {}, type = "Opaque"): KubeObject {
  return { apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns, labels }, type, stringData: { k: "v" } };
}

function pod(ns: string, name: string, nodeName?: string, labels: Record<string, string> = {}): k8s.V1Pod {
  const spec: k8s.V1PodSpec = { containers: [{ name: "c", image: "busybox" }] };
  if (nodeName !== undefined) spec.nodeName = nodeName;
  return { metadata: { name, namespace: ns, labels }, spec };
}

describe("transport and auth", () => {
  test("client-node verifies the server against the kubeconfig CA (and refuses without it)", async () => {
    const list = await srv.kubeConfig().makeApiClient(k8s.CoreV1Api).listNamespace();
    expect(list.kind).toBe("NamespaceList");
    const noCa = new k8s.KubeConfig();
    noCa.loadFromOptions({
      clusters: [{ name: "c", server: srv.url }],
      users: [{ name: "u", token: "t" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    let err: unknown;
    try {
      await noCa.makeApiClient(k8s.CoreV1Api).listNamespace();
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string } | undefined)?.code).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  test("kubeconfig file points at the server with the CA and a token", async () => {
    const doc = parseYaml(readFileSync(srv.kubeconfigPath, "utf8"));
    expect(doc.clusters[0].cluster.server).toBe(srv.url);
    expect(doc.clusters[0].cluster["certificate-authority"]).toBe(srv.caFile);
    expect(typeof doc.users[0].user.token).toBe("string");
    const fromFile = new k8s.KubeConfig();
    fromFile.loadFromFile(srv.kubeconfigPath);
    const api = fromFile.makeApiClient(k8s.CoreV1Api);
    const list = await api.listNamespace();
    expect(Number(list.metadata?.resourceVersion)).toBeGreaterThanOrEqual(0);
    expect(srv.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(srv.ca).toContain("BEGIN CERTIFICATE");
  });

  test("401 Status without a bearer token, for raw HTTPS and for client-node", async () => {
    const res = await fetch(`${srv.url}/api/v1/namespaces`, { tls: { ca: srv.ca } });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ kind: "Status", status: "Failure", reason: "Unauthorized", code: 401 });

    const anon = new k8s.KubeConfig();
    anon.loadFromOptions({
      clusters: [{ name: "c", server: srv.url, caFile: srv.caFile }],
      users: [{ name: "nobody" }],
      contexts: [{ name: "x", cluster: "c", user: "nobody" }],
      currentContext: "x",
    });
    const err = await apiError(anon.makeApiClient(k8s.CoreV1Api).listNamespace());
    expect(err.code).toBe(401);

    const ok = await fetch(`${srv.url}/api/v1/namespaces`, { tls: { ca: srv.ca }, headers: { authorization: "Bearer anything" } });
    expect(ok.status).toBe(200);
  });

  test("discovery, version and unknown paths", async () => {
    const get = (p: string) => fetch(`${srv.url}${p}`, { tls: { ca: srv.ca }, headers: { authorization: "Bearer t" } });
    type ResourceList = { resources: { name: string; kind: string; namespaced: boolean }[] };
    const v1 = (await (await get("/api/v1")).json()) as ResourceList;
    expect(v1.resources.map((r: { name: string }) => r.name)).toEqual(
      expect.arrayContaining(["namespaces", "secrets", "pods", "pods/status", "events", "services", "configmaps"]),
    );
    const lease = (await (await get("/apis/coordination.k8s.io/v1")).json()) as ResourceList;
    expect(lease.resources[0]).toMatchObject({ name: "leases", kind: "Lease", namespaced: true });
    expect(((await (await get("/version")).json()) as { major: string }).major).toBe("1");
    const missing = await get("/apis/batch/v1/namespaces/x/jobs");
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { reason: string }).reason).toBe("NotFound");
  });
});

describe("CRUD semantics", () => {
  test("namespaces get the metadata.name label; namespaced create in a missing namespace is 404", async () => {
    const ns = await core.createNamespace({ body: { metadata: { name: "labelled" } } });
    expect(ns.metadata?.labels?.["kubernetes.io/metadata.name"]).toBe("labelled");
    expect(ns.status?.phase).toBe("Active");
    const err = await apiError(core.createNamespacedSecret({ namespace: "no-such-ns", body: { metadata: { name: "s" } } }));
    expect(err.code).toBe(404);
    expect(err.status).toMatchObject({ reason: "NotFound", message: 'namespaces "no-such-ns" not found' });
    expect(() => srv.create(secret("no-such-ns", "s"))).toThrow(KubeApiError);
  });

  test("create / get / list / 409 AlreadyExists / generateName / 404", async () => {
    const ns = await freshNamespace();
    const rvBefore = Number(srv.resourceVersion());
    const info = await core.createNamespacedSecretWithHttpInfo({
      namespace: ns,
      body: { metadata: { name: "s1", labels: { a: "1" } }, stringData: { k: "v" } },
    });
    expect(info.httpStatusCode).toBe(201);
    const created = info.data;
    expect(created.kind).toBe("Secret");
    expect(created.apiVersion).toBe("v1");
    expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(Number(created.metadata?.resourceVersion)).toBe(rvBefore + 1);
    expect(created.metadata?.creationTimestamp).toBeInstanceOf(Date); // client-node turns timestamps into Dates
    expect(created.metadata?.generation).toBe(1);

    const got = await core.readNamespacedSecret({ name: "s1", namespace: ns });
    expect(got.metadata?.uid).toBe(created.metadata?.uid);

    const dup = await apiError(core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "s1" } } }));
    expect(dup.code).toBe(409);
    expect(dup.status).toMatchObject({ reason: "AlreadyExists", message: 'secrets "s1" already exists', details: { name: "s1", kind: "secrets" } });

    const gen = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { generateName: "auto-" } } });
    expect(gen.metadata?.name).toMatch(/^auto-[a-z0-9]{5}$/);

    const list = await core.listNamespacedSecret({ namespace: ns });
    expect(list.kind).toBe("SecretList");
    expect(list.metadata?.resourceVersion).toBe(srv.resourceVersion());
    expect(list.items.map((s) => s.metadata?.name).sort()).toEqual([gen.metadata!.name!, "s1"].sort());
    // items omit apiVersion/kind, as the real API does
    expect(list.items[0]!.kind).toBeUndefined();

    const missing = await apiError(core.readNamespacedSecret({ name: "nope", namespace: ns }));
    expect(missing.code).toBe(404);
    expect(missing.status as unknown).toEqual({
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: 'secrets "nope" not found',
      reason: "NotFound",
      code: 404,
      details: { name: "nope", kind: "secrets" },
    });
    const leaseMissing = await apiError(coord.readNamespacedLease({ name: "nope", namespace: ns }));
    expect(leaseMissing.status.message).toBe('leases.coordination.k8s.io "nope" not found');
    expect(leaseMissing.status.details).toEqual({ name: "nope", group: "coordination.k8s.io", kind: "leases" });
  });

  test("body kind/apiVersion must match the path (400)", async () => {
    const ns = await freshNamespace();
    const res = await fetch(`${srv.url}/api/v1/namespaces/${ns}/secrets`, {
      method: "POST",
      tls: { ca: srv.ca },
      headers: { authorization: "Bearer t", "content-type": "application/json" },
      body: JSON.stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "x" } }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { reason: string }).reason).toBe("BadRequest");
    const wrongGroup = await fetch(`${srv.url}/apis/apps/v1/namespaces/${ns}/deployments`, {
      method: "POST",
      tls: { ca: srv.ca },
      headers: { authorization: "Bearer t", "content-type": "application/json" },
      body: JSON.stringify({ apiVersion: "extensions/v1beta1", kind: "Deployment", metadata: { name: "x" } }),
    });
    expect(wrongGroup.status).toBe(400);
    expect(srv.get("ConfigMap", ns, "x")).toBeUndefined();
  });

  test("update: stale resourceVersion is 409 Conflict, unconditional update works, uid/creationTimestamp kept, no-op keeps RV", async () => {
    const ns = await freshNamespace();
    const s = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "s" }, stringData: { a: "1" } } });
    const rv1 = s.metadata!.resourceVersion!;
    const updated = await core.replaceNamespacedSecret({
      name: "s",
      namespace: ns,
      body: { metadata: { name: "s", resourceVersion: rv1 }, data: { a: Buffer.from("2").toString("base64") } },
    });
    expect(Number(updated.metadata?.resourceVersion)).toBeGreaterThan(Number(rv1));
    expect(updated.metadata?.uid).toBe(s.metadata?.uid);
    expect(updated.metadata?.creationTimestamp?.getTime()).toBe(s.metadata?.creationTimestamp?.getTime());

    const stale = await apiError(
      core.replaceNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { name: "s", resourceVersion: rv1 }, data: {} } }),
    );
    expect(stale.code).toBe(409);
    expect(stale.status.reason).toBe("Conflict");
    expect(stale.status.message).toBe(
      'Operation cannot be fulfilled on secrets "s": the object has been modified; please apply your changes to the latest version and try again',
    );

    const unconditional = await core.replaceNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { name: "s" }, data: { b: "Yg==" } } });
    expect(unconditional.data).toEqual({ b: "Yg==" });

    const same = await core.replaceNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { name: "s" }, data: { b: "Yg==" } } });
    expect(same.metadata?.resourceVersion).toBe(unconditional.metadata?.resourceVersion);

    const renamed = await apiError(core.replaceNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { name: "other" } } }));
    expect(renamed.code).toBe(400);
    const missing = await apiError(core.replaceNamespacedSecret({ name: "ghost", namespace: ns, body: { metadata: { name: "ghost" } } }));
    expect(missing.code).toBe(404);
  });

  test("two clients racing an update of a Lease on the same resourceVersion: exactly one 200 and one 409", async () => {
    const ns = await freshNamespace();
    await coord.createNamespacedLease({
      namespace: ns,
      body: { metadata: { name: "kloak-leader" }, spec: { holderIdentity: "nobody", leaseDurationSeconds: 15 } },
    });
    const a = srv.kubeConfig().makeApiClient(k8s.CoordinationV1Api);
    const b = srv.kubeConfig().makeApiClient(k8s.CoordinationV1Api);
    const [la, lb] = await Promise.all([
      a.readNamespacedLease({ name: "kloak-leader", namespace: ns }),
      b.readNamespacedLease({ name: "kloak-leader", namespace: ns }),
    ]);
    expect(la.metadata?.resourceVersion).toBe(lb.metadata!.resourceVersion!);
    la.spec!.holderIdentity = "node-a";
    lb.spec!.holderIdentity = "node-b";
    const results = await Promise.allSettled([
      a.replaceNamespacedLease({ name: "kloak-leader", namespace: ns, body: la }),
      b.replaceNamespacedLease({ name: "kloak-leader", namespace: ns, body: lb }),
    ]);
    const ok = results.filter((r) => r.status === "fulfilled") as PromiseFulfilledResult<k8s.V1Lease>[];
    const failed = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.reason).toBeInstanceOf(k8s.ApiException);
    expect((failed[0]!.reason as k8s.ApiException<string>).code).toBe(409);
    const winner = ok[0]!.value.spec!.holderIdentity;
    expect(srv.get("Lease", ns, "kloak-leader")?.spec).toMatchObject({ holderIdentity: winner });
  });

  test("direct API: copies, KubeApiError, conflict check only when resourceVersion is set, delete returns boolean", async () => {
    const ns = await freshNamespace();
    const s = srv.create(secret(ns, "direct"));
    expect(s.metadata.uid).toBeDefined();
    expect(s.kind).toBe("Secret");
    s.metadata.labels = { mutated: "yes" };
    expect(srv.get("Secret", ns, "direct")?.metadata.labels).toEqual({});
    expect(() => srv.create(secret(ns, "direct"))).toThrow(expect.objectContaining({ code: 409, reason: "AlreadyExists" }));
    const cur = srv.get("Secret", ns, "direct")!;
    const u = srv.update({ ...cur, metadata: { ...cur.metadata, labels: { x: "1" } } });
    expect(Number(u.metadata.resourceVersion)).toBeGreaterThan(Number(cur.metadata.resourceVersion));
    expect(() => srv.update(cur)).toThrow(expect.objectContaining({ code: 409, reason: "Conflict" }));
    const { resourceVersion: _rv, ...noRv } = cur.metadata;
    expect(srv.update({ ...cur, metadata: noRv }).metadata.labels).toEqual({});
    expect(srv.list("Secret", ns).map((o) => o.metadata.name)).toEqual(["direct"]);
    expect(srv.list("Secret").some((o) => o.metadata.namespace === ns)).toBe(true);
    expect(srv.delete("Secret", ns, "direct")).toBe(true);
    expect(srv.delete("Secret", ns, "direct")).toBe(false);
    expect(() => srv.get("Gadget", ns, "x")).toThrow(/unknown kind/);
  });
});

describe("patch", () => {
  test("JSON patch is client-node's default content type; failing test op and missing path are 422", async () => {
    const ns = await freshNamespace();
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "p", labels: { a: "1" } } } });
    const before = srv.requests.length;
    const patched = await core.patchNamespacedSecret({
      name: "p",
      namespace: ns,
      body: [
        { op: "test", path: "/metadata/labels/a", value: "1" },
        { op: "add", path: "/metadata/labels/b", value: "2" },
      ],
    });
    expect(patched.metadata?.labels).toEqual({ a: "1", b: "2" });
    const req = srv.requests.slice(before).find((r) => r.method === "PATCH");
    expect(req?.contentType).toBe("application/json-patch+json");
    expect(req?.path).toBe(`/api/v1/namespaces/${ns}/secrets/p`);

    const failedTest = await apiError(
      core.patchNamespacedSecret({ name: "p", namespace: ns, body: [{ op: "test", path: "/metadata/labels/a", value: "nope" }] }),
    );
    expect(failedTest.code).toBe(422);
    expect(failedTest.status.reason).toBe("Invalid");
    const missingPath = await apiError(
      core.patchNamespacedSecret({ name: "p", namespace: ns, body: [{ op: "replace", path: "/data/absent", value: "eA==" }] }),
    );
    expect(missingPath.code).toBe(422);
    const removeMissing = await apiError(
      core.patchNamespacedSecret({ name: "p", namespace: ns, body: [{ op: "remove", path: "/metadata/annotations/x" }] }),
    );
    expect(removeMissing.code).toBe(422);
    expect(srv.get("Secret", ns, "p")?.metadata.labels).toEqual({ a: "1", b: "2" });
  });

  test("merge and strategic-merge patch via setHeaderOptions; apply-patch is 415", async () => {
    const ns = await freshNamespace();
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: "cm", labels: { keep: "1", drop: "1" } }, data: { a: "1" } } });
    const before = srv.requests.length;
    const merged = await core.patchNamespacedConfigMap(
      { name: "cm", namespace: ns, body: { metadata: { labels: { drop: null, added: "1" } }, data: { b: "2" } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    expect(merged.metadata?.labels).toEqual({ keep: "1", added: "1" });
    expect(merged.data).toEqual({ a: "1", b: "2" });
    const smp = await core.patchNamespacedConfigMap(
      { name: "cm", namespace: ns, body: { data: { c: "3" } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.StrategicMergePatch),
    );
    expect(smp.data).toEqual({ a: "1", b: "2", c: "3" });
    expect(srv.requests.slice(before).filter((r) => r.method === "PATCH").map((r) => r.contentType)).toEqual([
      "application/merge-patch+json",
      "application/strategic-merge-patch+json",
    ]);
    const apply = await apiError(
      core.patchNamespacedConfigMap(
        { name: "cm", namespace: ns, body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "cm" } }, fieldManager: "kloak" },
        k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.ServerSideApply),
      ),
    );
    expect(apply.code).toBe(415);
    const missing = await apiError(
      core.patchNamespacedConfigMap({ name: "ghost", namespace: ns, body: [{ op: "add", path: "/data/x", value: "1" }] }),
    );
    expect(missing.code).toBe(404);
  });

  test("a patch carrying metadata.resourceVersion is a precondition (409 when stale)", async () => {
    const ns = await freshNamespace();
    const s = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "s" } } });
    const rv = s.metadata!.resourceVersion!;
    const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
    const ok = await core.patchNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { resourceVersion: rv, labels: { a: "1" } } } }, merge);
    expect(ok.metadata?.labels).toEqual({ a: "1" });
    const stale = await apiError(
      core.patchNamespacedSecret({ name: "s", namespace: ns, body: { metadata: { resourceVersion: rv, labels: { a: "2" } } } }, merge),
    );
    expect(stale.code).toBe(409);
    expect(stale.status.reason).toBe("Conflict");
    const staleJson = await apiError(
      core.patchNamespacedSecret({
        name: "s",
        namespace: ns,
        body: [
          { op: "replace", path: "/metadata/resourceVersion", value: rv },
          { op: "replace", path: "/metadata/labels/a", value: "3" },
        ],
      }),
    );
    expect(staleJson.code).toBe(409);
    expect(srv.get("Secret", ns, "s")?.metadata.labels).toEqual({ a: "1" });
  });

  test("every served type: create, read, list, patch, delete through the typed clients", async () => {
    const ns = await freshNamespace();
    const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
    const labelPatch = { metadata: { labels: { patched: "yes" } } };
    const podSpec = { containers: [{ name: "c", image: "busybox" }] };
    const selector = { matchLabels: { app: "x" } };
    const template = { metadata: { labels: { app: "x" } }, spec: podSpec };
    type Ops = {
      kind: string;
      namespaced: boolean;
      create: (name: string) => Promise<{ metadata?: k8s.V1ObjectMeta }>;
      read: (name: string) => Promise<{ metadata?: k8s.V1ObjectMeta }>;
      list: () => Promise<{ items: { metadata?: k8s.V1ObjectMeta }[] }>;
      patch: (name: string) => Promise<{ metadata?: k8s.V1ObjectMeta }>;
      del: (name: string) => Promise<unknown>;
    };
    const n = (name: string) => ({ name, namespace: ns });
    const table: Ops[] = [
      {
        kind: "Pod",
        namespaced: true,
        create: (name) => core.createNamespacedPod({ namespace: ns, body: { metadata: { name }, spec: podSpec } }),
        read: (name) => core.readNamespacedPod(n(name)),
        list: () => core.listNamespacedPod({ namespace: ns }),
        patch: (name) => core.patchNamespacedPod({ ...n(name), body: labelPatch }, merge),
        del: (name) => core.deleteNamespacedPod(n(name)),
      },
      {
        kind: "Service",
        namespaced: true,
        create: (name) => core.createNamespacedService({ namespace: ns, body: { metadata: { name }, spec: { ports: [{ port: 443 }] } } }),
        read: (name) => core.readNamespacedService(n(name)),
        list: () => core.listNamespacedService({ namespace: ns }),
        patch: (name) => core.patchNamespacedService({ ...n(name), body: labelPatch }, merge),
        del: (name) => core.deleteNamespacedService(n(name)),
      },
      {
        kind: "ConfigMap",
        namespaced: true,
        create: (name) => core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name }, data: { a: "b" } } }),
        read: (name) => core.readNamespacedConfigMap(n(name)),
        list: () => core.listNamespacedConfigMap({ namespace: ns }),
        patch: (name) => core.patchNamespacedConfigMap({ ...n(name), body: labelPatch }, merge),
        del: (name) => core.deleteNamespacedConfigMap(n(name)),
      },
      {
        kind: "Secret",
        namespaced: true,
        create: (name) => core.createNamespacedSecret({ namespace: ns, body: { metadata: { name } } }),
        read: (name) => core.readNamespacedSecret(n(name)),
        list: () => core.listNamespacedSecret({ namespace: ns }),
        patch: (name) => core.patchNamespacedSecret({ ...n(name), body: labelPatch }, merge),
        del: (name) => core.deleteNamespacedSecret(n(name)),
      },
      {
        kind: "Event",
        namespaced: true,
        create: (name) =>
          core.createNamespacedEvent({
            namespace: ns,
            body: { metadata: { name }, involvedObject: { kind: "Pod", name: "p", namespace: ns }, reason: "R", message: "m", count: 1 },
          }),
        read: (name) => core.readNamespacedEvent(n(name)),
        list: () => core.listNamespacedEvent({ namespace: ns }),
        patch: (name) => core.patchNamespacedEvent({ ...n(name), body: labelPatch }, merge),
        del: (name) => core.deleteNamespacedEvent(n(name)),
      },
      {
        kind: "ReplicaSet",
        namespaced: true,
        create: (name) => apps.createNamespacedReplicaSet({ namespace: ns, body: { metadata: { name }, spec: { selector, template } } }),
        read: (name) => apps.readNamespacedReplicaSet(n(name)),
        list: () => apps.listNamespacedReplicaSet({ namespace: ns }),
        patch: (name) => apps.patchNamespacedReplicaSet({ ...n(name), body: labelPatch }, merge),
        del: (name) => apps.deleteNamespacedReplicaSet(n(name)),
      },
      {
        kind: "Deployment",
        namespaced: true,
        create: (name) => apps.createNamespacedDeployment({ namespace: ns, body: { metadata: { name }, spec: { selector, template } } }),
        read: (name) => apps.readNamespacedDeployment(n(name)),
        list: () => apps.listNamespacedDeployment({ namespace: ns }),
        patch: (name) => apps.patchNamespacedDeployment({ ...n(name), body: labelPatch }, merge),
        del: (name) => apps.deleteNamespacedDeployment(n(name)),
      },
      {
        kind: "StatefulSet",
        namespaced: true,
        create: (name) =>
          apps.createNamespacedStatefulSet({ namespace: ns, body: { metadata: { name }, spec: { selector, template, serviceName: "s" } } }),
        read: (name) => apps.readNamespacedStatefulSet(n(name)),
        list: () => apps.listNamespacedStatefulSet({ namespace: ns }),
        patch: (name) => apps.patchNamespacedStatefulSet({ ...n(name), body: labelPatch }, merge),
        del: (name) => apps.deleteNamespacedStatefulSet(n(name)),
      },
      {
        kind: "DaemonSet",
        namespaced: true,
        create: (name) => apps.createNamespacedDaemonSet({ namespace: ns, body: { metadata: { name }, spec: { selector, template } } }),
        read: (name) => apps.readNamespacedDaemonSet(n(name)),
        list: () => apps.listNamespacedDaemonSet({ namespace: ns }),
        patch: (name) => apps.patchNamespacedDaemonSet({ ...n(name), body: labelPatch }, merge),
        del: (name) => apps.deleteNamespacedDaemonSet(n(name)),
      },
      {
        kind: "Lease",
        namespaced: true,
        create: (name) => coord.createNamespacedLease({ namespace: ns, body: { metadata: { name }, spec: { holderIdentity: "h" } } }),
        read: (name) => coord.readNamespacedLease(n(name)),
        list: () => coord.listNamespacedLease({ namespace: ns }),
        patch: (name) => coord.patchNamespacedLease({ ...n(name), body: labelPatch }, merge),
        del: (name) => coord.deleteNamespacedLease(n(name)),
      },
      {
        kind: "Event.events.k8s.io",
        namespaced: true,
        create: (name) =>
          eventsApi.createNamespacedEvent({
            namespace: ns,
            body: { metadata: { name }, eventTime: new Date(), reason: "R", action: "A", reportingController: "kloak", reportingInstance: "i" },
          }),
        read: (name) => eventsApi.readNamespacedEvent(n(name)),
        list: () => eventsApi.listNamespacedEvent({ namespace: ns }),
        patch: (name) => eventsApi.patchNamespacedEvent({ ...n(name), body: labelPatch }, merge),
        del: (name) => eventsApi.deleteNamespacedEvent(n(name)),
      },
      {
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        create: (name) => admission.createMutatingWebhookConfiguration({ body: { metadata: { name } } }),
        read: (name) => admission.readMutatingWebhookConfiguration({ name }),
        list: () => admission.listMutatingWebhookConfiguration(),
        patch: (name) => admission.patchMutatingWebhookConfiguration({ name, body: labelPatch }, merge),
        del: (name) => admission.deleteMutatingWebhookConfiguration({ name }),
      },
      {
        kind: "ValidatingWebhookConfiguration",
        namespaced: false,
        create: (name) => admission.createValidatingWebhookConfiguration({ body: { metadata: { name } } }),
        read: (name) => admission.readValidatingWebhookConfiguration({ name }),
        list: () => admission.listValidatingWebhookConfiguration(),
        patch: (name) => admission.patchValidatingWebhookConfiguration({ name, body: labelPatch }, merge),
        del: (name) => admission.deleteValidatingWebhookConfiguration({ name }),
      },
    ];
    for (const t of table) {
      const name = `obj-${ns}`;
      const created = await t.create(name);
      expect(created.metadata?.name).toBe(name);
      expect(created.metadata?.namespace).toBe(t.namespaced ? ns : undefined);
      expect((await t.read(name)).metadata?.uid).toBe(created.metadata!.uid!);
      expect((await t.list()).items.map((i) => i.metadata?.name)).toContain(name);
      const patched = await t.patch(name);
      expect(patched.metadata?.labels).toEqual({ patched: "yes" });
      expect(srv.get(t.kind, t.namespaced ? ns : undefined, name)?.metadata.labels).toEqual({ patched: "yes" });
      await t.del(name);
      expect(srv.get(t.kind, t.namespaced ? ns : undefined, name)).toBeUndefined();
      const err = await apiError(t.read(name));
      expect(err.code).toBe(404);
    }
  });

  test("pods/status: PUT and PATCH change only status; the main resource ignores status", async () => {
    const ns = await freshNamespace();
    const created = await core.createNamespacedPod({ namespace: ns, body: { ...pod(ns, "p"), status: { phase: "Running" } } });
    expect(created.status?.phase).toBe("Pending"); // create resets status
    const cur = await core.readNamespacedPod({ name: "p", namespace: ns });
    cur.status = { phase: "Running", podIP: "10.0.0.7" };
    cur.metadata!.labels = { sneaky: "1" };
    const st = await core.replaceNamespacedPodStatus({ name: "p", namespace: ns, body: cur });
    expect(st.status).toMatchObject({ phase: "Running", podIP: "10.0.0.7" });
    expect(st.metadata?.labels).toEqual({});
    const patched = await core.patchNamespacedPodStatus(
      { name: "p", namespace: ns, body: { status: { phase: "Succeeded" } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    expect(patched.status?.phase).toBe("Succeeded");
    const main = await core.patchNamespacedPod(
      { name: "p", namespace: ns, body: { metadata: { labels: { a: "1" } }, status: { phase: "Failed" } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    expect(main.metadata?.labels).toEqual({ a: "1" });
    expect(main.status?.phase).toBe("Succeeded");
    // direct update (test setup) may write status
    const direct = srv.get("Pod", ns, "p")!;
    srv.update({ ...direct, status: { phase: "Running" } });
    expect(srv.get("Pod", ns, "p")?.status).toEqual({ phase: "Running" });
  });
});

describe("delete and garbage collection", () => {
  function owner(o: KubeObject) {
    return { apiVersion: o.apiVersion, kind: o.kind, name: o.metadata.name!, uid: o.metadata.uid!, controller: true, blockOwnerDeletion: true };
  }

  test("deleting an owner deletes its dependents recursively; watchers see the deletions", async () => {
    const ns = await freshNamespace();
    const deploy = srv.create({ apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "d", namespace: ns }, spec: {} });
    const rs = srv.create({ apiVersion: "apps/v1", kind: "ReplicaSet", metadata: { name: "d-1", namespace: ns, ownerReferences: [owner(deploy)] }, spec: {} });
    const p1 = srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "d-1-a", namespace: ns, ownerReferences: [owner(rs)] }, spec: {} });
    srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "d-1-b", namespace: ns, ownerReferences: [owner(rs)] }, spec: {} });
    srv.create({ apiVersion: "v1", kind: "Secret", metadata: { name: "owned-by-pod", namespace: ns, ownerReferences: [owner(p1)] } });
    srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "unrelated", namespace: ns }, spec: {} });
    const w = await startWatch(`/api/v1/namespaces/${ns}/pods`, { resourceVersion: srv.resourceVersion() });

    const deleted = await apps.deleteNamespacedDeploymentWithHttpInfo({ name: "d", namespace: ns });
    expect(deleted.httpStatusCode).toBe(200);
    expect(srv.get("Deployment", ns, "d")).toBeUndefined();
    expect(srv.get("ReplicaSet", ns, "d-1")).toBeUndefined();
    expect(srv.list("Pod", ns).map((p) => p.metadata.name)).toEqual(["unrelated"]);
    expect(srv.get("Secret", ns, "owned-by-pod")).toBeUndefined();
    await waitFor("two DELETED pod events", () => w.events.length >= 2);
    expect(w.events.map((e) => `${e.type} ${e.object.metadata.name}`).sort()).toEqual(["DELETED d-1-a", "DELETED d-1-b"]);
    w.abort();

    const again = await apiError(apps.deleteNamespacedDeployment({ name: "d", namespace: ns }));
    expect(again.code).toBe(404);
  }, 15_000);

  test("propagationPolicy=Orphan keeps dependents and strips the owner reference; a second live owner keeps a dependent alive", async () => {
    const ns = await freshNamespace();
    const rs = srv.create({ apiVersion: "apps/v1", kind: "ReplicaSet", metadata: { name: "rs", namespace: ns }, spec: {} });
    const other = srv.create({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "other-owner", namespace: ns } });
    srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "orphan", namespace: ns, ownerReferences: [owner(rs)] }, spec: {} });
    await apps.deleteNamespacedReplicaSet({ name: "rs", namespace: ns, propagationPolicy: "Orphan" });
    expect(srv.get("ReplicaSet", ns, "rs")).toBeUndefined();
    const orphan = srv.get("Pod", ns, "orphan");
    expect(orphan).toBeDefined();
    expect(orphan?.metadata.ownerReferences).toBeUndefined();
    expect(srv.requests.at(-1)?.query).toContain("propagationPolicy=Orphan");

    const rs2 = srv.create({ apiVersion: "apps/v1", kind: "ReplicaSet", metadata: { name: "rs2", namespace: ns }, spec: {} });
    srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "shared", namespace: ns, ownerReferences: [owner(rs2), owner(other)] }, spec: {} });
    expect(srv.delete("ReplicaSet", ns, "rs2")).toBe(true);
    const shared = srv.get("Pod", ns, "shared");
    expect(shared?.metadata.ownerReferences?.map((r) => r.name)).toEqual(["other-owner"]);
    await core.deleteNamespacedConfigMap({ name: "other-owner", namespace: ns });
    expect(srv.get("Pod", ns, "shared")).toBeUndefined();
  });

  test("delete preconditions and namespace deletion", async () => {
    const ns = await freshNamespace();
    const s = srv.create(secret(ns, "s"));
    const wrongUid = await apiError(core.deleteNamespacedSecret({ name: "s", namespace: ns, body: { preconditions: { uid: "not-it" } } }));
    expect(wrongUid.code).toBe(409);
    const staleRv = await apiError(
      core.deleteNamespacedSecret({ name: "s", namespace: ns, body: { preconditions: { resourceVersion: "1" } } }),
    );
    expect(staleRv.code).toBe(409);
    expect(srv.get("Secret", ns, "s")).toBeDefined();
    await core.deleteNamespacedSecret({ name: "s", namespace: ns, body: { preconditions: { uid: s.metadata.uid! } } });
    expect(srv.get("Secret", ns, "s")).toBeUndefined();

    srv.create(secret(ns, "inside"));
    srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "p", namespace: ns }, spec: {} });
    await core.deleteNamespace({ name: ns });
    expect(srv.list("Secret", ns)).toEqual([]);
    expect(srv.list("Pod", ns)).toEqual([]);
    expect((await apiError(core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "late" } } }))).code).toBe(404);
  });
});

describe("selectors", () => {
  test("label selectors: =, ==, !=, in, notin, exists, !exists, AND; malformed is 400", async () => {
    const ns = await freshNamespace();
    srv.create(secret(ns, "a", { app: "web", tier: "front" }));
    srv.create(secret(ns, "b", { app: "web", tier: "back" }));
    srv.create(secret(ns, "c", { app: "db" }));
    srv.create(secret(ns, "d", {}));
    const names = async (labelSelector: string) =>
      (await core.listNamespacedSecret({ namespace: ns, labelSelector })).items.map((s) => s.metadata?.name).sort();
    expect(await names("app=web")).toEqual(["a", "b"]);
    expect(await names("app==db")).toEqual(["c"]);
    expect(await names("app!=web")).toEqual(["c", "d"]); // != matches objects without the label
    expect(await names("tier in (front,back)")).toEqual(["a", "b"]);
    expect(await names("app notin (web)")).toEqual(["c", "d"]);
    expect(await names("tier")).toEqual(["a", "b"]);
    expect(await names("!tier")).toEqual(["c", "d"]);
    expect(await names("app=web,tier!=back")).toEqual(["a"]);
    expect(await names("app in (web, db),!tier")).toEqual(["c"]);
    const bad = await apiError(core.listNamespacedSecret({ namespace: ns, labelSelector: "app=(oops" }));
    expect(bad.code).toBe(400);
  });

  test("field selectors: metadata.name, metadata.namespace, type, spec.nodeName (also across namespaces); unsupported is 400", async () => {
    const ns1 = await freshNamespace();
    const ns2 = await freshNamespace();
    srv.create(secret(ns1, "tls", {}, "kubernetes.io/tls"));
    srv.create(secret(ns1, "plain", {}, "Opaque"));
    srv.create(secret(ns2, "plain", {}, "Opaque"));
    await core.createNamespacedPod({ namespace: ns1, body: pod(ns1, "on-a", "node-a") });
    await core.createNamespacedPod({ namespace: ns2, body: pod(ns2, "on-a-too", "node-a") });
    await core.createNamespacedPod({ namespace: ns2, body: pod(ns2, "on-b", "node-b") });
    await core.createNamespacedPod({ namespace: ns2, body: pod(ns2, "pending") });

    const sec = async (fieldSelector: string) =>
      (await core.listNamespacedSecret({ namespace: ns1, fieldSelector })).items.map((s) => s.metadata?.name).sort();
    expect(await sec("type=kubernetes.io/tls")).toEqual(["tls"]);
    expect(await sec("type!=kubernetes.io/tls")).toEqual(["plain"]);
    expect(await sec("metadata.name==plain")).toEqual(["plain"]);
    expect(await sec(`metadata.namespace=${ns1},type=Opaque`)).toEqual(["plain"]);

    const all = (await core.listPodForAllNamespaces({ fieldSelector: "spec.nodeName=node-a" })).items;
    expect(all.map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`).sort()).toEqual([`${ns1}/on-a`, `${ns2}/on-a-too`]);
    const unscheduled = (await core.listNamespacedPod({ namespace: ns2, fieldSelector: "spec.nodeName=" })).items;
    expect(unscheduled.map((p) => p.metadata?.name)).toEqual(["pending"]);
    const allSecrets = (await core.listSecretForAllNamespaces({ fieldSelector: "metadata.name=plain" })).items;
    expect(allSecrets.map((s) => s.metadata?.namespace).sort()).toEqual([ns1, ns2].sort());

    const bad = await apiError(core.listNamespacedPod({ namespace: ns1, fieldSelector: "spec.containers=x" }));
    expect(bad.code).toBe(400);
    expect(bad.status.message).toContain("field label not supported: spec.containers");
    const badSecret = await apiError(core.listNamespacedSecret({ namespace: ns1, fieldSelector: "spec.nodeName=x" }));
    expect(badSecret.code).toBe(400);
  });
});

describe("watch", () => {
  test("resourceVersion=N replays exactly the changes after N, then streams live; RV 0 starts with ADDED", async () => {
    const ns = await freshNamespace();
    srv.create(secret(ns, "before"));
    const rv0 = srv.resourceVersion();
    const a = srv.create(secret(ns, "a"));
    srv.update({ ...a, metadata: { ...a.metadata, labels: { v: "2" } } });
    srv.delete("Secret", ns, "before");
    srv.create(secret("default-missing" === ns ? ns : ns, "b"));

    const w = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: rv0 });
    await waitFor("4 replayed events", () => w.events.length >= 4);
    expect(w.events.map((e) => `${e.type} ${e.object.metadata.name}`)).toEqual(["ADDED a", "MODIFIED a", "DELETED before", "ADDED b"]);
    const rvs = w.events.map((e) => Number(e.object.metadata.resourceVersion));
    expect(rvs).toEqual([...rvs].sort((x, y) => x - y));
    expect(w.events[0]!.object.kind).toBe("Secret");
    expect(w.events[0]!.object.apiVersion).toBe("v1");

    srv.create(secret(ns, "live"));
    await waitFor("live event", () => w.events.length >= 5);
    expect(w.events[4]).toMatchObject({ type: "ADDED", object: { metadata: { name: "live" } } });
    w.abort();

    const fromZero = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: "0" });
    await waitFor("initial ADDED", () => fromZero.events.length >= 3);
    expect(fromZero.events.map((e) => `${e.type} ${e.object.metadata.name}`)).toEqual(["ADDED a", "ADDED b", "ADDED live"]);
    fromZero.abort();
    await waitFor("server-side watch closed", () => !srv.openWatches().some((w) => w.namespace === ns));
  }, 15_000);

  test("a label-selected watch sees an object that stops matching as DELETED and one that starts matching as ADDED", async () => {
    const ns = await freshNamespace();
    const s = srv.create(secret(ns, "s", { sel: "yes" }));
    const w = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: srv.resourceVersion(), labelSelector: "sel=yes" });
    await waitFor("watch open", () => srv.openWatches().length > 0);
    const off = srv.update({ ...s, metadata: { ...s.metadata, resourceVersion: undefined, labels: { sel: "no" } } });
    const back = srv.update({ ...off, metadata: { ...off.metadata, resourceVersion: undefined, labels: { sel: "yes" } } });
    srv.create(secret(ns, "never", { sel: "no" }));
    await waitFor("2 events", () => w.events.length >= 2);
    await Bun.sleep(50);
    expect(w.events.map((e) => e.type)).toEqual(["DELETED", "ADDED"]);
    expect(w.events[0]!.object.metadata.resourceVersion).toBe(off.metadata.resourceVersion!);
    expect(w.events[1]!.object.metadata.resourceVersion).toBe(back.metadata.resourceVersion!);
    w.abort();
  }, 15_000);

  test("all-namespaces watch and field-selected watch (pods on one node)", async () => {
    const ns1 = await freshNamespace();
    const ns2 = await freshNamespace();
    const w = await startWatch("/api/v1/pods", { resourceVersion: srv.resourceVersion(), fieldSelector: "spec.nodeName=node-x" });
    const rsWatch = await startWatch("/apis/apps/v1/replicasets", { resourceVersion: srv.resourceVersion() });
    await core.createNamespacedPod({ namespace: ns1, body: pod(ns1, "mine", "node-x") });
    await core.createNamespacedPod({ namespace: ns2, body: pod(ns2, "also-mine", "node-x") });
    await core.createNamespacedPod({ namespace: ns2, body: pod(ns2, "not-mine", "node-y") });
    srv.create({ apiVersion: "apps/v1", kind: "ReplicaSet", metadata: { name: "rs", namespace: ns2 }, spec: {} });
    await waitFor("pod events", () => w.events.length >= 2 && rsWatch.events.length >= 1);
    await Bun.sleep(50);
    expect(w.events.map((e) => `${e.object.metadata.namespace}/${e.object.metadata.name}`)).toEqual([`${ns1}/mine`, `${ns2}/also-mine`]);
    expect(rsWatch.events.map((e) => e.object.metadata.name)).toEqual(["rs"]);
    w.abort();
    rsWatch.abort();
  }, 15_000);

  test("bookmarks arrive only with allowWatchBookmarks=true and carry the current resourceVersion", async () => {
    const ns = await freshNamespace();
    const withBm = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: srv.resourceVersion(), allowWatchBookmarks: true });
    const without = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: srv.resourceVersion() });
    await waitFor("first bookmark", () => withBm.events.some((e) => e.type === "BOOKMARK"), 3000);
    srv.create(secret(ns, "x"));
    const rv = srv.resourceVersion();
    await waitFor("bookmark after write", () => withBm.events.some((e) => e.type === "BOOKMARK" && e.object.metadata.resourceVersion === rv), 3000);
    const bm = withBm.events.find((e) => e.type === "BOOKMARK")!;
    expect(bm.object).toMatchObject({ kind: "Secret", apiVersion: "v1" });
    expect(Object.keys(bm.object.metadata)).toEqual(["resourceVersion"]);
    expect(without.events.map((e) => e.type)).toEqual(["ADDED"]);
    withBm.abort();
    without.abort();
  }, 10_000);

  test("timeoutSeconds ends the stream cleanly", async () => {
    const ns = await freshNamespace();
    const started = Date.now();
    const w = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: srv.resourceVersion(), timeoutSeconds: 1 });
    await waitFor("stream end", w.done, 4000);
    expect(w.doneErr()).toBeNull();
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  }, 10_000);

  test("after compact() a watch from an older resourceVersion gets one ERROR 410 Expired and ends", async () => {
    const ns = await freshNamespace();
    const old = srv.resourceVersion();
    srv.create(secret(ns, "x"));
    srv.compact();
    const current = srv.resourceVersion();
    const w = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: old });
    await waitFor("stream end", w.done);
    expect(w.doneErr()).toBeNull();
    expect(w.events).toHaveLength(1);
    expect(w.events[0]!.type).toBe("ERROR");
    expect(w.events[0]!.object).toMatchObject({ kind: "Status", code: 410, reason: "Expired", message: `too old resource version: ${old} (${current})` });
    // from the compaction point itself: fine
    const ok = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: current });
    srv.create(secret(ns, "y"));
    await waitFor("event after compaction point", () => ok.events.length >= 1);
    expect(ok.events[0]).toMatchObject({ type: "ADDED", object: { metadata: { name: "y" } } });
    ok.abort();
  }, 10_000);
});

describe("informers", () => {
  /** An informer restarted on error the way a controller must do it with client-node 1.4.0. */
  function restartingInformer(path: string, listFn: () => Promise<k8s.KubernetesListObject<k8s.V1Secret>>) {
    const inf = k8s.makeInformer(kc, path, listFn);
    const seen: string[] = [];
    const errors: unknown[] = [];
    let stopping = false;
    inf.on("add", (o) => seen.push(`add ${o.metadata?.name}`));
    inf.on("update", (o) => seen.push(`update ${o.metadata?.name} ${o.metadata?.labels?.v ?? ""}`.trim()));
    inf.on("delete", (o) => seen.push(`delete ${o.metadata?.name}`));
    inf.on("error", (err) => {
      errors.push(err);
      if (!stopping) setTimeout(() => void inf.start(), 100);
    });
    return {
      inf,
      seen,
      errors,
      stop: async () => {
        stopping = true;
        await inf.stop();
      },
    };
  }

  test("informer sees add/update/delete, and recovers after pause()/resume() with the missed events", async () => {
    const ns = await freshNamespace();
    srv.create(secret(ns, "pre"));
    const path = `/api/v1/namespaces/${ns}/secrets`;
    const h = restartingInformer(path, () => core.listNamespacedSecret({ namespace: ns }));
    await h.inf.start();
    await waitFor("initial add", () => h.seen.includes("add pre"));
    await waitFor("watch open", () => srv.openWatches().some((w) => w.namespace === ns));

    const s = srv.create(secret(ns, "s"));
    srv.update({ ...s, metadata: { ...s.metadata, resourceVersion: undefined, labels: { v: "2" } } });
    srv.delete("Secret", ns, "pre");
    await waitFor("live events", () => h.seen.length >= 4);
    expect(h.seen).toEqual(["add pre", "add s", "update s 2", "delete pre"]);

    const firstWatch = srv.requests.filter((r) => r.path === path && r.query.includes("watch=true")).length;
    srv.pause();
    await waitFor("informer error on reset", () => h.errors.length >= 1);
    expect(srv.openWatches().some((w) => w.namespace === ns)).toBe(false);
    // changes while the informer is disconnected
    srv.create(secret(ns, "while-paused"));
    srv.update({ ...srv.get("Secret", ns, "s")!, metadata: { ...srv.get("Secret", ns, "s")!.metadata, labels: { v: "3" } } });
    await Bun.sleep(300); // a few failed restarts (503)
    expect(srv.requests.at(-1)).toBeDefined();
    srv.resume();
    await waitFor("missed events", () => h.seen.includes("add while-paused") && h.seen.includes("update s 3"), 5000);
    expect(h.seen.slice(4)).toEqual(["add while-paused", "update s 3"]);
    // it resumed the watch from its last resourceVersion (no relist was needed)
    const rewatch = srv.requests.filter((r) => r.path === path && r.query.includes("watch=true"));
    expect(rewatch.length).toBeGreaterThan(firstWatch);
    expect(rewatch.at(-1)!.query).toMatch(/resourceVersion=\d+/);
    expect(h.inf.list().map((o) => o.metadata?.name).sort()).toEqual(["s", "while-paused"]);

    const errorsBeforeStop = h.errors.length;
    await h.stop();
    // client-node reports its own stop() through the error callback (AbortError)
    await waitFor("AbortError after stop()", () => h.errors.slice(errorsBeforeStop).some((e) => String(e).includes("AbortError")));
    await waitFor("watch closed", () => !srv.openWatches().some((w) => w.namespace === ns));
  }, 30_000);

  test("informer relists after 410 Gone (compaction while disconnected) and converges", async () => {
    const ns = await freshNamespace();
    srv.create(secret(ns, "keep"));
    srv.create(secret(ns, "doomed"));
    const h = restartingInformer(`/api/v1/namespaces/${ns}/secrets`, () => core.listNamespacedSecret({ namespace: ns }));
    await h.inf.start();
    await waitFor("initial adds", () => h.seen.length >= 2);
    await waitFor("watch open", () => srv.openWatches().some((w) => w.namespace === ns));
    srv.pause();
    await waitFor("error", () => h.errors.length >= 1);
    srv.delete("Secret", ns, "doomed");
    srv.create(secret(ns, "new"));
    srv.compact();
    srv.resume();
    await waitFor("converged", () => h.seen.includes("delete doomed") && h.seen.includes("add new"), 5000);
    expect(h.inf.list().map((o) => o.metadata?.name).sort()).toEqual(["keep", "new"]);
    const lists = srv.requests.filter((r) => r.path === `/api/v1/namespaces/${ns}/secrets` && !r.query.includes("watch"));
    expect(lists.length).toBe(2); // the initial list and the relist after 410
    await h.stop();
  }, 30_000);

  test("ListWatch with a fieldSelector (makeInformer has no fieldSelector parameter)", async () => {
    const ns = await freshNamespace();
    await core.createNamespacedPod({ namespace: ns, body: pod(ns, "here", "node-1") });
    await core.createNamespacedPod({ namespace: ns, body: pod(ns, "there", "node-2") });
    const fieldSelector = "spec.nodeName=node-1";
    const before = srv.requests.length;
    const lw = new k8s.ListWatch<k8s.V1Pod>(
      "/api/v1/pods",
      new k8s.Watch(kc),
      () => core.listPodForAllNamespaces({ fieldSelector }),
      false,
      undefined,
      fieldSelector,
    );
    const added: string[] = [];
    lw.on("add", (p) => added.push(p.metadata!.name!));
    lw.on("error", () => undefined);
    await lw.start();
    await core.createNamespacedPod({ namespace: ns, body: pod(ns, "here-2", "node-1") });
    await core.createNamespacedPod({ namespace: ns, body: pod(ns, "there-2", "node-2") });
    await waitFor("two adds", () => added.length >= 2);
    await Bun.sleep(50);
    expect(added).toEqual(["here", "here-2"]);
    const mine = srv.requests.slice(before).filter((r) => r.path === "/api/v1/pods");
    expect(mine.map((r) => r.query.includes("watch=true"))).toEqual([false, true]);
    for (const r of mine) expect(new URLSearchParams(r.query).get("fieldSelector")).toBe(fieldSelector);
    await lw.stop();
  }, 15_000);
});

describe("events", () => {
  test("core Event creation and count-bump patch; events() returns both API groups", async () => {
    const ns = await freshNamespace();
    const p = srv.create({ apiVersion: "v1", kind: "Pod", metadata: { name: "p", namespace: ns }, spec: {} });
    const first = await core.createNamespacedEvent({
      namespace: ns,
      body: {
        metadata: { generateName: "p." },
        involvedObject: { kind: "Pod", name: "p", namespace: ns, uid: p.metadata.uid! },
        reason: "SecretInjected",
        message: "hello",
        type: "Normal",
        count: 1,
        source: { component: "kloak" },
      },
    });
    const bumped = await core.patchNamespacedEvent(
      { name: first.metadata!.name!, namespace: ns, body: { count: 2, message: "hello again" } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.StrategicMergePatch),
    );
    expect(bumped.count).toBe(2);
    await eventsApi.createNamespacedEvent({
      namespace: ns,
      body: {
        metadata: { name: "new-style" },
        eventTime: new Date(),
        reason: "R",
        action: "A",
        reportingController: "kloak",
        reportingInstance: "node-1",
        regarding: { kind: "Pod", name: "p", namespace: ns },
      },
    });
    const mine = srv.events().filter((e) => e.metadata.namespace === ns);
    expect(mine.map((e) => `${e.apiVersion} ${e.reason}`)).toEqual(["v1 SecretInjected", "events.k8s.io/v1 R"]);
    expect(mine[0]).toMatchObject({ count: 2, message: "hello again", involvedObject: { uid: p.metadata.uid } });
    const byObject = await core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=p,reason=SecretInjected` });
    expect(byObject.items).toHaveLength(1);
    expect((await apiError(core.createNamespacedEvent({ namespace: "nope-ns", body: { metadata: { name: "e" }, involvedObject: {} } }))).code).toBe(404);
  });
});

describe("pause/resume and request log", () => {
  test("pause() resets open watches (the client sees a connection error, not a clean end)", async () => {
    const ns = await freshNamespace();
    const w = await startWatch(`/api/v1/namespaces/${ns}/secrets`, { resourceVersion: srv.resourceVersion() });
    await waitFor("watch open", () => srv.openWatches().some((x) => x.namespace === ns));
    srv.pause();
    try {
      await waitFor("watch ended", w.done);
      expect(srv.openWatches()).toEqual([]);
    } finally {
      srv.resume();
    }
    const err = w.doneErr() as { code?: string } | null;
    expect(err).not.toBeNull();
    expect(err?.code).toBe("ECONNRESET");
  }, 10_000);

  test("paused: requests get 503; resumed: served again; every request is recorded", async () => {
    const before = srv.requests.length;
    srv.pause();
    const err = await apiError(core.listNamespace());
    expect(err.code).toBe(503);
    expect(err.status.reason).toBe("ServiceUnavailable");
    srv.resume();
    const list = await core.listNamespace();
    expect(list.items.length).toBeGreaterThan(0);
    const log = srv.requests.slice(before);
    expect(log).toEqual([
      { method: "GET", path: "/api/v1/namespaces", query: "" },
      { method: "GET", path: "/api/v1/namespaces", query: "" },
    ]);
  });
});
