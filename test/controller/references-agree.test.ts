/**
 * Two walkers read a pod's Secret references: the webhook's (JSON pointers to
 * patch) and the pod controller's (keys to grant). They must see the same
 * places, or a swapped reference would go ungranted (or the reverse).
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { referencedKeys as keysOf } from "../../src/controller/pod-references.ts";
import { secretReferences as pathsOf } from "../../src/webhook/mutate.ts";

test("the webhook and the pod controller find the same Secret names in a pod", () => {
  const pod = JSON.parse(readFileSync(join(import.meta.dir, "../webhook/fixtures/deployment-pod.json"), "utf8"));
  const spec = pod.spec;
  // Every place a reference can sit, once each.
  spec.volumes = [
    ...(spec.volumes ?? []),
    { name: "s", secret: { secretName: "vol" } },
    { name: "p", projected: { sources: [{ secret: { name: "proj" } }, { configMap: { name: "cm" } }] } },
  ];
  spec.initContainers = [{ name: "init", env: [{ name: "A", valueFrom: { secretKeyRef: { name: "init-env", key: "k" } } }] }];
  spec.ephemeralContainers = [{ name: "dbg", envFrom: [{ secretRef: { name: "eph-from" } }] }];
  spec.containers[0].envFrom = [...(spec.containers[0].envFrom ?? []), { secretRef: { name: "app-from" } }];
  const fromWebhook = new Set(pathsOf(pod).map((r) => r.name));
  const fromController = new Set(keysOf(spec).keys());
  expect([...fromWebhook].sort()).toEqual([...fromController].sort());
  for (const n of ["vol", "proj", "init-env", "eph-from", "app-from"]) expect(fromController.has(n)).toBe(true);
});
