/**
 * Helpers for the offline manifest tests: rendering deploy/ with kubectl's
 * kustomize, schema validation with kubernetes-models, a structural check for
 * the two cert-manager kinds (no schema ships for them), and a small
 * Containerfile reader.
 */
import { join } from "node:path";
import { parseAllDocuments } from "yaml";

import { MutatingWebhookConfiguration } from "kubernetes-models/admissionregistration.k8s.io/v1/MutatingWebhookConfiguration";
import { ValidatingWebhookConfiguration } from "kubernetes-models/admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration";
import { DaemonSet } from "kubernetes-models/apps/v1/DaemonSet";
import { ClusterRole } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole";
import { ClusterRoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding";
import { Role } from "kubernetes-models/rbac.authorization.k8s.io/v1/Role";
import { RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { ResourceQuota } from "kubernetes-models/v1/ResourceQuota";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
// The raw schema validators, for the unknown-field check (the models accept unknown fields).
import { validate as vMutating } from "kubernetes-models/_schemas/IoK8sApiAdmissionregistrationV1MutatingWebhookConfiguration";
import { validate as vValidating } from "kubernetes-models/_schemas/IoK8sApiAdmissionregistrationV1ValidatingWebhookConfiguration";
import { validate as vDaemonSet } from "kubernetes-models/_schemas/IoK8sApiAppsV1DaemonSet";
import { validate as vNamespace } from "kubernetes-models/_schemas/IoK8sApiCoreV1Namespace";
import { validate as vResourceQuota } from "kubernetes-models/_schemas/IoK8sApiCoreV1ResourceQuota";
import { validate as vService } from "kubernetes-models/_schemas/IoK8sApiCoreV1Service";
import { validate as vServiceAccount } from "kubernetes-models/_schemas/IoK8sApiCoreV1ServiceAccount";
import { validate as vClusterRole } from "kubernetes-models/_schemas/IoK8sApiRbacV1ClusterRole";
import { validate as vClusterRoleBinding } from "kubernetes-models/_schemas/IoK8sApiRbacV1ClusterRoleBinding";
import { validate as vRole } from "kubernetes-models/_schemas/IoK8sApiRbacV1Role";
import { validate as vRoleBinding } from "kubernetes-models/_schemas/IoK8sApiRbacV1RoleBinding";

export const ROOT = join(import.meta.dir, "../..");

// Rendered manifests are untyped data; the tests check their shape.
export type Obj = Record<string, any>;

// ---------------------------------------------------------------- rendering

export function kubectlPath(): string {
  const k = Bun.which("kubectl");
  if (!k) {
    throw new Error(
      "kubectl not found on PATH: the deploy tests render deploy/ with `kubectl kustomize`. " +
        "Run scripts/setup.sh (as root) to install it (Debian package kubernetes-client).",
    );
  }
  return k;
}

export interface Render {
  docs: Obj[];
  stderr: string;
}

/** `kubectl kustomize <dir>` (dir relative to the repository root), parsed. */
export function kustomize(dir: string, kubectl = kubectlPath()): Render {
  const p = Bun.spawnSync([kubectl, "kustomize", join(ROOT, dir)], { stdout: "pipe", stderr: "pipe" });
  const stderr = p.stderr.toString();
  if (p.exitCode !== 0) throw new Error(`${kubectl} kustomize ${dir} exited ${p.exitCode}:\n${stderr}`);
  return { docs: parseDocs(p.stdout.toString(), `kubectl kustomize ${dir}`), stderr };
}

export function parseDocs(text: string, what: string): Obj[] {
  const docs: Obj[] = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length) throw new Error(`${what}: YAML error: ${d.errors[0]!.message}`);
    const v = d.toJS();
    if (v === null || v === undefined) continue;
    if (typeof v !== "object" || Array.isArray(v)) throw new Error(`${what}: a document is not an object`);
    docs.push(v as Obj);
  }
  return docs;
}

const memo = new Map<string, Render>();
/** kustomize(), once per directory per test run. A failure is not cached, so every test that needs it fails. */
export function rendered(dir: string): Render {
  let r = memo.get(dir);
  if (!r) memo.set(dir, (r = kustomize(dir)));
  return r;
}

export function id(o: Obj): string {
  const ns = o.metadata?.namespace ? `${o.metadata.namespace}/` : "";
  return `${o.kind} ${ns}${o.metadata?.name}`;
}

export function find(docs: Obj[], kind: string, name: string): Obj {
  const hits = docs.filter((d) => d.kind === kind && d.metadata?.name === name);
  if (hits.length !== 1) throw new Error(`expected exactly one ${kind} ${name}, found ${hits.length}`);
  return hits[0]!;
}

export function ofKind(docs: Obj[], kind: string): Obj[] {
  return docs.filter((d) => d.kind === kind);
}

// --------------------------------------------------------------- validation

type Validatable = new (data: never) => { validate(): void };
type SchemaFn = (data: unknown) => boolean;

/** apiVersion + kind → the kubernetes-models class that validates it, and its raw schema function. */
export const MODELS: Record<string, [Validatable, SchemaFn]> = {
  "v1/Namespace": [Namespace, vNamespace],
  "v1/ResourceQuota": [ResourceQuota, vResourceQuota],
  "v1/ServiceAccount": [ServiceAccount, vServiceAccount],
  "v1/Service": [Service, vService],
  "apps/v1/DaemonSet": [DaemonSet, vDaemonSet],
  "rbac.authorization.k8s.io/v1/ClusterRole": [ClusterRole, vClusterRole],
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": [ClusterRoleBinding, vClusterRoleBinding],
  "rbac.authorization.k8s.io/v1/Role": [Role, vRole],
  "rbac.authorization.k8s.io/v1/RoleBinding": [RoleBinding, vRoleBinding],
  "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": [MutatingWebhookConfiguration, vMutating],
  "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration": [ValidatingWebhookConfiguration, vValidating],
};

/**
 * Fields of `doc` its schema does not know (typos such as `mountPropogation`),
 * as JSON-pointer-like paths. The compiled schema validators read exactly the
 * properties their schema declares (and every entry of map-typed fields), so
 * validating through a Proxy that records reads shows which fields no schema
 * looked at. The API server would reject those (kubectl's strict field
 * validation); the kubernetes-models validators alone let them through.
 */
export function unknownFields(schema: SchemaFn, doc: unknown): string[] {
  const read = new Set<string>();
  const wrap = (v: unknown, path: string): unknown =>
    v && typeof v === "object"
      ? new Proxy(v, {
          get(t, k, r) {
            const x = Reflect.get(t, k, r);
            if (typeof k !== "string") return x;
            read.add(`${path}/${k}`);
            return wrap(x, `${path}/${k}`);
          },
        })
      : v;
  schema(wrap(doc, ""));
  const unknown: string[] = [];
  const walk = (v: unknown, path: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}/${i}`));
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (read.has(`${path}/${k}`)) walk(x, `${path}/${k}`);
        else unknown.push(`${path}/${k}`);
      }
    }
  };
  walk(doc, "");
  return unknown;
}

/** Kinds without a namespace. Everything else must be in ns kloak. */
export const CLUSTER_SCOPED = new Set([
  "Namespace",
  "ClusterRole",
  "ClusterRoleBinding",
  "MutatingWebhookConfiguration",
  "ValidatingWebhookConfiguration",
]);

/**
 * Throws unless the object validates against its Kubernetes OpenAPI schema and
 * has no field the schema does not know; an unknown kind throws too.
 */
export function validateK8s(o: Obj): void {
  const key = `${o.apiVersion}/${o.kind}`;
  const entry = MODELS[key];
  if (!entry) throw new Error(`${id(o)}: no schema for ${key}; add its kubernetes-models class to MODELS`);
  const [Model, schema] = entry;
  try {
    new Model(structuredClone(o) as never).validate();
  } catch (e) {
    throw new Error(`${id(o)}: ${(e as Error).message}`);
  }
  const unknown = unknownFields(schema, o);
  if (unknown.length) throw new Error(`${id(o)}: unknown field(s) ${unknown.join(", ")}`);
}

// -------------------------------------------------------- cert-manager kinds

const GO_DURATION = /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/;
const DNS_NAME = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const ISSUER_TYPES = ["selfSigned", "ca", "acme", "vault", "venafi"];
const CERT_SPEC_FIELDS = new Set([
  "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses", "encodeUsagesInRequest",
  "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject", "nameConstraints", "otherNames",
  "privateKey", "renewBefore", "renewBeforePercentage", "revisionHistoryLimit", "secretName",
  "secretTemplate", "signatureAlgorithm", "subject", "uris", "usages",
]);

/**
 * Problems with a cert-manager.io/v1 Issuer or Certificate, checked against the
 * fields cert-manager's CRDs require (kubernetes-models has no schema for them).
 */
export function certManagerProblems(o: Obj): string[] {
  const p: string[] = [];
  if (o.apiVersion !== "cert-manager.io/v1") p.push(`apiVersion ${o.apiVersion} is not cert-manager.io/v1`);
  if (typeof o.metadata?.name !== "string" || !o.metadata.name) p.push("metadata.name missing");
  if (typeof o.metadata?.namespace !== "string" || !o.metadata.namespace) p.push("metadata.namespace missing");
  const spec = o.spec;
  if (!spec || typeof spec !== "object" || Array.isArray(spec)) return [...p, "spec missing"];
  if (o.kind === "Issuer" || o.kind === "ClusterIssuer") {
    const types = Object.keys(spec).filter((k) => ISSUER_TYPES.includes(k));
    if (types.length !== 1) p.push(`spec must hold exactly one issuer type of ${ISSUER_TYPES.join(", ")}`);
    for (const k of Object.keys(spec)) if (!ISSUER_TYPES.includes(k)) p.push(`spec.${k} is not an Issuer field`);
    for (const t of types) if (!spec[t] || typeof spec[t] !== "object") p.push(`spec.${t} must be an object`);
    // A CA issuer signs with the key pair in a Secret of its namespace.
    if (types.includes("ca") && (typeof spec.ca?.secretName !== "string" || !spec.ca.secretName)) p.push("spec.ca.secretName missing");
  } else if (o.kind === "Certificate") {
    for (const k of Object.keys(spec)) if (!CERT_SPEC_FIELDS.has(k)) p.push(`spec.${k} is not a Certificate field`);
    if (typeof spec.secretName !== "string" || !spec.secretName) p.push("spec.secretName missing");
    if (spec.isCA !== undefined && typeof spec.isCA !== "boolean") p.push("spec.isCA must be a boolean");
    const ref = spec.issuerRef;
    if (typeof ref?.name !== "string" || !ref.name) p.push("spec.issuerRef.name missing");
    if (ref?.kind !== undefined && !["Issuer", "ClusterIssuer"].includes(ref.kind)) p.push(`spec.issuerRef.kind ${ref.kind}`);
    if (ref?.group !== undefined && ref.group !== "cert-manager.io") p.push(`spec.issuerRef.group ${ref.group}`);
    const names = ["commonName", "dnsNames", "uris", "emailAddresses", "ipAddresses", "otherNames"];
    if (!names.some((k) => spec[k] !== undefined)) p.push(`spec needs one of ${names.join(", ")}`);
    if (spec.dnsNames !== undefined) {
      if (!Array.isArray(spec.dnsNames) || !spec.dnsNames.length) p.push("spec.dnsNames must be a non-empty list");
      else for (const n of spec.dnsNames) if (typeof n !== "string" || !DNS_NAME.test(n)) p.push(`spec.dnsNames: bad name ${n}`);
    }
    for (const k of ["duration", "renewBefore"]) {
      if (spec[k] !== undefined && (typeof spec[k] !== "string" || !GO_DURATION.test(spec[k]))) p.push(`spec.${k} is not a duration`);
    }
    const pk = spec.privateKey;
    if (pk !== undefined) {
      if (pk.algorithm !== undefined && !["RSA", "ECDSA", "Ed25519"].includes(pk.algorithm)) p.push(`privateKey.algorithm ${pk.algorithm}`);
      if (pk.rotationPolicy !== undefined && !["Never", "Always"].includes(pk.rotationPolicy)) p.push(`privateKey.rotationPolicy ${pk.rotationPolicy}`);
      if (pk.size !== undefined && !Number.isInteger(pk.size)) p.push("privateKey.size must be an integer");
    }
  } else {
    p.push(`unknown cert-manager kind ${o.kind}`);
  }
  return p;
}

// ------------------------------------------------------------- Containerfile

export interface Instruction {
  op: string;
  args: string;
}
export interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

/** Stages of a Containerfile: comments dropped, backslash continuations joined. */
export function containerfileStages(text: string): Stage[] {
  const logical: string[] = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!cur && (line === "" || line.startsWith("#"))) continue;
    if (line.startsWith("#")) continue; // a comment inside a continuation
    if (line.endsWith("\\")) {
      cur += line.slice(0, -1) + " ";
      continue;
    }
    logical.push(cur + line);
    cur = "";
  }
  if (cur) logical.push(cur);
  const stages: Stage[] = [];
  for (const l of logical) {
    const m = /^(\S+)\s*(.*)$/.exec(l)!;
    const op = m[1]!.toUpperCase();
    const args = m[2]!.trim();
    if (op === "FROM") {
      const f = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!f) throw new Error(`bad FROM: ${args}`);
      stages.push({ from: f[1]!, name: f[2], instructions: [] });
    } else {
      const s = stages.at(-1);
      if (!s) throw new Error(`${op} before FROM`);
      s.instructions.push({ op, args });
    }
  }
  return stages;
}
