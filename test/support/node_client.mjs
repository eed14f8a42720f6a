#!/usr/bin/env node
// Real TLS client for kloak tests: node's https.request (node's own OpenSSL).
//
//   node node_client.mjs --url URL --ca CA.pem [-H 'Name: value']... [--body TEXT | --body-file PATH]
//                        [--method M] [--servername NAME] [--connect ADDR] [--repeat N]
//
// Sends the headers and body (Content-Length set unless given) --repeat times
// over one keep-alive agent and prints "STATUS=<code>" per response. --connect
// dials ADDR instead of resolving the URL's host (Host header, SNI and
// certificate check still use the URL); --servername overrides SNI only.
// Exit status: 0 if every response was 2xx, 1 otherwise (details on stderr).
import { readFileSync } from "node:fs";
import https from "node:https";
import { isIP } from "node:net";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    url: { type: "string" },
    ca: { type: "string" },
    header: { type: "string", short: "H", multiple: true, default: [] },
    body: { type: "string" },
    "body-file": { type: "string" },
    method: { type: "string" },
    servername: { type: "string" },
    connect: { type: "string" },
    repeat: { type: "string", default: "1" },
  },
  strict: true,
});
if (!o.url || !o.ca) {
  console.error("node_client: --url and --ca are required");
  process.exit(2);
}

const body = o["body-file"] !== undefined ? readFileSync(o["body-file"]) : o.body !== undefined ? Buffer.from(o.body) : undefined;
const headers = {};
for (const h of o.header) {
  const i = h.indexOf(":");
  if (i <= 0) {
    console.error(`node_client: bad header ${JSON.stringify(h)}`);
    process.exit(2);
  }
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}
if (body !== undefined && !Object.keys(headers).some((k) => k.toLowerCase() === "content-length")) {
  headers["Content-Length"] = String(body.length);
}

const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
const options = {
  method: o.method ?? (body !== undefined ? "POST" : "GET"),
  headers,
  ca: readFileSync(o.ca),
  agent,
};
if (o.servername !== undefined) options.servername = o.servername;
if (o.connect !== undefined) {
  const addr = o.connect;
  const family = isIP(addr) || 4;
  options.lookup = (_host, opts, cb) =>
    opts && opts.all ? cb(null, [{ address: addr, family }]) : cb(null, addr, family);
}

function once() {
  return new Promise((resolve, reject) => {
    const req = https.request(o.url, options, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

let ok = true;
try {
  for (let i = 0; i < Number(o.repeat); i++) {
    const status = await once();
    console.log(`STATUS=${status}`);
    if (status < 200 || status >= 300) ok = false;
  }
} catch (err) {
  console.error(`node_client: ${err?.code ?? ""} ${err?.message ?? err}`);
  ok = false;
}
agent.destroy();
process.exit(ok ? 0 : 1);
