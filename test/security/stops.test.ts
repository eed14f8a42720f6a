/**
 * kloak's holds are invisible to parents (docs/policy.md section 5): an
 * interactive bash under `kloak exec` runs 200 commands, curl among them, and
 * sees no job-control stop and no wrong exit status (shell.ts says what is
 * checked). Runs in the default rewrite mode and in stop mode, where kloak
 * also holds the writer around each write.
 */
import { afterAll, beforeAll, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts } from "../support/certs.ts";
import { pythonPath } from "../support/clients.ts";
import { fakeSecret, KLOAK, occurrences, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { checkShell, commandList, shellArgs } from "./shell.ts";

const TEST_TIMEOUT_MS = 300_000;

let server: TlsServer;
let caFile: string;

beforeAll(async () => {
  server = await startTlsServer({ host: "127.0.0.1" });
  caFile = (await testCerts()).caFile;
});
afterAll(async () => {
  await server.close();
});
beforeEach(() => server.reset());

for (const mode of ["auto", "stop"] as const) {
  test(
    `an interactive shell under kloak exec (rewrite mode ${mode}) sees no job-control stop and no wrong exit status`,
    async () => {
      const secret = fakeSecret(32);
      const expected = commandList(server, caFile);
      const argv = [
        ...KLOAK,
        "exec",
        "--user",
        "root",
        "--secret",
        `API_KEY=${secret}`,
        "--allow",
        "API_KEY=127.0.0.1",
        ...(mode === "stop" ? ["--rewrite-mode", "stop"] : []),
        "--verbose",
        "--",
        pythonPath(),
        ...shellArgs(expected),
      ];
      const p = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
      const timer = setTimeout(() => p.kill("SIGKILL"), TEST_TIMEOUT_MS - 20_000);
      const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
      clearTimeout(timer);
      const context = `kloak exit ${code}; ${stderr.match(/rewrite mode .*/)?.[0] ?? "rewrite mode not reported"}; stderr tail: ${stderr.slice(-1500)}`;
      checkShell({ stdout, context, expected, secret, server });
      expect(code).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );
}

// A child forks and asks to be traced by its parent, as a debugger's inferior does.
const TRACEME = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    rc = libc.ptrace(0, 0, None, None)  # PTRACE_TRACEME
    print("TRACEME=" + ("ok" if rc == 0 else os.strerror(ctypes.get_errno())), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
`;

test("a process has one tracer: in the tree, PTRACE_TRACEME is refused (kloak traces it); with --holds signals it works, with stops its parent can see; both substitute", async () => {
  const curl = Bun.which("curl") ?? "curl";
  for (const holds of ["ptrace", "signals"] as const) {
    server.reset();
    const secret = fakeSecret(32);
    const script = `${pythonPath()} -c '${TRACEME}'; ${curl} -sS --fail --cacert ${caFile} -H "X-Api-Key: $API_KEY" https://127.0.0.1:${server.port}/ -o /dev/null`;
    const metrics = join(mkdtempSync(join(tmpdir(), "kloak-holds-")), "metrics.prom");
    const r = await runKloak(["exec", "--holds", holds, "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--metrics-file", metrics, "--", "sh", "-c", script]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(holds === "ptrace" ? "TRACEME=Operation not permitted" : "TRACEME=ok");
    expect(occurrences(server.received(), secret)).toBe(1);
    const traced = Number(/^kloak_processes_traced_total (\d+)$/m.exec(readFileSync(metrics, "utf8"))?.[1]);
    expect(holds === "ptrace" ? traced > 0 : traced === 0).toBe(true);
  }
});
