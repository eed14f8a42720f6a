/**
 * deploy/ offline: render it with `kubectl kustomize`, validate every object
 * against the Kubernetes OpenAPI schemas (kubernetes-models), and hold the
 * manifests to kloak's policy: webhook safety settings, the DaemonSet's host
 * access, least-privilege RBAC (an exact table), the cert-manager overlay, and
 * the Containerfile. No cluster and no container engine are needed; kubectl
 * is (scripts/setup.sh installs it).
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import {
  CLUSTER_SCOPED,
  ROOT,
  certManagerProblems,
  containerfileStages,
  find,
  id,
  kustomize,
  ofKind,
  rendered,
  validateK8s,
  type Obj,
} from "./helpers.ts";
import { desiredConfigurations, type RegistrationOptions } from "../../src/webhook/registration.ts";
import { parseAgentConfig, webhookRegistration, type AgentConfig } from "../../src/agent/config.ts";

const NS = "kloak";
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  version: string;
  devDependencies: Record<string, string>;
};

const base = () => rendered("deploy").docs;
const overlay = () => rendered("deploy/cert-manager").docs;
const daemonSet = (docs: Obj[]) => find(docs, "DaemonSet", "kloak");
const agent = (docs: Obj[]): Obj => {
  const cs = daemonSet(docs).spec.template.spec.containers as Obj[];
  expect(cs.map((c) => c.name)).toEqual(["agent"]);
  return cs[0]!;
};
// deploy/ ships no webhook configurations: the agent registers these (as the
// rendered DaemonSet configures it), so they are held to the same policy here.
const webhookConfigs = (docs: Obj[], o: RegistrationOptions = webhookRegistration(agentConfig(docs))): Obj[] => {
  const d = desiredConfigurations(o, undefined, { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", name: "kloak", uid: "0" });
  return [d.mutating, d.validating];
};
/**
 * The agent's configuration as the rendered DaemonSet starts it: its args and
 * env through the agent's own parser (downward API fields filled in as the
 * kubelet would), so a manifest and the code cannot disagree unnoticed.
 */
const agentConfig = (docs: Obj[]): AgentConfig => {
  const c = agent(docs);
  const downward: Record<string, string> = { "spec.nodeName": "node-a", "metadata.namespace": NS, "metadata.name": "kloak-abcde" };
  const env: Record<string, string> = {};
  for (const e of c.env as Obj[]) env[e.name] = e.value ?? downward[e.valueFrom?.fieldRef?.fieldPath];
  expect((c.args as string[])[0]).toBe("agent");
  const cfg = parseAgentConfig((c.args as string[]).slice(1), env, () => "unused");
  if (cfg === "help") throw new Error("the DaemonSet's args ask for help");
  return cfg;
};
const byId = (docs: Obj[]) => [...docs].sort((a, b) => id(a).localeCompare(id(b)));

const INVENTORY = [
  "ClusterRole kloak",
  "ClusterRoleBinding kloak",
  "DaemonSet kloak/kloak",
  "Namespace kloak",
  "ResourceQuota kloak/kloak-node-critical",
  "Role kloak/kloak",
  "RoleBinding kloak/kloak",
  "Service kloak/kloak-webhook",
  "ServiceAccount kloak/kloak",
];

describe("kubectl kustomize deploy", () => {
  test("renders exactly kloak's objects", () => {
    const docs = base();
    expect(docs.map(id).sort()).toEqual(INVENTORY);
  });

  test("renders the same objects as deploy/base (the two resource lists agree)", () => {
    expect(byId(base())).toEqual(byId(rendered("deploy/base").docs));
  });

  test("every object validates against its Kubernetes schema", () => {
    const docs = base();
    expect(docs.length).toBeGreaterThan(0);
    for (const d of docs) validateK8s(d);
  });

  test("every namespaced object is in ns kloak; cluster-scoped ones have no namespace", () => {
    for (const d of base()) {
      if (CLUSTER_SCOPED.has(d.kind)) expect({ obj: id(d), ns: d.metadata.namespace }).toEqual({ obj: id(d), ns: undefined });
      else expect({ obj: id(d), ns: d.metadata.namespace }).toEqual({ obj: id(d), ns: NS });
    }
    expect(find(base(), "Namespace", NS).metadata.name).toBe(NS);
  });
});

describe("the validator bites", () => {
  test("a DaemonSet whose image is a number fails", () => {
    const ds = structuredClone(daemonSet(base()));
    validateK8s(ds);
    ds.spec.template.spec.containers[0].image = 3;
    expect(() => validateK8s(ds)).toThrow(/image must be string/);
  });

  test("a webhook with sideEffects Sometimes fails", () => {
    const w = structuredClone(webhookConfigs(base())[1]!);
    validateK8s(w);
    w.webhooks[0].sideEffects = "Sometimes";
    expect(() => validateK8s(w)).toThrow(/sideEffects/);
  });

  test("a misspelt field fails (kubernetes-models alone would accept it)", () => {
    const ds = structuredClone(daemonSet(base()));
    ds.spec.template.spec.containers[0].volumeMounts[0].mountPropogation = "HostToContainer";
    ds.spec.template.spec.hostPid = true;
    expect(() => validateK8s(ds)).toThrow(/unknown field\(s\) .*mountPropogation.*hostPid/);
    const w = structuredClone(webhookConfigs(base())[0]!);
    w.webhooks[0].namespaceSelector.matchExpression = [];
    expect(() => validateK8s(w)).toThrow(/\/webhooks\/0\/namespaceSelector\/matchExpression$/);
  });

  test("an unknown kind or apiVersion fails", () => {
    expect(() => validateK8s({ apiVersion: "example.com/v1", kind: "Widget", metadata: { name: "w" } })).toThrow(/no schema/);
    const ds = structuredClone(daemonSet(base()));
    ds.apiVersion = "extensions/v1beta1";
    expect(() => validateK8s(ds)).toThrow(/no schema/);
  });

  test("a broken Certificate fails the cert-manager check", () => {
    const good = structuredClone(find(overlay(), "Certificate", "kloak-webhook"));
    expect(certManagerProblems(good)).toEqual([]);
    const noSecret = structuredClone(good);
    delete noSecret.spec.secretName;
    expect(certManagerProblems(noSecret)).toContain("spec.secretName missing");
    const typo = structuredClone(good);
    typo.spec.dnsName = typo.spec.dnsNames;
    expect(certManagerProblems(typo)).toContain("spec.dnsName is not a Certificate field");
    const v1alpha = { ...structuredClone(find(overlay(), "Issuer", "kloak-selfsigned")), apiVersion: "cert-manager.io/v1alpha2" };
    expect(certManagerProblems(v1alpha).join()).toMatch(/not cert-manager.io\/v1/);
    const caIssuer = structuredClone(find(overlay(), "Issuer", "kloak-webhook-ca"));
    expect(certManagerProblems(caIssuer)).toEqual([]);
    delete caIssuer.spec.ca.secretName;
    expect(certManagerProblems(caIssuer)).toContain("spec.ca.secretName missing");
    const notCa = structuredClone(find(overlay(), "Certificate", "kloak-webhook-ca"));
    notCa.spec.isCA = "yes";
    expect(certManagerProblems(notCa)).toContain("spec.isCA must be a boolean");
  });
});

describe("admission webhooks", () => {
  test("deploy/ ships none: the agent registers them once it serves", () => {
    for (const dir of ["deploy", "deploy/cert-manager"])
      expect(rendered(dir).docs.filter((d) => String(d.kind).endsWith("WebhookConfiguration")).map(id)).toEqual([]);
  });

  test("as the agent registers them: valid, Fail, no side effects, ≤ 5 s, v1 reviews, owned by ClusterRole kloak", () => {
    const docs = base();
    const role = find(docs, "ClusterRole", "kloak");
    for (const c of webhookConfigs(docs)) {
      validateK8s(c);
      expect(c.metadata.ownerReferences).toEqual([{ apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", name: role.metadata.name, uid: "0" }]);
      expect(c.webhooks).toHaveLength(1);
      for (const w of c.webhooks as Obj[]) {
        const where = `${c.kind} ${w.name}`;
        expect({ where, failurePolicy: w.failurePolicy }).toEqual({ where, failurePolicy: "Fail" });
        expect({ where, sideEffects: w.sideEffects }).toEqual({ where, sideEffects: "None" });
        expect(w.timeoutSeconds).toBeNumber();
        expect(w.timeoutSeconds).toBeLessThanOrEqual(5);
        expect(w.admissionReviewVersions).toContain("v1");
        expect(w.matchPolicy).toBe("Equivalent");
        // kube-system and kloak are never selected, whatever their labels.
        const exprs = w.namespaceSelector.matchExpressions as Obj[];
        const never = exprs.find((e) => e.key === "kubernetes.io/metadata.name");
        expect(never?.operator).toBe("NotIn");
        expect([...never!.values].sort()).toEqual(["kloak", "kube-system"]);
        // A URL would bypass the Service.
        expect(w.clientConfig.url).toBeUndefined();
      }
    }
  });

  test("an outage blocks only opted-in scope: pods in labelled namespaces, Secrets labelled getkloak.io/enabled", () => {
    const [m, v] = webhookConfigs(base());
    expect(m!.webhooks[0].namespaceSelector.matchExpressions).toContainEqual({ key: "getkloak.io/enabled", operator: "In", values: ["true"] });
    expect(m!.webhooks[0].objectSelector).toBeUndefined();
    expect(v!.webhooks[0].objectSelector).toEqual({ matchExpressions: [{ key: "getkloak.io/enabled", operator: "Exists" }] });
  });

  test("the mutating webhook sees pod creation and is reinvoked if needed", () => {
    const [m] = webhookConfigs(base());
    const w = m!.webhooks[0];
    expect(w.name).toBe("mutate.getkloak.io");
    expect(w.clientConfig.service.path).toBe("/mutate");
    expect(w.reinvocationPolicy).toBe("IfNeeded");
    expect(w.rules).toEqual([
      { operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], scope: "Namespaced" },
      { operations: ["UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods/ephemeralcontainers"], scope: "Namespaced" },
    ]);
  });

  test("the validating webhook sees Secret create and update", () => {
    const [, v] = webhookConfigs(base());
    const w = v!.webhooks[0];
    expect(w.name).toBe("validate.getkloak.io");
    expect(w.clientConfig.service.path).toBe("/validate");
    expect(w.rules).toEqual([
      { operations: ["CREATE", "UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["secrets"], scope: "Namespaced" },
    ]);
  });

  test("call the rendered Service, whose port leads to the DaemonSet's webhook port", () => {
    const docs = base();
    const ds = daemonSet(docs);
    const podLabels = ds.spec.template.metadata.labels as Record<string, string>;
    const ports = agent(docs).ports as Obj[];
    for (const c of webhookConfigs(docs)) {
      const ref = c.webhooks[0].clientConfig.service as Obj;
      expect(ref.namespace).toBe(NS);
      const svc = find(docs, "Service", ref.name);
      expect(svc.metadata.namespace).toBe(ref.namespace);
      const sp = (svc.spec.ports as Obj[]).find((p) => p.port === (ref.port ?? 443));
      expect(sp).toBeDefined();
      expect(sp!.port).toBe(443);
      // Named target port, resolved against the container's ports.
      expect(sp!.targetPort).toBe("webhook");
      const cp = ports.find((p) => p.name === sp!.targetPort);
      // 443: GKE private clusters let the control plane reach pods on 443 and 10250 only.
      expect(cp?.containerPort).toBe(443);
      expect(cp?.containerPort).toBe(agentConfig(docs).webhookPort);
      // The Service selects the agent's pods.
      const sel = svc.spec.selector as Record<string, string>;
      expect(Object.keys(sel).length).toBeGreaterThan(0);
      for (const [k, v] of Object.entries(sel)) expect({ k, v: podLabels[k] }).toEqual({ k, v });
      expect(sel["app.kubernetes.io/name"]).toBe("kloak");
    }
  });
});

describe("DaemonSet kloak", () => {
  test("runs the agent from the release image with its service account", () => {
    const docs = base();
    const spec = daemonSet(docs).spec.template.spec;
    const sa = find(docs, "ServiceAccount", spec.serviceAccountName);
    expect(sa.metadata.namespace).toBe(NS);
    expect(spec.serviceAccountName).toBe("kloak");
    const c = agent(docs);
    // The tag comes from kustomize `images:` and follows package.json.
    expect(c.image).toBe(`ghcr.io/getkloak/kloak:${pkg.version}`);
    expect(c.args).toEqual(["agent"]);
    expect(c.command).toBeUndefined(); // the image's ENTRYPOINT is kloak
  });

  test("selects its own pods", () => {
    const ds = daemonSet(base());
    const labels = ds.spec.template.metadata.labels as Record<string, string>;
    const match = ds.spec.selector.matchLabels as Record<string, string>;
    expect(Object.keys(match).length).toBeGreaterThan(0);
    for (const [k, v] of Object.entries(match)) expect({ k, v: labels[k] }).toEqual({ k, v });
  });

  test("is host-PID, privileged root with a read-only root filesystem, no host network", () => {
    const docs = base();
    const spec = daemonSet(docs).spec.template.spec;
    expect(spec.hostPID).toBe(true);
    expect(spec.hostNetwork).toBeUndefined();
    expect(spec.hostIPC).toBeUndefined();
    const sc = agent(docs).securityContext;
    expect(sc.privileged).toBe(true);
    expect(sc.runAsUser).toBe(0);
    expect(sc.readOnlyRootFilesystem).toBe(true);
  });

  test("mounts exactly the host paths it needs, read-only where possible", () => {
    const docs = base();
    const spec = daemonSet(docs).spec.template.spec;
    const want: Record<string, { readOnly: boolean }> = {
      "/sys/fs/bpf": { readOnly: false }, // pins under /sys/fs/bpf/kloak
      "/sys/kernel/btf": { readOnly: true },
      "/sys/kernel/security": { readOnly: true },
      "/sys/fs/cgroup": { readOnly: true },
    };
    const hostVols = (spec.volumes as Obj[]).filter((v) => v.hostPath);
    expect(hostVols.map((v) => v.hostPath.path).sort()).toEqual(Object.keys(want).sort());
    const mounts = agent(docs).volumeMounts as Obj[];
    for (const v of hostVols) {
      const path = v.hostPath.path as string;
      expect({ path, type: v.hostPath.type }).toEqual({ path, type: "Directory" });
      const m = mounts.filter((x) => x.name === v.name);
      expect({ path, mounts: m.length }).toEqual({ path, mounts: 1 });
      expect({ path, at: m[0]!.mountPath, readOnly: m[0]!.readOnly === true }).toEqual({ path, at: path, readOnly: want[path]!.readOnly });
      expect(m[0]!.mountPropagation === "Bidirectional").toBe(false);
    }
    const bpffs = mounts.find((m) => m.mountPath === "/sys/fs/bpf")!;
    expect(bpffs.mountPropagation).toBe("HostToContainer");
    // hostPID already shows the host's processes in /proc.
    expect(hostVols.some((v) => v.hostPath.path === "/proc" || v.hostPath.path === "/")).toBe(false);
    // A read-only root needs a writable /tmp.
    const tmp = mounts.find((m) => m.mountPath === "/tmp");
    expect((spec.volumes as Obj[]).find((v) => v.name === tmp?.name)?.emptyDir).toBeDefined();
  });

  test("gets node, namespace and pod name from the downward API", () => {
    const env = agent(base()).env as Obj[];
    const want = { KLOAK_NODE_NAME: "spec.nodeName", KLOAK_NAMESPACE: "metadata.namespace", KLOAK_POD_NAME: "metadata.name" };
    for (const [name, fieldPath] of Object.entries(want)) {
      const e = env.filter((x) => x.name === name);
      expect({ name, n: e.length }).toEqual({ name, n: 1 });
      expect({ name, fieldPath: e[0]!.valueFrom?.fieldRef?.fieldPath }).toEqual({ name, fieldPath });
    }
  });

  test("exposes webhook 443 and ops 9090, the ports the agent listens on, probed on /healthz and /readyz", () => {
    const c = agent(base());
    const cfg = agentConfig(base());
    expect((c.ports as Obj[]).map((p) => [p.name, p.containerPort]).sort()).toEqual([
      ["ops", cfg.opsPort],
      ["webhook", cfg.webhookPort],
    ]);
    expect([cfg.opsPort, cfg.webhookPort]).toEqual([9090, 443]);
    expect(c.livenessProbe.httpGet).toMatchObject({ path: "/healthz", port: "ops" });
    expect(c.readinessProbe.httpGet).toMatchObject({ path: "/readyz", port: "ops" });
    for (const p of [c.livenessProbe, c.readinessProbe]) expect(p.httpGet.scheme ?? "HTTP").toBe("HTTP");
  });

  test("its namespace admits privileged pods under Pod Security Admission", () => {
    const ns = find(base(), "Namespace", NS);
    expect(ns.metadata.name).toBe(daemonSet(base()).metadata.namespace);
    for (const mode of ["enforce", "audit", "warn"]) {
      const key = `pod-security.kubernetes.io/${mode}`;
      expect({ key, level: ns.metadata.labels?.[key] }).toEqual({ key, level: "privileged" });
    }
    // A pinned version would stop following the cluster's; "privileged" admits everything in any version.
    expect(Object.keys(ns.metadata.labels).filter((k) => k.endsWith("-version"))).toEqual([]);
  });

  test("its priority class is admitted on GKE: a ResourceQuota in ns kloak covers it", () => {
    const docs = base();
    const pc = daemonSet(docs).spec.template.spec.priorityClassName;
    const quotas = ofKind(docs, "ResourceQuota");
    expect(quotas.map(id)).toEqual(["ResourceQuota kloak/kloak-node-critical"]);
    const q = quotas[0]!;
    expect(q.metadata.namespace).toBe(daemonSet(docs).metadata.namespace);
    // GKE's limitedResources match on the PriorityClass scope; only such a quota lets the pods in.
    expect(q.spec.scopeSelector.matchExpressions).toEqual([{ scopeName: "PriorityClass", operator: "In", values: [pc] }]);
    expect(q.spec.scopes).toBeUndefined();
    // Only a pod count: one agent per node, up to GKE's 15,000 nodes; no CPU or memory cap to trip over.
    expect(q.spec.hard).toEqual({ pods: "15000" });
  });

  test("runs on every node, node-critical, one node at a time on update", () => {
    const docs = base();
    const ds = daemonSet(docs);
    const spec = ds.spec.template.spec;
    expect(spec.tolerations).toEqual([{ operator: "Exists" }]);
    expect(spec.priorityClassName).toBe("system-node-critical");
    expect(spec.terminationGracePeriodSeconds).toBe(120);
    expect(ds.spec.updateStrategy).toEqual({ type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    expect(agent(docs).resources).toEqual({ requests: { cpu: "50m", memory: "96Mi" }, limits: { memory: "256Mi" } });
  });
});

describe("RBAC", () => {
  const ALL = ["create", "delete", "get", "list", "patch", "update", "watch"];
  const READ = ["get", "list", "watch"];
  /** scope → group/resource[resourceNames] → verbs. Exactly this, nothing more. */
  const WANT: Record<string, string[]> = {
    "ClusterRole kloak: core/secrets": ALL,
    "ClusterRole kloak: core/pods": READ,
    "ClusterRole kloak: core/namespaces": READ,
    "ClusterRole kloak: apps/replicasets": READ,
    "ClusterRole kloak: apps/deployments": READ,
    "ClusterRole kloak: apps/statefulsets": READ,
    "ClusterRole kloak: apps/daemonsets": READ,
    "ClusterRole kloak: core/events": ["create", "patch"],
    "ClusterRole kloak: events.k8s.io/events": ["create", "patch"],
    "ClusterRole kloak: admissionregistration.k8s.io/mutatingwebhookconfigurations": ["create"],
    "ClusterRole kloak: admissionregistration.k8s.io/validatingwebhookconfigurations": ["create"],
    "ClusterRole kloak: admissionregistration.k8s.io/mutatingwebhookconfigurations[kloak]": ["get", "update"],
    "ClusterRole kloak: admissionregistration.k8s.io/validatingwebhookconfigurations[kloak]": ["get", "update"],
    // Only to read its own uid for the webhook configurations' ownerReference.
    "ClusterRole kloak: rbac.authorization.k8s.io/clusterroles[kloak]": ["get"],
    "Role kloak/kloak: coordination.k8s.io/leases": ["create"],
    "Role kloak/kloak: coordination.k8s.io/leases[kloak-shadow-writer]": ["get", "update"],
  };

  function table(docs: Obj[]): Record<string, string[]> {
    const got: Record<string, Set<string>> = {};
    for (const role of [...ofKind(docs, "ClusterRole"), ...ofKind(docs, "Role")]) {
      expect(role.aggregationRule).toBeUndefined();
      for (const r of role.rules as Obj[]) {
        expect(r.nonResourceURLs).toBeUndefined();
        const names = r.resourceNames ? `[${[...r.resourceNames].sort().join(",")}]` : "";
        for (const g of r.apiGroups as string[]) {
          for (const res of r.resources as string[]) {
            const key = `${id(role)}: ${g === "" ? "core" : g}/${res}${names}`;
            got[key] ??= new Set();
            for (const v of r.verbs as string[]) got[key]!.add(v);
          }
        }
      }
    }
    return Object.fromEntries(Object.entries(got).map(([k, v]) => [k, [...v].sort()]));
  }

  test("has no wildcard verb, resource or API group", () => {
    const roles = [...ofKind(base(), "ClusterRole"), ...ofKind(base(), "Role")];
    expect(roles.length).toBe(2);
    for (const role of roles) {
      for (const r of role.rules as Obj[]) {
        for (const f of ["verbs", "resources", "apiGroups", "resourceNames"]) {
          for (const v of (r[f] ?? []) as string[]) expect({ role: id(role), f, v, star: v.includes("*") }).toEqual({ role: id(role), f, v, star: false });
        }
      }
    }
  });

  test("grants exactly the table's verbs per resource", () => {
    const want = Object.fromEntries(Object.entries(WANT).map(([k, v]) => [k, [...v].sort()]));
    expect(table(base())).toEqual(want);
  });

  test("never grants nodes, service accounts, or any subresource (pods/exec, ...)", () => {
    const resources = [...ofKind(base(), "ClusterRole"), ...ofKind(base(), "Role")].flatMap((r) =>
      (r.rules as Obj[]).flatMap((rule) => rule.resources as string[]),
    );
    expect(resources.length).toBeGreaterThan(0);
    for (const res of resources) {
      expect(res).not.toContain("/");
      expect(["nodes", "serviceaccounts", "roles", "clusterrolebindings", "rolebindings"]).not.toContain(res);
    }
  });

  test("binds each role to the ServiceAccount that exists, and only to it", () => {
    const docs = base();
    const sa = find(docs, "ServiceAccount", "kloak");
    const bindings = [...ofKind(docs, "ClusterRoleBinding"), ...ofKind(docs, "RoleBinding")];
    expect(bindings.map(id).sort()).toEqual(["ClusterRoleBinding kloak", "RoleBinding kloak/kloak"]);
    for (const b of bindings) {
      expect(b.subjects).toEqual([{ kind: "ServiceAccount", name: sa.metadata.name, namespace: sa.metadata.namespace }]);
      expect(b.roleRef.apiGroup).toBe("rbac.authorization.k8s.io");
      const role = find(docs, b.roleRef.kind, b.roleRef.name);
      if (b.kind === "RoleBinding") {
        expect(role.kind).toBe("Role");
        expect(role.metadata.namespace).toBe(b.metadata.namespace);
      } else {
        expect(role.kind).toBe("ClusterRole");
      }
    }
    // Every role is bound.
    for (const r of [...ofKind(docs, "ClusterRole"), ...ofKind(docs, "Role")]) {
      expect(bindings.some((b) => b.roleRef.kind === r.kind && b.roleRef.name === r.metadata.name)).toBe(true);
    }
  });
});

describe("kubectl kustomize deploy/cert-manager", () => {
  const CERT_DIR = "/etc/kloak/webhook-tls";
  const CERT_MANAGER = [
    "Certificate kloak/kloak-webhook",
    "Certificate kloak/kloak-webhook-ca",
    "Issuer kloak/kloak-selfsigned",
    "Issuer kloak/kloak-webhook-ca",
  ];
  /** The Issuer a Certificate names (namespaced: an Issuer, never a ClusterIssuer, so nothing outside ns kloak). */
  const issuerOf = (docs: Obj[], cert: Obj): Obj => {
    expect(cert.spec.issuerRef.kind ?? "Issuer").toBe("Issuer");
    const issuer = find(docs, "Issuer", cert.spec.issuerRef.name);
    expect(issuer.metadata.namespace).toBe(cert.metadata.namespace);
    return issuer;
  };
  const hours = (d: string): number => {
    const m = /^(\d+)h$/.exec(d);
    if (!m) throw new Error(`duration ${d}: write it in whole hours`);
    return Number(m[1]);
  };

  test("renders the base plus the issuer chain, all valid", () => {
    const docs = overlay();
    expect(docs.map(id).sort()).toEqual([...INVENTORY, ...CERT_MANAGER].sort());
    for (const d of docs) {
      if (d.apiVersion?.startsWith("cert-manager.io/")) expect({ obj: id(d), problems: certManagerProblems(d) }).toEqual({ obj: id(d), problems: [] });
      else validateK8s(d);
    }
  });

  test("a chain: self-signed Issuer → CA Certificate → CA Issuer → serving Certificate for the webhook Service", () => {
    const docs = overlay();
    const leaf = find(docs, "Certificate", "kloak-webhook");
    const caIssuer = issuerOf(docs, leaf);
    expect(Object.keys(caIssuer.spec)).toEqual(["ca"]);
    const ca = find(docs, "Certificate", caIssuer.metadata.name);
    // The CA Issuer signs with the key in the CA Certificate's Secret.
    expect(caIssuer.spec.ca.secretName).toBe(ca.spec.secretName);
    expect(ca.spec.isCA).toBe(true);
    expect(ca.spec.commonName).toBeString();
    expect(ca.spec.dnsNames).toBeUndefined();
    expect(issuerOf(docs, ca).spec).toEqual({ selfSigned: {} });
    // The serving certificate is a leaf, for the Service the webhooks call.
    expect(leaf.spec.isCA ?? false).toBe(false);
    const ref = webhookConfigs(docs)[0]!.webhooks[0].clientConfig.service;
    const host = `${ref.name}.${ref.namespace}.svc`;
    expect(host).toBe("kloak-webhook.kloak.svc");
    expect([...leaf.spec.dnsNames].sort()).toEqual([host, `${host}.cluster.local`]);
    expect(leaf.spec.secretName).toBe("kloak-webhook-cert");
    expect(new Set([leaf.spec.secretName, ca.spec.secretName]).size).toBe(2);
  });

  test("renewals without an outage: the leaf rotates under a CA that outlives it and keeps its key", () => {
    const docs = overlay();
    const leaf = find(docs, "Certificate", "kloak-webhook");
    const ca = find(docs, "Certificate", "kloak-webhook-ca");
    // The leaf is renewed (new key) well before it expires; the CA lives many leaf lifetimes.
    expect(leaf.spec.privateKey.rotationPolicy).toBe("Always");
    expect(hours(leaf.spec.renewBefore)).toBeLessThan(hours(leaf.spec.duration));
    expect(hours(ca.spec.duration)).toBeGreaterThanOrEqual(10 * hours(leaf.spec.duration));
    // A renewed CA certificate keeps key and subject, so leaves it signed before still verify under it.
    expect(ca.spec.privateKey.rotationPolicy).toBe("Never");
    // Renewed before a leaf issued just before the CA's renewal could outlive it.
    expect(hours(ca.spec.renewBefore)).toBeGreaterThan(hours(leaf.spec.duration));
  });

  test("the agent reads the serving Certificate's Secret in cert-manager mode", () => {
    const docs = overlay();
    const cert = find(docs, "Certificate", "kloak-webhook");
    const c = agent(docs);
    const cfg = agentConfig(docs);
    expect(cfg.certMode).toBe("cert-manager");
    expect(cfg.certDir).toBe(CERT_DIR);
    const mount = (c.volumeMounts as Obj[]).find((m) => m.mountPath === CERT_DIR);
    expect(mount?.readOnly).toBe(true);
    const vol = (daemonSet(docs).spec.template.spec.volumes as Obj[]).find((v) => v.name === mount?.name);
    expect(vol?.secret?.secretName).toBe(cert.spec.secretName);
    expect(vol?.secret?.defaultMode).toBe(0o400);
    // The CA's Secret holds the CA's private key: the agent has no business mounting it.
    const ca = find(docs, "Certificate", "kloak-webhook-ca");
    expect((daemonSet(docs).spec.template.spec.volumes as Obj[]).filter((v) => v.secret?.secretName === ca.spec.secretName)).toEqual([]);
  });

  test("both webhook configurations, as this DaemonSet's agent registers them, take caBundle from the CA Certificate", () => {
    const docs = overlay();
    const ca = find(docs, "Certificate", "kloak-webhook-ca");
    const o = webhookRegistration(agentConfig(docs));
    expect(o.ca).toEqual({ mode: "cert-manager", certificate: `${ca.metadata.namespace}/${ca.metadata.name}` });
    for (const c of webhookConfigs(docs, o)) {
      expect(c.metadata.annotations?.["cert-manager.io/inject-ca-from"]).toBe(`${ca.metadata.namespace}/${ca.metadata.name}`);
      expect(c.webhooks[0].clientConfig.caBundle).toBeUndefined();
      validateK8s(c);
    }
  });

  test("differs from the base in nothing else", () => {
    const baseDocs = base();
    const docs = overlay();
    const added = ["KLOAK_CERT_MODE", "KLOAK_CERT_DIR", "KLOAK_CERT_MANAGER_CA"];
    for (const b of baseDocs) {
      const o = structuredClone(find(docs, b.kind, b.metadata.name));
      if (o.kind === "DaemonSet") {
        const spec = o.spec.template.spec;
        const c = spec.containers[0];
        expect((c.env as Obj[]).filter((e) => added.includes(e.name)).map((e) => e.name).sort()).toEqual([...added].sort());
        c.env = (c.env as Obj[]).filter((e) => !added.includes(e.name));
        const m = (c.volumeMounts as Obj[]).find((x) => x.mountPath === CERT_DIR)!;
        c.volumeMounts = (c.volumeMounts as Obj[]).filter((x) => x !== m);
        spec.volumes = (spec.volumes as Obj[]).filter((v) => v.name !== m.name);
      }
      expect(o).toEqual(b);
    }
  });
});

describe("kustomizations", () => {
  const kz = (dir: string) => parse(readFileSync(join(ROOT, dir, "kustomization.yaml"), "utf8")) as Obj;
  const COMMON = ["apiVersion", "kind", "resources", "namespace", "images", "commonLabels"];

  // The kustomize inside old kubectl (Debian 12: 1.20, kustomize v2) takes
  // only files under `resources:` and directories only under `bases:`.
  test("deploy and deploy/base use only fields old kustomize knows, and list files", () => {
    for (const dir of ["deploy", "deploy/base"]) {
      const k = kz(dir);
      for (const f of Object.keys(k)) expect({ dir, f, ok: COMMON.includes(f) }).toEqual({ dir, f, ok: true });
      expect(k.resources.length).toBe(6);
      for (const r of k.resources as string[]) expect({ r, file: statSync(join(ROOT, dir, r)).isFile() }).toEqual({ r, file: true });
      expect(k.images).toEqual([{ name: "ghcr.io/getkloak/kloak", newTag: pkg.version }]);
    }
  });

  test("deploy/cert-manager adds only bases and patchesStrategicMerge", () => {
    const dir = "deploy/cert-manager";
    const k = kz(dir);
    for (const f of Object.keys(k)) expect({ f, ok: [...COMMON, "bases", "patchesStrategicMerge"].includes(f) }).toEqual({ f, ok: true });
    expect(k.bases).toEqual(["../base"]);
    for (const r of [...k.resources, ...k.patchesStrategicMerge] as string[]) {
      expect({ r, file: statSync(join(ROOT, dir, r)).isFile() }).toEqual({ r, file: true });
    }
  });
});

describe("deploy/Containerfile", () => {
  const stages = containerfileStages(readFileSync(join(ROOT, "deploy/Containerfile"), "utf8"));
  const final = stages.at(-1)!;
  const ins = (op: string) => final.instructions.filter((i) => i.op === op);

  // test/image builds it and runs it; these hold the file to what the docs say.
  test("is one stage FROM scratch: nothing to pull, so it builds without a registry", () => {
    expect(stages).toHaveLength(1);
    expect(final.from).toBe("scratch");
    expect(ins("RUN")).toEqual([]);
  });

  test("copies only the rootfs/ scripts/image.ts lays out", () => {
    expect(ins("COPY").map((i) => i.args)).toEqual(["rootfs/ /"]);
    expect(ins("ADD")).toEqual([]);
  });

  test("runs kloak agent as root by default", () => {
    const json = (op: string) => {
      const all = ins(op);
      expect({ op, n: all.length }).toEqual({ op, n: 1 });
      return JSON.parse(all[0]!.args) as unknown;
    };
    expect(json("ENTRYPOINT")).toEqual(["/usr/local/bin/kloak"]);
    expect(json("CMD")).toEqual(["agent"]);
    expect(ins("USER").map((i) => i.args)).toEqual(["0"]);
  });

  test("labels its source", () => {
    const labels = ins("LABEL").map((i) => i.args).join(" ");
    expect(labels).toMatch(/org\.opencontainers\.image\.source="https:\/\/[^"]+"/);
  });
});
