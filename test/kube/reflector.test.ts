import { afterAll, beforeAll, expect, test } from "bun:test";
import { CoreV1Api, type V1Secret } from "@kubernetes/client-node";
import { Reflector, type ListPage } from "../../src/kube/reflector.ts";
import { secretView, type SecretView } from "../../src/controller/secret-view.ts";
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

test("lists in pages, trims data of Secrets kloak does not protect, then follows the watch", async () => {
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
  expect(events.filter((e) => e === "add b")).toHaveLength(1); // b was not delivered twice
  expect(r.size).toBe(2);
  r.stop();
}, 40_000);
