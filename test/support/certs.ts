/**
 * Test PKI: one CA and one server certificate signed by it, made with the
 * openssl CLI once per process (memoized) in a private temp directory.
 *
 * The server certificate covers every name the data-plane tests connect to:
 * localhost, kloak.test, *.kloak.test, example.test, *.example.test,
 * 127.0.0.1 … 127.0.0.9 and ::1. Clients trust it through the CA file
 * (curl --cacert, Python ssl cafile=, node `ca`).
 *
 * `bun test` runs no exit hooks, so each directory is named after its pid and
 * the next generation sweeps the directories of processes that are gone.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCerts {
  /** Directory holding every file below (removed at process exit). */
  dir: string;
  /** PEM paths. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** PEM contents of the same files. */
  ca: string;
  cert: string;
  key: string;
}

const SANS = [
  "DNS:localhost",
  "DNS:kloak.test",
  "DNS:*.kloak.test",
  "DNS:example.test",
  "DNS:*.example.test",
  ...Array.from({ length: 9 }, (_, i) => `IP:127.0.0.${i + 1}`),
  "IP:::1",
];

const CONFIG = `
[req]
distinguished_name = dn
prompt = no

[dn]
CN = kloak test

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = ${SANS.join(", ")}
`;

let memo: Promise<TestCerts> | undefined;

/** The process-wide test CA and server certificate (generated on first call). */
export function testCerts(): Promise<TestCerts> {
  memo ??= generate().catch((err) => {
    memo = undefined; // let a later call retry
    throw err;
  });
  return memo;
}

async function openssl(cwd: string, args: string[]): Promise<void> {
  const proc = Bun.spawn(["openssl", ...args], { cwd, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) {
    throw new Error(`openssl ${args.join(" ")} exited ${code}:\n${out}${err}`);
  }
}

function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0]! &= 0x7f; // positive
  return "0x" + Buffer.from(bytes).toString("hex");
}

const PREFIX = "kloak-test-certs-";

/** Removes the cert directories of processes that no longer exist. */
function sweepStale(): void {
  for (const name of readdirSync(tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (m === null) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ESRCH") {
        rmSync(join(tmpdir(), name), { recursive: true, force: true });
      }
    }
  }
}

async function generate(): Promise<TestCerts> {
  sweepStale();
  const dir = mkdtempSync(join(tmpdir(), `${PREFIX}${process.pid}-`));
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "openssl.cnf"), CONFIG);
  const ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

  await openssl(dir, ["genpkey", ...ec, "-out", "ca.key"]);
  await openssl(dir, [
    "req", "-x509", "-new", "-config", "openssl.cnf", "-extensions", "v3_ca",
    "-key", "ca.key", "-sha256", "-days", "3650", "-set_serial", randomSerial(),
    "-subj", "/CN=kloak test CA", "-out", "ca.pem",
  ]);
  await openssl(dir, ["genpkey", ...ec, "-out", "server.key"]);
  await openssl(dir, [
    "req", "-new", "-config", "openssl.cnf", "-key", "server.key",
    "-subj", "/CN=localhost", "-out", "server.csr",
  ]);
  await openssl(dir, [
    "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
    "-set_serial", randomSerial(), "-days", "825", "-sha256",
    "-extfile", "openssl.cnf", "-extensions", "v3_server", "-out", "server.pem",
  ]);

  const caFile = join(dir, "ca.pem");
  const certFile = join(dir, "server.pem");
  const keyFile = join(dir, "server.key");
  return {
    dir,
    caFile,
    certFile,
    keyFile,
    ca: readFileSync(caFile, "utf8"),
    cert: readFileSync(certFile, "utf8"),
    key: readFileSync(keyFile, "utf8"),
  };
}
