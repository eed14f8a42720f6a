/**
 * RBAC for the test double: the requests that carry the kubeconfig's token
 * are authorized like kube-apiserver's RBAC authorizer would for the
 * ServiceAccount the given ClusterRoles/Roles are bound to (deploy/base/rbac.yaml
 * in the agent tests), so a call the shipped RBAC forbids fails here as it
 * would on a cluster. Verbs from the method (get, list, watch, create,
 * update, patch, delete, deletecollection), resource with subresource,
 * resourceNames for requests that name an object (never for create or list),
 * Roles only in their namespace. Aggregation and non-resource URLs are not
 * modelled.
 */
import type { KubeObject } from "../kube-api-server.ts";
import type { Route } from "./routes.ts";
import { KubeApiError } from "./status.ts";

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
}

export interface RbacPolicy {
  /** e.g. system:serviceaccount:kloak:kloak, for messages */
  user: string;
  /** ClusterRoles and Roles bound to that user */
  roles: KubeObject[];
}

/** The roles that deploy/'s bindings give to ServiceAccount ns/name. */
export function policyFor(objects: KubeObject[], namespace: string, name: string): RbacPolicy {
  const bound = objects.filter(
    (b) =>
      (b.kind === "ClusterRoleBinding" || b.kind === "RoleBinding") &&
      ((b.subjects ?? []) as { kind: string; name: string; namespace?: string }[]).some((s) => s.kind === "ServiceAccount" && s.name === name && s.namespace === namespace),
  );
  const roles = bound.flatMap((b) => {
    const ref = b.roleRef as { kind: string; name: string };
    return objects.filter((r) => r.kind === ref.kind && r.metadata.name === ref.name && (ref.kind === "ClusterRole" || r.metadata.namespace === b.metadata.namespace));
  });
  return { user: `system:serviceaccount:${namespace}:${name}`, roles };
}

function verbOf(method: string, r: Route, watch: boolean): string {
  switch (method) {
    case "GET":
      return r.name !== undefined ? "get" : watch ? "watch" : "list";
    case "POST":
      return "create";
    case "PUT":
      return "update";
    case "PATCH":
      return "patch";
    case "DELETE":
      return r.name !== undefined ? "delete" : "deletecollection";
    default:
      return method.toLowerCase();
  }
}

/** Throws 403 Forbidden, worded as upstream, unless a bound rule allows the request. */
export function authorize(policy: RbacPolicy, method: string, r: Route, watch: boolean, bodyName?: string): void {
  const verb = verbOf(method, r, watch);
  const resource = r.subresource ? `${r.res.plural}/${r.subresource}` : r.res.plural;
  const namespace = r.res.namespaced ? r.namespace : undefined;
  const name = r.name;
  const allowed = policy.roles.some((role) => {
    if (role.kind === "Role" && role.metadata.namespace !== namespace) return false;
    return ((role.rules ?? []) as Rule[]).some(
      (rule) =>
        (rule.apiGroups ?? []).some((g) => g === "*" || g === r.res.group) &&
        (rule.resources ?? []).some((x) => x === "*" || x === resource) &&
        rule.verbs.some((v) => v === "*" || v === verb) &&
        (!rule.resourceNames?.length || (name !== undefined && rule.resourceNames.includes(name))),
    );
  });
  if (allowed) return;
  const what = name ?? bodyName;
  const group = r.res.group;
  const where = namespace !== undefined ? ` in the namespace "${namespace}"` : " at the cluster scope";
  throw new KubeApiError(
    403,
    "Forbidden",
    `${what !== undefined ? `${r.res.plural}${group ? "." + group : ""} "${what}"` : `${r.res.plural}${group ? "." + group : ""}`} is forbidden: User "${policy.user}" cannot ${verb} resource "${resource}" in API group "${group}"${where}`,
  );
}
