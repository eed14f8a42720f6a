/**
 * AdmissionReview requests for the agent benchmark's webhook load, shaped like
 * what kube-apiserver sends (admission.k8s.io/v1, full objects, userInfo,
 * options), and the checks on kloak's answers.
 *
 * Three kinds, mixed by request index (KIND_OF):
 *
 *   patched   POST /mutate, a Deployment's pod (app container + sidecar,
 *             service-account projected volume, probes, resources) that
 *             references three enabled Secrets: env secretKeyRef, envFrom
 *             secretRef and a secret volume. kloak answers with a JSON patch
 *             that swaps each reference for its shadow and annotates the pod.
 *   allowed   POST /mutate, the same pod without any Secret reference: allowed
 *             without a patch.
 *   validate  POST /validate, CREATE of an enabled Secret (1-2 keys, values of
 *             32-64 random bytes, half of them with an IP getkloak.io/hosts
 *             rule): allowed.
 *
 * Bodies are built once per variant with a uid marker; each request only
 * substitutes a fresh uid. Secret values in validate reviews are random and
 * never printed (checks report counts and paths only).
 */
import { randomBytes, randomUUID } from "node:crypto";
import { applyPatch, type Operation } from "fast-json-patch";

export type ReviewKind = "patched" | "allowed" | "validate";
export const KINDS: readonly ReviewKind[] = ["patched", "allowed", "validate"];

/** Request i's kind: 5 in 10 patched, 3 allowed, 2 validate. */
export function kindOf(i: number): ReviewKind {
  const r = i % 10;
  return r < 5 ? "patched" : r < 8 ? "allowed" : "validate";
}

/** What the load generator needs to know about the cluster's enabled Secrets. */
export interface SecretInventory {
  /** namespace -> names of enabled Secrets (each has a "token" key) */
  byNamespace: Record<string, string[]>;
}

export interface ReviewTemplate {
  kind: ReviewKind;
  path: "/mutate" | "/validate";
  /** JSON body with UID_MARKER where the request uid goes */
  body: string;
  /** patched: the pod as sent, and the Secret names it references (for the check) */
  pod?: unknown;
  refs?: string[];
}

export const UID_MARKER = "00000000-0000-4000-8000-0000marker00";

const SHADOW_SUFFIX = "-kloak";
const ENABLED = "getkloak.io/enabled";

function hex(n: number): string {
  return randomBytes(Math.ceil(n / 2)).toString("hex").slice(0, n);
}

function podOf(ns: string, refs: [string, string, string] | null): Record<string, unknown> {
  const hash = hex(10);
  const rs = `web-${hash}`;
  const app: Record<string, unknown> = {
    name: "app",
    image: "registry.example.test/shop/web:1.42.3",
    imagePullPolicy: "IfNotPresent",
    ports: [{ name: "http", containerPort: 8080, protocol: "TCP" }],
    env: [
      { name: "LOG_LEVEL", value: "info" },
      { name: "LISTEN_ADDR", value: ":8080" },
      { name: "POD_NAME", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } } },
      { name: "POD_IP", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "status.podIP" } } },
      ...(refs ? [{ name: "API_TOKEN", valueFrom: { secretKeyRef: { name: refs[0], key: "token" } } }] : []),
    ],
    ...(refs ? { envFrom: [{ secretRef: { name: refs[1] } }] } : {}),
    resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "256Mi" } },
    volumeMounts: [
      { name: "tmp", mountPath: "/tmp" },
      ...(refs ? [{ name: "creds", mountPath: "/var/run/creds", readOnly: true }] : []),
      { name: "kube-api-access-" + hex(5), mountPath: "/var/run/secrets/kubernetes.io/serviceaccount", readOnly: true },
    ],
    livenessProbe: { httpGet: { path: "/healthz", port: 8080, scheme: "HTTP" }, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
    readinessProbe: { httpGet: { path: "/readyz", port: 8080, scheme: "HTTP" }, periodSeconds: 5, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
    terminationMessagePath: "/dev/termination-log",
    terminationMessagePolicy: "File",
    securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ["ALL"] } },
  };
  const sidecar = {
    name: "proxy",
    image: "registry.example.test/infra/proxy:2.7.0",
    imagePullPolicy: "IfNotPresent",
    args: ["--listen", ":9901", "--upstream", "127.0.0.1:8080"],
    ports: [{ name: "proxy", containerPort: 9901, protocol: "TCP" }],
    resources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { memory: "128Mi" } },
    terminationMessagePath: "/dev/termination-log",
    terminationMessagePolicy: "File",
  };
  const saVolume = {
    name: "kube-api-access-" + hex(5),
    projected: {
      defaultMode: 420,
      sources: [
        { serviceAccountToken: { expirationSeconds: 3607, path: "token" } },
        { configMap: { name: "kube-root-ca.crt", items: [{ key: "ca.crt", path: "ca.crt" }] } },
        { downwardAPI: { items: [{ path: "namespace", fieldRef: { apiVersion: "v1", fieldPath: "metadata.namespace" } }] } },
      ],
    },
  };
  return {
    metadata: {
      generateName: `${rs}-`,
      namespace: ns,
      creationTimestamp: null,
      labels: { app: "web", "app.kubernetes.io/name": "web", "pod-template-hash": hash },
      annotations: { "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z" },
      ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: rs, uid: randomUUID(), controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      volumes: [
        { name: "tmp", emptyDir: {} },
        ...(refs ? [{ name: "creds", secret: { secretName: refs[2], defaultMode: 420 } }] : []),
        saVolume,
      ],
      containers: [app, sidecar],
      restartPolicy: "Always",
      terminationGracePeriodSeconds: 30,
      dnsPolicy: "ClusterFirst",
      serviceAccountName: "default",
      serviceAccount: "default",
      securityContext: { runAsUser: 10001, fsGroup: 10001 },
      schedulerName: "default-scheduler",
      tolerations: [
        { key: "node.kubernetes.io/not-ready", operator: "Exists", effect: "NoExecute", tolerationSeconds: 300 },
        { key: "node.kubernetes.io/unreachable", operator: "Exists", effect: "NoExecute", tolerationSeconds: 300 },
      ],
      priority: 0,
      enableServiceLinks: true,
      preemptionPolicy: "PreemptLowerPriority",
    },
    status: {},
  };
}

function review(request: Record<string, unknown>): string {
  return JSON.stringify({ kind: "AdmissionReview", apiVersion: "admission.k8s.io/v1", request: { uid: UID_MARKER, ...request } });
}

const podRequest = (ns: string, pod: unknown) => ({
  kind: { group: "", version: "v1", kind: "Pod" },
  resource: { group: "", version: "v1", resource: "pods" },
  requestKind: { group: "", version: "v1", kind: "Pod" },
  requestResource: { group: "", version: "v1", resource: "pods" },
  namespace: ns,
  operation: "CREATE",
  userInfo: {
    username: "system:serviceaccount:kube-system:replicaset-controller",
    uid: "7b0c8b53-3f4e-4a39-9b5e-2f7f1c3d9a10",
    groups: ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
  },
  object: pod,
  oldObject: null,
  dryRun: false,
  options: { kind: "CreateOptions", apiVersion: "meta.k8s.io/v1" },
});

/** A fake value for a Secret (random, never printed). */
export function randomValue(len: number): string {
  return randomBytes(len).toString("base64url").slice(0, len);
}

/** `variants` templates of each kind, over the inventory's namespaces and Secrets. */
export function buildTemplates(inv: SecretInventory, variants: number): Record<ReviewKind, ReviewTemplate[]> {
  const namespaces = Object.keys(inv.byNamespace).filter((ns) => (inv.byNamespace[ns]?.length ?? 0) >= 3);
  if (namespaces.length === 0) throw new Error("need a namespace with at least 3 enabled Secrets");
  const out: Record<ReviewKind, ReviewTemplate[]> = { patched: [], allowed: [], validate: [] };
  for (let v = 0; v < variants; v++) {
    const ns = namespaces[v % namespaces.length]!;
    const names = inv.byNamespace[ns]!;
    const pick = (k: number) => names[(v * 7 + k * 13) % names.length]!;
    const refs: [string, string, string] = [pick(0), pick(1), pick(2)];
    const pod = podOf(ns, refs);
    out.patched.push({ kind: "patched", path: "/mutate", body: review(podRequest(ns, pod)), pod, refs });
    out.allowed.push({ kind: "allowed", path: "/mutate", body: review(podRequest(ns, podOf(ns, null))) });
    const keys = v % 2 ? ["token", "password"] : ["token"];
    const secretName = `new-creds-${hex(6)}`;
    const secret = {
      apiVersion: "v1",
      kind: "Secret",
      metadata: {
        name: secretName,
        namespace: ns,
        creationTimestamp: null,
        labels: { [ENABLED]: "true", "app.kubernetes.io/name": "web" },
        ...(v % 2 ? { annotations: { "getkloak.io/hosts": "10.20.0.0/16,192.0.2.10" } } : {}),
      },
      type: "Opaque",
      data: Object.fromEntries(keys.map((k) => [k, Buffer.from(randomValue(32 + (v % 33))).toString("base64")])),
    };
    out.validate.push({
      kind: "validate",
      path: "/validate",
      body: review({
        kind: { group: "", version: "v1", kind: "Secret" },
        resource: { group: "", version: "v1", resource: "secrets" },
        requestKind: { group: "", version: "v1", kind: "Secret" },
        requestResource: { group: "", version: "v1", resource: "secrets" },
        name: secretName,
        namespace: ns,
        operation: "CREATE",
        userInfo: { username: "ci-deployer", uid: "0d3f6a7e-8f1b-4a4c-9d51-6f7c2b1e0a33", groups: ["system:authenticated"] },
        object: secret,
        oldObject: null,
        dryRun: false,
        options: { kind: "CreateOptions", apiVersion: "meta.k8s.io/v1" },
      }),
    });
  }
  return out;
}

interface ReviewResponse {
  response?: { uid?: string; allowed?: boolean; patch?: string; patchType?: string; status?: { code?: number; message?: string } };
}

/**
 * Checks one answer. kloak: uid echoed, allowed, and for "patched" a JSON
 * patch after which every Secret reference of the pod names the shadow and the
 * pod is annotated enabled; "allowed"/"validate" carry no patch. baseline:
 * allowed (its answer is fixed). Returns an error text, or undefined.
 */
export function checkAnswer(mode: "kloak" | "baseline", t: ReviewTemplate, uid: string, status: number, body: string): string | undefined {
  if (status !== 200) return `HTTP ${status}`;
  let r: ReviewResponse;
  try {
    r = JSON.parse(body) as ReviewResponse;
  } catch {
    return "answer is not JSON";
  }
  const res = r.response;
  if (!res) return "no response in the review";
  if (res.allowed !== true) return `not allowed (code ${res.status?.code ?? "?"})`;
  if (mode === "baseline") return undefined;
  if (res.uid !== uid) return "uid not echoed";
  if (t.kind !== "patched") return res.patch ? `unexpected patch on a ${t.kind} request` : undefined;
  if (res.patchType !== "JSONPatch" || !res.patch) return "patched request answered without a JSON patch";
  let ops: Operation[];
  try {
    ops = JSON.parse(Buffer.from(res.patch, "base64").toString("utf8")) as Operation[];
  } catch {
    return "patch is not base64 JSON";
  }
  let pod: PodShape;
  try {
    pod = applyPatch(structuredClone(t.pod), ops, true, false).newDocument as PodShape;
  } catch (e) {
    return `patch does not apply: ${(e as Error).name}`;
  }
  const names = referencedSecrets(pod);
  const expected = (t.refs ?? []).map((n) => n + SHADOW_SUFFIX).sort();
  if (JSON.stringify(names.sort()) !== JSON.stringify(expected)) return `patched pod references ${names.length} Secret(s), not the ${expected.length} shadows`;
  if (pod.metadata?.annotations?.[ENABLED] !== "true") return "patched pod is not annotated getkloak.io/enabled=true";
  return undefined;
}

interface PodShape {
  metadata?: { annotations?: Record<string, string> };
  spec?: {
    volumes?: { secret?: { secretName?: string } }[];
    containers?: { env?: { valueFrom?: { secretKeyRef?: { name?: string } } }[]; envFrom?: { secretRef?: { name?: string } }[] }[];
  };
}

function referencedSecrets(pod: PodShape): string[] {
  const out: string[] = [];
  for (const v of pod.spec?.volumes ?? []) if (v.secret?.secretName) out.push(v.secret.secretName);
  for (const c of pod.spec?.containers ?? []) {
    for (const e of c.env ?? []) if (e.valueFrom?.secretKeyRef?.name) out.push(e.valueFrom.secretKeyRef.name);
    for (const e of c.envFrom ?? []) if (e.secretRef?.name) out.push(e.secretRef.name);
  }
  return out;
}
