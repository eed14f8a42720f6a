/**
 * The supervisor cannot be subverted from inside the tree (threat model B,
 * docs/policy.md section 5): CMD runs as another user, so it can read neither
 * kloak's nor the guardian's memory or environment, nor stop them; neither
 * holds a value in its command line or environment; a writer kloak leaves
 * stopped is released within a bound; and when kloak dies mid-write, the
 * guardian puts the placeholder back before anything runs on.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { parseClientOutput, pythonPath } from "../support/clients.ts";
import { fakeSecret, KLOAK, occurrences, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { connectSteps, count, OSSL_CLIENT, REQUEST } from "./attack.ts";

let server: TlsServer;
beforeAll(async () => {
  server = await startTlsServer({ host: "127.0.0.1" });
});
afterAll(() => server.close());
beforeEach(() => server.reset());

/** Read a stream until it has printed `mark` (or ended); returns all it printed. */
async function readUntil(reader: { read(): Promise<{ value?: Uint8Array; done: boolean }> }, mark: string, sofar = ""): Promise<string> {
  let out = sofar;
  while (!out.includes(mark)) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  return out;
}

/** /proc/<pid>/<file> as root sees it, or "" when the process is gone. */
const proc = (pid: number, file: string) => {
  try {
    return readFileSync(`/proc/${pid}/${file}`);
  } catch {
    return Buffer.alloc(0);
  }
};
const childrenOf = (pid: number) => {
  const out: number[] = [];
  try {
    for (const t of readdirSync(`/proc/${pid}/task`))
      out.push(...readFileSync(`/proc/${pid}/task/${t}/children`, "latin1").trim().split(/\s+/).filter(Boolean).map(Number));
  } catch {
    // gone
  }
  return out;
};
const comm = (pid: number) => proc(pid, "cmdline").toString("latin1").split("\0").join(" ");

describe("who CMD runs as", () => {
  test("as root without sudo and without --user: refused before anything runs, saying what to do", async () => {
    // Spawned directly: the test support would add --user root.
    const raw = Bun.spawn([...KLOAK, "exec", "--secret", "A=abcdefghijkl", "--", "true"], { stderr: "pipe", env: { ...process.env, SUDO_UID: "" } });
    const [err, code] = await Promise.all([new Response(raw.stderr).text(), raw.exited]);
    expect(code).toBe(2);
    expect(err).toMatch(/^kloak: exec: who should CMD run as\? .*pass --user NAME \(or run kloak through sudo/);
  });

  test("through sudo: CMD runs as the user who ran sudo, with no way back to privileges", async () => {
    const raw = Bun.spawn([...KLOAK, "exec", "--secret", "A=abcdefghijkl", "--", "sh", "-c", "id -u; id -g; grep NoNewPrivs /proc/self/status"], {
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, SUDO_UID: "65534", SUDO_GID: "65534", SUDO_USER: "nobody" },
    });
    const [out, code] = await Promise.all([new Response(raw.stdout).text(), raw.exited]);
    expect(code).toBe(0);
    expect(out.trim().split("\n")).toEqual(["65534", "65534", "NoNewPrivs:\t1"]);
  });

  test("--user NAME[:GROUP]; an unknown user is a usage error", async () => {
    const r = await runKloak(["exec", "--user", "nobody:nogroup", "--secret", "A=abcdefghijkl", "--", "sh", "-c", "id -un; id -gn"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split("\n")).toEqual(["nobody", "nogroup"]);
    const bad = await runKloak(["exec", "--user", "no-such-user-kloak", "--secret", "A=abcdefghijkl", "--", "true"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--user "no-such-user-kloak": no such user');
  });
});

describe("the tree cannot read or stop kloak and its guardian", () => {
  test("no value in kloak's or the guardian's command line or environment; the tree can read neither, nor stop them", async () => {
    const fromArgv = fakeSecret(32);
    const fromEnv = fakeSecret(32);
    // The tree reports what it can do to its parent (the guardian) and to the guardian's parent (kloak).
    const script =
      'K=$(cut -d" " -f4 /proc/$PPID/stat); echo "KLOAK=$K"; read go; ' +
      'for p in $PPID $K; do ' +
      'cat /proc/$p/environ >/dev/null 2>&1 && echo "ENVIRON=readable" || echo "ENVIRON=denied"; ' +
      'cat /proc/$p/mem >/dev/null 2>&1 && echo "MEM=readable" || echo "MEM=denied"; ' +
      'kill -STOP $p 2>/dev/null && echo "STOP=done" || echo "STOP=denied"; done';
    const p = Bun.spawn(
      [...KLOAK, "exec", "--user", "nobody", "--secret", `ARGV_KEY=${fromArgv}`, "--secret", "ENV_KEY", "--", "sh", "-c", script],
      { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, ENV_KEY: fromEnv } },
    );
    // While it runs: what root sees in /proc of kloak and of the guardian.
    const reader = p.stdout.getReader();
    let out = await readUntil(reader, "KLOAK=");
    const kloak = p.pid;
    expect(out).toContain(`KLOAK=${kloak}`);
    const guardian = childrenOf(kloak).find((c) => comm(c).includes("__guardian"));
    expect(guardian).toBeDefined();
    for (const pid of [kloak, guardian!]) {
      for (const file of ["cmdline", "environ"]) {
        const text = proc(pid, file);
        expect({ pid, file, argv: occurrences(text, fromArgv), env: occurrences(text, fromEnv) }).toEqual({ pid, file, argv: 0, env: 0 });
      }
    }
    // Nothing but the IPC channel Bun sets up for it.
    const names = proc(guardian!, "environ").toString("latin1").split("\0").filter(Boolean).map((kv) => kv.split("=")[0]);
    expect(names.filter((n) => !n!.startsWith("NODE_CHANNEL_"))).toEqual([]);
    (p.stdin as import("bun").FileSink).end(); // go
    out = await readUntil(reader, "\u0000", out);
    expect(await p.exited).toBe(0);
    const seen = parseClientOutput(out);
    // kloak and the guardian, three tries each
    expect({ environ: seen.ENVIRON, mem: seen.MEM, stop: seen.STOP }).toEqual({
      environ: ["denied", "denied"],
      mem: ["denied", "denied"],
      stop: ["denied", "denied"],
    });
  });
});

describe("no writer stays stopped, no value stays behind", () => {
  // The clients here run as root (--user root): they are about kloak dying or stopping, not about users.

  test("kloak killed while a write holds the value: the guardian puts the placeholder back before the writer runs on", async () => {
    const secret = fakeSecret(32);
    const steps = [
      { op: "tcp", id: "t", host: "127.0.0.1", port: server.port },
      { op: "ssl", id: "c" },
      { op: "buffer", id: "b" },
      { op: "app_bio", id: "c", sock: "t", during_write: "sleep:2" },
      { op: "connect", id: "c" },
      { op: "write", id: "c", buf: "b" },
      { op: "check", buf: "b" },
    ];
    const p = Bun.spawn(
      [...KLOAK, "exec", "--user", "root", "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--", pythonPath(), OSSL_CLIENT, JSON.stringify(steps)],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, KLOAK_TEST_REQUEST: REQUEST } },
    );
    const reader = p.stdout.getReader();
    let out = await readUntil(reader, "IN_WRITE=1");
    expect(out).toContain("IN_WRITE=1"); // the value is in the writer's buffer now
    process.kill(p.pid, "SIGKILL");
    out = await readUntil(reader, "\u0000", out);
    const seen = parseClientOutput(out);
    expect(seen.BUF_B).toEqual(["placeholder"]);
    expect(count(server.received(), secret).values).toBe(2); // that write had gone out before
    const err = await new Response(p.stderr).text();
    expect(err).toMatch(/kloak guardian: kloak died; put back the placeholders of writes in flight/);
  });

  test("kloak stopped (by root) while a writer waits for it: the guardian continues kloak within its 250 ms watch, and the write is served", async () => {
    const secret = fakeSecret(32);
    const steps = [
      ...connectSteps("c", "127.0.0.1", server.port, null),
      { op: "say", text: "READY" },
      { op: "sleep", s: 0.5 },
      { op: "buffer", id: "b" },
      { op: "write", id: "c", buf: "b" },
      { op: "check", buf: "b" },
    ];
    const p = Bun.spawn(
      [...KLOAK, "exec", "--user", "root", "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--", pythonPath(), OSSL_CLIENT, JSON.stringify(steps)],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, KLOAK_TEST_REQUEST: REQUEST } },
    );
    const reader = p.stdout.getReader();
    let out = await readUntil(reader, "READY=1");
    process.kill(p.pid, "SIGSTOP"); // before the client writes
    const t0 = performance.now();
    out = await readUntil(reader, "BUF_B=", out);
    const waited = performance.now() - t0;
    await p.exited;
    expect(parseClientOutput(out).BUF_B).toEqual(["placeholder"]);
    expect(waited).toBeLessThan(500 + 250 + 1500); // its sleep, the watch, slack
    expect(count(server.received(), secret)).toEqual({ values: 2, placeholders: 0 }); // both writes served
    expect(await new Response(p.stderr).text()).toMatch(/kloak guardian: kloak was stopped; continued it/);
  });
});
