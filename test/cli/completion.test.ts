/**
 * `kloak completion SHELL` in the real shells (bash, zsh, fish), and the man
 * page: both made from the usage texts `--help` prints, so every option a
 * command documents is completed and in the page.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { commandHelps, parseOptions } from "../../src/cli/completion.ts";
import { EXEC_USAGE } from "../../src/cli/exec.ts";
import { manPage, MAN_PAGE } from "../../scripts/man.ts";
import { runKloak } from "../support/kloak.ts";

const dir = mkdtempSync(join(tmpdir(), "kloak-completion-"));

async function script(shell: string): Promise<string> {
  const r = await runKloak(["completion", shell]);
  expect(r.code).toBe(0);
  const f = join(dir, `kloak.${shell}`);
  writeFileSync(f, r.stdout);
  return f;
}

function shellPath(name: string): string {
  const p = Bun.which(name);
  if (!p) throw new Error(`${name} is not installed: apt-get install ${name} (scripts/setup.sh installs it)`);
  return p;
}

test("every option of kloak exec's usage is parsed, with its short form and value", () => {
  const opts = parseOptions(EXEC_USAGE);
  const byLong = new Map(opts.map((o) => [o.long, o]));
  for (const long of ["--secret", "--secrets-file", "--allow", "--env-file", "--summary", "--quiet", "--silent", "--verbose", "--help", "--fail-on-refusal"])
    expect(byLong.has(long)).toBe(true);
  expect(byLong.get("--quiet")!.short).toBe("-q");
  expect(byLong.get("--allow")!.value).toBe("NAME=RULE[,RULE]");
  expect(byLong.get("--fail-on-refusal")!.value).toBeUndefined();
  expect(opts.filter((o) => o.long === "--secret")).toHaveLength(1);
});

/** What bash completes for the words (the last one is being typed). */
function bashComplete(file: string, words: string[]): string[] {
  const prog = `source ${file}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _kloak; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = Bun.spawnSync([shellPath("bash"), "-c", prog], { cwd: dir });
  expect(r.exitCode).toBe(0);
  return r.stdout.toString().split("\n").filter(Boolean);
}

test("bash: subcommands, options, file values, and the command after --", async () => {
  const f = await script("bash");
  writeFileSync(join(dir, "tokens.env"), "A=abcdefXY\n");
  expect(bashComplete(f, ["kloak", "ex"])).toEqual(["exec"]);
  expect(bashComplete(f, ["kloak", "exec", "--al"])).toEqual(["--allow"]);
  expect(bashComplete(f, ["kloak", "exec", "--env-file", "tok"])).toEqual(["tokens.env"]);
  expect(bashComplete(f, ["kloak", "exec", "--secret", "A", "--", "bas"])).toContain("bash");
  expect(bashComplete(f, ["kloak", "doctor", "--j"])).toEqual(["--json"]);
  expect(bashComplete(f, ["kloak", "completion", "f"])).toEqual(["fish"]);
});

test("fish: what `complete -C` offers", async () => {
  const f = await script("fish");
  const complete = (line: string) => {
    const r = Bun.spawnSync([shellPath("fish"), "--no-config", "-c", `source ${f}; complete -C'${line}'`]);
    expect(r.exitCode).toBe(0);
    return r.stdout.toString().split("\n").filter(Boolean).map((l) => l.split("\t")[0]);
  };
  expect(complete("kloak ex")).toEqual(["exec"]);
  expect(complete("kloak exec --al")).toEqual(["--allow"]);
  expect(complete("kloak exec --su")).toEqual(["--summary"]);
  expect(complete("kloak doctor --")).toEqual(expect.arrayContaining(["--json", "--scan-cap", "--help"]));
});

test("zsh: the script compiles, and offers every option of every command", async () => {
  const f = await script("zsh");
  const r = Bun.spawnSync([shellPath("zsh"), "-n", f]);
  expect(r.stderr.toString()).toBe("");
  expect(r.exitCode).toBe(0);
  const text = readFileSync(f, "utf8");
  for (const c of await commandHelps()) {
    if (c.name === "completion") continue;
    const line = text.split("\n").find((l) => l.trimStart().startsWith(`${c.name}) _arguments`));
    expect(line).toBeDefined();
    for (const o of c.options) expect(line).toContain(o.long);
  }
});

test("completion without a shell, or with an unknown one: exit 2, one line", async () => {
  for (const args of [["completion"], ["completion", "tcsh"]]) {
    const r = await runKloak(args);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("use kloak completion bash, zsh or fish");
  }
});

test("the man page is generated from the usage texts and is current (bun scripts/man.ts)", async () => {
  expect(readFileSync(MAN_PAGE, "utf8")).toBe(await manPage());
  const r = Bun.spawnSync(["groff", "-man", "-ww", "-z", MAN_PAGE]);
  expect(r.stderr.toString()).toBe("");
});
