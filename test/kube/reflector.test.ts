import { afterAll, beforeAll, expect, test } from "bun:test";
import { CoreV1Api, type V1Secret } from "@kubernetes/client-node";
import { Reflector, type ListPage } from "../../src/kube/reflector.ts";
import { secretView } from "../../src/controller/secret-view.ts";
import type { SecretView } from "../../src/kube/secret-view.ts";
import { startKubeApiServer, type KubeApiServer } from "../support/kube-api-server.ts";

let api: KubeApiServer;

async function waitFor(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

const secret = (name: string, labels: Record<string, string> = {}) => ({
  apiVersion: "v1",
  kind: "Secret",
  metadata: { name, namespace: "ns", labels },
  data: { k: Buffer.from("value-of-" + name).toString("base64") },
});

beforeAll(async () => {
  api = await startKubeApiServer({ bookmarkIntervalMs: 200 });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "ns" } });
});
afterAll(() => api.stop());

function reflector(list?: (page: ListPage) => Promise<{ metadata?: { resourceVersion?: string; _continue?: string }; items: unknown[] }>) {
  const kc = api.kubeConfig();
  const core = kc.makeApiClient(CoreV1Api);
  const events: string[] = [];
  const r = new Reflector<SecretView>({
    name: "secrets",
    kc,
    path: "/api/v1/secrets",
    list: list ?? ((page) => core.listSecretForAllNamespaces(page)),
    transform: secretView,
    meta: (s) => s.metadata,
    log: () => {},
  });
  r.on({ add: (s) => events.push(`add ${s.metadata.name}`), update: (s) => events.push(`update ${s.metadata.name}`), delete: (s) => events.push(`delete ${s.metadata.name}`) });
  return { r, events, core };
}

test("lists from the watch cache in pages, trims data of Secrets kloak does not protect, then follows the watch", async () => {
  for (let i = 0; i < 1200; i++) api.create(secret(`s${i}`, i === 7 ? { "getkloak.io/enabled": "true" } : {}));
  const kc = api.kubeConfig();
  const core = kc.makeApiClient(CoreV1Api);
  const pages: ListPage[] = [];
  const served = api.pagesServed.length;
  // The double pages by limit/continue itself, as a real API server does.
  const { r, events } = reflector(async (page) => {
    pages.push(page);
    return core.listSecretForAllNamespaces(page);
  });
  r.start();
  await r.whenSynced();
  expect(r.size).toBe(1200);
  expect(pages.map((p) => Boolean(p._continue))).toEqual([false, true, true]);
  expect(api.pagesServed.slice(served).map((p) => [p.items, p.continued])).toEqual([[500, false], [500, true], [200, true]]);
  // The first page asks for resourceVersion 0, not older than: the watch cache answers, not etcd.
  // The next ones carry only the continue token (kube-apiserver refuses a resourceVersion with it).
  expect(api.pagesServed.slice(served).map(({ resourceVersion, resourceVersionMatch, limit }) => ({ resourceVersion, resourceVersionMatch, limit }))).toEqual([
    { resourceVersion: "0", resourceVersionMatch: "NotOlderThan", limit: 500 },
    { resourceVersion: undefined, resourceVersionMatch: undefined, limit: 500 },
    { resourceVersion: undefined, resourceVersionMatch: undefined, limit: 500 },
  ]);
  expect(r.get("ns", "s7")?.data?.k).toBe(Buffer.from("value-of-s7").toString("base64"));
  expect(r.get("ns", "s8")?.data).toEqual({ k: "" }); // key names only
  api.create(secret("late"));
  await waitFor("watch add", () => events.includes("add late"));
  r.stop();
  for (const s of api.list("Secret", "ns")) api.delete("Secret", "ns", s.metadata.name!);
}, 30_000);

test("after history is compacted it lists again and delivers only the difference", async () => {
  api.create(secret("a"));
  api.create(secret("b"));
  const core = api.kubeConfig().makeApiClient(CoreV1Api);
  let lists = 0;
  const { r, events } = reflector((page) => {
    lists++;
    return core.listSecretForAllNamespaces(page);
  });
  r.start();
  await r.whenSynced();
  await waitFor("watch open", () => api.openWatches().length > 0);
  api.pause();
  await waitFor("watch dropped", () => !r.connected);
  api.delete("Secret", "ns", "a");
  api.create(secret("c"));
  api.compact();
  api.resume();
  await waitFor("relist difference", () => events.includes("delete a") && events.includes("add c"), 20_000);
  expect(lists).toBe(2); // the 410 made it list again
  // ... from the watch cache too: N agents relisting after an API server restart do not all read etcd.
  const relist = api.pagesServed.filter((p) => p.resource === "secrets").at(-1)!;
  expect([relist.resourceVersion, relist.resourceVersionMatch, relist.limit]).toEqual(["0", "NotOlderThan", 500]);
  expect(events.filter((e) => e === "add b")).toHaveLength(1); // b was not delivered twice
  expect(r.size).toBe(2);
  r.stop();
}, 40_000);

test("a continue token that expires mid-list (410) starts the list over, and every object arrives once", async () => {
  for (const s of api.list("Secret", "ns")) api.delete("Secret", "ns", s.metadata.name!);
  for (let i = 0; i < 7; i++) api.create(secret(`e${i}`));
  const core = api.kubeConfig().makeApiClient(CoreV1Api);
  const logs: string[] = [];
  let calls = 0;
  const r = new Reflector<SecretView>({
    name: "secrets",
    kc: api.kubeConfig(),
    path: "/api/v1/namespaces/ns/secrets",
    list: async (page) => {
      calls++;
      const body = await core.listNamespacedSecret({ namespace: "ns", ...page });
      // Between the first and second page, a write, and etcd compacts the revision the token points into.
      if (calls === 1) {
        api.create(secret("e7"));
        api.compact();
      }
      return body;
    },
    transform: secretView,
    meta: (s) => s.metadata,
    log: (_level, msg) => logs.push(msg),
    pageSize: 3,
  });
  const added: string[] = [];
  r.on({ add: (s) => added.push(s.metadata.name!) });
  const served = api.pagesServed.length;
  r.start();
  await r.whenSynced();
  const pages = api.pagesServed.slice(served).filter((p) => p.resource === "secrets");
  // page 1, the 410 on page 2 is no page served, then three pages again
  expect(pages.map((p) => [p.continued, p.resourceVersion ?? null])).toEqual([
    [false, "0"],
    [false, "0"],
    [true, null],
    [true, null],
  ]);
  expect(api.requests.filter((q) => q.path === "/api/v1/namespaces/ns/secrets" && q.query.includes("continue=")).length).toBe(3);
  expect(logs).toContain("list continue token expired; listing again from the start");
  expect(added.sort()).toEqual(["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"]);
  expect(r.size).toBe(8);
  r.stop();
  for (const s of api.list("Secret", "ns")) api.delete("Secret", "ns", s.metadata.name!);
});

test("the double refuses list options kube-apiserver refuses", async () => {
  const core = api.kubeConfig().makeApiClient(CoreV1Api);
  await expect(core.listNamespacedSecret({ namespace: "ns", resourceVersionMatch: "NotOlderThan" })).rejects.toMatchObject({ code: 422 });
  await expect(core.listNamespacedSecret({ namespace: "ns", resourceVersion: "0", resourceVersionMatch: "Exact" })).rejects.toMatchObject({ code: 422 });
  await expect(core.listNamespacedSecret({ namespace: "ns", _continue: "x", resourceVersion: "0", resourceVersionMatch: "NotOlderThan" })).rejects.toMatchObject({ code: 422 });
  await expect(core.listNamespacedSecret({ namespace: "ns", _continue: "x", resourceVersion: "5" })).rejects.toMatchObject({ code: 400 });
});
