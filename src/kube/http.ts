/**
 * Calls to the API server, shared by the kube modules and the agent: a
 * per-request timeout, and the status and short message of a failed call.
 */
import { ApiException, Observable, type ConfigurationOptions, type RequestContext, type ResponseContext } from "@kubernetes/client-node";

/**
 * Request options that abort the request after ms. client-node sets no
 * timeout of its own, so without this a half-open connection hangs forever.
 * Its middleware chain expects its Observable stub, not a Promise.
 */
export function requestTimeout(ms: number): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (ctx: RequestContext) => {
          ctx.setSignal(AbortSignal.timeout(Math.max(1, Math.ceil(ms))));
          return new Observable(Promise.resolve(ctx));
        },
        post: (res: ResponseContext) => new Observable(Promise.resolve(res)),
      },
    ],
    middlewareMergeStrategy: "append",
  };
}

export function statusOf(e: unknown): number | undefined {
  return e instanceof ApiException ? (e as ApiException<unknown>).code : undefined;
}

/** A short description: status and the API server's message, not the headers ApiException.message carries. */
export function describeError(e: unknown): string {
  if (e instanceof ApiException) {
    const err = e as ApiException<unknown>;
    let msg: unknown;
    try {
      const body: unknown = typeof err.body === "string" ? JSON.parse(err.body) : err.body;
      if (body && typeof body === "object") msg = (body as { message?: unknown }).message;
    } catch {
      msg = typeof err.body === "string" ? err.body.slice(0, 200) : undefined;
    }
    return typeof msg === "string" && msg ? `HTTP ${err.code}: ${msg}` : `HTTP ${err.code}`;
  }
  return e instanceof Error ? e.message : String(e);
}
