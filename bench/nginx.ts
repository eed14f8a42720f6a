/**
 * The egress-proxy peer of the data-plane benchmark: Debian's nginx as the
 * thing users deploy for "the app holds no credential, it is added on the way
 * out". It terminates TLS from the client (the test server certificate),
 * replaces the Authorization header with the real value, and originates TLS
 * to the bench server over keep-alive upstream connections, verified against
 * the test CA.
 *
 * Our own nginx, never the system service: its own prefix, config, pid file
 * and logs in a 0700 temp dir (the real value is in that config file and
 * nowhere else), `daemon off` so it is our child, and `master_process off` so
 * the one process we start is the one that serves, is pinned and is measured
 * (it runs the same event loop a worker runs). Stopped (and its dir removed)
 * by stop().
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface EgressProxy {
  port: number;
  pid: number;
  /** the end of nginx's error log, with the real value blanked out */
  errorLog(): string;
  stop(): Promise<void>;
}

/** nginx's path, or an Error that says what to install. */
export function nginxBinary(): string {
  const bin = Bun.which("nginx") ?? ["/usr/sbin/nginx"].find((p) => existsSync(p));
  if (!bin)
    throw new Error(
      "the egress-proxy variant needs nginx, which is not installed: apt-get install nginx " +
        "(Debian's package, with the http proxy and ssl modules; scripts/setup.sh installs it)",
    );
  return bin;
}

/** A free TCP port on 127.0.0.1 (nginx cannot listen on port 0 and tell us which it got). */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.listen(0, "127.0.0.1", resolve).once("error", reject));
  const a = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (a === null || typeof a === "string") throw new Error("no TCP address");
  return a.port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export function proxyConfig(o: {
  dir: string;
  port: number;
  upstreamPort: number;
  certFile: string;
  keyFile: string;
  caFile: string;
  value: string;
  keepalive: number;
}): string {
  const d = o.dir;
  return `# kloak bench: egress proxy (written by bench/nginx.ts; holds the real value: 0700 dir)
daemon off;
master_process off;
worker_processes 1;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${d}/client_body;
  proxy_temp_path ${d}/proxy;
  fastcgi_temp_path ${d}/fastcgi;
  uwsgi_temp_path ${d}/uwsgi;
  scgi_temp_path ${d}/scgi;
  # The client keeps one connection for the whole run (nginx's default closes it after 1,000 requests).
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream bench_server {
    server 127.0.0.1:${o.upstreamPort};
    keepalive ${o.keepalive};
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:${o.port} ssl;
    ssl_certificate ${o.certFile};
    ssl_certificate_key ${o.keyFile};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://bench_server;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer ${o.value}";
      # nginx 1.22 offers TLS 1.2 at most upstream unless told; the direct client speaks 1.3.
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_trusted_certificate ${o.caFile};
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_session_reuse on;
    }
  }
}
`;
}

/**
 * Starts nginx in front of 127.0.0.1:upstreamPort; `prefix` is put before the
 * command (the harness's taskset). Resolves once it accepts connections.
 */
export async function startEgressProxy(o: {
  upstreamPort: number;
  certFile: string;
  keyFile: string;
  caFile: string;
  value: string;
  prefix?: string[];
  keepalive?: number;
}): Promise<EgressProxy> {
  const bin = nginxBinary();
  // The value goes into the config as a quoted nginx string: keep it to characters that need no escaping.
  if (!/^[A-Za-z0-9._~+/=-]+$/.test(o.value)) throw new Error("egress proxy: the secret value has characters the nginx config would need escaped");
  const dir = mkdtempSync(join(tmpdir(), "kloak-bench-nginx-")); // mkdtemp: mode 0700
  const scrub = (s: string) => s.split(o.value).join("<value>");
  const errorLog = () => {
    try {
      return scrub(readFileSync(join(dir, "error.log"), "utf8")).trim().split("\n").slice(-10).join("\n");
    } catch {
      return "";
    }
  };
  let lastFailure = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const conf = join(dir, "nginx.conf");
    writeFileSync(conf, proxyConfig({ ...o, dir, port, keepalive: o.keepalive ?? 16 }), { mode: 0o600 });
    // -e: the error log from the first moment (before the config is read), so nothing goes to /var/log/nginx.
    const proc = Bun.spawn([...(o.prefix ?? []), bin, "-p", dir, "-c", conf, "-e", join(dir, "error.log")], {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    const stderrP = new Response(proc.stderr).text();
    const deadline = Date.now() + 10_000;
    let up = false;
    while (Date.now() < deadline && proc.exitCode === null) {
      if (await canConnect(port)) {
        up = true;
        break;
      }
      await Bun.sleep(20);
    }
    if (up) {
      return {
        port,
        pid: proc.pid,
        errorLog,
        async stop() {
          try {
            proc.kill("SIGTERM"); // fast shutdown
          } catch {
            // gone
          }
          const t = setTimeout(() => proc.kill("SIGKILL"), 5_000);
          await proc.exited;
          clearTimeout(t);
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    proc.kill("SIGKILL");
    await proc.exited;
    lastFailure = `${scrub(await stderrP).trim()}\n${errorLog()}`.trim();
    // Another process took the port between freePort() and nginx's bind: try another.
    if (!/Address already in use/.test(lastFailure)) break;
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error(`egress proxy: nginx did not start: ${lastFailure || "no output"}`);
}
