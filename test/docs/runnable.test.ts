/**
 * The commands of the docs, run as written: every ```sh test block of
 * README.md and docs/*.md, in order, with bash -e, as root.
 *
 * Around them: `kloak` on PATH is this checkout (or $KLOAK_BIN), and `sudo` is
 * a stand-in for a user's sudo (this suite runs as root; it sets SUDO_UID to
 * nobody's and keeps only what --preserve-env / -E keep, as sudo does, so a
 * block that forgets --preserve-env fails here too). docs/exec.md's blocks
 * run against the quick start's echo server, started here.
 *
 * Each block must exit 0 and never print a value it defines (tok_demo_...);
 * a block that sends to the echo server must have delivered the real value
 * there (the server prints its fingerprint) — unless it says otherwise.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KLOAK, ROOT } from "../support/kloak.ts";

interface Block {
  file: string;
  line: number;
  code: string;
}

function runnableBlocks(file: string): Block[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  const out: Block[] = [];
  const re = /^```sh test\n([\s\S]*?)^```$/gm;
  for (let m = re.exec(text); m; m = re.exec(text)) out.push({ file, line: text.slice(0, m.index).split("\n").length, code: m[1]! });
  return out;
}

const DOCS = ["README.md", ...readdirSync(join(ROOT, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
const bin = mkdtempSync(join(tmpdir(), "kloak-docs-bin-"));
const nobody = (() => {
  const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith("nobody:"));
  if (!line) throw new Error("no user nobody in /etc/passwd: the docs' blocks run their commands as nobody");
  const [, , uid, gid] = line.split(":");
  return { uid: uid!, gid: gid! };
})();

function shim(name: string, body: string): void {
  writeFileSync(join(bin, name), `#!/bin/bash\n${body}\n`);
  chmodSync(join(bin, name), 0o755);
}
shim("kloak", `exec ${KLOAK.map((a) => `'${a}'`).join(" ")} "$@"`);
// sudo as a user's shell has it: the environment is dropped except what is asked for.
shim(
  "sudo",
  `keep=(PATH HOME TERM)
while [ $# -gt 0 ]; do
  case "$1" in
    -E|--preserve-env) all=1; shift;;
    --preserve-env=*) IFS=, read -ra more <<<"\${1#--preserve-env=}"; keep+=("\${more[@]}"); shift;;
    -*) echo "sudo stand-in: option $1 not known" >&2; exit 2;;
    *) break;;
  esac
done
export SUDO_UID=${nobody.uid} SUDO_GID=${nobody.gid} SUDO_USER=nobody
if [ -n "\${all:-}" ]; then exec "$@"; fi
args=(SUDO_UID=$SUDO_UID SUDO_GID=$SUDO_GID SUDO_USER=nobody)
for v in "\${keep[@]}"; do [ -n "\${!v+x}" ] && args+=("$v=\${!v}"); done
exec env -i "\${args[@]}" "$@"`,
);

const fingerprint = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 12);
let echo: ReturnType<typeof Bun.spawn> | undefined;
let echoOut = "";

/** One echo server for every docs/ page (started by the first that runs), stopped in afterAll. */
async function startEcho(): Promise<void> {
  if (echo) return;
  echo = Bun.spawn([process.execPath, join(ROOT, "scripts/echo-server.ts")], { stdout: "pipe", stderr: "inherit" });
  const reader = (echo.stdout as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  const { promise: listening, resolve: ready } = Promise.withResolvers<void>();
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      echoOut += dec.decode(value);
      if (echoOut.includes("echo-server: https://")) ready();
    }
  })();
  await Promise.race([listening, Bun.sleep(15_000).then(() => Promise.reject(new Error("echo server did not start in 15 s")))]);
}

afterAll(() => {
  echo?.kill();
  rmSync(bin, { recursive: true, force: true });
});

/**
 * Run a block in a session of its own (setsid): whatever it started and left
 * behind (a server sent to the background whose `kill %1` a failing line never
 * reached) is killed with it, and cannot hold the output pipes open, which
 * would keep this read, and the whole suite, waiting.
 */
async function run(block: Block): Promise<{ code: number; out: string }> {
  const p = Bun.spawn(["setsid", "bash", "-e", "-o", "pipefail", "-c", block.code], {
    cwd: ROOT,
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    stdout: "pipe",
    stderr: "pipe",
  });
  const killGroup = () => {
    try {
      process.kill(-p.pid, "SIGKILL");
    } catch {
      // the group is gone already
    }
  };
  const timer = setTimeout(killGroup, 120_000);
  const output = Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  const code = await p.exited;
  clearTimeout(timer);
  killGroup();
  const [stdout, stderr] = await output;
  return { code, out: stdout + stderr };
}

for (const file of DOCS) {
  const blocks = runnableBlocks(file);
  if (blocks.length === 0) continue;
  describe(file, () => {
    // docs/ pages run against the echo server the README's quick start starts and stops itself.
    if (file !== "README.md") beforeAll(startEcho);
    for (const block of blocks) {
      test(`the block at line ${block.line} runs as written`, async () => {
        const before = echoOut.length;
        const r = await run(block);
        const context = `${file}:${block.line} exited ${r.code}:\n${r.out.slice(-2000)}`;
        if (r.code !== 0) throw new Error(context);
        const values = [...new Set(block.code.match(/tok_demo_[A-Za-z0-9_]+/g) ?? [])];
        for (const v of values) expect(r.out.includes(v) ? `${file}:${block.line} printed a secret value` : "").toBe("");
        if (block.code.includes("https://localhost:8443")) {
          // The server's lines: the quick start's own server prints into r.out, docs/ pages' into echoOut.
          await Bun.sleep(200);
          const served = r.out + echoOut.slice(before);
          const real = values.filter((v) => served.includes(`a ${v.length}-byte value, sha256 ${fingerprint(v)}`));
          if (real.length === 0) throw new Error(`the echo server got no real value from ${file}:${block.line}:\n${served.slice(-1500)}`);
          expect(served).not.toContain("the placeholder");
        }
      });
    }
  });
}
