/**
 * What the webhook server needs to serve TLS and what the admission
 * configurations need to trust it, whichever mode produced it (the shared
 * Secret or a cert-manager volume).
 */
import { parseCert } from "./authority.ts";

export interface Material {
  /** PEM of the CA certificate(s) clients should trust; during a CA rollover, new and old. Empty when unknown. */
  caPem: string;
  certPem: string;
  keyPem: string;
  /** Serving certificate's notAfter (exported as kloak_webhook_cert_expiry_timestamp_seconds). */
  notAfter: Date;
}

/** Fingerprint of the serving certificate: what decides whether the HTTPS server must reload. */
export function servingFingerprint(m: Pick<Material, "certPem">): string {
  return parseCert(m.certPem).fingerprint;
}

/** Normalized CA text: what decides whether caBundle must be patched. */
export function caIdentity(m: Pick<Material, "caPem">): string {
  return m.caPem.replace(/\r\n/g, "\n").trim();
}
