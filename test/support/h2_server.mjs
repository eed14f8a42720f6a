#!/usr/bin/env node
// HTTP/2 TLS server for kloak tests (node:http2, nghttp2 inside node):
//
//   node h2_server.mjs --cert CERT.pem --key KEY.pem [--host 127.0.0.1]
//
// Prints "PORT=<n>" once listening, then one JSON line per completed stream:
//   {"headers": [[name, value], ...], "data": "<base64 of the DATA received>"}
// with the header values as HPACK decoded them (what the origin would see).
// Answers 200 "ok\n". Runs until stdin closes or it is killed.
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: { cert: { type: "string" }, key: { type: "string" }, host: { type: "string", default: "127.0.0.1" } },
  strict: true,
});

const server = http2.createSecureServer({
  cert: readFileSync(o.cert),
  key: readFileSync(o.key),
  // Room for the tests' big header blocks (HEADERS + CONTINUATION).
  maxHeaderListSize: 1 << 20,
  settings: { maxHeaderListSize: 1 << 20 },
});
server.on("stream", (stream, _headers, _flags, raw) => {
  const pairs = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i], raw[i + 1]]);
  const chunks = [];
  stream.on("data", (c) => chunks.push(c));
  stream.on("end", () => {
    process.stdout.write(JSON.stringify({ headers: pairs, data: Buffer.concat(chunks).toString("base64") }) + "\n");
    stream.respond({ ":status": 200 });
    stream.end("ok\n");
  });
  stream.on("error", () => {});
});
server.on("sessionError", () => {});
server.listen(0, o.host, () => process.stdout.write(`PORT=${server.address().port}\n`));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
