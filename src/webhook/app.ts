/**
 * The admission webhook's HTTP app: POST /mutate (pods) and POST /validate
 * (secrets), AdmissionReview admission.k8s.io/v1 in and out. The HTTPS
 * listener and its certificate are the caller's; serve `webhookApp(...).fetch`.
 *
 * HTTP status: 200 with a review for every request kloak could read, including
 * denials and its own failures (the API server expects a review; a failure
 * denies, never admits); 400 malformed review or JSON, 413 body over 3 MiB,
 * 415 not application/json, 405 other methods. Nothing a response or log line
 * says is taken from a Secret's values.
 */
import { Hono } from "hono";
import { mutatePod, type SecretLookup } from "./mutate.ts";
import { BadReview, deny, objectId, parseReview, reviewResponse, type AdmissionRequest, type Decision } from "./review.ts";
import { validateSecret, type NamespaceLookup } from "./validate.ts";

export type { SecretLookup } from "./mutate.ts";

export type WebhookPath = "/mutate" | "/validate";
export type WebhookOutcome = "allowed" | "patched" | "denied" | "invalid" | "error";
export type LogLevel = "info" | "warn" | "error";

export interface WebhookOptions {
  secrets: SecretLookup;
  /** namespaces' labels, for /validate (an enabled Secret needs an opted-in namespace); unchecked when absent */
  namespaces?: NamespaceLookup;
  /** called once per request to /mutate or /validate (metrics) */
  onRequest?: (path: WebhookPath, outcome: WebhookOutcome, seconds: number) => void;
  log?: (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;
}

/** The API server's own limit on a request body is 3 MiB. */
export const MAX_BODY_BYTES = 3 * 1024 * 1024;

export const INTERNAL_ERROR_MESSAGE =
  "kloak's webhook failed on this request and refuses it rather than risk exposing a secret; see the kloak agent's log";

class HttpError extends Error {
  constructor(
    readonly status: 400 | 413 | 415,
    message: string,
  ) {
    super(message);
  }
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body + "\n", { status, headers: { "content-type": "text/plain; charset=utf-8", ...headers } });
}

function json(body: unknown): Response {
  return new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json" } });
}

function checkContentType(req: Request): void {
  const type = req.headers.get("content-type");
  const media = type?.split(";")[0]?.trim().toLowerCase();
  if (media !== "application/json") {
    throw new HttpError(415, `content-type must be application/json (got ${type === null ? "none" : JSON.stringify(type.slice(0, 100))})`);
  }
}

const TOO_LARGE = `request body is over ${MAX_BODY_BYTES} bytes`;

async function readBody(req: Request): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, TOO_LARGE);
  if (req.body === null) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_BODY_BYTES) {
        await reader.cancel().catch(() => {});
        throw new HttpError(413, TOO_LARGE);
      }
      chunks.push(value);
    }
  } catch (e) {
    if (e instanceof HttpError) throw e;
    throw new HttpError(400, "could not read the request body");
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new HttpError(400, "request body is not UTF-8 text");
  }
}

function parseJson(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    // The parser's message quotes the input, which may hold a Secret's data.
    throw new HttpError(400, "request body is not JSON (expected an admission.k8s.io/v1 AdmissionReview)");
  }
}

function outcomeOf(d: Decision): WebhookOutcome {
  if (!d.allowed) return "denied";
  return d.patch.length > 0 ? "patched" : "allowed";
}

export function webhookApp(opts: WebhookOptions): Hono {
  const log = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    try {
      opts.log?.(level, msg, fields);
    } catch {
      // a broken logger must not turn into a failed admission
    }
  };
  const record = (path: WebhookPath, outcome: WebhookOutcome, started: number): void => {
    try {
      opts.onRequest?.(path, outcome, (performance.now() - started) / 1000);
    } catch (e) {
      log("warn", "webhook metrics callback failed", { error: String(e) });
    }
  };
  const decide: Record<WebhookPath, (r: AdmissionRequest) => Promise<Decision>> = {
    "/mutate": (r) => mutatePod(r, opts.secrets),
    "/validate": (r) => validateSecret(r, opts.namespaces),
  };

  async function handle(path: WebhookPath, req: Request): Promise<Response> {
    const started = performance.now();
    let request: AdmissionRequest | undefined;
    let outcome: WebhookOutcome = "error";
    try {
      checkContentType(req);
      const review = parseReview(parseJson(await readBody(req)));
      request = review.request;
      const decision = await decide[path](request);
      outcome = outcomeOf(decision);
      const fields = {
        uid: request.uid,
        operation: request.operation,
        object: objectId(request.namespace ?? undefined, objectMeta(request)),
      };
      if (!decision.allowed) log("info", `${path}: denied`, { ...fields, code: decision.code, message: decision.message });
      else if (outcome === "patched") log("info", `${path}: patched`, { ...fields, ops: decision.patch.length });
      if (decision.warnings.length > 0) log("info", `${path}: warnings`, { ...fields, warnings: decision.warnings });
      return json(reviewResponse(request.uid, decision));
    } catch (e) {
      if (e instanceof HttpError || e instanceof BadReview) {
        outcome = "invalid";
        const status = e instanceof HttpError ? e.status : 400;
        log("warn", `${path}: rejected request`, { status, reason: e.message, uid: request?.uid });
        return text(status, e.message);
      }
      outcome = "error";
      log("error", `${path}: webhook failed`, { uid: request?.uid, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
      if (request === undefined) return text(500, "internal error");
      return json(reviewResponse(request.uid, deny(500, "InternalError", INTERNAL_ERROR_MESSAGE)));
    } finally {
      record(path, outcome, started);
    }
  }

  const app = new Hono();
  for (const path of ["/mutate", "/validate"] as const) {
    app.post(path, (c) => handle(path, c.req.raw));
    app.all(path, () => text(405, "use POST", { allow: "POST" }));
  }
  return app;
}

/** metadata of request.object (or oldObject) for log lines, whatever its shape. */
function objectMeta(request: AdmissionRequest): { name?: string; generateName?: string } {
  const obj = (request.object ?? request.oldObject) as { metadata?: unknown } | null | undefined;
  const meta = obj?.metadata;
  if (typeof meta !== "object" || meta === null) return { name: request.name ?? "" };
  const m = meta as Record<string, unknown>;
  return {
    name: typeof m.name === "string" && m.name ? m.name : (request.name ?? undefined),
    generateName: typeof m.generateName === "string" ? m.generateName : undefined,
  };
}
