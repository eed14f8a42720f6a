/**
 * The agent registers its own admission configurations (deploy/ ships none).
 * Why: a `failurePolicy: Fail` webhook that exists before anything answers it
 * blocks every admission it selects. Registering only from an agent whose
 * HTTPS server already serves, with the caBundle that trusts it, makes a
 * failed first start harmless; reconciling on a short period brings back a
 * caBundle or a whole configuration wiped by `kubectl replace`, Argo CD or
 * delete+apply within seconds.
 *
 * Scope (what an outage can block):
 *   - mutating (pods): only namespaces labelled getkloak.io/enabled=true.
 *     Fail there, and only there: in an opted-in namespace no pod may be
 *     admitted without kloak, or the kubelet would mount real values.
 *   - validating (Secrets): only Secrets that carry a getkloak.io/enabled
 *     label (any value, so typos are reported).
 * kube-system and kloak's own namespace are never selected.
 *
 * Uninstall: both configurations are owned by kloak's ClusterRole, so the
 * garbage collector deletes them as soon as `kubectl delete -k deploy`
 * deletes the role (before the namespace, which takes longer to go).
 */
import type { AdmissionregistrationV1Api, RbacAuthorizationV1Api, V1OwnerReference } from "@kubernetes/client-node";
import { ENABLED } from "../kube/contract.ts";
import { describeError, statusOf } from "../kube/http.ts";
import type { LogFn } from "../log.ts";

export const CERT_MANAGER_INJECT = "cert-manager.io/inject-ca-from";

export interface RegistrationOptions {
  /** configuration name, both kinds (default kloak) */
  name: string;
  /** kloak's namespace: the Service lives there, and it is never selected */
  namespace: string;
  service: string;
  /** ClusterRole that owns the configurations (garbage-collected with it) */
  clusterRole: string;
  /** self: kloak sets caBundle; cert-manager: its cainjector does, from this Certificate ("ns/name"): the CA, so leaf renewals keep caBundle */
  ca: { mode: "self" } | { mode: "cert-manager"; certificate: string };
  timeoutSeconds?: number;
}

type Obj = Record<string, unknown>;

export interface Desired {
  mutating: Obj;
  validating: Obj;
}

const NEVER = (ns: string) => ({ key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["kube-system", ns] });

/** The two configurations as kloak wants them; caBundle empty when unknown (cert-manager mode leaves it to cainjector). */
export function desiredConfigurations(o: RegistrationOptions, caBundle: string | undefined, owner?: V1OwnerReference): Desired {
  const meta = (): Obj => ({
    name: o.name,
    labels: { "app.kubernetes.io/name": "kloak", "app.kubernetes.io/managed-by": "kloak-agent" },
    ...(o.ca.mode === "cert-manager" ? { annotations: { [CERT_MANAGER_INJECT]: o.ca.certificate } } : {}),
    ...(owner ? { ownerReferences: [owner] } : {}),
  });
  const clientConfig = (path: string): Obj => ({
    service: { namespace: o.namespace, name: o.service, path, port: 443 },
    ...(caBundle ? { caBundle } : {}),
  });
  const common = {
    admissionReviewVersions: ["v1"],
    sideEffects: "None",
    // Ignore would mount real values when kloak does not answer; the selectors keep Fail inside opted-in scope.
    failurePolicy: "Fail",
    matchPolicy: "Equivalent",
    timeoutSeconds: o.timeoutSeconds ?? 5,
  };
  return {
    mutating: {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "MutatingWebhookConfiguration",
      metadata: meta(),
      webhooks: [
        {
          name: "mutate.getkloak.io",
          clientConfig: clientConfig("/mutate"),
          rules: [
            { operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], scope: "Namespaced" },
            // kubectl debug adds ephemeral containers through this subresource.
            { operations: ["UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods/ephemeralcontainers"], scope: "Namespaced" },
          ],
          ...common,
          // Run again if a later webhook adds a volume or env.
          reinvocationPolicy: "IfNeeded",
          namespaceSelector: { matchExpressions: [{ key: ENABLED, operator: "In", values: ["true"] }, NEVER(o.namespace)] },
        },
      ],
    },
    validating: {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "ValidatingWebhookConfiguration",
      metadata: meta(),
      webhooks: [
        {
          name: "validate.getkloak.io",
          clientConfig: clientConfig("/validate"),
          rules: [{ operations: ["CREATE", "UPDATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["secrets"], scope: "Namespaced" }],
          ...common,
          namespaceSelector: { matchExpressions: [NEVER(o.namespace)] },
          // Exists, not =true: a typo ("yes") is answered with a warning instead of passing unseen.
          objectSelector: { matchExpressions: [{ key: ENABLED, operator: "Exists" }] },
        },
      ],
    },
  };
}

/** True when every field of `want` is in `have` with the same value (the API server adds defaults we do not set). */
export function covers(have: unknown, want: unknown): boolean {
  if (Array.isArray(want)) return Array.isArray(have) && have.length === want.length && want.every((w, i) => covers(have[i], w));
  if (want !== null && typeof want === "object") {
    if (have === null || typeof have !== "object") return false;
    return Object.entries(want).every(([k, w]) => covers((have as Obj)[k], w));
  }
  return have === want;
}

interface Kind {
  kind: "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration";
  read(name: string): Promise<Obj>;
  create(body: Obj): Promise<unknown>;
  replace(name: string, body: Obj): Promise<unknown>;
}

export type AdmissionClient = Pick<
  AdmissionregistrationV1Api,
  | "readMutatingWebhookConfiguration"
  | "readValidatingWebhookConfiguration"
  | "createMutatingWebhookConfiguration"
  | "createValidatingWebhookConfiguration"
  | "replaceMutatingWebhookConfiguration"
  | "replaceValidatingWebhookConfiguration"
>;

export class WebhookRegistrar {
  private caPem = "";
  private timer?: ReturnType<typeof setInterval>;
  private running?: Promise<void>;
  private owner?: V1OwnerReference;
  private readonly kinds: Kind[];
  /** whether this agent should write (the Lease holder, once its server serves) */
  private active = false;
  /** configurations written (created or updated), for tests and metrics */
  writes = 0;
  errors = 0;
  private lastError = "";
  private ownerWarned = false;

  constructor(
    admission: AdmissionClient,
    private readonly rbac: Pick<RbacAuthorizationV1Api, "readClusterRole">,
    private readonly o: RegistrationOptions,
    private readonly log: LogFn,
    private readonly periodMs = 5000,
  ) {
    const a = admission as unknown as Record<string, (x: Obj) => Promise<unknown>>;
    this.kinds = (["Mutating", "Validating"] as const).map((k) => ({
      kind: `${k}WebhookConfiguration` as Kind["kind"],
      read: (name) => a[`read${k}WebhookConfiguration`]!.call(admission, { name }) as Promise<Obj>,
      create: (body) => a[`create${k}WebhookConfiguration`]!.call(admission, { body }),
      replace: (name, body) => a[`replace${k}WebhookConfiguration`]!.call(admission, { name, body }),
    }));
  }

  /** The CA clients must trust (self mode); a change is written at once when active. */
  setCa(pem: string): void {
    if (pem === this.caPem) return;
    this.caPem = pem;
    if (this.active) void this.reconcile();
  }

  /** Start or stop writing: only the Lease holder whose server serves writes, so N agents do not race. */
  setActive(on: boolean): void {
    if (on === this.active) return;
    this.active = on;
    clearInterval(this.timer);
    this.timer = undefined;
    if (!on) return;
    void this.reconcile();
    this.timer = setInterval(() => void this.reconcile(), this.periodMs);
  }

  stop(): Promise<void> {
    this.setActive(false);
    return this.running ?? Promise.resolve();
  }

  /** One pass: create what is missing, put back what differs. Passes never overlap. */
  reconcile(): Promise<void> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(): Promise<void> {
    if (!this.active) return;
    const bundle = this.o.ca.mode === "self" && this.caPem ? Buffer.from(this.caPem, "utf8").toString("base64") : undefined;
    // Self mode without a CA would register a configuration the API server cannot call: wait.
    if (this.o.ca.mode === "self" && !bundle) return;
    this.owner ??= await this.ownerRef();
    const desired = desiredConfigurations(this.o, bundle, this.owner);
    const problems: string[] = [];
    for (const k of this.kinds) {
      const want = k.kind === "MutatingWebhookConfiguration" ? desired.mutating : desired.validating;
      try {
        await this.apply(k, want);
      } catch (e) {
        problems.push(`${k.kind} ${this.o.name}: ${describeError(e)}`);
      }
    }
    if (problems.length) {
      this.errors++;
      const msg = problems.join("; ");
      // Once per distinct problem: a 5 s period would otherwise flood the log.
      if (msg !== this.lastError) this.log("error", "cannot register kloak's webhook configurations; retrying", { problems: msg, hint: "check the agent's RBAC (deploy/base/rbac.yaml)" });
      this.lastError = msg;
    } else this.lastError = "";
  }

  private async apply(k: Kind, want: Obj): Promise<void> {
    let have: Obj;
    try {
      have = await k.read(this.o.name);
    } catch (e) {
      if (statusOf(e) !== 404) throw e;
      await k.create(want);
      this.writes++;
      this.log("info", "registered webhook configuration", { config: `${k.kind}/${this.o.name}` });
      return;
    }
    const haveMeta = (have.metadata ?? {}) as Obj;
    const wantMeta = want.metadata as Obj;
    const webhooks = want.webhooks as Obj[];
    if (this.o.ca.mode === "cert-manager") {
      // cainjector owns caBundle: keep whatever it wrote.
      const old = (have.webhooks ?? []) as Obj[];
      webhooks.forEach((w, i) => {
        const ca = (old[i]?.clientConfig as Obj | undefined)?.caBundle;
        if (ca) (w.clientConfig as Obj).caBundle = ca;
      });
    }
    const metaOk = covers(haveMeta, { labels: wantMeta.labels, annotations: wantMeta.annotations, ownerReferences: wantMeta.ownerReferences });
    const hooksOk = covers(have.webhooks, webhooks);
    // A wiped caBundle: covers() does not see a missing field we do not want, so compare it explicitly.
    const caOk = this.o.ca.mode !== "self" || webhooks.every((w, i) => ((have.webhooks as Obj[] | undefined)?.[i]?.clientConfig as Obj | undefined)?.caBundle === (w.clientConfig as Obj).caBundle);
    if (metaOk && hooksOk && caOk) return;
    const body: Obj = {
      ...want,
      metadata: {
        ...haveMeta,
        labels: { ...(haveMeta.labels as Obj | undefined), ...(wantMeta.labels as Obj) },
        annotations: { ...(haveMeta.annotations as Obj | undefined), ...(wantMeta.annotations as Obj | undefined) },
        ...(wantMeta.ownerReferences ? { ownerReferences: wantMeta.ownerReferences } : {}),
      },
      webhooks,
    };
    await k.replace(this.o.name, body);
    this.writes++;
    this.log("warn", "webhook configuration differed from kloak's; put back", {
      config: `${k.kind}/${this.o.name}`,
      caBundle: caOk ? "unchanged" : "restored",
    });
  }

  private async ownerRef(): Promise<V1OwnerReference | undefined> {
    try {
      const role = await this.rbac.readClusterRole({ name: this.o.clusterRole });
      if (!role.metadata?.uid) return undefined;
      return { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", name: this.o.clusterRole, uid: role.metadata.uid };
    } catch (e) {
      if (this.ownerWarned) return undefined;
      this.ownerWarned = true;
      this.log("warn", "cannot read kloak's ClusterRole; the webhook configurations are registered without an owner, so uninstall must delete them itself", {
        clusterRole: this.o.clusterRole,
        error: describeError(e),
        hint: "kubectl delete mutatingwebhookconfiguration,validatingwebhookconfiguration kloak",
      });
      return undefined;
    }
  }
}
