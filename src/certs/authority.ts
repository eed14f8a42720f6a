/**
 * The webhook's private PKI: a self-signed CA and serving certificates it
 * issues, all ECDSA P-256. Pure crypto, no Kubernetes.
 *
 * Generation goes through @peculiar/x509 on WebCrypto; parsing and checks go
 * through node:crypto's X509Certificate (synchronous, and what Bun's own TLS
 * stack agrees with).
 */
import "./reflect-shim.ts";
import type * as X509 from "@peculiar/x509";
import { createHash, createPrivateKey, randomBytes, X509Certificate } from "node:crypto";

export interface CaBundle {
  certPem: string;
  keyPem: string;
  notAfter: Date;
}

export interface ServingCert {
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CertInfo {
  notBefore: Date;
  notAfter: Date;
  /** subjectAltName DNS entries, in certificate order. */
  dnsNames: string[];
  isCa: boolean;
  /** Lowercase hex SHA-256 of the DER certificate, no separators. */
  fingerprint: string;
  subject: string;
  /** Extended key usage includes serverAuth (or the certificate has no EKU restriction). */
  serverAuth: boolean;
}

export interface IssueOptions {
  now?: Date;
  validityDays?: number;
}

export const CA_VALIDITY_DAYS = 3650;
export const SERVING_VALIDITY_DAYS = 365;
/** Nodes' clocks drift; a certificate "not yet valid" for a few minutes would fail every admission call. */
export const BACKDATE_MS = 5 * 60_000;

const DAY_MS = 86_400_000;
const KEY_ALG = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGN_ALG = { name: "ECDSA", hash: "SHA-256" } as const;
const SERVER_AUTH_OID = "1.3.6.1.5.5.7.3.1";

// tsyringe (inside @peculiar/x509) throws at load time unless
// Reflect.getMetadata exists. Bun loads the package's CommonJS build, and a
// static import of it ran before the shim even with the shim imported first
// (measured on Bun 1.4.5), so the library is loaded dynamically, after the shim.
let lib: Promise<typeof X509> | undefined;
function x509(): Promise<typeof X509> {
  lib ??= import("@peculiar/x509").then((m) => {
    m.cryptoProvider.set(crypto);
    return m;
  });
  return lib;
}

/** X.509 stores whole seconds; rounding here makes the returned dates equal what parseCert reads back. */
function seconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

function validity(opts: IssueOptions | undefined, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const now = opts?.now ?? new Date();
  const days = opts?.validityDays ?? defaultDays;
  if (!(days > 0)) throw new Error(`certificate validity must be positive, got ${days} days`);
  return {
    notBefore: seconds(new Date(now.getTime() - BACKDATE_MS)),
    notAfter: seconds(new Date(now.getTime() + days * DAY_MS)),
  };
}

/** Positive, non-zero, 16 random bytes: RFC 5280 wants unique serials of at most 20 octets. */
function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString("hex");
}

function toPem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join("\n")}\n-----END ${label}-----\n`;
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(KEY_ALG, true, ["sign", "verify"])) as CryptoKeyPair;
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  return toPem(await crypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

async function importSigningKey(keyPem: string): Promise<CryptoKey> {
  // node:crypto accepts PKCS#8 and SEC1 ("EC PRIVATE KEY") alike; WebCrypto only PKCS#8.
  let der: Uint8Array<ArrayBuffer>;
  try {
    der = new Uint8Array(createPrivateKey(keyPem).export({ format: "der", type: "pkcs8" }));
  } catch {
    throw new Error("CA private key is not a readable PEM private key");
  }
  try {
    return await crypto.subtle.importKey("pkcs8", der, KEY_ALG, false, ["sign"]);
  } catch {
    throw new Error("CA private key is not an ECDSA P-256 key");
  }
}

export async function createCa(opts?: IssueOptions): Promise<CaBundle> {
  const m = await x509();
  const { notBefore, notAfter } = validity(opts, CA_VALIDITY_DAYS);
  const keys = await newKeyPair();
  // Each CA gets its own subject (timestamp for humans, random suffix for
  // two made in the same second), so a client holding the old+new bundle
  // during a CA rollover never matches a leaf to the wrong issuer by name.
  const cert = await m.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=kloak-webhook-ca@${Math.floor(notBefore.getTime() / 1000)}-${randomBytes(4).toString("hex")}`,
    notBefore,
    notAfter,
    signingAlgorithm: SIGN_ALG,
    keys,
    extensions: [
      new m.BasicConstraintsExtension(true, 0, true),
      new m.KeyUsagesExtension(m.KeyUsageFlags.keyCertSign | m.KeyUsageFlags.cRLSign | m.KeyUsageFlags.digitalSignature, true),
      await m.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportKeyPem(keys.privateKey), notAfter };
}

/**
 * Issues a serving certificate for `dnsNames` signed by `ca`. `ca.certPem` may
 * be a bundle; the first certificate in it must be the one matching `ca.keyPem`.
 */
export async function issueServing(
  ca: Pick<CaBundle, "certPem" | "keyPem">,
  dnsNames: string[],
  opts?: IssueOptions,
): Promise<ServingCert> {
  if (dnsNames.length === 0) throw new Error("a serving certificate needs at least one DNS name");
  const m = await x509();
  const caPem = splitPem(ca.certPem)[0];
  if (!caPem) throw new Error("CA certificate PEM holds no certificate");
  const caCert = new m.X509Certificate(caPem);
  if (!keyMatchesCert(caPem, ca.keyPem)) throw new Error("CA private key does not belong to the CA certificate");
  const signingKey = await importSigningKey(ca.keyPem);
  const { notBefore, notAfter } = validity(opts, SERVING_VALIDITY_DAYS);
  const keys = await newKeyPair();
  const cert = await m.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${dnsNames[0]}`,
    issuer: caCert.subject,
    notBefore,
    notAfter,
    signingAlgorithm: SIGN_ALG,
    publicKey: keys.publicKey,
    signingKey,
    extensions: [
      new m.BasicConstraintsExtension(false, undefined, true),
      new m.KeyUsagesExtension(m.KeyUsageFlags.digitalSignature, true),
      new m.ExtendedKeyUsageExtension([m.ExtendedKeyUsage.serverAuth], false),
      new m.SubjectAlternativeNameExtension(
        dnsNames.map((value) => ({ type: "dns" as const, value })),
        false,
      ),
      await m.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await m.AuthorityKeyIdentifierExtension.create(caCert, false),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportKeyPem(keys.privateKey), notBefore, notAfter };
}

/** Every CERTIFICATE block in `pem`, in order, each ending with a newline. */
export function splitPem(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((b) => b + "\n");
}

/** Reads the first certificate in `pem`. Throws on anything unparseable. */
export function parseCert(pem: string): CertInfo {
  const first = splitPem(pem)[0];
  if (!first) throw new Error("no PEM CERTIFICATE block found");
  let c: X509Certificate;
  try {
    c = new X509Certificate(first);
  } catch (e) {
    throw new Error(`certificate PEM does not parse: ${(e as Error).message}`);
  }
  const dnsNames: string[] = [];
  for (const part of (c.subjectAltName ?? "").split(/,\s*/)) {
    if (part.startsWith("DNS:")) dnsNames.push(part.slice(4));
  }
  const eku = c.keyUsage;
  return {
    notBefore: c.validFromDate,
    notAfter: c.validToDate,
    dnsNames,
    isCa: c.ca,
    fingerprint: createHash("sha256").update(c.raw).digest("hex"),
    subject: c.subject,
    serverAuth: !eku || eku.length === 0 || eku.includes(SERVER_AUTH_OID),
  };
}

/** parseCert, or undefined when `pem` is not a certificate. */
export function tryParseCert(pem: string | undefined): CertInfo | undefined {
  if (!pem) return undefined;
  try {
    return parseCert(pem);
  } catch {
    return undefined;
  }
}

/**
 * Whether `leafPem` is signed by one of the CA certificates in `caPem` (a
 * bundle is allowed, as during a CA rollover). Checks issuer name, signature
 * and that the issuer is a CA; with `at`, also that both are valid then.
 */
export async function verifyChain(leafPem: string, caPem: string, opts?: { at?: Date }): Promise<boolean> {
  return verifyChainSync(leafPem, caPem, opts);
}

/** verifyChain without the promise (node:crypto checks are synchronous). */
export function verifyChainSync(leafPem: string, caPem: string, opts?: { at?: Date }): boolean {
  const leafBlock = splitPem(leafPem)[0];
  if (!leafBlock) return false;
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(leafBlock);
  } catch {
    return false;
  }
  const at = opts?.at?.getTime();
  const validAt = (c: X509Certificate) => at === undefined || (c.validFromDate.getTime() <= at && at <= c.validToDate.getTime());
  if (!validAt(leaf)) return false;
  for (const block of splitPem(caPem)) {
    let ca: X509Certificate;
    try {
      ca = new X509Certificate(block);
    } catch {
      continue;
    }
    if (ca.ca && validAt(ca) && leaf.checkIssued(ca) && leaf.verify(ca.publicKey)) return true;
  }
  return false;
}

/** Whether `keyPem` is the private key of the (first) certificate in `certPem`. Never throws. */
export function keyMatchesCert(certPem: string, keyPem: string): boolean {
  const block = splitPem(certPem)[0];
  if (!block) return false;
  try {
    return new X509Certificate(block).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** The names a Service answers to inside the cluster, most specific last. */
export function serviceDnsNames(service: string, namespace: string): string[] {
  return [service, `${service}.${namespace}`, `${service}.${namespace}.svc`, `${service}.${namespace}.svc.cluster.local`];
}

/** Whether `dnsNames` (from a certificate) cover every name in `wanted`, exactly or by a one-label wildcard. */
export function coversNames(dnsNames: string[], wanted: string[]): boolean {
  const have = dnsNames.map((n) => n.toLowerCase());
  return wanted.every((w) => {
    const name = w.toLowerCase();
    return have.some((h) => h === name || (h.startsWith("*.") && name.includes(".") && name.slice(name.indexOf(".")) === h.slice(1)));
  });
}
