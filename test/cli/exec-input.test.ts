/** Bad input to `kloak exec`: one clear line, the right exit code, nothing loaded or left behind. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fakeSecret, occurrences, runKloak } from "../support/kloak.ts";

const dir = mkdtempSync(join(tmpdir(), "kloak-input-"));
const pins = () => {
  try {
    return readdirSync("/sys/fs/bpf/kloak").length;
  } catch {
    return 0;
  }
};
// Programs and links die with the process; a pin is the only thing that could outlive it.
const before = pins();
afterAll(() => {
  expect(pins()).toBe(before);
});

const cases: [string, string[], number, RegExp][] = [
  ["unknown flag", ["exec", "--bogus", "--", "true"], 2, /unknown option '--bogus'|Unknown option '--bogus'/i],
  ["missing command", ["exec", "--secret", "A=abcdefXY"], 2, /no command given/],
  ["no secrets", ["exec", "--", "true"], 2, /no secrets given/],
  ["bad rewrite mode", ["exec", "--rewrite-mode", "fast", "--secret", "A=abcdefXY", "--", "true"], 2, /--rewrite-mode "fast": use auto, kernel or stop/],
  ["bad scan cap", ["exec", "--scan-cap", "12x", "--secret", "A=abcdefXY", "--", "true"], 2, /--scan-cap "12x": not a size/],
  ["scan cap too small", ["exec", "--scan-cap", "100", "--secret", "A=abcdefXY", "--", "true"], 2, /must be between 4096 bytes and 16MiB/],
  ["missing secrets file", ["exec", "--secrets-file", "/nonexistent/s.yaml", "--", "true"], 2, /s\.yaml/],
  ["duplicate names", ["exec", "--secret", "A=abcdefXY", "--secret", "A=ijklmnop", "--", "true"], 2, /defined twice/],
  ["--allow: wildcard without a domain", ["exec", "--secret", "A=abcdefXY", "--allow", "A=*.", "--", "true"], 2, /--allow A: rule "\*\.": /],
  ["--allow: wildcard glued to a name", ["exec", "--secret", "A=abcdefXY", "--allow", "A=*foo.com", "--", "true"], 2, /rule "\*foo\.com": a wildcard must be "\*\." followed by a domain/],
  ["--allow: port out of range", ["exec", "--secret", "A=abcdefXY", "--allow", "A=host:99999", "--", "true"], 2, /rule "host:99999": port 99999 is out of range/],
  ["--allow: bad CIDR", ["exec", "--secret", "A=abcdefXY", "--allow", "A=10.0.0.0/33", "--", "true"], 2, /rule "10\.0\.0\.0\/33"/],
  ["--allow: empty entry", ["exec", "--secret", "A=abcdefXY", "--allow", "A=a.com,,b.com", "--", "true"], 2, /empty/],
  ["--allow: unknown secret", ["exec", "--secret", "A=abcdefXY", "--allow", "B=a.com", "--", "true"], 2, /no secret named B/],
  ["--allow: no rule", ["exec", "--secret", "A=abcdefXY", "--allow", "A", "--", "true"], 2, /write --allow NAME=RULE/],
  ["--dns-server: not an address", ["exec", "--secret", "A=abcdefXY", "--dns-server", "dns.example", "--", "true"], 2, /--dns-server "dns\.example"/],
  ["--summary: unknown format", ["exec", "--summary", "yaml", "--secret", "A=abcdefXY", "--", "true"], 2, /--summary "yaml": use text or json/],
  ["--quiet and --silent together", ["exec", "--quiet", "--silent", "--secret", "A=abcdefXY", "--", "true"], 2, /--silent and --quiet contradict each other/],
  ["--env-file: missing", ["exec", "--env-file", "/nonexistent/.env", "--", "true"], 2, /--env-file \/nonexistent\/\.env: no such file/],
  ["forced kernel mode under lockdown", ["exec", "--rewrite-mode", "kernel", "--secret", "A=abcdefXY", "--", "true"], 1, /kernel is not possible here: lockdown=integrity/],
];

for (const [name, args, code, msg] of cases) {
  test(name, async () => {
    const r = await runKloak(args);
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(msg);
    expect(r.stderr.trim().split("\n").length).toBe(1);
  });
}

test("a value out of range names the secret and the limit, never the value", async () => {
  const short = "abc1234"; // 7 bytes
  const long = fakeSecret(4097);
  for (const [name, value] of [["SHORT", short], ["LONG", long]] as const) {
    const r = await runKloak(["exec", "--secret", `${name}=${value}`, "--", "true"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`"${name}"`);
    expect(r.stderr).toMatch(/8 to 4096 bytes/);
    expect(occurrences(r.stderr, value)).toBe(0);
  }
});

test("an invalid secrets file names the file and the field", async () => {
  const f = join(dir, "bad.yaml");
  writeFileSync(f, "secrets:\n  - name: OK\n    value: abcdefghij\n  - name: TWO\n");
  const r = await runKloak(["exec", "--secrets-file", f, "--", "true"]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain("bad.yaml");
  expect(r.stderr).toContain("secrets[1]");
});

test("a bad rule in a secrets file: nothing loaded, the file, the secret's place and the rule are named", async () => {
  const f = join(dir, "rules.yaml");
  writeFileSync(f, "secrets:\n  - name: OK\n    value: abcdefghij\n    hosts: [api.example.com, '*.']\n");
  const r = await runKloak(["exec", "--secrets-file", f, "--", "true"]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain("rules.yaml");
  expect(r.stderr).toContain("secrets[0].hosts[1]");
  expect(r.stderr).toContain('rule "*."');
  expect(r.stderr.trim().split("\n").length).toBe(1);
});

describe("a command that cannot run: the shell's exit codes, one line, before anything is loaded", () => {
  const script = join(dir, "not-executable.sh");
  writeFileSync(script, "#!/bin/sh\necho ran\n", { mode: 0o644 });
  const cases: [string, string[], Record<string, string> | undefined, number, RegExp][] = [
    ["a path that does not exist", ["/nonexistent/cmd"], undefined, 127, /^kloak: cannot run \/nonexistent\/cmd: no such file; check the path$/],
    ["a name not in PATH", ["kloak-no-such-command"], undefined, 127, /^kloak: cannot run kloak-no-such-command: command not found in PATH \(.*\); check the name/],
    ["a name found only in a PATH entry that does not hold it", ["true"], { PATH: "/nonexistent" }, 127, /command not found in PATH \(\/nonexistent\)/],
    ["a file without execute permission", [script], undefined, 126, /^kloak: cannot run .*not-executable\.sh: .* is not executable by uid \d+; check the path, or chmod \+x it$/],
    ["a directory", [dir], undefined, 126, /is a directory/],
  ];
  for (const [name, command, env, code, msg] of cases) {
    test(name, async () => {
      const r = await runKloak(["exec", "--secret", "A=abcdefXY", "--", ...command], env ? { env } : {});
      expect({ code: r.code, stderr: r.stderr.trim() }).toMatchObject({ code, stderr: expect.stringMatching(msg) });
      // Nothing started: A has no rules, so a data plane that loaded would have said so first.
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect(r.stdout).toBe("");
    });
  }
});

test("--metrics-file in a directory that does not exist: refused before CMD runs", async () => {
  const marker = join(dir, "ran");
  const r = await runKloak(["exec", "--secret", "A=abcdefXY", "--metrics-file", "/nonexistent/dir/m.prom", "--", "touch", marker]);
  expect(r.code).toBe(2);
  expect(r.stderr.trim()).toBe("kloak: exec: --metrics-file /nonexistent/dir/m.prom: no directory /nonexistent/dir; create it or choose another path");
  expect(existsSync(marker)).toBe(false);
});

test("--metrics-file naming a directory: refused before CMD runs", async () => {
  const r = await runKloak(["exec", "--secret", "A=abcdefXY", "--metrics-file", dir, "--", "true"]);
  expect(r.code).toBe(2);
  expect(r.stderr.trim()).toBe(`kloak: exec: --metrics-file ${dir}: is a directory; name a file`);
});

test("--env-file: a line that is not NAME=VALUE is refused with its line number, never its text", async () => {
  const f = join(dir, "bad.env");
  writeFileSync(f, "# tokens\nA=abcdefXY\nsecretvaluewithoutname\n");
  const r = await runKloak(["exec", "--env-file", f, "--", "true"]);
  expect(r.code).toBe(2);
  expect(r.stderr.trim()).toBe(`kloak: --env-file ${f}: line 3 is not NAME=VALUE`);
});

test("--quiet: a successful run prints nothing, not even advice about missing rules", async () => {
  const r = await runKloak(["exec", "--quiet", "--secret", "A=abcdefXY", "--", "true"]);
  expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
  const loud = await runKloak(["exec", "--secret", "A=abcdefXY", "--", "true"]);
  expect(loud.stderr).toContain("no destination rules for A: may be sent to any TLS destination");
});
