/**
 * argv builders for real TLS clients. Each returns the command line only; the
 * caller runs it (Bun.spawn), possibly wrapped under another command such as
 * `kloak run --`. argv[0] is an absolute path, so wrappers need no PATH.
 *
 *   curl    system curl + system libssl            curlArgs()
 *   python  CPython ssl + system libssl            pythonClientArgs()  (py_client.py)
 *   node    node 20 https + node's bundled OpenSSL nodeClientArgs()    (node_client.mjs)
 */
import { existsSync } from "node:fs";
import { join } from "node:path";

const HERE = import.meta.dir;
/** Path of the Python client script. */
export const PY_CLIENT = join(HERE, "py_client.py");
/** Path of the node client script. */
export const NODE_CLIENT = join(HERE, "node_client.mjs");

function which(name: string): string {
  return Bun.which(name) ?? name;
}

let pythonMemo: string | undefined;
/**
 * The real Python interpreter (not a pyenv shim): $KLOAK_TEST_PYTHON, else
 * sys.executable of the `python3` on PATH.
 */
export function pythonPath(): string {
  if (pythonMemo !== undefined) return pythonMemo;
  const env = process.env.KLOAK_TEST_PYTHON;
  if (env) return (pythonMemo = env);
  const r = Bun.spawnSync([which("python3"), "-c", "import sys; print(sys.executable)"]);
  const exe = r.success ? r.stdout.toString().trim() : "";
  return (pythonMemo = exe !== "" ? exe : which("python3"));
}

/** Real node (Bun may shadow `node` on PATH): $KLOAK_TEST_NODE, /usr/bin/node, else PATH. */
export function nodePath(): string {
  return process.env.KLOAK_TEST_NODE || (existsSync("/usr/bin/node") ? "/usr/bin/node" : which("node"));
}

export interface CurlOptions {
  /** CA file to trust (--cacert). */
  caFile: string;
  /** Extra request headers (-H "Name: value"). */
  headers?: Record<string, string>;
  /** Request body sent verbatim (--data-raw; POST, Content-Length). */
  body?: string;
  /** Body read from a file verbatim (--data-binary @file; POST, Content-Length). */
  bodyFile?: string;
  /** Upload with PUT (-T): a file, or "-" for stdin, which curl sends chunked. */
  upload?: string;
  /** --resolve HOST:PORT:ADDR, e.g. `api.kloak.test:${port}:127.0.0.1`. */
  resolve?: string;
  /** Anything else, inserted before the URL. */
  extra?: string[];
}

/**
 * curl over HTTP/1.1 with --fail --silent --show-error. The response body
 * ("ok\n" from the test server) goes to stdout; exit status 0 means 2xx.
 */
export function curlArgs(url: string, o: CurlOptions): string[] {
  const argv = [which("curl"), "--http1.1", "--fail", "--silent", "--show-error", "--cacert", o.caFile];
  for (const [name, value] of Object.entries(o.headers ?? {})) argv.push("-H", `${name}: ${value}`);
  if (o.body !== undefined) argv.push("--data-raw", o.body);
  if (o.bodyFile !== undefined) argv.push("--data-binary", `@${o.bodyFile}`);
  if (o.upload !== undefined) argv.push("-T", o.upload);
  if (o.resolve !== undefined) argv.push("--resolve", o.resolve);
  argv.push(...(o.extra ?? []), url);
  return argv;
}

export interface PythonClientOptions {
  /** Port to connect to. */
  port: number;
  /** CA file to trust. */
  caFile: string;
  /** Address to connect to; default 127.0.0.1. */
  host?: string;
  /** server_hostname: SNI sent and name verified. Default: host (an IP sends no SNI). */
  sni?: string;
  /** File holding the exact request bytes. Without it the request comes from env (see requestEnv). */
  requestFile?: string;
  /** Env var holding the request when no requestFile; default KLOAK_TEST_REQUEST (the caller sets it). */
  requestEnv?: string;
  /** Env var holding the placeholder to look for; default KLOAK_TEST_PLACEHOLDER (the caller sets it). */
  placeholderEnv?: string;
  /** sendall calls per connection; default 1. */
  repeat?: number;
  /** Sequential connections per thread; default 1. */
  connections?: number;
  /** Concurrent threads, each with its own connections; default 1. */
  threads?: number;
  /** All threads send the very same bytes object (default: one copy per thread). */
  sharedBuffer?: boolean;
  /** Don't read responses (for a "raw" server); close after the last send. */
  noWait?: boolean;
}

/**
 * py_client.py: sends the request with SSLSocket.sendall of one bytes object and
 * prints APP_HAD=, APP_SAW=, APP_SAW_PLACEHOLDER=, STATUS=, APP_SENDS=, APP_UNCHANGED=
 * lines (see the script's docstring; parse them with parseClientOutput).
 */
export function pythonClientArgs(o: PythonClientOptions): string[] {
  const argv = [pythonPath(), PY_CLIENT, "--port", String(o.port), "--cafile", o.caFile];
  const opt = (flag: string, v: string | number | undefined) => {
    if (v !== undefined) argv.push(flag, String(v));
  };
  opt("--host", o.host);
  opt("--sni", o.sni);
  opt("--request-file", o.requestFile);
  opt("--request-env", o.requestEnv);
  opt("--placeholder-env", o.placeholderEnv);
  opt("--repeat", o.repeat);
  opt("--connections", o.connections);
  opt("--threads", o.threads);
  if (o.sharedBuffer) argv.push("--shared-buffer");
  if (o.noWait) argv.push("--no-wait");
  return argv;
}

export interface NodeClientOptions {
  /** CA file to trust. */
  caFile: string;
  headers?: Record<string, string>;
  body?: string;
  bodyFile?: string;
  /** Default POST with a body, GET without. */
  method?: string;
  /** SNI override (default: the URL's host name; none for IPs). */
  servername?: string;
  /** Dial this address instead of resolving the URL's host (like curl --resolve). */
  connect?: string;
  /** Requests sent one after another over one keep-alive connection; default 1. */
  repeat?: number;
}

/** node_client.mjs: https.request with `ca`; prints STATUS=<code> per response. */
export function nodeClientArgs(url: string, o: NodeClientOptions): string[] {
  const argv = [nodePath(), NODE_CLIENT, "--url", url, "--ca", o.caFile];
  for (const [name, value] of Object.entries(o.headers ?? {})) argv.push("-H", `${name}: ${value}`);
  const opt = (flag: string, v: string | number | undefined) => {
    if (v !== undefined) argv.push(flag, String(v));
  };
  opt("--body", o.body);
  opt("--body-file", o.bodyFile);
  opt("--method", o.method);
  opt("--servername", o.servername);
  opt("--connect", o.connect);
  opt("--repeat", o.repeat);
  return argv;
}

/**
 * A complete HTTP/1.1 request with Content-Length (for py_client.py, which
 * sends bytes verbatim). `host` becomes the Host header.
 */
export function buildHttpRequest(o: {
  host: string;
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}): Buffer {
  const body = o.body === undefined ? Buffer.alloc(0) : Buffer.from(o.body);
  let head = `${o.method ?? (o.body === undefined ? "GET" : "POST")} ${o.path ?? "/"} HTTP/1.1\r\nHost: ${o.host}\r\n`;
  for (const [name, value] of Object.entries(o.headers ?? {})) head += `${name}: ${value}\r\n`;
  if (o.body !== undefined) head += `Content-Length: ${body.length}\r\n`;
  return Buffer.concat([Buffer.from(head + "\r\n"), body]);
}

/** The KEY=value lines a client printed, in order (e.g. all APP_SAW values: `parseClientOutput(out).APP_SAW`). */
export function parseClientOutput(stdout: string): Record<string, string[]> {
  const result: Record<string, string[]> = {};
  for (const line of stdout.split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m !== null) (result[m[1]!] ??= []).push(m[2]!);
  }
  return result;
}

export interface ClientResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Convenience runner for the argv above: waits for exit (killing the process
 * after timeoutMs, default 30 s) and returns its exit code and output.
 */
export async function runClient(
  argv: string[],
  o: { env?: Record<string, string | undefined>; stdin?: string | Buffer; timeoutMs?: number } = {},
): Promise<ClientResult> {
  const proc = Bun.spawn(argv, {
    env: { ...process.env, ...o.env },
    stdin: o.stdin === undefined ? "ignore" : new Blob([o.stdin]),
    stdout: "pipe",
    stderr: "pipe",
    timeout: o.timeoutMs ?? 30_000,
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}
