/**
 * The agent's trimmed copy of a Secret. Every Secret in the cluster is watched
 * (enablement may be an annotation, which no selector can match), but only
 * enabled originals and kloak's shadows keep their data: the rest of the
 * cluster's secret values never stay in kloak's memory.
 */
import { isEnabled, isShadow, type Meta } from "../kube/contract.ts";
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


export function secretView(raw: RawSecret): SecretView {
  const metadata = trimMeta(raw.metadata);
  const keep = isEnabled(metadata) || isShadow(metadata);
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
