/** secretReferences: every place a pod spec can reference a Secret, items narrowing, merging. */
import { expect, test } from "bun:test";
import { secretReferences } from "../../src/controller/pod-references.ts";

const keys = (m: Map<string, Set<string> | "all">) =>
  Object.fromEntries([...m].map(([k, v]) => [k, v === "all" ? "all" : [...v].sort()]));

test("volumes[].secret: all keys, or the keys its items name", () => {
  const refs = secretReferences({
    volumes: [
      { name: "a", secret: { secretName: "whole" } },
      { name: "b", secret: { secretName: "some", items: [{ key: "k1", path: "p1" }, { key: "k2", path: "p2" }] } },
      { name: "c", secret: { secretName: "empty-items", items: [] } },
      { name: "d", configMap: { name: "not-a-secret" } },
      { name: "e", emptyDir: {} },
    ],
  });
  expect(keys(refs)).toEqual({ whole: "all", some: ["k1", "k2"], "empty-items": "all" });
});

test("volumes[].projected.sources[].secret, with and without items", () => {
  const refs = secretReferences({
    volumes: [
      {
        name: "p",
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
  expect(keys(refs)).toEqual({ "proj-all": "all", "proj-some": ["tls.key"] });
});

test("env secretKeyRef (one key) and envFrom secretRef (all keys) in containers, initContainers and ephemeralContainers", () => {
  const refs = secretReferences({
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
  expect(keys(refs)).toEqual({
    "env-secret": ["a", "b"],
    "from-secret": "all",
    prefixed: "all",
    "init-secret": ["i"],
    "debug-secret": "all",
  });
});

test("merging: key sets union; all wins whatever the order", () => {
  const refs = secretReferences({
    volumes: [
      { name: "v1", secret: { secretName: "s", items: [{ key: "x", path: "x" }] } },
      { name: "v2", projected: { sources: [{ secret: { name: "s", items: [{ key: "y", path: "y" }] } }] } },
      { name: "v3", secret: { secretName: "t", items: [{ key: "x", path: "x" }] } },
    ],
    containers: [
      {
        name: "c",
        env: [
          { name: "Z", valueFrom: { secretKeyRef: { name: "s", key: "z" } } },
          { name: "Q", valueFrom: { secretKeyRef: { name: "u", key: "q" } } },
        ],
        envFrom: [{ secretRef: { name: "t" } }],
      },
    ],
    initContainers: [{ name: "i", env: [{ name: "T", valueFrom: { secretKeyRef: { name: "t", key: "late" } } }] }],
  });
  expect(keys(refs)).toEqual({ s: ["x", "y", "z"], t: "all", u: ["q"] });
});

test("malformed and empty specs: nothing, never a throw", () => {
  expect(secretReferences(undefined).size).toBe(0);
  expect(secretReferences({}).size).toBe(0);
  const refs = secretReferences({
    volumes: [null, 3, { secret: null }, { secret: { secretName: "" } }, { projected: { sources: "x" } }, { secret: { items: [{ key: "k" }] } }],
    containers: [null, { env: "x", envFrom: [null, { secretRef: {} }] }, { env: [{ valueFrom: { secretKeyRef: { name: "n" } } }] }],
  } as never);
  expect(refs.size).toBe(0);
});
