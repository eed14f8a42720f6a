/**
 * `bun scripts/echo-server.ts [PORT]`: a local HTTPS server to try kloak
 * against (the README's quick start). It listens on https://localhost:PORT
 * (default 8443), writes its CA to /tmp/kloak-echo/ca.pem, and prints one line
 * per request saying what its Authorization header held: a kloak placeholder,
 * or another value — shown by length and fingerprint, never in clear.
 */
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync } from "node:fs";
import { testCerts } from "../test/support/certs.ts";
import { startTlsServer } from "../test/support/tls-server.ts";

const port = Number(process.argv[2] ?? 8443);
const certs = await testCerts();
mkdirSync("/tmp/kloak-echo", { recursive: true, mode: 0o755 });
copyFileSync(certs.caFile, "/tmp/kloak-echo/ca.pem");
chmodSync("/tmp/kloak-echo/ca.pem", 0o644); // CMD runs as you, not root: it must read the CA
const fingerprint = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 12);
// Said before the response goes out: whoever got the response can rely on the line being printed.
const server = await startTlsServer({
  port,
  onRequest: (r) => {
    const auth = r.headers.find(([n]) => n.toLowerCase() === "authorization")?.[1] ?? "";
    const token = auth.replace(/^Bearer /, "");
    const what = token === "" ? "no Authorization header" : token.startsWith("kloak:") ? `the placeholder ${token.slice(0, 10)}…` : `a ${token.length}-byte value, sha256 ${fingerprint(token)}…`;
    console.log(`echo-server: ${r.method} ${r.target}: ${what}`);
  },
});
console.log(`echo-server: https://localhost:${server.port} (CA: /tmp/kloak-echo/ca.pem)`);
