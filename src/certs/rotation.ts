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

/**
 * Starts the loop; the first check runs at once. Resolves immediately when
 * `initial` is given, otherwise once the store produced material (or rejects
 * with the store's error after `startupAttempts`).
 */
export async function startCertRotation(opts: RotationOptions): Promise<CertRotation> {
  const log = opts.log ?? noLog;
  const checkEveryMs = opts.checkEveryMs ?? 3_600_000;
  const caPropagationMs = opts.caPropagationMs ?? 5_000;
  const retryBaseMs = opts.retryBaseMs ?? 1_000;
  const retryMaxMs = opts.retryMaxMs ?? 300_000;
  let failures = 0;

  const backoff = (): number => {
    const base = Math.min(retryMaxMs, retryBaseMs * 2 ** Math.min(failures - 1, 30));
    return Math.round(base * (0.8 + Math.random() * 0.4));
  };

  let current: Material;
  if (opts.initial) current = opts.initial;
  else {
    const attempts = opts.startupAttempts ?? 5;
    for (;;) {
      try {
        current = await opts.store.ensure();
        failures = 0;
        opts.onMaterial?.(current);
        break;
      } catch (e) {
        failures++;
        if (failures >= attempts) throw e;
        log("warn", "could not get the webhook certificate yet; retrying", { error: (e as Error).message, attempt: failures });
        await Bun.sleep(backoff());
      }
    }
  }
  let servedFp = servingFingerprint(current);
  /** CA identity last published as caBundle; undefined until the first successful patch. */
  let publishedCa: string | undefined;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> | undefined;

  const dueIn = (m: Material): number => {
    const { notBefore, notAfter } = parseCert(m.certPem);
    const twoThirds = notBefore.getTime() + ((notAfter.getTime() - notBefore.getTime()) * 2) / 3;
    // Just past the 2/3 point, so the store (renewing below 1/3 left) finds it due.
    return Math.max(MIN_CHECK_MS, Math.min(checkEveryMs, twoThirds + 1_000 - Date.now()));
  };

  /** Returns true when everything is in sync. */
  const check = async (): Promise<boolean> => {
    let m: Material;
    try {
      m = await opts.store.ensure();
    } catch (e) {
      log("warn", "webhook certificate check failed; still serving the current certificate", { error: (e as Error).message });
      return false;
    }
    const caId = caIdentity(m);
    const caChanged = caId !== caIdentity(current);
    let bundleOk = true;
    if (opts.patchBundle && caId !== publishedCa) {
      try {
        await opts.patchBundle(m.caPem);
        publishedCa = caId;
        if (caChanged && caPropagationMs > 0) await Bun.sleep(caPropagationMs);
      } catch (e) {
        bundleOk = false;
        log("warn", "could not publish the webhook CA bundle", { error: (e as Error).message });
      }
    }
    const fp = servingFingerprint(m);
    if (fp !== servedFp) {
      // A leaf from a CA the API server may not trust yet would fail every call; wait
      // for the bundle unless the current leaf is about to lapse anyway.
      const currentLapsesSoon = current.notAfter.getTime() - Date.now() < 3_600_000;
      if (!bundleOk && caChanged && !currentLapsesSoon) return false;
      try {
        await opts.server.reload(m.certPem, m.keyPem);
      } catch (e) {
        log("error", "HTTPS server refused the new webhook certificate; still serving the current one", { error: (e as Error).message });
        return false;
      }
      servedFp = fp;
      current = m;
      log("info", "webhook HTTPS server now serves the renewed certificate", { fingerprint: fp, notAfter: m.notAfter.toISOString() });
      opts.onMaterial?.(m);
    } else if (caChanged) {
      current = m;
      opts.onMaterial?.(m);
    }
    return bundleOk;
  };

  const schedule = (ms: number) => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(() => void run(), ms);
  };

  const run = (): Promise<void> => {
    running ??= (async () => {
      let ok = false;
      try {
        ok = await check();
      } catch (e) {
        log("error", "webhook certificate check failed unexpectedly", { error: (e as Error).message });
      }
      failures = ok ? 0 : failures + 1;
      schedule(ok ? dueIn(current) : backoff());
    })().finally(() => {
      running = undefined;
    });
    return running;
  };

  schedule(0);

  return {
    current: () => current,
    notAfter: () => current.notAfter,
    checkNow: run,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
