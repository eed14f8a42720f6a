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

/** An error streak is logged when it starts, then at most this often. */
const STREAK_LOG_EVERY_MS = 30_000;

/**
 * A run of failed calls to the API server, told to the log without flooding
 * it: when the run starts, at most every 30 s while it lasts, and once when a
 * call succeeds again. `log` gets the number of failures so far.
 */
export class FailureStreak {
  private failures = 0;
  private loggedAt = 0;

  /** now: the caller's ms clock */
  constructor(private readonly now: () => number) {}

  failed(log: (failures: number) => void): void {
    const now = this.now();
    this.failures++;
    if (this.failures === 1 || now - this.loggedAt >= STREAK_LOG_EVERY_MS) {
      this.loggedAt = now;
      log(this.failures);
    }
  }

  /** Ends the run, if there was one (log is called only then). */
  succeeded(log: (failures: number) => void): void {
    if (this.failures === 0) return;
    log(this.failures);
    this.failures = 0;
  }
}
