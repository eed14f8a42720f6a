/**
 * cert-manager mode: the serving certificate comes from a Secret that
 * cert-manager maintains, mounted as a volume (tls.crt, tls.key, optional
 * ca.crt). kloak only reads it; cert-manager's cainjector keeps the admission
 * configurations' caBundle current, so nothing here patches them.
 *
 * kubelet updates a Secret volume atomically by writing a fresh timestamped
 * directory and renaming the `..data` symlink onto it; the visible files are
 * symlinks through `..data`. fs.watch on those files misses the swap (the
 * watched inode never changes), so this polls content instead, and reads all
 * three files through one resolved `..data` target so a swap between two
 * reads cannot mix generations. Without `..data` (a plain directory) a pair
 * caught mid-write fails the parse or key-match check and is skipped until a
 * later poll sees it whole.
 */
import { createHash } from "node:crypto";
import { readFile, realpath } from "node:fs/promises";
import { join } from "node:path";
import { keyMatchesCert, parseCert, tryParseCert, verifyChain, splitPem } from "./authority.ts";
import { noLog, type LogFn } from "../log.ts";
import type { Material } from "./material.ts";

export const CERT_FILE = "tls.crt";
export const KEY_FILE = "tls.key";
export const CA_FILE = "ca.crt";

export interface WatchCertDirOptions {
  /** Default 10 000. kubelet itself only resyncs volumes every minute or so. */
  intervalMs?: number;
  log?: LogFn;
}

export interface CertDirWatcher {
  /** The last pair delivered to onChange. */
  current(): Material | undefined;
  /** Reads now; resolves true when onChange was called. Polls never overlap. */
  poll(): Promise<boolean>;
  stop(): void;
}

export class CertDirError extends Error {
  override name = "CertDirError";
}

interface Snapshot {
  hash: string;
  cert: string;
  key: string;
  ca: string;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}

async function snapshot(dir: string): Promise<Snapshot> {
  let base = dir;
  try {
    base = await realpath(join(dir, "..data"));
  } catch {
    // Not a kubelet-managed volume: read the files where they are.
  }
  const [cert, key, ca] = await Promise.all([
    readOptional(join(base, CERT_FILE)),
    readOptional(join(base, KEY_FILE)),
    readOptional(join(base, CA_FILE)),
  ]);
  if (cert === undefined || key === undefined) {
    throw new CertDirError(`${dir} has no ${cert === undefined ? CERT_FILE : KEY_FILE}; mount the cert-manager Secret there`);
  }
  const hash = createHash("sha256").update(cert).update("\0").update(key).update("\0").update(ca ?? "").digest("hex");
  return { hash, cert, key, ca: ca ?? "" };
}

/** Checks a snapshot; the error text names files and reasons, never key contents. */
function validate(dir: string, s: Snapshot): Material {
  const leaf = tryParseCert(s.cert);
  if (!leaf) throw new CertDirError(`${join(dir, CERT_FILE)} does not hold a readable certificate`);
  if (!keyMatchesCert(s.cert, s.key)) {
    throw new CertDirError(`${join(dir, KEY_FILE)} is not the private key of ${join(dir, CERT_FILE)} (or is unreadable)`);
  }
  if (s.ca.trim() !== "" && splitPem(s.ca).some((b) => !tryParseCert(b))) {
    throw new CertDirError(`${join(dir, CA_FILE)} holds an unreadable certificate`);
  }
  return { caPem: s.ca, certPem: s.cert, keyPem: s.key, notAfter: leaf.notAfter };
}

/** Reads and validates the directory once (for startup); throws CertDirError saying what is wrong. */
export async function readCertDir(dir: string): Promise<Material> {
  return validate(dir, await snapshot(dir));
}

/**
 * Polls `dir` and calls `onChange` with each new valid pair, starting with
 * the first one found (the first poll runs immediately). Invalid or
 * half-updated content is logged once per distinct content and skipped; the
 * previously delivered pair stays current.
 */
export function watchCertDir(dir: string, onChange: (m: Material) => void, opts?: WatchCertDirOptions): CertDirWatcher {
  const intervalMs = opts?.intervalMs ?? 10_000;
  const log = opts?.log ?? noLog;
  let current: Material | undefined;
  let deliveredHash: string | undefined;
  let rejectedHash: string | undefined;
  let lastReadError: string | undefined;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<boolean> | undefined;

  const once = async (): Promise<boolean> => {
    let snap: Snapshot;
    try {
      snap = await snapshot(dir);
      lastReadError = undefined;
    } catch (e) {
      const msg = (e as Error).message;
      // kubelet deletes the previous generation right after a swap, so one ENOENT is routine; repeated ones are not.
      if (msg !== lastReadError) log("warn", "webhook certificate directory not readable; keeping the current certificate", { dir, error: msg });
      lastReadError = msg;
      return false;
    }
    if (snap.hash === deliveredHash || snap.hash === rejectedHash) return false;
    let m: Material;
    try {
      m = validate(dir, snap);
    } catch (e) {
      rejectedHash = snap.hash;
      log("warn", "webhook certificate files are not a valid pair (yet); keeping the current certificate", {
        dir,
        error: (e as Error).message,
      });
      return false;
    }
    // The leaf's issuer may be an intermediate carried in tls.crt; only the first link is checked, and only to inform.
    if (m.caPem && !(await verifyChain(m.certPem, splitPem(m.certPem).slice(1).join("") + m.caPem))) {
      log("warn", "tls.crt is not issued by ca.crt or an intermediate in tls.crt; API server calls may fail TLS verification", { dir });
    }
    deliveredHash = snap.hash;
    rejectedHash = undefined;
    current = m;
    const info = parseCert(m.certPem);
    log("info", "loaded webhook certificate from directory", { dir, fingerprint: info.fingerprint, notAfter: info.notAfter.toISOString() });
    onChange(m);
    return true;
  };

  const poll = (): Promise<boolean> => {
    running ??= once().finally(() => {
      running = undefined;
    });
    return running;
  };

  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      void poll().finally(schedule);
    }, intervalMs);
  };

  void poll().finally(schedule);

  return {
    current: () => current,
    poll,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
