/**
 * The "outside" variant's scoped process: a `kloak exec` tree that keeps the
 * system libssl attached while a client that is not in any scope runs beside
 * it. The scoped Python makes one TLS connection to the bench server, sends one
 * request carrying its placeholder (so kloak has attached and substituted on
 * that libssl, which its exit summary then shows), prints "ready PID" and
 * blocks on stdin until stop().
 */
import { processMaps } from "../lib/proc.ts";

const SCRIPT = `
import os, socket, ssl, sys
port, ca, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ph = os.environb[name.encode()]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")
s.sendall(b"GET /scoped HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer " + ph + b"\\r\\nContent-Length: 0\\r\\n\\r\\n")
r = b""
while not r.endswith(b"ok\\n"):
    d = s.recv(4096)
    if not d:
        sys.exit("scoped: server closed before answering")
    r += d
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
s.close()
`;

export interface MappedFile {
  path: string;
  /** "major:minor inode": the same file whatever path it was mapped by */
  id: string;
}

/** A libssl file's path. */
export const LIBSSL = /\/libssl\.so[^/]*$/;

/** The outside variant's check that its client pays no probe: the client's libssl text is the file's, the scoped process's has int3s. */
export const OUTSIDE_UNPROBED = "no uprobe breakpoint in the client's libssl (probes are per process); the scoped process's has them";

/** The libssl a process has mapped (from /proc/PID/maps), or null. */
export function mappedLibssl(pid: number): MappedFile | null {
  const maps = processMaps(pid);
  if (maps === null) return null;
  for (const line of maps.split("\n")) {
    // address perms offset dev inode path
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && LIBSSL.test(f[5]!)) return { path: f[5]!, id: `${f[3]} ${f[4]}` };
  }
  return null;
}

export interface ScopedHolder {
  /** the scoped Python's pid */
  pid: number;
  libssl: MappedFile | null;
  /** ends the scoped Python (then kloak exits); kloak's exit status, stderr and substitution count */
  stop(): Promise<{ code: number; stderr: string; substitutions: number | undefined }>;
}

/**
 * Starts `kloak exec --secret NAME -- python -c SCRIPT` (`kloak` is the command
 * prefix that runs kloak, e.g. [taskset, -c, CPUS, bun, src/main.ts]); the real
 * value comes from kloak's environment. Resolves once the scoped process has
 * connected and sent its request.
 */
export async function startScopedHolder(o: {
  kloak: string[];
  python: string;
  secretName: string;
  value: string;
  caFile: string;
  port: number;
  timeoutMs?: number;
}): Promise<ScopedHolder> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  env[o.secretName] = o.value;
  const proc = Bun.spawn(
    [...o.kloak, "exec", "--user", "root", "--secret", o.secretName, "--", o.python, "-c", SCRIPT, String(o.port), o.caFile, o.secretName],
    { env, stdin: "pipe", stdout: "pipe", stderr: "pipe" },
  );
  const stderrP = new Response(proc.stderr).text();
  const reader = proc.stdout.getReader();
  let out = "";
  const ready = (async () => {
    for (;;) {
      const m = /^ready (\d+)$/m.exec(out);
      if (m) return Number(m[1]);
      const r = await reader.read();
      if (r.done) return null;
      out += new TextDecoder().decode(r.value);
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const pid = await Promise.race([ready, new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), o.timeoutMs ?? 60_000)))]);
  clearTimeout(timer);
  if (typeof pid !== "number") {
    proc.kill("SIGKILL");
    await proc.exited;
    throw new Error(
      `the scoped process (kloak exec -- python) did not get ready (${pid === "timeout" ? "timed out" : `exit ${proc.exitCode}`}):\n${(await stderrP).trim()}`,
    );
  }
  return {
    pid,
    libssl: mappedLibssl(pid),
    async stop() {
      try {
        proc.stdin.write("\n");
        proc.stdin.end();
      } catch {
        // gone
      }
      const t = setTimeout(() => proc.kill("SIGKILL"), 30_000);
      const code = await proc.exited;
      clearTimeout(t);
      await reader.cancel().catch(() => {});
      const stderr = await stderrP;
      const subs = /(\d+) substitution\(s\) in (\d+) TLS write\(s\)/.exec(stderr);
      return { code, stderr, substitutions: subs ? Number(subs[1]) : undefined };
    },
  };
}
