/**
 * Shadow Secrets and the secret catalog against the test API server: the
 * leader writes shadows, every agent loads originals + shadows into its sink
 * on watch events. The sink here records instead of writing BPF maps (the
 * maps themselves are covered by the data-plane and end-to-end tests).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { CoreV1Api } from "@kubernetes/client-node";
import { SecretPlane } from "../../src/agent/secret-plane.ts";
import type { CatalogSink } from "../../src/controller/secret-catalog.ts";
import type { SecretEntry } from "../../src/dataplane/dataplane.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { isPlaceholderShaped } from "../../src/secrets/placeholder.ts";
import { huffmanBits } from "../../src/dataplane/hpack.ts";
import { startKubeApiServer, type KubeApiServer, type KubeObject } from "../support/kube-api-server.ts";
import { fakeSecret, fakeSecretFitting } from "../support/kloak.ts";

class RecordingSink implements CatalogSink {
  readonly loaded = new Map<number, { placeholder: string; value: string; restricted: boolean }>();
  sets = 0;
  deletes = 0;
  readonly actions = new Map<number, string | null>();
  setViolationAction(id: number, action: string | null): void {
    this.actions.set(id, action);
  }
  async setSecret(s: SecretEntry): Promise<void> {
    this.sets++;
    this.loaded.set(s.id, { placeholder: new TextDecoder().decode(s.placeholder), value: new TextDecoder().decode(s.value), restricted: s.rules !== null });
  }
  deleteSecret(id: number): void {
    this.deletes++;
    this.loaded.delete(id);
  }
  holdAtNewSni(): void {}
  byPlaceholder(ph: string) {
    return [...this.loaded.values()].find((l) => l.placeholder === ph);
  }
}

const quiet = () => {};
const b64 = (s: string) => Buffer.from(s).toString("base64");
const unb64 = (s: string) => Buffer.from(s, "base64").toString("latin1");

async function waitFor<T>(what: string, fn: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
}

let api: KubeApiServer;
const planes: SecretPlane[] = [];

function agent(identity: string, leaseDurationSeconds = 2) {
  const kc = api.kubeConfig();
  const sink = new RecordingSink();
  const events = new EventRecorder(kc.makeApiClient(CoreV1Api), { component: "kloak", host: identity });
  const plane = new SecretPlane({
    kc,
    sink,
    policy: { add: async () => {} },
    events,
    log: quiet,
    lease: { namespace: "kloak", name: "kloak-shadow-writer", identity, leaseDurationSeconds },
  });
  planes.push(plane);
  return { plane, sink, events };
}

function secret(name: string, data: Record<string, string>, meta: Partial<KubeObject["metadata"]> = {}, type = "Opaque"): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name, namespace: "shop", labels: { "getkloak.io/enabled": "true" }, ...meta },
    type,
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
  };
}

const shadowOf = (name: string) => api.get("Secret", "shop", `${name}-kloak`) as (KubeObject & { data?: Record<string, string>; type?: string }) | undefined;

beforeAll(async () => {
  api = await startKubeApiServer({ bookmarkIntervalMs: 500 });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "shop" } });
});
afterEach(async () => {
  for (const p of planes.splice(0)) await p.stop();
  for (const s of api.list("Secret", "shop")) api.delete("Secret", "shop", s.metadata.name!);
  api.delete("Lease", "kloak", "kloak-shadow-writer");
});
afterAll(async () => {
  await api.stop();
});

describe("shadow secrets", () => {
  test("an enabled Secret gets a shadow: same type and keys, placeholders of the same length, labels, owner", async () => {
    const token = fakeSecret(40);
    const cert = fakeSecret(64);
    const lastApplied = JSON.stringify({ data: { token: b64(token) } });
    const orig = api.create(
      secret("api", { token, "tls.crt": cert, "tls.key": fakeSecret(48) }, { annotations: { "kubectl.kubernetes.io/last-applied-configuration": lastApplied, "getkloak.io/on-violation": "pass" } }, "kubernetes.io/tls"),
    );
    const annotated = api.create(secret("db", { password: fakeSecret(20) }, { labels: {}, annotations: { "getkloak.io/enabled": "true" } }));
    api.create(secret("plain", { password: fakeSecret(20) }, { labels: {} }));
    const { plane, sink } = agent("a");
    await plane.start();
    const sh = await waitFor("shadow", () => shadowOf("api"));
    expect(sh.type).toBe("kubernetes.io/tls");
    expect(Object.keys(sh.data!).sort()).toEqual(["tls.crt", "tls.key", "token"]);
    const ph = unb64(sh.data!.token!);
    expect(isPlaceholderShaped(ph)).toBe(true);
    expect(ph.length).toBe(token.length);
    expect(ph).not.toBe(token);
    expect(sh.metadata.labels).toMatchObject({ "getkloak.io/managed": "true", "getkloak.io/owner": "api" });
    expect(sh.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: "Secret", name: "api", uid: orig.metadata.uid })]);
    // Secrets are enabled by label only (watched by label selector): the annotation no longer counts.
    expect(shadowOf("db")).toBeUndefined();
    expect(shadowOf("plain")).toBeUndefined();
    // Only enabled Secrets and shadows are in the agent's memory.
    await waitFor("shadow watched", () => plane.secrets.get("shop", "api-kloak"));
    // Of the annotations only kloak's own are kept: last-applied-configuration holds the whole Secret.
    expect(plane.secrets.get("shop", "api")!.metadata.annotations).toEqual({ "getkloak.io/on-violation": "pass" });
    expect([...plane.secrets.values()].map((s) => s.metadata.name).sort()).toEqual(["api", "api-kloak"]);
    // A kubernetes.io/tls Secret's certificate is the workload's own: copied as it is, not protected.
    expect(unb64(sh.data!["tls.crt"]!)).toBe(cert);
    // This agent's catalog loaded the protected key, pairing its placeholder with its value.
    await waitFor("keys loaded", () => sink.loaded.size === 1);
    expect(sink.byPlaceholder(ph)?.value).toBe(token);
    expect(annotated.metadata.uid).toBeDefined();
  }, 30_000);

  test("placeholders survive an update unless the length or Huffman code length changes; a rotated value is loaded live", async () => {
    const c = fakeSecret(32);
    api.create(secret("api", { a: fakeSecret(32), b: fakeSecret(32), c }));
    const { plane, sink } = agent("a");
    await plane.start();
    const first = await waitFor("shadow", () => shadowOf("api"));
    const phA = unb64(first.data!.a!);
    const phB = unb64(first.data!.b!);
    const phC = unb64(first.data!.c!);
    await waitFor("loaded", () => sink.loaded.size === 3);

    // Same length and same HPACK code length: the placeholder stays.
    const rotatedA = fakeSecretFitting(phA);
    const longerB = fakeSecret(48);
    // Same length, another code length (upstream Kloak #269: keeping the old
    // placeholder broke HTTP/2): c gets a new placeholder that fits.
    let rotatedC: string;
    do rotatedC = fakeSecret(32);
    while (huffmanBits(rotatedC) === huffmanBits(c));
    const cur = api.get("Secret", "shop", "api") as KubeObject & { data: Record<string, string> };
    api.update({ ...cur, data: { a: b64(rotatedA), b: b64(longerB), c: b64(rotatedC) } });

    const second = await waitFor("b's and c's new placeholders", () => {
      const s = shadowOf("api");
      return s && unb64(s.data!.b!).length === 48 && unb64(s.data!.c!) !== phC ? s : undefined;
    });
    expect(unb64(second.data!.a!)).toBe(phA);
    expect(unb64(second.data!.b!)).not.toBe(phB);
    const newC = unb64(second.data!.c!);
    expect(newC.length).toBe(32);
    expect(huffmanBits(newC)).toBe(huffmanBits(rotatedC));
    await waitFor("rotated value live", () => sink.byPlaceholder(phA)?.value === rotatedA);
    await waitFor("new placeholder of b loaded", () => sink.byPlaceholder(unb64(second.data!.b!))?.value === longerB);
    await waitFor("new placeholder of c loaded", () => sink.byPlaceholder(newC)?.value === rotatedC);
    // The old placeholders are gone from the sink: they can never be redeemed again.
    expect(sink.byPlaceholder(phB)).toBeUndefined();
    expect(sink.byPlaceholder(phC)).toBeUndefined();
  }, 30_000);

  test("removing the enablement deletes the shadow and unloads the keys", async () => {
    api.create(secret("api", { token: fakeSecret(32) }));
    const { plane, sink } = agent("a");
    await plane.start();
    await waitFor("shadow", () => shadowOf("api"));
    await waitFor("loaded", () => sink.loaded.size === 1);
    const cur = api.get("Secret", "shop", "api")!;
    api.update({ ...cur, metadata: { ...cur.metadata, labels: {} } });
    await waitFor("shadow deleted", () => shadowOf("api") === undefined);
    await waitFor("unloaded", () => sink.loaded.size === 0);
  }, 30_000);

  test("a value out of range, one with no Huffman-exact placeholder, or a bad hosts annotation: an Event on the Secret, no shadow", async () => {
    api.create(secret("short", { pin: "1234" }));
    api.create(secret("huff", { token: "aaaaeeeeoooo" }));
    api.create(secret("hosts", { token: fakeSecret(32) }, { annotations: { "getkloak.io/hosts": "api.example.com,*." } }));
    const { plane, sink, events } = agent("a");
    await plane.start();
    const evs = await waitFor("three events", () => {
      const e = api.events().filter((x) => (x as { reason?: string }).reason === "KloakCannotServe");
      return e.length >= 3 ? e : undefined;
    });
    type Ev = { involvedObject: { name: string }; message: string };
    const text = (name: string) => (evs as unknown as Ev[]).find((e) => e.involvedObject.name === name)!.message;
    expect(text("short")).toMatch(/key "pin" is 4 bytes/);
    expect(text("hosts")).toMatch(/getkloak.io\/hosts annotation/);
    expect(text("huff")).toContain('key "token" cannot get a placeholder that HTTP/2 can carry');
    expect(text("huff")).toContain("Rotate it");
    expect(text("huff")).not.toContain("aaaaeeeeoooo");
    expect(shadowOf("huff")).toBeUndefined();
    expect(shadowOf("short")).toBeUndefined();
    expect(shadowOf("hosts")).toBeUndefined();
    expect(sink.loaded.size).toBe(0);
    await events.flush();
  }, 30_000);

  test("getkloak.io/keys: only the named keys get placeholders and limits; the others are copied as they are", async () => {
    const password = fakeSecret(24);
    api.create(secret("db", { password, port: "5432", user: "app", host: "db.internal.example" }, { annotations: { "getkloak.io/keys": "password" } }));
    const { plane, sink } = agent("a");
    await plane.start();
    const sh = await waitFor("shadow", () => shadowOf("db"));
    const ph = unb64(sh.data!.password!);
    expect(isPlaceholderShaped(ph)).toBe(true);
    expect(ph.length).toBe(password.length);
    // A 4-byte port and a 3-byte user would be refused if protected; unprotected they pass through.
    expect({ port: unb64(sh.data!.port!), user: unb64(sh.data!.user!), host: unb64(sh.data!.host!) }).toEqual({ port: "5432", user: "app", host: "db.internal.example" });
    await waitFor("loaded", () => sink.loaded.size === 1);
    expect(sink.byPlaceholder(ph)?.value).toBe(password);
  }, 30_000);

  test("bad key selections: an Event that says what to do, no shadow", async () => {
    // Every key out of range, a key named that does not exist, a TLS key pair with nothing else.
    api.create(secret("tiny", { a: "1", b: "22" }));
    api.create(secret("keys-typo", { password: fakeSecret(24) }, { annotations: { "getkloak.io/keys": "pasword" } }));
    api.create(secret("tls-only", { "tls.crt": fakeSecret(64), "tls.key": fakeSecret(64) }, {}, "kubernetes.io/tls"));
    const { plane, sink, events } = agent("a");
    await plane.start();
    type Ev = { involvedObject: { name: string }; message: string; reason: string };
    const names = ["tiny", "keys-typo", "tls-only"];
    const evs = await waitFor("three events", () => {
      const e = (api.events() as unknown as Ev[]).filter((x) => x.reason === "KloakCannotServe" && names.includes(x.involvedObject.name));
      return new Set(e.map((x) => x.involvedObject.name)).size === 3 ? e : undefined;
    });
    const text = (name: string) => evs.find((e) => e.involvedObject.name === name)!.message;
    expect(text("tiny")).toContain('key "a" is 1 bytes');
    expect(text("tiny")).toContain('key "b" is 2 bytes');
    expect(text("tiny")).toContain("leave the key out of getkloak.io/keys");
    expect(text("keys-typo")).toContain('getkloak.io/keys names "pasword", which the Secret does not have (it has "password")');
    expect(text("tls-only")).toContain("tls.crt and tls.key are used by the workload itself");
    for (const n of names) expect(shadowOf(n)).toBeUndefined();
    expect(sink.loaded.size).toBe(0);
    await events.flush();
  }, 30_000);

  test("a shadow name taken by someone else's Secret is left alone and reported", async () => {
    api.create(secret("api", { token: fakeSecret(32) }));
    api.create(secret("api-kloak", { token: fakeSecret(32) }, { labels: {} }));
    const before = shadowOf("api")!.metadata.resourceVersion;
    const { plane, sink } = agent("a");
    await plane.start();
    await waitFor("event", () => api.events().some((e) => (e as { reason?: string }).reason === "KloakShadowNameTaken"));
    expect(shadowOf("api")!.metadata.resourceVersion).toBe(before);
    expect(sink.loaded.size).toBe(0);
  }, 30_000);

  test("two agents: only the Lease holder writes shadows; the other takes over when the Lease expires", async () => {
    const a = agent("agent-a");
    const b = agent("agent-b");
    await Promise.all([a.plane.start(), b.plane.start()]);
    const leader = await waitFor("a leader", () => (a.plane.elector.isLeader() ? a : b.plane.elector.isLeader() ? b : undefined));
    const follower = leader === a ? b : a;
    api.create(secret("one", { token: fakeSecret(32) }));
    await waitFor("shadow one", () => shadowOf("one"));
    await waitFor("both loaded one", () => a.sink.loaded.size === 1 && b.sink.loaded.size === 1);
    expect(leader.plane.writer.writes).toBeGreaterThanOrEqual(1);
    expect(follower.plane.writer.writes).toBe(0);

    // The leader dies without releasing the Lease: the follower must wait for it to expire, then write.
    leader.plane.elector.abandon();
    leader.plane.secrets.stop();
    const t0 = Date.now();
    api.create(secret("two", { token: fakeSecret(32) }));
    await waitFor("shadow two by the follower", () => shadowOf("two"), 15_000);
    const waited = Date.now() - t0;
    // The store has the shadow a moment before the writer's create call returns and counts it.
    await waitFor("the follower counted its write", () => follower.plane.writer.writes >= 1, 2_000);
    expect(follower.plane.elector.isLeader()).toBe(true);
    // Not before the 2 s lease could have expired (the follower's own clock).
    expect(waited).toBeGreaterThanOrEqual(1500);
  }, 40_000);

  test("losing the API server keeps the last good state; changes made meanwhile arrive after it returns", async () => {
    api.create(secret("api", { token: fakeSecret(32) }));
    const { plane, sink } = agent("a");
    await plane.start();
    await waitFor("loaded", () => sink.loaded.size === 1);
    const deletesBefore = sink.deletes;
    api.pause();
    await Bun.sleep(1500);
    expect(sink.loaded.size).toBe(1);
    expect(sink.deletes).toBe(deletesBefore);
    const cur = api.get("Secret", "shop", "api") as KubeObject & { data: Record<string, string> };
    const rotated = fakeSecret(32);
    api.update({ ...cur, data: { token: b64(rotated) } });
    api.resume();
    await waitFor("rotation after reconnect", () => [...sink.loaded.values()][0]?.value === rotated, 20_000);
  }, 40_000);
  test("getkloak.io/on-violation: loaded with the Secret's keys, changed live; a bad value is reported, nothing loaded", async () => {
    api.create(secret("strict", { token: fakeSecret(32) }, { annotations: { "getkloak.io/on-violation": "kill" } }));
    api.create(secret("typo", { token: fakeSecret(32) }, { annotations: { "getkloak.io/on-violation": "stop" } }));
    const { plane, sink, events } = agent("a");
    await plane.start();
    await waitFor("loaded with kill", () => sink.loaded.size === 1 && [...sink.actions.values()].includes("kill"));
    const ev = await waitFor("event", () =>
      (api.events() as unknown as { reason?: string; involvedObject: { name: string }; message: string }[]).find(
        (e) => e.reason === "KloakCannotServe" && e.involvedObject.name === "typo",
      ),
    );
    expect(ev.message).toContain('getkloak.io/on-violation annotation "stop": use pass, block, kill');
    const cur = api.get("Secret", "shop", "strict")!;
    api.update({ ...cur, metadata: { ...cur.metadata, annotations: { "getkloak.io/on-violation": "block" } } });
    await waitFor("changed to block", () => [...sink.actions.values()].at(-1) === "block");
    await events.flush();
  }, 30_000);

});
