// An HTTP/2 TLS server (node:http2 under the system's node) that reports what
// each stream delivered, decoded: one JSON line per completed stream on stdout
// ({"headers": {...}, "body": "<base64>"}), after a first line
// {"port": N} once it listens. Answers every stream 200 "ok\n".
//
// usage: node h2-server.mjs CERT_FILE KEY_FILE
// The test side (test/support/h2-server.ts) parses the lines; headers are
// decoded by node's HPACK decoder, so a Huffman-coded value arrives decoded.
import { readFileSync } from "node:fs";
import http2 from "node:http2";

const [cert, key] = process.argv.slice(2);
const server = http2.createSecureServer({ cert: readFileSync(cert), key: readFileSync(key), allowHTTP1: false });
server.on("stream", (stream, headers) => {
  const chunks = [];
  stream.on("data", (c) => chunks.push(c));
  stream.on("end", () => {
    const flat = {};
    for (const [k, v] of Object.entries(headers)) flat[k] = Array.isArray(v) ? v.join(", ") : String(v);
    process.stdout.write(`${JSON.stringify({ headers: flat, body: Buffer.concat(chunks).toString("base64") })}\n`);
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end("ok\n");
  });
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`));
process.on("SIGTERM", () => process.exit(0));
