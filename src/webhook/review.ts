/**
 * AdmissionReview (admission.k8s.io/v1) in and out: the valibot schemas the
 * webhook checks requests against, and the responses it sends back.
 *
 * Schemas are loose (unknown fields pass through untouched) and only as deep
 * as the webhook reads. A request that does not match is the caller's mistake
 * and gets HTTP 400 with a reason; reasons name the path and the expected type
 * but never echo an input value (a Secret's data may be in the body).
 */
import * as v from "valibot";
import type { Meta } from "../kube/contract.ts";

export const ADMISSION_API_VERSION = "admission.k8s.io/v1";

const str = v.nullish(v.string());
const bool = v.nullish(v.boolean());
const stringMap = v.nullish(v.record(v.string(), v.string()));

const MetaSchema = v.looseObject({
  name: v.optional(v.string()),
  generateName: v.optional(v.string()),
  namespace: v.optional(v.string()),
  labels: stringMap,
  annotations: stringMap,
});

const GroupVersionKind = v.looseObject({ group: v.string(), version: v.string(), kind: v.string() });

const Operation = v.picklist(["CREATE", "UPDATE", "DELETE", "CONNECT"]);

/** The envelope; `object` and `oldObject` are checked per endpoint. */
const ReviewSchema = v.looseObject({
  apiVersion: v.literal(ADMISSION_API_VERSION),
  kind: v.literal("AdmissionReview"),
  request: v.looseObject({
    uid: v.pipe(v.string(), v.minLength(1)),
    kind: GroupVersionKind,
    subResource: str,
    name: str,
    namespace: str,
    operation: Operation,
    dryRun: bool,
    object: v.optional(v.unknown()),
    oldObject: v.optional(v.unknown()),
  }),
});

const KeyToPath = v.looseObject({ key: v.string(), path: v.string() });
const Items = v.nullish(v.array(KeyToPath));

const VolumeSchema = v.looseObject({
  name: str,
  secret: v.nullish(v.looseObject({ secretName: str, optional: bool, items: Items })),
  projected: v.nullish(
    v.looseObject({
      sources: v.nullish(
        v.array(
          v.looseObject({
            secret: v.nullish(v.looseObject({ name: str, optional: bool, items: Items })),
          }),
        ),
      ),
    }),
  ),
});

const ContainerSchema = v.looseObject({
  name: str,
  env: v.nullish(
    v.array(
      v.looseObject({
        name: str,
        valueFrom: v.nullish(
          v.looseObject({
            secretKeyRef: v.nullish(v.looseObject({ name: str, key: v.string(), optional: bool })),
          }),
        ),
      }),
    ),
  ),
  envFrom: v.nullish(
    v.array(v.looseObject({ secretRef: v.nullish(v.looseObject({ name: str, optional: bool })) })),
  ),
});

const Containers = v.nullish(v.array(ContainerSchema));

export const PodSchema = v.looseObject({
  metadata: v.nullish(MetaSchema),
  spec: v.nullish(
    v.looseObject({
      volumes: v.nullish(v.array(VolumeSchema)),
      containers: Containers,
      initContainers: Containers,
      ephemeralContainers: Containers,
    }),
  ),
});

export const SecretSchema = v.looseObject({
  metadata: v.nullish(MetaSchema),
  type: str,
  data: stringMap,
  stringData: stringMap,
});

export type AdmissionReview = v.InferOutput<typeof ReviewSchema>;
export type AdmissionRequest = AdmissionReview["request"];
export type Pod = v.InferOutput<typeof PodSchema>;
export type PodSpec = NonNullable<Pod["spec"]>;
export type Container = NonNullable<v.InferOutput<typeof Containers>>[number];
export type SecretObject = v.InferOutput<typeof SecretSchema>;

/** A request kloak refuses to read: HTTP 400 with `reason`. */
export class BadReview extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "BadReview";
  }
}

function describeType(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "an array";
  return typeof x === "object" ? "an object" : `a ${typeof x}`;
}

function formatPath(prefix: string, issue: v.BaseIssue<unknown>): string {
  let out = prefix;
  for (const item of issue.path ?? []) {
    const key: unknown = item.key;
    if (typeof key === "number") out += `[${key}]`;
    else if (typeof key === "string" && /^[A-Za-z_$][\w$]*$/.test(key)) out += (out ? "." : "") + key;
    else out += `[${JSON.stringify(String(key))}]`;
  }
  return out || "body";
}

/** One issue as text; the input is described by its type only, never its value. */
function describeIssue(prefix: string, issue: v.BaseIssue<unknown>): string {
  const where = formatPath(prefix, issue);
  if (issue.input === undefined) return `${where} is missing`;
  if (issue.type === "min_length") return `${where} is empty`;
  const expected = issue.expected ?? issue.type;
  if (issue.type === "literal" || issue.type === "picklist") {
    return `${where} must be ${expected.replace(/^\((.*)\)$/, "$1").replaceAll(" | ", " or ")}`;
  }
  return `${where}: expected ${expected.toLowerCase()}, got ${describeType(issue.input)}`;
}

const MAX_REPORTED = 3;

export function describeIssues(prefix: string, issues: readonly v.BaseIssue<unknown>[]): string {
  const shown = issues.slice(0, MAX_REPORTED).map((i) => describeIssue(prefix, i));
  const more = issues.length - shown.length;
  return shown.join("; ") + (more > 0 ? `; and ${more} more` : "");
}

function parseWith<S extends v.GenericSchema>(schema: S, input: unknown, prefix: string): v.InferOutput<S> {
  const r = v.safeParse(schema, input);
  if (!r.success) throw new BadReview(describeIssues(prefix, r.issues));
  return r.output;
}

/** The envelope of a review; throws BadReview. */
export function parseReview(body: unknown): AdmissionReview {
  return parseWith(ReviewSchema, body, "");
}

/**
 * request.object checked against `schema`; throws BadReview when it is missing
 * or malformed.
 */
export function parseObject<S extends v.GenericSchema>(request: AdmissionRequest, schema: S, what: string): v.InferOutput<S> {
  if (request.object === undefined || request.object === null) {
    throw new BadReview(
      `request.object is missing: a ${request.operation} review must carry the ${what} ` +
        `(is this an admission.k8s.io/v1 AdmissionReview from the API server?)`,
    );
  }
  return parseWith(schema, request.object, "request.object");
}

export function checkKind(request: AdmissionRequest, kind: string): void {
  const k = request.kind;
  if (k.group !== "" || k.version !== "v1" || k.kind !== kind) {
    throw new BadReview(
      `request.kind is ${JSON.stringify(`${k.group}/${k.version}, Kind=${k.kind}`)}; this endpoint reviews v1 ${kind}s: ` +
        `check the webhook configuration's rules`,
    );
  }
}

// --- responses ---------------------------------------------------------------

export interface JsonPatchOp {
  op: "add" | "replace";
  path: string;
  value: unknown;
}

/** What a webhook decided about one request. */
export type Decision =
  | { allowed: true; patch: JsonPatchOp[]; warnings: string[] }
  | { allowed: false; code: number; reason: string; message: string; warnings: string[] };

export function allow(warnings: string[] = [], patch: JsonPatchOp[] = []): Decision {
  return { allowed: true, patch, warnings };
}

export function deny(code: number, reason: string, message: string, warnings: string[] = []): Decision {
  return { allowed: false, code, reason, message, warnings };
}

/** RFC 6901: "~" then "/" escaped in each reference token. */
export function pointer(...tokens: (string | number)[]): string {
  return tokens.map((t) => "/" + String(t).replaceAll("~", "~0").replaceAll("/", "~1")).join("");
}

export function reviewResponse(uid: string, d: Decision): Record<string, unknown> {
  const response: Record<string, unknown> = { uid, allowed: d.allowed };
  if (d.allowed) {
    if (d.patch.length > 0) {
      response.patchType = "JSONPatch";
      response.patch = Buffer.from(JSON.stringify(d.patch)).toString("base64");
    }
  } else {
    response.status = { code: d.code, reason: d.reason, message: d.message };
  }
  if (d.warnings.length > 0) response.warnings = [...new Set(d.warnings)];
  return { apiVersion: ADMISSION_API_VERSION, kind: "AdmissionReview", response };
}

/** "ns/name" of an object for messages ("ns/prefix*" before the API server names it). */
export function objectId(namespace: string | undefined, meta: { name?: string; generateName?: string } | null | undefined): string {
  const name = meta?.name || `${meta?.generateName ?? ""}*`;
  return namespace ? `${namespace}/${name}` : name;
}
