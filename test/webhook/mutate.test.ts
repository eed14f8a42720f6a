/**
 * /mutate over real HTTPS: pods are pointed at shadow Secrets, and denied when
 * an enabled Secret has no shadow yet.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { applyPatch, type Operation } from "fast-json-patch";
import {
  clone,
  decodePatch,
  fixtureSecrets,
  loadPod,
  podReview,
  startWebhook,
  type FakeSecrets,
  type Harness,
} from "./fixtures/harness.ts";
import { pointer } from "../../src/webhook/review.ts";

let h: Harness;
let secrets: FakeSecrets;

beforeAll(async () => {
  secrets = fixtureSecrets();
  h = await startWebhook(secrets);
});
afterAll(() => h.stop());
beforeEach(() => {
  // each test starts from the fixture cluster
  const fresh = fixtureSecrets();
  secrets.items.clear();
  for (const [k, v] of fresh.items) secrets.items.set(k, v);
  secrets.isSynced = true;
  delete secrets.fetch;
});

/** the pod with an ephemeral container (kubectl debug style) that reads both enabled Secrets */
function podWithEphemeral(): Record<string, any> {
  const pod = loadPod();
  pod.spec.ephemeralContainers = [
    {
      name: "debugger-x2v9q",
      image: "busybox:1.36",
      env: [{ name: "PW", valueFrom: { secretKeyRef: { name: "db-credentials", key: "password" } } }],
      envFrom: [{ secretRef: { name: "stripe-keys" } }],
      targetContainerName: "api",
      terminationMessagePath: "/dev/termination-log",
      terminationMessagePolicy: "File",
      imagePullPolicy: "IfNotPresent",
      stdin: true,
      tty: true,
    },
  ];
  return pod;
}

async function mutate(pod: unknown, overrides: Record<string, unknown> = {}) {
  const body = podReview(pod, overrides);
  const { response } = await h.review("/mutate", body);
  expect(response.uid).toBe(body.request.uid);
  return response;
}

function patched(pod: Record<string, any>, response: Record<string, any>): Record<string, any> {
  const ops = decodePatch(response) as Operation[];
  return applyPatch(clone(pod), ops, /* validate */ true).newDocument as Record<string, any>;
}

describe("/mutate swaps enabled Secrets for their shadows", () => {
  test("every reference kind, in every container kind; the rest of the pod unchanged", async () => {
    const pod = podWithEphemeral();
    const response = await mutate(pod);
    expect(response.allowed).toBe(true);
    expect(response.patchType).toBe("JSONPatch");
    expect(response.warnings).toBeUndefined();
    const ops = decodePatch(response);
    // one replace per reference, exact paths
    expect(ops.filter((o) => o.op === "replace").map((o) => [o.path, o.value])).toEqual([
      ["/spec/volumes/0/secret/secretName", "db-credentials-kloak"],
      ["/spec/volumes/3/projected/sources/1/secret/name", "stripe-keys-kloak"],
      ["/spec/containers/0/env/0/valueFrom/secretKeyRef/name", "stripe-keys-kloak"],
      ["/spec/containers/0/envFrom/1/secretRef/name", "db-credentials-kloak"],
      ["/spec/initContainers/0/env/0/valueFrom/secretKeyRef/name", "db-credentials-kloak"],
      ["/spec/initContainers/0/envFrom/0/secretRef/name", "stripe-keys-kloak"],
      ["/spec/ephemeralContainers/0/env/0/valueFrom/secretKeyRef/name", "db-credentials-kloak"],
      ["/spec/ephemeralContainers/0/envFrom/0/secretRef/name", "stripe-keys-kloak"],
    ]);
    // the annotation key holds a "/", escaped as ~1
    expect(ops.filter((o) => o.op === "add")).toEqual([
      { op: "add", path: "/metadata/annotations/getkloak.io~1enabled", value: "true" },
    ]);

    const out = patched(pod, response);
    const expected = clone(pod);
    expected.spec.volumes[0].secret.secretName = "db-credentials-kloak";
    expected.spec.volumes[3].projected.sources[1].secret.name = "stripe-keys-kloak";
    expected.spec.containers[0].env[0].valueFrom.secretKeyRef.name = "stripe-keys-kloak";
    expected.spec.containers[0].envFrom[1].secretRef.name = "db-credentials-kloak";
    expected.spec.initContainers[0].env[0].valueFrom.secretKeyRef.name = "db-credentials-kloak";
    expected.spec.initContainers[0].envFrom[0].secretRef.name = "stripe-keys-kloak";
    expected.spec.ephemeralContainers[0].env[0].valueFrom.secretKeyRef.name = "db-credentials-kloak";
    expected.spec.ephemeralContainers[0].envFrom[0].secretRef.name = "stripe-keys-kloak";
    expected.metadata.annotations["getkloak.io/enabled"] = "true";
    expect(out).toEqual(expected);

    // spot checks on what must stay: items narrowing, not-enabled, missing optional refs
    expect(out.spec.volumes[0].secret.items).toEqual(pod.spec.volumes[0].secret.items);
    expect(out.spec.volumes[3].projected.sources[1].secret.items).toEqual([{ key: "STRIPE_KEY", path: "stripe/key" }]);
    expect(out.spec.volumes[1].secret.secretName).toBe("api-tls");
    expect(out.spec.volumes[2].secret).toEqual({ secretName: "optional-extra", defaultMode: 420, optional: true });
    expect(out.spec.volumes[3].projected.sources[2].secret).toEqual({ name: "legacy-token", optional: true });
    expect(out.spec.containers[1].env[0].valueFrom.secretKeyRef.name).toBe("exporter-token");
    expect(out.spec.imagePullSecrets).toEqual([{ name: "registry-pull" }]);
    expect(out.metadata.annotations["prometheus.io/scrape"]).toBe("true");
  });

  test("reinvocation with the patched pod: allowed, no patch, no warning", async () => {
    const pod = podWithEphemeral();
    const once = patched(pod, await mutate(pod));
    const again = await mutate(once);
    expect(again.allowed).toBe(true);
    expect(again.patch).toBeUndefined();
    expect(again.patchType).toBeUndefined();
    expect(again.warnings).toBeUndefined();
  });

  test("a pod without annotations gets the whole annotations object", async () => {
    const pod = loadPod();
    delete pod.metadata.annotations;
    const response = await mutate(pod);
    const ops = decodePatch(response);
    expect(ops.at(-1)).toEqual({ op: "add", path: "/metadata/annotations", value: { "getkloak.io/enabled": "true" } });
    expect(patched(pod, response).metadata.annotations).toEqual({ "getkloak.io/enabled": "true" });
  });

  test("a pod annotated getkloak.io/enabled=\"false\" has it replaced by \"true\"", async () => {
    const pod = loadPod();
    pod.metadata.annotations["getkloak.io/enabled"] = "false";
    const response = await mutate(pod);
    expect(decodePatch(response).at(-1)).toEqual({ op: "replace", path: "/metadata/annotations/getkloak.io~1enabled", value: "true" });
    expect(patched(pod, response).metadata.annotations["getkloak.io/enabled"]).toBe("true");
  });

  test("already annotated \"true\": swaps without a second annotation op", async () => {
    const pod = loadPod();
    pod.metadata.annotations["getkloak.io/enabled"] = "true";
    const ops = decodePatch(await mutate(pod));
    expect(ops.length).toBe(6);
    expect(ops.every((o) => o.op === "replace" && o.path.startsWith("/spec/"))).toBe(true);
  });

  test("a pod with no enabled Secret: allowed with no patch", async () => {
    secrets.delete("db-credentials").delete("stripe-keys").put("db-credentials").put("stripe-keys");
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(true);
    expect(response.patch).toBeUndefined();
    expect(response.warnings).toBeUndefined();
  });

  test("the namespace comes from the object when request.namespace is empty; Secrets are looked up there", async () => {
    secrets.putEnabled("db-credentials", "label", "other");
    for (const n of ["stripe-keys", "api-tls", "optional-extra", "legacy-token", "exporter-token"]) secrets.put(n, { namespace: "other" });
    const pod = loadPod();
    pod.metadata.namespace = "other";
    const response = await mutate(pod, { namespace: "" });
    const ops = decodePatch(response).filter((o) => o.op === "replace");
    // only db-credentials is enabled in "other": 3 references
    expect(ops.map((o) => o.value)).toEqual(["db-credentials-kloak", "db-credentials-kloak", "db-credentials-kloak"]);
  });

  test("UPDATE of pods/ephemeralcontainers: only the added ephemeral containers are swapped, no annotation op", async () => {
    const old = patched(loadPod(), await mutate(loadPod()));
    old.metadata.name = "payments-api-6f8b9c7d4-abcde";
    old.spec.ephemeralContainers = [
      { name: "old-debugger", image: "busybox", envFrom: [{ secretRef: { name: "db-credentials" } }] },
    ];
    const pod = clone(old);
    pod.spec.ephemeralContainers.push({ name: "new-debugger", image: "busybox", envFrom: [{ secretRef: { name: "stripe-keys" } }] });
    const response = await mutate(pod, { operation: "UPDATE", subResource: "ephemeralcontainers", oldObject: old, name: old.metadata.name });
    expect(decodePatch(response)).toEqual([
      { op: "replace", path: "/spec/ephemeralContainers/1/envFrom/0/secretRef/name", value: "stripe-keys-kloak" },
    ]);
  });

  test("other operations and subresources are allowed untouched", async () => {
    for (const overrides of [
      { operation: "UPDATE", oldObject: loadPod() },
      { operation: "DELETE", object: null, oldObject: loadPod() },
      { subResource: "binding", kind: { group: "", version: "v1", kind: "Binding" } },
    ]) {
      const response = await mutate(loadPod(), overrides);
      expect(response.allowed).toBe(true);
      expect(response.patch).toBeUndefined();
    }
  });
});

describe("/mutate fails closed", () => {
  test("an enabled Secret without its shadow denies the pod, naming the Secret and how to look", async () => {
    secrets.delete("stripe-keys-kloak");
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.patch).toBeUndefined();
    expect(response.status.code).toBe(403);
    expect(response.status.reason).toBe("Forbidden");
    // one sentence per missing shadow, even with four references to it
    expect(response.status.message).toBe(
      `secret "shop/stripe-keys" is enabled for kloak but its shadow "stripe-keys-kloak" does not exist yet; ` +
        `kloak writes it within seconds (check \`kubectl -n shop get events --field-selector involvedObject.name=stripe-keys\` ` +
        `if it does not appear: the Secret may have a value kloak cannot serve)`,
    );
    expect(h.outcomes.at(-1)?.outcome).toBe("denied");
  });

  test("an optional reference to an enabled Secret without shadow is denied too", async () => {
    secrets.delete("stripe-keys").delete("stripe-keys-kloak").putEnabled("legacy-token").delete("legacy-token-kloak");
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.status.message).toContain(`secret "shop/legacy-token" is enabled for kloak but its shadow "legacy-token-kloak"`);
  });

  test("a \"<name>-kloak\" Secret kloak does not manage is not a shadow: denied", async () => {
    secrets.delete("db-credentials-kloak").put("db-credentials-kloak");
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(403);
    expect(response.status.message).toContain(`"db-credentials-kloak" is not kloak's shadow`);
  });

  test("Secrets not read yet: pods referencing Secrets are denied", async () => {
    secrets.isSynced = false;
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(503);
    expect(response.status.message).toBe("kloak is starting and has not read the cluster's Secrets yet; retry in a few seconds");
  });

  test("Secrets not read yet: a pod referencing no Secret is allowed (nothing to protect)", async () => {
    secrets.isSynced = false;
    const pod = loadPod();
    pod.spec.volumes = [{ name: "tmp", emptyDir: {} }];
    delete pod.spec.initContainers;
    pod.spec.containers = [{ name: "c", image: "nginx", env: [{ name: "A", value: "b" }] }];
    const response = await mutate(pod);
    expect(response.allowed).toBe(true);
    expect(response.patch).toBeUndefined();
  });
});

describe("/mutate warnings", () => {
  test("invalid enablement: left alone, warned once per Secret", async () => {
    secrets.delete("db-credentials").delete("db-credentials-kloak").put("db-credentials", { labels: { "getkloak.io/enabled": "yes" } });
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(true);
    expect(response.warnings).toEqual([
      `secret shop/db-credentials has getkloak.io/enabled="yes"; only "true" enables kloak, so kloak ignores it: set it to "true" or remove it`,
    ]);
    const out = patched(loadPod(), response);
    expect(out.spec.volumes[0].secret.secretName).toBe("db-credentials");
    expect(out.spec.containers[0].envFrom[1].secretRef.name).toBe("db-credentials");
    // stripe-keys is still swapped
    expect(out.spec.containers[0].env[0].valueFrom.secretKeyRef.name).toBe("stripe-keys-kloak");
  });

  test("a pod written against a shadow name: left alone, warned, annotated; no warning on reinvocation", async () => {
    const pod = loadPod();
    pod.spec.containers[0].envFrom[1].secretRef.name = "db-credentials-kloak";
    const response = await mutate(pod);
    expect(response.allowed).toBe(true);
    expect(response.warnings).toEqual([
      `pod references kloak's shadow secret "db-credentials-kloak" directly; reference "db-credentials" instead and kloak swaps it`,
    ]);
    const ops = decodePatch(response);
    expect(ops.some((o) => o.path === "/spec/containers/0/envFrom/1/secretRef/name")).toBe(false);
    const out = patched(pod, response);
    expect(out.metadata.annotations["getkloak.io/enabled"]).toBe("true");
    const again = await mutate(out);
    expect(again.warnings).toBeUndefined();
    expect(again.patch).toBeUndefined();
  });

  test("a pod referencing only a shadow is annotated", async () => {
    const pod = loadPod();
    pod.spec = { containers: [{ name: "c", image: "nginx", envFrom: [{ secretRef: { name: "stripe-keys-kloak" } }] }] };
    const response = await mutate(pod);
    expect(decodePatch(response)).toEqual([{ op: "add", path: "/metadata/annotations/getkloak.io~1enabled", value: "true" }]);
    expect(response.warnings).toHaveLength(1);
  });

  test("Secrets that do not exist (optional or not) deny the pod, naming each: one created later enabled would reach it", async () => {
    const pod = loadPod();
    pod.spec = {
      volumes: [{ name: "v", secret: { secretName: "nowhere", optional: true } }],
      containers: [{ name: "c", image: "nginx", env: [{ name: "X", valueFrom: { secretKeyRef: { name: "gone", key: "k" } } }] }],
    };
    const response = await mutate(pod);
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(403);
    expect(response.status.message).toStartWith('secrets "shop/nowhere", "shop/gone" do not exist yet; in namespace shop, where kloak is enabled');
    expect(response.status.message).toContain("create the Secret first");
    expect(response.patch).toBeUndefined();
  });

  test("a cache miss asks the API server once per name: enabled there (watch lag) is swapped, plain is allowed", async () => {
    const remote = fixtureSecrets();
    // The cache has not seen stripe-keys, its shadow, nor the plain Secrets yet (the agent caches enabled ones only).
    for (const n of ["stripe-keys", "stripe-keys-kloak", "api-tls", "optional-extra", "legacy-token", "exporter-token"]) secrets.delete(n);
    const asked: string[] = [];
    secrets.fetch = async (ns, name) => {
      asked.push(name);
      return remote.get(ns, name) ?? null;
    };
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(true);
    expect(decodePatch(response).filter((o) => o.value === "stripe-keys-kloak").length).toBe(3);
    expect(asked.sort()).toEqual(["api-tls", "exporter-token", "legacy-token", "optional-extra", "stripe-keys", "stripe-keys-kloak"]);
  });

  test("the API server cannot answer: denied with 503 and a retry hint, nothing patched", async () => {
    secrets.delete("api-tls");
    secrets.fetch = async () => {
      throw new Error("connect ECONNREFUSED");
    };
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(503);
    expect(response.status.message).toBe(
      'kloak could not ask the API server whether secret "shop/api-tls" is enabled (connect ECONNREFUSED), so it cannot admit the pod safely; retry in a few seconds',
    );
    expect(response.patch).toBeUndefined();
  });

  test("a Secret still enabled by annotation only denies the pod with the label to set", async () => {
    secrets.put("stripe-keys", { annotations: { "getkloak.io/enabled": "true" } });
    const response = await mutate(loadPod());
    expect(response.allowed).toBe(false);
    expect(response.status.message).toContain("kubectl -n shop label secret stripe-keys getkloak.io/enabled=true");
  });

  test("responses and logs never carry Secret data", async () => {
    const sentinel = "c2VudGluZWwtc2VjcmV0LXZhbHVl"; // what the fake cache holds as data
    secrets.put("db-credentials", { labels: { "getkloak.io/enabled": "true" }, data: { password: sentinel } });
    const response = await mutate(loadPod());
    expect(JSON.stringify(response)).not.toContain(sentinel);
    expect(JSON.stringify(h.logs)).not.toContain(sentinel);
  });
});

test("JSON pointers escape \"~\" and \"/\" (RFC 6901)", () => {
  expect(pointer("metadata", "annotations", "getkloak.io/enabled")).toBe("/metadata/annotations/getkloak.io~1enabled");
  expect(pointer("a~b/c", 0)).toBe("/a~0b~1c/0");
});
