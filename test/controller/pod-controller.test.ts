import { describe, expect, test } from "bun:test";
import { PodController, type Lookup } from "../../src/controller/pod-controller.ts";
import type { MetaView, PodView } from "../../src/controller/pod-view.ts";
import { podView } from "../../src/controller/pod-view.ts";
import type { SecretView } from "../../src/kube/secret-view.ts";
import type { PodTarget } from "../../src/node/pod-attacher.ts";

function lookup<T extends { metadata: { namespace?: string; name?: string } }>(items: T[]): Lookup<T> {
  const key = (ns: string | undefined, n: string) => (ns ? `${ns}/${n}` : n);
  const m = new Map(items.map((i) => [key(i.metadata.namespace, i.metadata.name!), i]));
  return { get: (ns, n) => m.get(key(ns, n)), values: () => m.values() };
}

function setup(o: { namespaces?: MetaView[]; secrets?: SecretView[]; owners?: Partial<Record<string, MetaView[]>> } = {}) {
  const synced: PodTarget[] = [];
  const removed: string[] = [];
  const events: { reason: string; message: string; name: string }[] = [];
  const ids: Record<string, number[]> = { "shop/api": [7, 8], "shop/db": [9] };
  const pods = lookup<PodView>([]);
  const c = new PodController({
    pods,
    namespaces: lookup(o.namespaces ?? [{ metadata: { name: "shop" } }]),
    owners: {
      ReplicaSet: lookup(o.owners?.ReplicaSet ?? []),
      Deployment: lookup(o.owners?.Deployment ?? []),
      StatefulSet: lookup(o.owners?.StatefulSet ?? []),
      DaemonSet: lookup(o.owners?.DaemonSet ?? []),
    },
    secrets: lookup(o.secrets ?? []),
    catalog: { idsFor: (ns, name, keys) => (ids[`${ns}/${name}`] ?? []).filter((_, i) => keys === "all" || keys.has(["token", "other"][i]!)) },
    attacher: { sync: (t) => synced.push(t), remove: (uid) => removed.push(uid) },
    events: { record: (obj, _type, reason, message) => events.push({ reason, message, name: obj.name }) },
    log: () => {},
  });
  return { c, synced, removed, events };
}

const pod = (meta: Record<string, unknown>, spec: Record<string, unknown> = {}, phase = "Running") =>
  podView({
    metadata: { name: "web-0", namespace: "shop", uid: "u1", ...meta },
    spec: { containers: [{ name: "app" }], ...spec },
    status: { phase, qosClass: "Burstable", containerStatuses: [{ name: "app", containerID: "containerd://abc", state: { running: {} } }] },
  });

describe("pod controller", () => {
  test("a namespace labelled getkloak.io/enabled=yes enables nothing, and the pod gets an Event saying what to do", () => {
    const { c, synced, events } = setup({ namespaces: [{ metadata: { name: "shop", labels: { "getkloak.io/enabled": "yes" } } }] });
    c.podChanged(pod({}));
    expect(synced).toHaveLength(0);
    expect(events).toHaveLength(1);
    expect(events[0]!.reason).toBe("KloakInvalidEnablement");
    expect(events[0]!.message).toMatch(/"yes"; only "true" enables kloak.*set it to "true" or remove it/);
    c.podChanged(pod({}));
    expect(events).toHaveLength(1); // once per pod, not per watch event
  });

  test("a pod referencing the shadow directly is entitled to the original's keys; items narrow them", () => {
    const shadow: SecretView = { metadata: { name: "api-kloak", namespace: "shop", labels: { "getkloak.io/managed": "true", "getkloak.io/owner": "api" } } };
    const { c, synced } = setup({ secrets: [shadow] });
    c.podChanged(
      pod(
        { annotations: { "getkloak.io/enabled": "true" } },
        { volumes: [{ name: "v", secret: { secretName: "api-kloak", items: [{ key: "token", path: "t" }] } }] },
      ),
    );
    expect(synced).toHaveLength(1);
    expect(synced[0]!.secretIds).toEqual([7]);
    expect(synced[0]!.containers).toEqual([{ name: "app", containerId: "containerd://abc", running: true }]);
  });

  test("enabled through the owning Deployment (ReplicaSet -> Deployment); a finished pod is detached", () => {
    const rs: MetaView = { metadata: { name: "web-5d9", namespace: "shop", ownerReferences: [{ apiVersion: "apps/v1", kind: "Deployment", name: "web", uid: "d1", controller: true }] } };
    const dep: MetaView = { metadata: { name: "web", namespace: "shop", labels: { "getkloak.io/enabled": "true" } } };
    const { c, synced, removed } = setup({ owners: { ReplicaSet: [rs], Deployment: [dep] } });
    const owned = { ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-5d9", uid: "r1", controller: true }] };
    c.podChanged(pod(owned, { containers: [{ name: "app", envFrom: [{ secretRef: { name: "db" } }] }] }));
    expect(synced.map((t) => t.secretIds)).toEqual([[9]]);
    c.podChanged(pod(owned, {}, "Succeeded"));
    expect(removed).toEqual(["u1"]);
    expect(c.trackedPods).toBe(0);
  });

  test("a pod that is not enabled anywhere is never handed to the attacher", () => {
    const { c, synced, events } = setup();
    c.podChanged(pod({}, { volumes: [{ name: "v", secret: { secretName: "api" } }] }));
    expect(synced).toHaveLength(0);
    expect(events).toHaveLength(0);
  });
});
