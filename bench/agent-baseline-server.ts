/**
 * The agent benchmark's webhook baseline, run as its own process:
 * `bun bench/agent-baseline-server.ts CERT.pem KEY.pem`.
 *
 * The least an admission webhook can do: Bun.serve over HTTPS on 127.0.0.1
 * with the same certificate and key as the agent's webhook (the agent
 * serves through Bun.serve too), reads the whole request body and answers
 * with one fixed, allowed AdmissionReview. Prints {"port": N} on stdout and
 * exits when stdin closes.
 */
import { readFileSync } from "node:fs";

const [certFile, keyFile] = process.argv.slice(2);
if (!certFile || !keyFile) {
  console.error("usage: agent-baseline-server.ts CERT.pem KEY.pem");
  process.exit(2);
}
const ANSWER = JSON.stringify({
  apiVersion: "admission.k8s.io/v1",
  kind: "AdmissionReview",
  response: { uid: "00000000-0000-0000-0000-000000000000", allowed: true },
});
const server = Bun.serve({
  port: 0,
  hostname: "127.0.0.1",
  tls: { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8") },
  async fetch(req) {
    await req.arrayBuffer();
    return new Response(ANSWER, { headers: { "content-type": "application/json" } });
  },
});
process.stdout.write(JSON.stringify({ port: server.port }) + "\n");
for await (const _ of Bun.stdin.stream()) {
  // wait for EOF
}
server.stop(true);
process.exit(0);
