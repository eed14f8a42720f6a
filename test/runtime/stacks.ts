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
import { nodePath, pythonPath } from "../support/clients.ts";

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
];

export { nodePath };
