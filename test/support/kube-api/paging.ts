/**
 * LIST options of the kube-apiserver test double (see ../kube-api-server.ts):
 * the checks kube-apiserver makes on resourceVersion, resourceVersionMatch,
 * limit and continue, and paging with continue tokens that expire when the
 * history they point into is compacted, as etcd's do.
 *
 * Upstream: ValidateListOptions (422 Invalid, ListOptions.meta.k8s.io), the
 * etcd3 store's "specifying resource version is not allowed when using
 * continue" (400) and its inconsistent-continue 410 Expired.
 */
import type { KubeObject } from "../kube-api-server.ts";
import { badRequest, KubeApiError } from "./status.ts";

const EXPIRED_CONTINUE =
  "The provided continue parameter is too old to display a consistent list result. You can start a new list without the " +
  "continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with " +
  "the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the " +
  "first chunk was returned and now may show up in the list.";

function invalidListOptions(field: string, detail: string): KubeApiError {
  return new KubeApiError(422, "Invalid", `ListOptions.meta.k8s.io "" is invalid: ${field}: Forbidden: ${detail}`);
}

/** Throws what kube-apiserver answers to list options it refuses. */
export function validateListOptions(q: URLSearchParams): void {
  const rv = q.get("resourceVersion") ?? "";
  const match = q.get("resourceVersionMatch") ?? "";
  const cont = q.get("continue") ?? "";
  if (rv !== "" && !/^\d+$/.test(rv)) throw badRequest(`resourceVersion: Invalid value: "${rv}": must be an unsigned integer`);
  if (match !== "") {
    if (match !== "NotOlderThan" && match !== "Exact") {
      throw new KubeApiError(422, "Invalid", `ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Unsupported value: "${match}": supported values: "Exact", "NotOlderThan", ""`);
    }
    if (rv === "") throw invalidListOptions("resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided");
    if (cont !== "") throw invalidListOptions("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided");
    if (match === "Exact" && rv === "0") throw invalidListOptions("resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"');
  }
  if (cont !== "" && rv !== "" && rv !== "0") throw badRequest("specifying resource version is not allowed when using continue");
}

export interface Page {
  items: KubeObject[];
  /** the list's resourceVersion: the first page's, on every page */
  resourceVersion: string;
  continue?: string;
  remainingItemCount?: number;
}

/**
 * One page of `items` (all matching objects, now): in namespace/name order;
 * the token carries the last key and the first page's resourceVersion.
 * Later pages show current objects, not the first page's snapshot. A token
 * from before the last compaction gets 410 Expired, with a fresh token in
 * the Status as upstream (an inconsistent continuation).
 */
export function page(items: KubeObject[], q: URLSearchParams, current: string, compactedAt: number): Page {
  const limit = Number(q.get("limit") ?? 0);
  const token = q.get("continue");
  if (!(limit > 0) && !token) return { items, resourceVersion: current };
  const key = (o: KubeObject) => `${o.metadata.namespace ?? ""}/${o.metadata.name}`;
  let sorted = [...items].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  let listRv = current;
  if (token) {
    let after: { rv: string; last: string };
    try {
      after = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    } catch {
      throw badRequest("continue key is not valid");
    }
    if (Number(after.rv) < compactedAt) {
      const fresh = Buffer.from(JSON.stringify({ rv: current, last: after.last })).toString("base64url");
      throw new KubeApiError(410, "Expired", EXPIRED_CONTINUE, undefined, { continue: fresh });
    }
    listRv = after.rv;
    sorted = sorted.filter((o) => key(o) > after.last);
  }
  if (!(limit > 0) || sorted.length <= limit) return { items: sorted, resourceVersion: listRv };
  const shown = sorted.slice(0, limit);
  return {
    items: shown,
    resourceVersion: listRv,
    continue: Buffer.from(JSON.stringify({ rv: listRv, last: key(shown.at(-1)!) })).toString("base64url"),
    remainingItemCount: sorted.length - limit,
  };
}
