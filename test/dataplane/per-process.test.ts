/**
 * Probes are attached per process (src/dataplane/probe-attacher.ts): the
 * kernel writes a uprobe's breakpoint only into the memory of the process it
 * was attached for. These tests look at that memory itself — the text of
 * libssl as /proc/PID/mem shows it against the file — in a process kloak
 * protects and in one beside it that maps the same libssl, and check that a
 * fork child (which has none of its parent's probes) is attached before it
 * can write: its placeholder is substituted on its very first write.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { textChanges } from "../../lib/proc.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, spawnKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let certs: TestCerts;
let raw: TlsServer;

beforeAll(async () => {
  certs = await testCerts();
  raw = await startTlsServer({ mode: "raw" });
});
afterAll(() => raw.close());

/** libssl's text in pid against the file (lib/proc.ts textChanges). */
function breakpoints(pid: number): { path: string; differ: number; int3: number } {
  const t = textChanges(pid, /\/libssl\.so[^/]*$/);
  if (!t) throw new Error(`pid ${pid} maps no libssl text`);
  return t;
}

/** Read a child's stdout until it prints READY <pid>. */
async function readyPid(stream: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stream.getReader();
  let text = "";
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    const m = /READY (\d+)/.exec(text);
    if (m) {
      reader.releaseLock();
      return Number(m[1]);
    }
  }
  throw new Error(`no READY line; output: ${text.slice(0, 500)}`);
}

/** Python: one TLS connection per tag sending `tag=$T;`; the parent forks a child that forks a grandchild, each sending at once. */
const TREE = `
import os, socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
def send(tag):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.sendall(("%s=%s;" % (tag, os.environ["T"])).encode())
    s.close()
send("first")
pid = os.fork()
if pid == 0:
    send("child")
    g = os.fork()
    if g == 0:
        send("grand")
        os._exit(0)
    os.waitpid(g, 0)
    os._exit(0)
os.waitpid(pid, 0)
send("again")
print("READY", os.getpid(), flush=True)
time.sleep(60)
`;

describe("probes are attached per process", () => {
  test("a process outside every scope that maps the same libssl has no breakpoint in it; the protected one has; fork children are attached before their first write", async () => {
    const secret = fakeSecret(28);
    const inside = spawnKloak(["exec", "-q", "--secret", `T=${secret}`, "--", pythonPath(), "-c", TREE, String(raw.port), certs.caFile]);
    const outside = Bun.spawn(
      [pythonPath(), "-c", "import os, ssl, time; ssl.create_default_context(); print('READY', os.getpid(), flush=True); time.sleep(60)"],
      {
        stdout: "pipe",
      },
    );
    try {
      const [pin, pout] = await Promise.all([readyPid(inside.stdout), readyPid(outside.stdout)]);
      const a = breakpoints(pin);
      const b = breakpoints(pout);
      // The same file, else the comparison says nothing.
      expect(b.path).toBe(a.path);
      expect(a.int3).toBeGreaterThan(0);
      expect(a.differ).toBe(a.int3);
      expect(b.differ).toBe(0);

      await raw.waitFor((all) => occurrences(all, ";") >= 4, 10_000);
      const got = raw.received();
      for (const tag of ["first", "child", "grand", "again"]) expect(occurrences(got, `${tag}=${secret};`)).toBe(1);
      expect(placeholderCount(got)).toBe(0);
    } finally {
      outside.kill("SIGKILL");
      inside.kill("SIGTERM");
      await Promise.all([outside.exited, inside.exited]);
    }
  });
});
