/**
 * `bun run demo`: a local TLS server, and curl run under `kloak exec` with an
 * API token. Shows what the application saw (a placeholder) and what the
 * server received (the real value), without printing the value itself.
 */
import { randomBytes, createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, chmodSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts } from "../test/support/certs.ts";
import { startTlsServer } from "../test/support/tls-server.ts";
import { KLOAK } from "../test/support/kloak.ts";

const token = `demo-${randomBytes(18).toString("base64url")}`;
const fp = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 12);
const certs = await testCerts();
const server = await startTlsServer();
console.log(`TLS server on ${server.url}; the token's fingerprint is ${fp(token)} (${token.length} bytes)\n`);

// The app runs as an unprivileged user (kloak never runs it as root unless told): it may read the CA.
const shared = mkdtempSync(join(tmpdir(), "kloak-demo-"));
chmodSync(shared, 0o755);
const ca = join(shared, "ca.pem");
copyFileSync(certs.caFile, ca);
chmodSync(ca, 0o644);
const user = process.env.SUDO_USER ? [] : ["--user", "nobody"];
const script = `cd /; echo "app: API_TOKEN=$API_TOKEN (running as $(id -un))"; curl -sS --fail --cacert ${ca} -H "Authorization: Bearer $API_TOKEN" ${server.url}/v1/things -o /dev/null && echo "app: request sent"`;
console.log(`$ kloak exec ${user.join(" ")} --secret API_TOKEN --allow API_TOKEN=127.0.0.1 -- sh -c '<curl with Authorization: Bearer $API_TOKEN>'`);
const p = Bun.spawn([...KLOAK, "exec", ...user, "--secret", "API_TOKEN", "--allow", "API_TOKEN=127.0.0.1", "--", "sh", "-c", script], {
  env: { ...process.env, API_TOKEN: token },
  stdout: "inherit",
  stderr: "inherit",
});
const code = await p.exited;
const got = server.received().toString("latin1");
const auth = /Authorization: Bearer (\S+)/.exec(got)?.[1] ?? "";
console.log(`\nserver received: Authorization: Bearer <${auth.length} bytes, fingerprint ${fp(auth)}>`);
const ok = code === 0 && auth === token;
console.log(ok ? "=> the server got the real token; the app only ever held the placeholder" : "=> substitution did not happen (see messages above)");
server.close();
rmSync(shared, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
