/**
 * The agent's certificate loop in self-managed (shared Secret) mode: ask the
 * CertStore for current material, and when it differs from what is served,
 * bring the caBundle and the HTTPS server up to date.
 *
 * Ordering when the CA changed (a rollover): the caBundle is patched first,
 * then, after a short pause for the API server to pick the new bundle up, the
 * server switches to the leaf from the new CA. The other way round the API
 * server would briefly distrust us. The bundle holds new and old CA, so agents
 * still serving old leaves stay trusted too.
 *
 * Nothing here can leave the server without a certificate: the server only
 * ever swaps to a pair it accepted (ReloadableHttpsServer keeps the old one on
 * failure) and every error just schedules a retry with backoff.
 */
import { parseCert } from "./authority.ts";
import { noLog, type LogFn } from "../log.ts";
import { caIdentity, servingFingerprint, type Material } from "./material.ts";

export interface RotationOptions {
  store: { ensure(): Promise<Material> };
  server: { reload(cert: string, key: string): Promise<void> };
  /**
   * What the server serves right now. Without it, startCertRotation first
   * gets material from the store (a few attempts with backoff, then it
   * rejects) and the caller starts its server from `current()`; `server.reload`
   * is only called for later changes.
   */
  initial?: Material;
  /** Attempts at that first store.ensure() before giving up. Default 5 (about 15 s with the default backoff). */
  startupAttempts?: number;
  /**
   * Publishes `caPem` as the webhooks' caBundle. Omit in cert-manager mode,
   * where cainjector does it. Called on the first check and whenever the CA changes.
   */
  patchBundle?: (caPem: string) => Promise<void>;
  /** Upper bound between checks. Default 1 hour; a check is also due at 2/3 of the serving certificate's lifetime. */
  checkEveryMs?: number;
  /** Pause between patching a changed caBundle and serving a leaf from the new CA. Default 5 000. */
  caPropagationMs?: number;
  /** First retry delay after an error, doubling up to retryMaxMs. Defaults 1 000 and 300 000. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /**
   * Called with each material put in service (e.g. to update the expiry
   * metric): the startup material when fetched here (not `initial`), then every change.
   */
  onMaterial?: (m: Material) => void;
  log?: LogFn;
}

export interface CertRotation {
  /** The material the server is serving. */
  current(): Material;
  /** Serving certificate's notAfter, for kloak_webhook_cert_expiry_timestamp_seconds. */
  notAfter(): Date;
  /** Runs a check now (or joins the one running); resolves when it is done, never rejects. */
  checkNow(): Promise<void>;
  stop(): Promise<void>;
}

/** A check with 2/3 of the lifetime gone keeps at least this distance, so a short-lived cert cannot make the loop spin. */
const MIN_CHECK_MS = 1_000;

/** The timing options with their defaults filled in. */
interface Timing {
  checkEveryMs: number;
  caPropagationMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
}

function timingOf(opts: RotationOptions): Timing {
  return {
    checkEveryMs: opts.checkEveryMs ?? 3_600_000,
    caPropagationMs: opts.caPropagationMs ?? 5_000,
    retryBaseMs: opts.retryBaseMs ?? 1_000,
    retryMaxMs: opts.retryMaxMs ?? 300_000,
  };
}

/**
 * The wait after the `failures`-th failure in a row: doubling from
 * retryBaseMs up to retryMaxMs, with ±20 % jitter so that agents failing
 * together do not retry together.
 */
function backoffMs(failures: number, t: Timing): number {
  const base = Math.min(t.retryMaxMs, t.retryBaseMs * 2 ** Math.min(failures - 1, 30));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/** When the next check is due for material `m` in service. */
function dueInMs(m: Material, checkEveryMs: number): number {
  const { notBefore, notAfter } = parseCert(m.certPem);
  const twoThirds = notBefore.getTime() + ((notAfter.getTime() - notBefore.getTime()) * 2) / 3;
  // Just past the 2/3 point, so the store (renewing below 1/3 left) finds it due.
  return Math.max(MIN_CHECK_MS, Math.min(checkEveryMs, twoThirds + 1_000 - Date.now()));
}

/**
 * The material to start serving when the caller has none: a few attempts,
 * because at start-up the API server or the shared Secret may not be ready
 * yet; after the last one the store's error goes to the caller, which cannot
 * start its server without a certificate.
 */
async function startupMaterial(opts: RotationOptions, t: Timing, log: LogFn): Promise<Material> {
  const attempts = opts.startupAttempts ?? 5;
  let failures = 0;
  for (;;) {
    try {
      const m = await opts.store.ensure();
      // The store answered: an onMaterial that throws below counts as a first failure, not a further one.
      failures = 0;
      opts.onMaterial?.(m);
      return m;
    } catch (e) {
      failures++;
      if (failures >= attempts) throw e;
      log("warn", "could not get the webhook certificate yet; retrying", { error: (e as Error).message, attempt: failures });
      await Bun.sleep(backoffMs(failures, t));
    }
  }
}

/**
 * The running loop: what is served and published, and the one timer. At
 * most one check runs at a time; each schedules the next (due time when in
 * sync, backoff otherwise).
 */
class RotationLoop {
  /** Fingerprint of the leaf the server serves. */
  private servedFp: string;
  /** CA identity last published as caBundle; undefined until the first successful patch. */
  private publishedCa: string | undefined;
  private failures = 0;
  private stopped = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private running: Promise<void> | undefined;

  constructor(
    private readonly opts: RotationOptions,
    private readonly t: Timing,
    private readonly log: LogFn,
    /** The material in service. */
    public current: Material,
  ) {
    this.servedFp = servingFingerprint(current);
  }

  /** Runs a check now, or joins the one running; never rejects. */
  run(): Promise<void> {
    this.running ??= (async () => {
      let ok = false;
      try {
        ok = await this.check();
      } catch (e) {
        this.log("error", "webhook certificate check failed unexpectedly", { error: (e as Error).message });
      }
      this.failures = ok ? 0 : this.failures + 1;
      this.schedule(ok ? dueInMs(this.current, this.t.checkEveryMs) : backoffMs(this.failures, this.t));
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.run(), ms);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One pass: fetch material, publish its CA, serve its leaf. True when everything is in sync. */
  private async check(): Promise<boolean> {
    let m: Material;
    try {
      m = await this.opts.store.ensure();
    } catch (e) {
      this.log("warn", "webhook certificate check failed; still serving the current certificate", { error: (e as Error).message });
      return false;
    }
    const caId = caIdentity(m);
    const caChanged = caId !== caIdentity(this.current);
    const bundleOk = await this.publishBundle(m, caId, caChanged);
    const served = await this.serve(m, bundleOk, caChanged);
    return served && bundleOk;
  }

  /**
   * Patches the caBundle when its CA is not the one last published. After a
   * CA change it waits for the API server to pick the bundle up before the
   * new leaf is served. False when the patch failed.
   */
  private async publishBundle(m: Material, caId: string, caChanged: boolean): Promise<boolean> {
    if (!this.opts.patchBundle || caId === this.publishedCa) return true;
    try {
      await this.opts.patchBundle(m.caPem);
      this.publishedCa = caId;
      if (caChanged && this.t.caPropagationMs > 0) await Bun.sleep(this.t.caPropagationMs);
      return true;
    } catch (e) {
      this.log("warn", "could not publish the webhook CA bundle", { error: (e as Error).message });
      return false;
    }
  }

  /** Puts m in service: reloads the server when its leaf differs. False when that is held back or refused. */
  private async serve(m: Material, bundleOk: boolean, caChanged: boolean): Promise<boolean> {
    const fp = servingFingerprint(m);
    if (fp === this.servedFp) {
      // Same leaf, but the CA text changed (the bundle gained or dropped a CA): nothing to reload.
      if (caChanged) {
        this.current = m;
        this.opts.onMaterial?.(m);
      }
      return true;
    }
    // A leaf from a CA the API server may not trust yet would fail every call; wait
    // for the bundle unless the current leaf is about to lapse anyway.
    const currentLapsesSoon = this.current.notAfter.getTime() - Date.now() < 3_600_000;
    if (!bundleOk && caChanged && !currentLapsesSoon) return false;
    try {
      await this.opts.server.reload(m.certPem, m.keyPem);
    } catch (e) {
      this.log("error", "HTTPS server refused the new webhook certificate; still serving the current one", { error: (e as Error).message });
      return false;
    }
    this.servedFp = fp;
    this.current = m;
    this.log("info", "webhook HTTPS server now serves the renewed certificate", { fingerprint: fp, notAfter: m.notAfter.toISOString() });
    this.opts.onMaterial?.(m);
    return true;
  }
}

/**
 * Starts the loop; the first check runs at once. Resolves immediately when
 * `initial` is given, otherwise once the store produced material (or rejects
 * with the store's error after `startupAttempts`).
 */
export async function startCertRotation(opts: RotationOptions): Promise<CertRotation> {
  const log = opts.log ?? noLog;
  const t = timingOf(opts);
  const initial = opts.initial ?? (await startupMaterial(opts, t, log));
  const loop = new RotationLoop(opts, t, log, initial);
  loop.schedule(0);
  return {
    current: () => loop.current,
    notAfter: () => loop.current.notAfter,
    checkNow: () => loop.run(),
    stop: () => loop.stop(),
  };
}
