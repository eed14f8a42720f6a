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
 *
 * The other direction, for deriving RBAC from what code does: every request
 * with the token is recorded as an Access (kube-api-server's `accesses`), and
 * unusedGrants() names each grant (verb × resource × name of a rule) that no
 * recorded request needed.
 */
import type { KubeObject } from "../kube-api-server.ts";
import type { Route } from "./routes.ts";
import { KubeApiError } from "./status.ts";

export interface Rule {
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

/** What an authorizer sees of a request (upstream's authorizer.Attributes, resource requests only). */
export interface Access {
  verb: string;
  group: string;
  /** plural, with "/subresource" when there is one */
  resource: string;
  /** undefined: cluster-scoped, or a namespaced resource across all namespaces */
  namespace?: string;
  /** the object's name; for create, the body's (which RBAC never sees: create cannot be limited by name) */
  name?: string;
  /** the request was refused */
  forbidden?: boolean;
}

export function accessOf(method: string, r: Route, watch: boolean, bodyName?: string): Access {
  const a: Access = { verb: verbOf(method, r, watch), group: r.res.group, resource: r.subresource ? `${r.res.plural}/${r.subresource}` : r.res.plural };
  if (r.res.namespaced && r.namespace !== undefined) a.namespace = r.namespace;
  const name = r.name ?? bodyName;
  if (name !== undefined) a.name = name;
  return a;
}

/** Whether one rule of `role` allows `a`; a create is never matched by name (upstream: no name at authorization). */
function ruleAllows(role: KubeObject, rule: Rule, a: Access): boolean {
  if (role.kind === "Role" && role.metadata.namespace !== a.namespace) return false;
  const name = a.verb === "create" || a.verb === "list" || a.verb === "watch" || a.verb === "deletecollection" ? undefined : a.name;
  return (
    (rule.apiGroups ?? []).some((g) => g === "*" || g === a.group) &&
    (rule.resources ?? []).some((x) => x === "*" || x === a.resource) &&
    rule.verbs.some((v) => v === "*" || v === a.verb) &&
    (!rule.resourceNames?.length || (name !== undefined && rule.resourceNames.includes(name)))
  );
}

/** Throws 403 Forbidden, worded as upstream, unless a bound rule allows the request. */
export function authorize(policy: RbacPolicy, a: Access): void {
  if (policy.roles.some((role) => ((role.rules ?? []) as Rule[]).some((rule) => ruleAllows(role, rule, a)))) return;
  const plural = a.resource.split("/")[0]!;
  const gr = `${plural}${a.group ? "." + a.group : ""}`;
  const where = a.namespace !== undefined ? ` in the namespace "${a.namespace}"` : " at the cluster scope";
  throw new KubeApiError(
    403,
    "Forbidden",
    `${a.name !== undefined ? `${gr} "${a.name}"` : gr} is forbidden: User "${policy.user}" cannot ${a.verb} resource "${a.resource}" in API group "${a.group}"${where}`,
  );
}

/**
 * One grant of a policy: a verb on a resource (of a group), maybe limited to
 * one name, in a role. A rule grants the product of its lists; each member
 * is needed on its own.
 */
export interface Grant {
  /** e.g. `ClusterRole kloak: get mutatingwebhookconfigurations.admissionregistration.k8s.io "kloak"` */
  text: string;
  role: KubeObject;
  rule: Rule;
  verb: string;
  group: string;
  resource: string;
  name?: string;
}

export function grantsOf(policy: RbacPolicy): Grant[] {
  const out: Grant[] = [];
  for (const role of policy.roles) {
    const roleId = role.kind === "Role" ? `Role ${role.metadata.namespace}/${role.metadata.name}` : `ClusterRole ${role.metadata.name}`;
    for (const rule of (role.rules ?? []) as Rule[]) {
      for (const group of rule.apiGroups ?? []) {
        for (const resource of rule.resources ?? []) {
          for (const verb of rule.verbs) {
            for (const name of rule.resourceNames?.length ? rule.resourceNames : [undefined]) {
              const gr = `${resource}${group ? "." + group : ""}`;
              const g: Grant = { text: `${roleId}: ${verb} ${gr}${name !== undefined ? ` "${name}"` : ""}`, role, rule, verb, group, resource };
              if (name !== undefined) g.name = name;
              out.push(g);
            }
          }
        }
      }
    }
  }
  return out;
}

/** Whether `a` is a use of `g` (the single-name, single-verb rule `g` stands for would allow it). */
export function grantUsedBy(g: Grant, a: Access): boolean {
  if (a.forbidden) return false;
  const rule: Rule = { apiGroups: [g.group], resources: [g.resource], verbs: [g.verb], ...(g.name !== undefined ? { resourceNames: [g.name] } : {}) };
  return ruleAllows(g.role, rule, a);
}

/** Grants of `policy` that none of `used` needed. */
export function unusedGrants(policy: RbacPolicy, used: Access[]): string[] {
  return grantsOf(policy)
    .filter((g) => !used.some((a) => grantUsedBy(g, a)))
    .map((g) => g.text);
}

/** `verb group/resource`, with where: "ns X", "all namespaces" or "cluster", and the name when one was given. */
export function describeAccess(a: Access): string {
  const gr = `${a.resource}${a.group ? "." + a.group : ""}`;
  return `${a.verb} ${gr}${a.name !== undefined ? ` "${a.name}"` : ""} (${a.namespace !== undefined ? `ns ${a.namespace}` : "cluster or all namespaces"})`;
}
