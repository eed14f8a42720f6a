/**
 * The TLS client stacks kloak supports, as the runtime matrix
 * (test/runtime/matrix.test.ts) runs them: each sends one request to URL with
 * `Authorization: Bearer $API_TOKEN` and a body holding $API_TOKEN, reading
 * the placeholder from its environment as an application would, and trusts
 * the test CA. The matrix checks, per stack, that the server received the real
 * value with a rule that allows it, the placeholder with a rule that does
 * not, and the value with no rules; the README's client table is generated
 * from this list and the versions found on the machine.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nodePath, pythonPath } from "../support/clients.ts";
import { buildGoClient } from "./go-support.ts";

export type Protocol = "HTTP/1.1" | "HTTP/2";

export interface Stack {
  /** unique, stable: names the test */
  id: string;
  /** what a user would call it */
  client: string;
  /** the TLS library kloak hooks for it */
  library: string;
  protocol: Protocol;
  /** the client's version as found on this machine */
  version(): string;
  /** argv that sends the request (API_TOKEN and CA_FILE come from the environment) */
  argv(url: string): string[];
  /** occurrences of the value one run puts on the wire (default 2: a header and the body) */
  sends?: number;
  /** the client's exit status says nothing about the request (git: the server is no git server) */
  anyExit?: boolean;
}

const sh = (script: string) => ["sh", "-c", script];

function firstLine(argv: string[], pick: (out: string) => string = (s) => s): string {
  const r = Bun.spawnSync(argv, { stderr: "pipe" });
  const out = (r.stdout.toString() + r.stderr.toString()).trim();
  if (!r.success && out === "") throw new Error(`${argv.join(" ")} failed: cannot tell its version`);
  return pick(out.split("\n")[0]!.trim());
}

const curlVersion = () => firstLine(["curl", "--version"], (l) => l.split(" ").slice(0, 2).join(" ") + " (" + (l.match(/OpenSSL\/\S+/)?.[0] ?? "?") + ")");
const pythonVersion = () => firstLine([pythonPath(), "-c", "import sys, ssl; print(f'Python {sys.version.split()[0]} ({ssl.OPENSSL_VERSION})')"]);

/** Python: one urllib request through http.client and the ssl module. */
const PY_URLLIB = `
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["CA_FILE"])
t = os.environ["API_TOKEN"]
req = urllib.request.Request(sys.argv[1], data=("token=" + t).encode(), headers={"Authorization": "Bearer " + t})
print(urllib.request.urlopen(req, context=ctx).status)
`;

const PY_REQUESTS = `
import os, sys, requests
t = os.environ["API_TOKEN"]
print(requests.post(sys.argv[1], data="token=" + t, headers={"Authorization": "Bearer " + t}, verify=os.environ["CA_FILE"]).status_code)
`;

/** Debian's interpreter: the one python3-aiohttp, python3-httpx and python3-uvloop are built for. */
const DEBIAN_PYTHON = "/usr/bin/python3";

const NODE_HTTPS = `
const https = require("node:https"), t = process.env.API_TOKEN, body = "token=" + t;
const req = https.request(process.argv[1], { method: "POST", headers: { Authorization: "Bearer " + t, "Content-Length": body.length } }, (res) => {
  res.resume(); res.on("end", () => process.exit(res.statusCode === 200 ? 0 : 1));
});
req.on("error", (e) => { console.error(e.message); process.exit(1); });
req.end(body);
`;

const NODE_FETCH = `
const t = process.env.API_TOKEN;
const r = await fetch(process.argv[1], { method: "POST", headers: { Authorization: "Bearer " + t }, body: "token=" + t });
await r.text();
process.exit(r.status === 200 ? 0 : 1);
`;

const NODE_H2 = `
const http2 = require("node:http2"), t = process.env.API_TOKEN, u = new URL(process.argv[1]);
const s = http2.connect(u.origin);
s.on("error", (e) => { console.error(e.message); process.exit(1); });
const req = s.request({ ":method": "POST", ":path": u.pathname, authorization: "Bearer " + t });
req.on("response", (h) => { req.resume(); req.on("end", () => { s.close(); process.exit(h[":status"] === 200 ? 0 : 1); }); });
req.end("token=" + t);
`;

/** asyncio streams: ssl over a memory BIO (SSLObject), HTTP/1.1 by hand. */
const PY_ASYNCIO = `
import asyncio, os, ssl, sys, urllib.parse
async def main():
    u = urllib.parse.urlsplit(sys.argv[1]); t = os.environ["API_TOKEN"]; body = ("token=" + t).encode()
    r, w = await asyncio.open_connection(u.hostname, u.port, ssl=ssl.create_default_context(cafile=os.environ["CA_FILE"]))
    w.write((f"POST {u.path} HTTP/1.1\\r\\nHost: {u.hostname}\\r\\nAuthorization: Bearer {t}\\r\\nContent-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n").encode() + body)
    await w.drain()
    status = (await r.readline()).split()[1]
    w.close()
    sys.exit(0 if status == b"200" else 1)
asyncio.run(main())
`;

const PY_AIOHTTP = `
import asyncio, os, ssl, sys, aiohttp
async def main():
    t = os.environ["API_TOKEN"]; ctx = ssl.create_default_context(cafile=os.environ["CA_FILE"])
    async with aiohttp.ClientSession() as s:
        async with s.post(sys.argv[1], data="token=" + t, headers={"Authorization": "Bearer " + t}, ssl=ctx) as r:
            await r.read(); sys.exit(0 if r.status == 200 else 1)
asyncio.run(main())
`;

const PY_HTTPX = `
import asyncio, os, sys, httpx
async def main():
    t = os.environ["API_TOKEN"]
    async with httpx.AsyncClient(verify=os.environ["CA_FILE"]) as c:
        r = await c.post(sys.argv[1], content="token=" + t, headers={"Authorization": "Bearer " + t})
        sys.exit(0 if r.status_code == 200 else 1)
asyncio.run(main())
`;

const BUN_FETCH = `
import { readFileSync } from "node:fs";
const t = process.env.API_TOKEN;
const r = await fetch(process.argv.at(-1), { method: "POST", headers: { Authorization: "Bearer " + t }, body: "token=" + t, tls: { ca: readFileSync(process.env.CA_FILE) } });
await r.text();
process.exit(r.status === 200 ? 0 : 1);
`;

const nodeVersion = () => firstLine([nodePath(), "--version"], (v) => `node ${v} (OpenSSL ${firstLine([nodePath(), "-p", "process.versions.openssl"])}, linked in)`);
const debianPy = (mod: string) => () => firstLine([DEBIAN_PYTHON, "-c", `import ${mod}, sys; print(f"${mod} {${mod}.__version__} (Python {sys.version.split()[0]})")`]);
let goDir: string | undefined;
/** The Go test client, built once per run by Debian's Go 1.19 (bookworm). */
const goClient = () => buildGoClient("1.19", { pie: true, stripped: true }, (goDir ??= mkdtempSync(join(tmpdir(), "kloak-matrix-go-"))));
const goArgv = (h2: boolean) => (url: string) =>
  sh(`KLOAK_TEST_TOKEN="$API_TOKEN" KLOAK_TEST_CA="$CA_FILE" KLOAK_TEST_H2=${h2 ? 1 : 0} exec '${goClient()}' client '${url}' 1`);

export const STACKS: Stack[] = [
  {
    id: "curl-h1",
    client: "curl",
    library: "OpenSSL (libssl3)",
    protocol: "HTTP/1.1",
    version: curlVersion,
    argv: (url) => sh(`curl -sS --fail --http1.1 --cacert "$CA_FILE" -H "Authorization: Bearer $API_TOKEN" --data "token=$API_TOKEN" '${url}'`),
  },
  {
    id: "python-urllib",
    client: "Python urllib",
    library: "OpenSSL (libssl3)",
    protocol: "HTTP/1.1",
    version: pythonVersion,
    argv: (url) => [pythonPath(), "-c", PY_URLLIB, url],
  },
  {
    id: "python-requests",
    client: "Python requests",
    library: "OpenSSL (libssl3)",
    protocol: "HTTP/1.1",
    version: () => firstLine([pythonPath(), "-c", "import requests; print('requests ' + requests.__version__)"]),
    argv: (url) => [pythonPath(), "-c", PY_REQUESTS, url],
  },
  {
    id: "python-asyncio",
    client: "Python asyncio streams",
    library: "OpenSSL (libssl3), memory BIO",
    protocol: "HTTP/1.1",
    version: pythonVersion,
    argv: (url) => [pythonPath(), "-c", PY_ASYNCIO, url],
  },
  {
    id: "python-aiohttp",
    client: "aiohttp",
    library: "OpenSSL (libssl3), memory BIO",
    protocol: "HTTP/1.1",
    version: debianPy("aiohttp"),
    argv: (url) => [DEBIAN_PYTHON, "-c", PY_AIOHTTP, url],
  },
  {
    id: "python-httpx",
    client: "httpx (async)",
    library: "OpenSSL (libssl3), memory BIO",
    protocol: "HTTP/1.1",
    version: debianPy("httpx"),
    argv: (url) => [DEBIAN_PYTHON, "-c", PY_HTTPX, url],
  },
  {
    id: "curl-h2",
    client: "curl --http2",
    library: "OpenSSL (libssl3), nghttp2",
    protocol: "HTTP/2",
    version: curlVersion,
    argv: (url) => sh(`curl -sS --fail --http2 --cacert "$CA_FILE" -H "Authorization: Bearer $API_TOKEN" --data "token=$API_TOKEN" '${url}'`),
  },
  {
    id: "node-https",
    client: "node https",
    library: "OpenSSL in node, memory BIO",
    protocol: "HTTP/1.1",
    version: nodeVersion,
    argv: (url) => [nodePath(), "-e", NODE_HTTPS, url],
  },
  {
    id: "node-fetch",
    client: "node fetch (undici)",
    library: "OpenSSL in node, memory BIO",
    protocol: "HTTP/1.1",
    version: nodeVersion,
    argv: (url) => [nodePath(), "--input-type=module", "-e", NODE_FETCH, url],
  },
  {
    id: "node-http2",
    client: "node http2",
    library: "OpenSSL in node, memory BIO",
    protocol: "HTTP/2",
    version: nodeVersion,
    argv: (url) => [nodePath(), "-e", NODE_H2, url],
  },
  {
    id: "wget",
    client: "wget",
    library: "GnuTLS",
    protocol: "HTTP/1.1",
    version: () => firstLine(["wget", "--version"], (l) => l.split(" ").slice(0, 3).join(" ")),
    argv: (url) => sh(`wget -q -O /dev/null --ca-certificate="$CA_FILE" --header "Authorization: Bearer $API_TOKEN" --post-data "token=$API_TOKEN" '${url}'`),
  },
  {
    id: "git",
    client: "git (https)",
    library: "GnuTLS (libcurl3-gnutls)",
    protocol: "HTTP/1.1",
    version: () => firstLine(["git", "--version"]),
    // The server is no git server: git fails after its request; what it sent is what counts.
    argv: (url) => sh(`GIT_SSL_CAINFO="$CA_FILE" git -c http.extraHeader="Authorization: Bearer $API_TOKEN" ls-remote '${url}' >/dev/null 2>&1`),
    sends: 1,
    anyExit: true,
  },
  {
    id: "go-h1",
    client: "Go net/http",
    library: "Go crypto/tls",
    protocol: "HTTP/1.1",
    version: () => "go1.19 (Debian 12), PIE, stripped; go.test.ts: 1.19-1.26",
    argv: goArgv(false),
  },
  {
    id: "go-h2",
    client: "Go net/http",
    library: "Go crypto/tls",
    protocol: "HTTP/2",
    version: () => "go1.19 (Debian 12), PIE, stripped; go.test.ts: 1.19-1.26",
    argv: goArgv(true),
  },
  {
    id: "bun-fetch",
    client: "Bun fetch",
    library: "BoringSSL in Bun (by signature)",
    protocol: "HTTP/1.1",
    version: () => `bun ${firstLine(["bun", "--version"])}; bun.test.ts: 1.2.23, 1.3.14, 1.4.5`,
    argv: (url) => ["bun", "-e", BUN_FETCH, url],
  },
];

export { nodePath };
