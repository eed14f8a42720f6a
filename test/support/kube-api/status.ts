/**
 * metav1.Status errors of the kube-apiserver test double, with the reasons,
 * codes and message wording of the real API.
 */
import { groupResource, type ResourceDef } from "./resources.ts";

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
}

/** An API error; the HTTP layer turns it into a Status body, the direct API throws it. */
export class KubeApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: StatusDetails,
    /** Status.metadata, e.g. the continue token of a 410 on an expired continue */
    readonly listMeta: Record<string, string> = {},
  ) {
    super(message);
    this.name = "KubeApiError";
  }

  toStatus(): Record<string, unknown> {
    const status: Record<string, unknown> = {
      kind: "Status",
      apiVersion: "v1",
      metadata: { ...this.listMeta },
      status: "Failure",
      message: this.message,
      reason: this.reason,
      code: this.code,
    };
    if (this.details !== undefined) status.details = this.details;
    return status;
  }
}

function details(res: ResourceDef, name: string | undefined): StatusDetails {
  const d: StatusDetails = {};
  if (name !== undefined) d.name = name;
  if (res.group !== "") d.group = res.group;
  d.kind = res.plural;
  return d;
}

export function notFound(res: ResourceDef, name: string): KubeApiError {
  return new KubeApiError(404, "NotFound", `${groupResource(res)} "${name}" not found`, details(res, name));
}

export function namespaceNotFound(ns: string): KubeApiError {
  return new KubeApiError(404, "NotFound", `namespaces "${ns}" not found`, { name: ns, kind: "namespaces" });
}

export function alreadyExists(res: ResourceDef, name: string): KubeApiError {
  return new KubeApiError(409, "AlreadyExists", `${groupResource(res)} "${name}" already exists`, details(res, name));
}

export function conflict(res: ResourceDef, name: string, why: string): KubeApiError {
  return new KubeApiError(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${groupResource(res)} "${name}": ${why}`,
    details(res, name),
  );
}

export const STALE = "the object has been modified; please apply your changes to the latest version and try again";

export function badRequest(message: string): KubeApiError {
  return new KubeApiError(400, "BadRequest", message);
}

export function invalid(res: ResourceDef, name: string, message: string): KubeApiError {
  return new KubeApiError(422, "Invalid", `${res.kind} "${name}" is invalid: ${message}`, details(res, name));
}

export function resourceNotFound(): KubeApiError {
  return new KubeApiError(404, "NotFound", "the server could not find the requested resource");
}

export function methodNotAllowed(method: string): KubeApiError {
  return new KubeApiError(405, "MethodNotAllowed", `the server does not allow this method on the requested resource (${method})`);
}

export function unsupportedMediaType(message: string): KubeApiError {
  return new KubeApiError(415, "UnsupportedMediaType", message);
}

export function expired(requested: number, oldest: number): KubeApiError {
  return new KubeApiError(410, "Expired", `too old resource version: ${requested} (${oldest})`);
}
