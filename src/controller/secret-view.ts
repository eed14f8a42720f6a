/**
 * The agent's trimmed copy of a Secret. Only enabled originals and kloak's
 * shadows are watched (label selectors), and of their metadata only labels
 * and kloak's own annotations are kept: another annotation may hold a copy
 * of the whole Secret (kubectl.kubernetes.io/last-applied-configuration does
 * for every `kubectl apply`), which would double what kloak keeps and put
 * values of keys kloak does not protect into its memory.
 */
import { DOMAIN, isEnabled, isShadow } from "../kube/contract.ts";
import { createHash } from "node:crypto";
import { trimMeta, type ObjectMeta } from "../kube/reflector.ts";
import type { SecretView } from "../kube/secret-view.ts";
import { VALUE_MAX } from "../secrets/placeholder.ts";
import { protectedKeys } from "../secrets/secret-check.ts";

/** base64 length of the longest placeholder */
export const PLACEHOLDER_B64_MAX = Math.ceil(VALUE_MAX / 3) * 4;
const DIGEST = "#sha256:";

/** What a shadow view holds instead of a long copied value ("#sha256:…", never valid base64). */
export function copiedDigest(b64: string): string {
  return DIGEST + createHash("sha256").update(b64).digest("hex");
}

export function isDigest(v: string): boolean {
  return v.startsWith(DIGEST);
}

/** Whether a shadow view's value (maybe a digest) stands for this base64 value (or digest). */
export function sameShadowValue(view: string, b64: string): boolean {
  return view === b64 || (view.startsWith(DIGEST) && b64.length > PLACEHOLDER_B64_MAX && view === copiedDigest(b64));
}

type RawSecret = {
  metadata?: ObjectMeta & { labels?: Record<string, string>; annotations?: Record<string, string> };
  type?: string;
  data?: Record<string, string | Uint8Array>;
};


/** Only getkloak.io/ annotations: nothing else is read from a Secret's annotations. */
export function kloakAnnotations(a: Record<string, string> | undefined | null): Record<string, string> | undefined {
  if (!a) return undefined;
  const kept = Object.entries(a).filter(([k]) => k.startsWith(`${DOMAIN}/`));
  return kept.length ? Object.fromEntries(kept) : undefined;
}

export function secretView(raw: RawSecret): SecretView {
  const metadata = trimMeta(raw.metadata);
  metadata.annotations = kloakAnnotations(metadata.annotations);
  const keep = isEnabled(metadata, "label") || isShadow(metadata);
  const view: SecretView = { metadata, type: raw.type };
  if (keep && raw.data) {
    view.data = {};
    const shadow = isShadow(metadata);
    // An original's unprotected keys (getkloak.io/keys, a TLS key pair) are only copied into the
    // shadow; when long, their digest is kept instead and the writer reads the value when it writes.
    const kept = shadow ? undefined : protectedKeys({ metadata, type: raw.type }, Object.keys(raw.data));
    for (const [k, val] of Object.entries(raw.data)) {
      // The typed list client may hand back bytes; the watch hands back base64 strings.
      const b64 = typeof val === "string" ? val : Buffer.from(val).toString("base64");
      // A shadow's value too long to be a placeholder is one copied as it is: its digest is
      // enough to tell whether the shadow is up to date.
      const digest = b64.length > PLACEHOLDER_B64_MAX && (shadow || !kept!.has(k));
      view.data[k] = digest ? copiedDigest(b64) : b64;
    }
  } else if (raw.data) {
    // Keys without values: the webhook and pod entitlement need the key names only.
    view.data = Object.fromEntries(Object.keys(raw.data).map((k) => [k, ""]));
  }
  return view;
}
