/**
 * The webhook's TLS material, shared by every agent of the DaemonSet through
 * one Secret (type kubernetes.io/tls): tls.crt/tls.key (serving pair),
 * ca.crt (CA bundle clients trust), ca.key (key of the first CA in ca.crt).
 *
 * All agents run `ensure()` independently and none holds a lock; the API
 * server's optimistic concurrency decides every race:
 * - creation is a `create`, so of N agents finding no Secret exactly one
 *   wins; the others get 409 AlreadyExists, re-read and adopt the winner's CA.
 * - every change is a `replace` carrying the resourceVersion that was read, so
 *   of N agents rotating at once one wins and the others get 409 Conflict,
 *   re-read and (finding a fresh certificate) adopt it.
 * Hence the cluster never ends up with two CAs, and a concurrent writer is
 * never silently overwritten.
 *
 * CA rollover: when the CA has less than a third of its lifetime left, a new
 * CA is made and ca.crt becomes "new CA + old CA". Clients that hold either
 * CA (API servers whose caBundle is not patched yet, agents still serving the
 * old leaf) keep verifying; the serving certificate comes from the new CA.
 * Expired CAs are dropped from ca.crt whenever the Secret is written.
 */
import type { CoreV1Api, V1Secret } from "@kubernetes/client-node";
import { describeError, statusOf } from "../kube/http.ts";
import {
  coversNames,
  createCa,
  issueServing,
  keyMatchesCert,
  splitPem,
  tryParseCert,
  verifyChainSync,
  type CertInfo,
} from "./authority.ts";
import { noLog, type LogFn } from "../log.ts";
import type { Material } from "./material.ts";

export type { Material } from "./material.ts";

export const DEFAULT_NAMESPACE = "kloak";
export const DEFAULT_SECRET_NAME = "kloak-webhook-tls";
export const TLS_SECRET_TYPE = "kubernetes.io/tls";
/** Renew a certificate once less than this fraction of its lifetime is left. */
export const DEFAULT_RENEW_BEFORE = 1 / 3;
/** A CA is replaced at the same point of its life: with 10-year CAs, 3⅓ years ahead. */
export const CA_RENEW_BEFORE = 1 / 3;

const KEYS = { cert: "tls.crt", key: "tls.key", ca: "ca.crt", caKey: "ca.key" } as const;
/** Conflicts mean someone else just wrote a valid Secret; a few rounds always settle. */
const MAX_ROUNDS = 6;
/** How far a notBefore may be ahead of our clock before the certificate counts as unusable (other nodes' skew). */
const FUTURE_TOLERANCE_MS = 5 * 60_000;

export type SecretApi = Pick<CoreV1Api, "readNamespacedSecret" | "createNamespacedSecret" | "replaceNamespacedSecret">;

export interface CertStoreOptions {
  /** Default "kloak". */
  namespace?: string;
  /** Default "kloak-webhook-tls". */
  secretName?: string;
  /** Names the serving certificate must cover, usually serviceDnsNames("kloak-webhook", "kloak"). */
  dnsNames: string[];
  /** Fraction of the serving certificate's lifetime left at which it is renewed. Default 1/3. */
  renewBefore?: number;
  now?: () => Date;
  log?: LogFn;
  /** Default 3650. */
  caValidityDays?: number;
  /** Default 365. */
  servingValidityDays?: number;
}

/** What the Secret holds, decoded; absent or unreadable parts are undefined. */
interface Decoded {
  caBundle?: string;
  /** First CA in ca.crt, when ca.key is its key. */
  signer?: { certPem: string; keyPem: string; info: CertInfo };
  serving?: { certPem: string; keyPem: string; info: CertInfo };
  /** Why the content cannot be used as it is (malformed), for the log. */
  problems: string[];
}

type Plan =
  | { kind: "use"; material: Material }
  | { kind: "reissue"; reason: string; names: string[] }
  | { kind: "new-ca"; reason: string };

export class CertStoreError extends Error {
  override name = "CertStoreError";
}

function decodeField(secret: V1Secret, key: string): string | undefined {
  const b64 = secret.data?.[key];
  if (b64 === undefined || b64 === "") return undefined;
  return Buffer.from(b64, "base64").toString("utf8");
}

function lifeLeft(info: Pick<CertInfo, "notBefore" | "notAfter">, now: Date): number {
  const total = info.notAfter.getTime() - info.notBefore.getTime();
  return total <= 0 ? 0 : (info.notAfter.getTime() - now.getTime()) / total;
}

export class CertStore {
  readonly namespace: string;
  readonly secretName: string;
  readonly dnsNames: string[];
  private readonly renewBefore: number;
  private readonly now: () => Date;
  private readonly log: LogFn;
  private readonly caValidityDays: number | undefined;
  private readonly servingValidityDays: number | undefined;

  constructor(
    private readonly core: SecretApi,
    opts: CertStoreOptions,
  ) {
    if (opts.dnsNames.length === 0) throw new CertStoreError("CertStore needs at least one DNS name");
    const rb = opts.renewBefore ?? DEFAULT_RENEW_BEFORE;
    if (!(rb > 0 && rb < 1)) throw new CertStoreError(`renewBefore must be a fraction between 0 and 1, got ${rb}`);
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    this.secretName = opts.secretName ?? DEFAULT_SECRET_NAME;
    this.dnsNames = [...opts.dnsNames];
    this.renewBefore = rb;
    this.now = opts.now ?? (() => new Date());
    this.log = opts.log ?? noLog;
    this.caValidityDays = opts.caValidityDays;
    this.servingValidityDays = opts.servingValidityDays;
  }

  private get where(): string {
    return `Secret ${this.namespace}/${this.secretName}`;
  }

  /**
   * Returns usable material from the Secret, creating or repairing it first if
   * needed. Throws on API errors other than the races it resolves itself
   * (callers retry with backoff).
   */
  async ensure(): Promise<Material> {
    for (let round = 1; round <= MAX_ROUNDS; round++) {
      const secret = await this.read();
      const now = this.now();
      if (!secret) {
        const created = await this.tryCreate(now);
        if (created) return created;
        continue; // AlreadyExists: another agent won; adopt its Secret.
      }
      const decoded = await this.decode(secret);
      const plan = this.plan(decoded, now);
      if (plan.kind === "use") return plan.material;
      const written = await this.tryReplace(secret, decoded, plan, now);
      if (written) return written;
      // Conflict: someone else wrote in between; judge what they wrote.
    }
    throw new CertStoreError(`${this.where} kept changing under us (${MAX_ROUNDS} conflicting writes in a row); will retry`);
  }

  private async read(): Promise<V1Secret | undefined> {
    try {
      return await this.core.readNamespacedSecret({ name: this.secretName, namespace: this.namespace });
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw new CertStoreError(`reading ${this.where}: ${describeError(e)}`);
    }
  }

  private async tryCreate(now: Date): Promise<Material | undefined> {
    const ca = await createCa({ now, validityDays: this.caValidityDays });
    const serving = await this.issue(ca, this.dnsNames, now);
    const material: Material = { caPem: ca.certPem, certPem: serving.certPem, keyPem: serving.keyPem, notAfter: serving.notAfter };
    const body: V1Secret = {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: this.secretName, namespace: this.namespace, labels: { "app.kubernetes.io/name": "kloak" } },
      type: TLS_SECRET_TYPE,
      data: this.encode(material, ca.keyPem),
    };
    try {
      await this.core.createNamespacedSecret({ namespace: this.namespace, body });
    } catch (e) {
      if (statusOf(e) === 409) {
        this.log("info", "another agent created the webhook TLS Secret first; using its CA", { secret: this.where });
        return undefined;
      }
      throw new CertStoreError(`creating ${this.where}: ${describeError(e)}`);
    }
    this.log("info", "created webhook TLS Secret with a new CA", {
      secret: this.where,
      caNotAfter: ca.notAfter.toISOString(),
      notAfter: serving.notAfter.toISOString(),
      dnsNames: this.dnsNames,
    });
    return material;
  }

  private async decode(secret: V1Secret): Promise<Decoded> {
    const problems: string[] = [];
    const out: Decoded = { problems };
    const caBundle = decodeField(secret, KEYS.ca);
    const caKey = decodeField(secret, KEYS.caKey);
    const cert = decodeField(secret, KEYS.cert);
    const key = decodeField(secret, KEYS.key);

    if (caBundle === undefined) problems.push(`${KEYS.ca} is missing`);
    else {
      const blocks = splitPem(caBundle);
      const first = blocks[0];
      const info = tryParseCert(first);
      if (!first || !info) problems.push(`${KEYS.ca} does not hold a readable certificate`);
      else if (!info.isCa) problems.push(`${KEYS.ca} is not a CA certificate`);
      else {
        out.caBundle = caBundle;
        if (caKey === undefined) problems.push(`${KEYS.caKey} is missing`);
        else if (!keyMatchesCert(first, caKey)) problems.push(`${KEYS.caKey} is unreadable or not the key of the first certificate in ${KEYS.ca}`);
        else out.signer = { certPem: first, keyPem: caKey, info };
      }
    }

    if (cert === undefined) problems.push(`${KEYS.cert} is missing`);
    else if (key === undefined) problems.push(`${KEYS.key} is missing`);
    else {
      const info = tryParseCert(cert);
      if (!info) problems.push(`${KEYS.cert} does not hold a readable certificate`);
      else if (!keyMatchesCert(cert, key)) problems.push(`${KEYS.key} is unreadable or not the key of ${KEYS.cert}`);
      else out.serving = { certPem: cert, keyPem: key, info };
    }
    return out;
  }

  private plan(d: Decoded, now: Date): Plan {
    const signer = d.signer;
    if (!signer) return { kind: "new-ca", reason: d.problems.join("; ") || "no usable CA" };
    const caLeft = lifeLeft(signer.info, now);
    if (caLeft < CA_RENEW_BEFORE) {
      return {
        kind: "new-ca",
        reason: `CA expires ${signer.info.notAfter.toISOString()} (${Math.max(0, Math.round(caLeft * 100))}% of its life left)`,
      };
    }
    const s = d.serving;
    if (!s) return { kind: "reissue", reason: d.problems.join("; "), names: this.dnsNames };
    // Only the signing CA counts: a leaf from an older CA still in the bundle is due for replacement.
    if (!verifyChainSync(s.certPem, signer.certPem)) return { kind: "reissue", reason: `${KEYS.cert} is not issued by the current CA`, names: this.dnsNames };
    if (s.info.isCa || !s.info.serverAuth) return { kind: "reissue", reason: `${KEYS.cert} is not a TLS server certificate`, names: this.dnsNames };
    if (!coversNames(s.info.dnsNames, this.dnsNames)) {
      // Keep names other agents may still want (a rolling upgrade can run two configurations), so they do not flip-flop.
      const names = [...this.dnsNames, ...s.info.dnsNames.filter((n) => !this.dnsNames.includes(n))];
      return { kind: "reissue", reason: `${KEYS.cert} does not cover ${this.dnsNames.filter((n) => !coversNames(s.info.dnsNames, [n])).join(", ")}`, names };
    }
    const left = lifeLeft(s.info, now);
    if (left < this.renewBefore) {
      return {
        kind: "reissue",
        reason: `${KEYS.cert} expires ${s.info.notAfter.toISOString()} (${Math.max(0, Math.round(left * 100))}% of its life left)`,
        names: this.dnsNames,
      };
    }
    if (s.info.notBefore.getTime() > now.getTime() + FUTURE_TOLERANCE_MS) {
      return { kind: "reissue", reason: `${KEYS.cert} is not valid until ${s.info.notBefore.toISOString()}`, names: this.dnsNames };
    }
    return {
      kind: "use",
      material: { caPem: d.caBundle ?? signer.certPem, certPem: s.certPem, keyPem: s.keyPem, notAfter: s.info.notAfter },
    };
  }

  private async tryReplace(secret: V1Secret, d: Decoded, plan: Exclude<Plan, { kind: "use" }>, now: Date): Promise<Material | undefined> {
    let caBundle: string;
    let caKey: string;
    let serving: { certPem: string; keyPem: string; notAfter: Date };
    let caNotAfter: Date | undefined;
    if (plan.kind === "new-ca") {
      const ca = await createCa({ now, validityDays: this.caValidityDays });
      // Old CAs that still verify something stay trusted alongside the new one.
      const keep = d.caBundle ? splitPem(d.caBundle).filter((b) => this.stillValid(b, now)) : [];
      caBundle = [ca.certPem, ...keep].join("");
      caKey = ca.keyPem;
      caNotAfter = ca.notAfter;
      serving = await this.issue(ca, this.dnsNames, now);
    } else {
      const signer = d.signer!;
      serving = await this.issue(signer, plan.names, now);
      const bundle = d.caBundle ?? signer.certPem;
      caBundle = splitPem(bundle)
        .filter((b, i) => i === 0 || this.stillValid(b, now))
        .join("");
      caKey = signer.keyPem;
    }
    const material: Material = { caPem: caBundle, certPem: serving.certPem, keyPem: serving.keyPem, notAfter: serving.notAfter };
    const malformed = d.problems.length > 0;
    if (secret.type && secret.type !== TLS_SECRET_TYPE) {
      // type is immutable; changing it would fail every update. Serve from it as it is.
      this.log("warn", `webhook TLS Secret has type ${secret.type}, expected ${TLS_SECRET_TYPE}; keeping its type`, { secret: this.where });
    }
    const body: V1Secret = {
      ...secret,
      // resourceVersion stays as read: if anyone wrote since, this replace fails with 409 instead of clobbering them.
      metadata: { ...secret.metadata },
      type: secret.type ?? TLS_SECRET_TYPE,
      // Other keys someone added are kept; ours are overwritten.
      data: { ...(secret.data ?? {}), ...this.encode(material, caKey) },
    };
    try {
      await this.core.replaceNamespacedSecret({ name: this.secretName, namespace: this.namespace, body });
    } catch (e) {
      if (statusOf(e) === 409) {
        this.log("info", "webhook TLS Secret changed while we were rotating; re-reading and using the newer one", { secret: this.where });
        return undefined;
      }
      throw new CertStoreError(`updating ${this.where}: ${describeError(e)}`);
    }
    const fields: Record<string, unknown> = {
      secret: this.where,
      reason: plan.reason,
      notAfter: serving.notAfter.toISOString(),
      dnsNames: plan.kind === "reissue" ? plan.names : this.dnsNames,
    };
    if (caNotAfter) fields.caNotAfter = caNotAfter.toISOString();
    if (malformed) {
      this.log(
        "warn",
        plan.kind === "new-ca"
          ? "webhook TLS Secret was malformed; replaced its contents with a new CA and serving certificate (update with resourceVersion, nothing deleted)"
          : "webhook TLS Secret was malformed; replaced its serving certificate from the existing CA (update with resourceVersion, nothing deleted)",
        { ...fields, problems: d.problems },
      );
    } else if (plan.kind === "new-ca") {
      this.log("info", "rolled the webhook CA over; ca.crt now holds the new and the old CA", fields);
    } else {
      this.log("info", "renewed the webhook serving certificate from the existing CA", fields);
    }
    return material;
  }

  private stillValid(pem: string, now: Date): boolean {
    const info = tryParseCert(pem);
    return !!info && info.isCa && info.notAfter.getTime() > now.getTime();
  }

  private issue(ca: { certPem: string; keyPem: string }, names: string[], now: Date) {
    return issueServing(ca, names, { now, validityDays: this.servingValidityDays });
  }

  private encode(m: Material, caKeyPem: string): Record<string, string> {
    const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
    return { [KEYS.cert]: b64(m.certPem), [KEYS.key]: b64(m.keyPem), [KEYS.ca]: b64(m.caPem), [KEYS.caKey]: b64(caKeyPem) };
  }
}
