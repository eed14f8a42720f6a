/** podEnablement: pod, namespace label, controlling workloads (ReplicaSet -> Deployment, StatefulSet, DaemonSet); invalid values reported. */
import { expect, test } from "bun:test";
import { podEnablement, type EnablementLookup, type MetaWithOwners } from "../../src/controller/pod-enablement.ts";
import { ENABLED } from "../../src/kube/contract.ts";

type Obj = { metadata: MetaWithOwners };
function world(o: { namespaces?: Record<string, MetaWithOwners>; owners?: Record<string, Obj> } = {}): EnablementLookup {
  return {
    namespace: (name) => o.namespaces?.[name],
    owner: (ns, kind, name) => o.owners?.[`${ns}/${kind}/${name}`],
  };
}
const on = { [ENABLED]: "true" };
const ctl = (kind: string, name: string) => [{ apiVersion: "apps/v1", kind, name, uid: `${name}-uid`, controller: true }];
const pod = (m: Partial<MetaWithOwners> = {}): Obj => ({ metadata: { name: "p", namespace: "ns", ...m } });

test("pod label or annotation", () => {
  expect(podEnablement(pod({ labels: on }), world())).toEqual({ enabled: true, via: "pod", problems: [] });
  expect(podEnablement(pod({ annotations: on }), world())).toEqual({ enabled: true, via: "pod", problems: [] });
  expect(podEnablement(pod(), world())).toEqual({ enabled: false, problems: [] });
});

test("namespace: the label enables, an annotation does not", () => {
  expect(podEnablement(pod(), world({ namespaces: { ns: { name: "ns", labels: on } } }))).toEqual({ enabled: true, via: "namespace", problems: [] });
  expect(podEnablement(pod(), world({ namespaces: { ns: { name: "ns", annotations: on } } }))).toEqual({ enabled: false, problems: [] });
  // another namespace's label means nothing
  expect(podEnablement(pod(), world({ namespaces: { other: { name: "other", labels: on } } })).enabled).toBe(false);
});

test("invalid values are reported and ignored", () => {
  const r = podEnablement(pod(), world({ namespaces: { ns: { name: "ns", labels: { [ENABLED]: "yes" } } } }));
  expect(r.enabled).toBe(false);
  expect(r.problems).toHaveLength(1);
  expect(r.problems[0]).toContain('Namespace ns has getkloak.io/enabled="yes"');
  expect(r.problems[0]).toContain('only "true" enables');

  const p = podEnablement(pod({ annotations: { [ENABLED]: "True" } }), world({ namespaces: { ns: { name: "ns", labels: on } } }));
  expect(p.enabled).toBe(true);
  expect(p.via).toBe("namespace");
  expect(p.problems).toEqual([expect.stringContaining('Pod ns/p has getkloak.io/enabled="True"')]);

  // "true" in one place enables even if the other place of the same object is invalid
  expect(podEnablement(pod({ labels: { [ENABLED]: "1" }, annotations: on }), world())).toMatchObject({ enabled: true, via: "pod" });
});

test("Deployment through its ReplicaSet; the ReplicaSet itself; both invalid", () => {
  const rs = (m: Partial<MetaWithOwners> = {}): Obj => ({ metadata: { name: "web-5d9", namespace: "ns", ownerReferences: ctl("Deployment", "web"), ...m } });
  const dep = (m: Partial<MetaWithOwners> = {}): Obj => ({ metadata: { name: "web", namespace: "ns", ...m } });
  const p = pod({ ownerReferences: ctl("ReplicaSet", "web-5d9") });

  expect(podEnablement(p, world({ owners: { "ns/ReplicaSet/web-5d9": rs(), "ns/Deployment/web": dep({ labels: on }) } }))).toEqual({
    enabled: true,
    via: "Deployment",
    problems: [],
  });
  expect(podEnablement(p, world({ owners: { "ns/ReplicaSet/web-5d9": rs(), "ns/Deployment/web": dep({ annotations: on }) } }))).toMatchObject({
    enabled: true,
    via: "Deployment",
  });
  expect(podEnablement(p, world({ owners: { "ns/ReplicaSet/web-5d9": rs({ annotations: on }), "ns/Deployment/web": dep() } }))).toMatchObject({
    enabled: true,
    via: "ReplicaSet",
  });
  const bad = podEnablement(p, world({ owners: { "ns/ReplicaSet/web-5d9": rs({ labels: { [ENABLED]: "on" } }), "ns/Deployment/web": dep({ annotations: { [ENABLED]: "yes" } }) } }));
  expect(bad.enabled).toBe(false);
  expect(bad.problems).toEqual([expect.stringContaining("ReplicaSet ns/web-5d9"), expect.stringContaining("Deployment ns/web")]);
});

test("StatefulSet and DaemonSet owners", () => {
  for (const kind of ["StatefulSet", "DaemonSet"] as const) {
    const p = pod({ ownerReferences: ctl(kind, "w") });
    expect(podEnablement(p, world({ owners: { [`ns/${kind}/w`]: { metadata: { name: "w", namespace: "ns", labels: on } } } }))).toEqual({
      enabled: true,
      via: kind,
      problems: [],
    });
  }
});

test("missing owner, non-controller references, unfollowed kinds: not enabled, no throw", () => {
  const dep = { metadata: { name: "web", namespace: "ns", labels: on } };
  // the ReplicaSet is not (yet) cached: its Deployment cannot be reached
  expect(podEnablement(pod({ ownerReferences: ctl("ReplicaSet", "gone") }), world({ owners: { "ns/Deployment/web": dep } }))).toEqual({
    enabled: false,
    problems: [],
  });
  // a reference that is not the controller is not followed
  const notCtl = [{ apiVersion: "apps/v1", kind: "StatefulSet", name: "w", uid: "u", controller: false }];
  expect(podEnablement(pod({ ownerReferences: notCtl }), world({ owners: { "ns/StatefulSet/w": { metadata: { name: "w", labels: on } } } })).enabled).toBe(false);
  // Job is not followed; a Deployment is never reached from a StatefulSet
  expect(podEnablement(pod({ ownerReferences: ctl("Job", "j") }), world({ owners: { "ns/Job/j": { metadata: { name: "j", labels: on } } } })).enabled).toBe(false);
  const sts = { metadata: { name: "w", namespace: "ns", ownerReferences: ctl("Deployment", "web") } };
  expect(podEnablement(pod({ ownerReferences: ctl("StatefulSet", "w") }), world({ owners: { "ns/StatefulSet/w": sts, "ns/Deployment/web": dep } })).enabled).toBe(false);
});

test("precedence of via: pod, then namespace, then owners nearest first; problems from every level", () => {
  const p = pod({ labels: on, ownerReferences: ctl("DaemonSet", "d") });
  const r = podEnablement(p, world({ namespaces: { ns: { name: "ns", labels: { [ENABLED]: "false" } } }, owners: { "ns/DaemonSet/d": { metadata: { name: "d", labels: on } } } }));
  expect(r.via).toBe("pod");
  expect(r.problems).toEqual([expect.stringContaining('Namespace ns has getkloak.io/enabled="false"')]);
});
