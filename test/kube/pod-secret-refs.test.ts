/** podSecretRefs: every place a pod spec can name a Secret, each once, with its keys and where it sits. */
import { expect, test } from "bun:test";
import { podSecretRefs } from "../../src/kube/pod-secret-refs.ts";

test("volumes[].secret: all keys, or the keys its items name", () => {
  const refs = podSecretRefs({
    volumes: [
      { name: "a", secret: { secretName: "whole" } },
      { name: "b", secret: { secretName: "some", items: [{ key: "k1", path: "p1" }, { key: "k2", path: "p2" }] } },
      { name: "c", secret: { secretName: "empty-items", items: [] } },
      { name: "d", configMap: { name: "not-a-secret" } },
      { name: "e", emptyDir: {} },
      { name: "f", secret: { secretName: "odd-items", items: [{ path: "p" }, { key: "" }, null, { key: "ok" }] } },
    ],
  });
  expect(refs).toEqual([
    { name: "whole", kind: "volume", keys: "all", path: ["volumes", 0, "secret", "secretName"] },
    { name: "some", kind: "volume", keys: ["k1", "k2"], path: ["volumes", 1, "secret", "secretName"] },
    { name: "empty-items", kind: "volume", keys: "all", path: ["volumes", 2, "secret", "secretName"] },
    { name: "odd-items", kind: "volume", keys: ["ok"], path: ["volumes", 5, "secret", "secretName"] },
  ]);
});

test("volumes[].projected.sources[].secret, with and without items, next to a secret source of the same volume", () => {
  const refs = podSecretRefs({
    volumes: [
      {
        name: "p",
        secret: { secretName: "both" },
        projected: {
          sources: [
            { secret: { name: "proj-all" } },
            { secret: { name: "proj-some", items: [{ key: "tls.key", path: "k" }] } },
            { configMap: { name: "cm" } },
            { serviceAccountToken: { path: "token" } },
          ],
        },
      },
    ],
  });
  expect(refs).toEqual([
    { name: "both", kind: "volume", keys: "all", path: ["volumes", 0, "secret", "secretName"] },
    { name: "proj-all", kind: "projected", keys: "all", path: ["volumes", 0, "projected", "sources", 0, "secret", "name"] },
    { name: "proj-some", kind: "projected", keys: ["tls.key"], path: ["volumes", 0, "projected", "sources", 1, "secret", "name"] },
  ]);
});

test("env secretKeyRef (one key) and envFrom secretRef (all keys) in containers, initContainers and ephemeralContainers", () => {
  const refs = podSecretRefs({
    containers: [
      {
        name: "app",
        env: [
          { name: "A", valueFrom: { secretKeyRef: { name: "env-secret", key: "a" } } },
          { name: "B", valueFrom: { secretKeyRef: { name: "env-secret", key: "b", optional: true } } },
          { name: "C", value: "plain" },
          { name: "D", valueFrom: { configMapKeyRef: { name: "cm", key: "d" } } },
          { name: "E", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
        ],
        envFrom: [{ secretRef: { name: "from-secret" } }, { configMapRef: { name: "cm" } }, { prefix: "X_", secretRef: { name: "prefixed" } }],
      },
    ],
    initContainers: [{ name: "init", env: [{ name: "I", valueFrom: { secretKeyRef: { name: "init-secret", key: "i" } } }] }],
    ephemeralContainers: [{ name: "debug", envFrom: [{ secretRef: { name: "debug-secret" } }] }],
  });
  const app = { list: "containers", name: "app" } as const;
  expect(refs).toEqual([
    { name: "env-secret", kind: "env", keys: ["a"], container: app, path: ["containers", 0, "env", 0, "valueFrom", "secretKeyRef", "name"] },
    { name: "env-secret", kind: "env", keys: ["b"], container: app, path: ["containers", 0, "env", 1, "valueFrom", "secretKeyRef", "name"] },
    { name: "from-secret", kind: "envFrom", keys: "all", container: app, path: ["containers", 0, "envFrom", 0, "secretRef", "name"] },
    { name: "prefixed", kind: "envFrom", keys: "all", container: app, path: ["containers", 0, "envFrom", 2, "secretRef", "name"] },
    {
      name: "init-secret",
      kind: "env",
      keys: ["i"],
      container: { list: "initContainers", name: "init" },
      path: ["initContainers", 0, "env", 0, "valueFrom", "secretKeyRef", "name"],
    },
    {
      name: "debug-secret",
      kind: "envFrom",
      keys: "all",
      container: { list: "ephemeralContainers", name: "debug" },
      path: ["ephemeralContainers", 0, "envFrom", 0, "secretRef", "name"],
    },
  ]);
});

test("spec order: volumes first, then containers, initContainers, ephemeralContainers; env before envFrom", () => {
  const c = (secret: string) => ({ envFrom: [{ secretRef: { name: `${secret}-from` } }], env: [{ valueFrom: { secretKeyRef: { name: secret, key: "k" } } }] });
  const refs = podSecretRefs({
    ephemeralContainers: [c("eph")],
    initContainers: [c("init")],
    containers: [c("app")],
    volumes: [{ secret: { secretName: "vol" } }],
  });
  expect(refs.map((r) => r.name)).toEqual(["vol", "app", "app-from", "init", "init-from", "eph", "eph-from"]);
});

test("an env var without a key reads none; a container without a name is still walked", () => {
  const refs = podSecretRefs({
    containers: [{ env: [{ valueFrom: { secretKeyRef: { name: "no-key" } } }, { valueFrom: { secretKeyRef: { name: "empty-key", key: "" } } }] }],
  });
  expect(refs.map((r) => [r.name, r.keys, r.container])).toEqual([
    ["no-key", [], { list: "containers", name: undefined }],
    ["empty-key", [], { list: "containers", name: undefined }],
  ]);
});

test("malformed and empty specs: nothing, never a throw; indices stay those of the spec", () => {
  expect(podSecretRefs(undefined)).toEqual([]);
  expect(podSecretRefs(null)).toEqual([]);
  expect(podSecretRefs({})).toEqual([]);
  const refs = podSecretRefs({
    volumes: [null, 3, { secret: null }, { secret: { secretName: "" } }, { projected: { sources: "x" } }, { secret: { items: [{ key: "k" }] } }, { secret: { secretName: "late" } }],
    containers: [null, { env: "x", envFrom: [null, { secretRef: {} }, { secretRef: { name: 7 } }] }, "c", { name: 5, envFrom: [{ secretRef: { name: "n" } }] }],
    initContainers: "x",
  } as never);
  expect(refs).toEqual([
    { name: "late", kind: "volume", keys: "all", path: ["volumes", 6, "secret", "secretName"] },
    { name: "n", kind: "envFrom", keys: "all", container: { list: "containers", name: undefined }, path: ["containers", 3, "envFrom", 0, "secretRef", "name"] },
  ]);
});
