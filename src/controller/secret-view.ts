/**
 * The agent's trimmed copy of a Secret. Only enabled originals and kloak's
 * shadows are watched (label selectors), and of their metadata only labels
 * and kloak's own annotations are kept: another annotation may hold a copy
 * of the whole Secret (kubectl.kubernetes.io/last-applied-configuration does
 * for every `kubectl apply`), which would double what kloak keeps and put
 * values of keys kloak does not protect into its memory.
 */
import { DOMAIN, isEnabled, isShadow, type Meta } from "../kube/contract.ts";
import { trimMeta, type ObjectMeta } from "../kube/reflector.ts";

export interface SecretView {
  metadata: ObjectMeta & Meta;
  type?: string;
  /** base64 values; only for enabled originals and shadows */
  data?: Record<string, string>;
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
    for (const [k, val] of Object.entries(raw.data))
      // The typed list client may hand back bytes; the watch hands back base64 strings.
      view.data[k] = typeof val === "string" ? val : Buffer.from(val).toString("base64");
  } else if (raw.data) {
    // Keys without values: the webhook and pod entitlement need the key names only.
    view.data = Object.fromEntries(Object.keys(raw.data).map((k) => [k, ""]));
  }
  return view;
}
