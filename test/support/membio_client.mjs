#!/usr/bin/env node
// Memory-BIO TLS client for kloak tests: node's TLSWrap encrypts into a memory
// BIO and libuv moves the ciphertext to the socket after SSL_write returned.
//
//   node membio_client.mjs --kind https|fetch|http2 --ca CA.pem --url URL [--url URL]... [--concurrent N]
//
// Each URL gets N requests (default 1), all started at once on the one event
// loop (each on its own connection), POST with header X-Api-Key and body
// "k=<value>" taken from $API_KEY (the placeholder kloak gave the process).
// http2 sends the body only (a DATA frame): header blocks are HPACK-coded.
// Prints STATUS=<code> per response; exit 1 when any request failed.
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    kind: { type: "string", default: "https" },
    ca: { type: "string" },
    url: { type: "string", multiple: true, default: [] },
    concurrent: { type: "string", default: "1" },
  },
  strict: true,
});
const key = process.env.API_KEY ?? "";
const body = `k=${key}`;
const ca = readFileSync(o.ca);

function viaHttps(url) {
  return new Promise((resolve, reject) => {
    // agent false: a connection of its own per request, so they run side by side
    const req = https.request(url, { method: "POST", ca, agent: false, headers: { "X-Api-Key": key, "Content-Length": String(body.length) } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function viaFetch(url) {
  // undici trusts NODE_EXTRA_CA_CERTS (set by the caller); a fresh dispatcher per call is not public API
  const res = await fetch(url, { method: "POST", headers: { "X-Api-Key": key, Connection: "close" }, body });
  await res.text();
  return res.status;
}

function viaHttp2(url) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url, { ca });
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": new URL(url).pathname });
    req.on("response", (h) => {
      req.resume();
      req.on("end", () => {
        session.close();
        resolve(h[":status"]);
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

const n = Number(o.concurrent);
const via = { https: viaHttps, fetch: viaFetch, http2: viaHttp2 }[o.kind];
const jobs = [];
for (const url of o.url) for (let i = 0; i < n; i++) jobs.push(via(url));
let failed = 0;
for (const r of await Promise.allSettled(jobs)) {
  if (r.status === "fulfilled") console.log(`STATUS=${r.value}`);
  else {
    failed++;
    console.error(`membio_client: ${r.reason}`);
  }
}
process.exit(failed ? 1 : 0);
