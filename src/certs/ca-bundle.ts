/**
 * Keeps clientConfig.caBundle of kloak's Mutating- and
 * ValidatingWebhookConfiguration equal to the CA bundle in the shared Secret,
 * so the API server trusts the agents' serving certificate.
 *
 * Only used with the self-managed Secret: with cert-manager, its cainjector
 * owns caBundle and kloak must not fight it.
 *
 * Each configuration gets at most one JSON patch. Every webhook entry the
 * patch touches is guarded by a `test` op on its name at that index, so if
 * someone reorders or removes webhooks between our read and our patch the API
 * server rejects the whole patch (422) instead of writing the CA into the
 * wrong entry; we then re-read once and try again.
 */
import {
  PatchStrategy,
  setHeaderOptions,
  type AdmissionregistrationV1Api,
  type V1MutatingWebhookConfiguration,
  type V1ValidatingWebhookConfiguration,
} from "@kubernetes/client-node";
import { describeError, statusOf } from "../kube/lease.ts";
import { noLog, type CertLog } from "./material.ts";

export type AdmissionApi = Pick<
  AdmissionregistrationV1Api,
  | "readMutatingWebhookConfiguration"
  | "readValidatingWebhookConfiguration"
  | "patchMutatingWebhookConfiguration"
  | "patchValidatingWebhookConfiguration"
>;

export interface PatchCaBundleOptions {
  /** MutatingWebhookConfiguration name. */
  mutating: string;
  /** ValidatingWebhookConfiguration name. */
  validating: string;
  /** PEM of the CA bundle (all CAs clients must trust, e.g. new+old during a rollover). */
  caPem: string;
  log?: CertLog;
}

export interface JsonPatchOp {
  op: "test" | "add" | "replace";
  path: string;
  value: unknown;
}

type Configuration = V1MutatingWebhookConfiguration | V1ValidatingWebhookConfiguration;

interface Target {
  kind: "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration";
  name: string;
  read(): Promise<Configuration>;
  patch(ops: JsonPatchOp[]): Promise<unknown>;
}

export class CaBundleError extends Error {
  override name = "CaBundleError";
}

/** The ops that bring every webhook's caBundle to `want` (base64), or [] when all already match. */
export function caBundlePatch(config: Configuration, want: string): JsonPatchOp[] {
  const ops: JsonPatchOp[] = [];
  (config.webhooks ?? []).forEach((wh, i) => {
    const current = wh.clientConfig?.caBundle;
    if (current === want) return;
    ops.push({ op: "test", path: `/webhooks/${i}/name`, value: wh.name });
    if (!wh.clientConfig) {
      ops.push({ op: "add", path: `/webhooks/${i}/clientConfig`, value: { caBundle: want } });
    } else {
      ops.push({ op: current === undefined || current === null ? "add" : "replace", path: `/webhooks/${i}/clientConfig/caBundle`, value: want });
    }
  });
  return ops;
}

/**
 * Patches both configurations where needed. Returns "Kind/name" of each
 * configuration actually patched (empty when everything already matched, in
 * which case no write was sent). A configuration that does not exist is
 * reported in the thrown error after the other one has been handled.
 */
export async function patchCaBundle(admission: AdmissionApi, opts: PatchCaBundleOptions): Promise<{ patched: string[] }> {
  const log = opts.log ?? noLog;
  const want = Buffer.from(opts.caPem, "utf8").toString("base64");
  const jsonPatch = setHeaderOptions("Content-Type", PatchStrategy.JsonPatch);
  const targets: Target[] = [
    {
      kind: "MutatingWebhookConfiguration",
      name: opts.mutating,
      read: () => admission.readMutatingWebhookConfiguration({ name: opts.mutating }),
      patch: (body) => admission.patchMutatingWebhookConfiguration({ name: opts.mutating, body }, jsonPatch),
    },
    {
      kind: "ValidatingWebhookConfiguration",
      name: opts.validating,
      read: () => admission.readValidatingWebhookConfiguration({ name: opts.validating }),
      patch: (body) => admission.patchValidatingWebhookConfiguration({ name: opts.validating, body }, jsonPatch),
    },
  ];

  const patched: string[] = [];
  const missing: string[] = [];
  const failures: string[] = [];
  for (const t of targets) {
    try {
      if (await patchOne(t, want, log)) patched.push(`${t.kind}/${t.name}`);
    } catch (e) {
      if (e instanceof MissingConfiguration) missing.push(`${t.kind} ${t.name}`);
      else failures.push(e instanceof Error ? e.message : String(e));
    }
  }
  if (missing.length > 0) {
    failures.unshift(
      `${missing.join(" and ")} not found, so the API server cannot be told which CA to trust; apply the manifests in deploy/ (kubectl apply -f deploy/). kloak keeps retrying`,
    );
  }
  if (failures.length > 0) throw new CaBundleError(failures.join("; "));
  return { patched };
}

class MissingConfiguration extends Error {}

async function patchOne(t: Target, want: string, log: CertLog): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    let config: Configuration;
    try {
      config = await t.read();
    } catch (e) {
      if (statusOf(e) === 404) throw new MissingConfiguration();
      throw new CaBundleError(`reading ${t.kind} ${t.name}: ${describeError(e)}`);
    }
    const ops = caBundlePatch(config, want);
    if (ops.length === 0) return false;
    try {
      await t.patch(ops);
    } catch (e) {
      const status = statusOf(e);
      if (status === 422 && attempt === 1) {
        log("info", "webhook configuration changed while patching caBundle; re-reading once", { config: `${t.kind}/${t.name}` });
        continue;
      }
      if (status === 404) throw new MissingConfiguration();
      throw new CaBundleError(`patching caBundle of ${t.kind} ${t.name}: ${describeError(e)}`);
    }
    log("info", "patched caBundle of webhook configuration", {
      config: `${t.kind}/${t.name}`,
      webhooks: ops.filter((o) => o.op === "test").map((o) => o.value),
    });
    return true;
  }
}
