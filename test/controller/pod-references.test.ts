/**
 * referencedKeys: the keys of each Secret a pod spec references, merged.
 * Where references sit is the walker's (test/kube/pod-secret-refs.test.ts).
 */
import { expect, test } from "bun:test";
import { referencedKeys } from "../../src/controller/pod-references.ts";

const keys = (m: Map<string, Set<string> | "all">) =>
  Object.fromEntries([...m].map(([k, v]) => [k, v === "all" ? "all" : [...v].sort()]));

test("each reference's keys: a volume's items or all, an env var's key, all for envFrom", () => {
  const refs = referencedKeys({
    volumes: [
      { name: "a", secret: { secretName: "whole" } },
      { name: "b", secret: { secretName: "some", items: [{ key: "k1", path: "p1" }, { key: "k2", path: "p2" }] } },
      { name: "p", projected: { sources: [{ secret: { name: "proj-some", items: [{ key: "tls.key", path: "k" }] } }] } },
    ],
    containers: [{ name: "app", env: [{ name: "A", valueFrom: { secretKeyRef: { name: "env-secret", key: "a" } } }], envFrom: [{ secretRef: { name: "from-secret" } }] }],
    ephemeralContainers: [{ name: "debug", env: [{ name: "D", valueFrom: { secretKeyRef: { name: "debug-secret", key: "d" } } }] }],
  });
  expect(keys(refs)).toEqual({
    whole: "all",
    some: ["k1", "k2"],
    "proj-some": ["tls.key"],
    "env-secret": ["a"],
    "from-secret": "all",
    "debug-secret": ["d"],
  });
});

test("merging: key sets union; all wins whatever the order", () => {
  const refs = referencedKeys({
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

test("an env var without a key names no Secret; a volume whose items name no usable key names its Secret with no keys", () => {
  const refs = referencedKeys({
    volumes: [{ name: "v", secret: { secretName: "odd-items", items: [{ path: "p" }] } }],
    containers: [{ name: "c", env: [{ valueFrom: { secretKeyRef: { name: "no-key" } } }, { valueFrom: { secretKeyRef: { name: "empty-key", key: "" } } }] }],
  });
  expect(keys(refs)).toEqual({ "odd-items": [] });
});

test("malformed and empty specs: nothing, never a throw", () => {
  expect(referencedKeys(undefined).size).toBe(0);
  expect(referencedKeys({}).size).toBe(0);
  const refs = referencedKeys({
    volumes: [null, 3, { secret: null }, { secret: { secretName: "" } }, { projected: { sources: "x" } }, { secret: { items: [{ key: "k" }] } }],
    containers: [null, { env: "x", envFrom: [null, { secretRef: {} }] }, { env: [{ valueFrom: { secretKeyRef: { name: "n" } } }] }],
  } as never);
  expect(refs.size).toBe(0);
});
