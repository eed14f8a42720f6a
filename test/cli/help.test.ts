/** Every subcommand answers -h/--help, and `kloak help CMD` prints the same text; `version --json` is JSON. */
import { expect, test } from "bun:test";
import { runKloak } from "../support/kloak.ts";

for (const cmd of ["exec", "agent", "doctor", "version"]) {
  test(`kloak help ${cmd} = kloak ${cmd} --help = kloak ${cmd} -h`, async () => {
    const [help, long, short] = await Promise.all([runKloak(["help", cmd]), runKloak([cmd, "--help"]), runKloak([cmd, "-h"])]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`usage: kloak ${cmd}`);
    expect(help.stderr).toBe("");
    expect(long).toEqual(help);
    expect(short).toEqual(help);
  });
}

test("kloak help with no command: the command list", async () => {
  const r = await runKloak(["help"]);
  expect(r.code).toBe(0);
  for (const cmd of ["exec", "agent", "doctor", "version", "help [COMMAND]"]) expect(r.stdout).toContain(`\n  ${cmd}`);
});

test("kloak help of an unknown command: one line naming the commands, exit 2", async () => {
  const r = await runKloak(["help", "bogus"]);
  expect(r).toEqual({ code: 2, stdout: "", stderr: 'kloak: help: no command "bogus"; commands: exec, agent, doctor, version, completion\n' });
});

test("kloak version --json: one object with version, commit, libbpf and the object's build id", async () => {
  const r = await runKloak(["version", "--json"]);
  expect(r.code).toBe(0);
  const v = JSON.parse(r.stdout) as Record<string, string>;
  expect(Object.keys(v).sort()).toEqual(["bpfObject", "commit", "libbpf", "version"]);
  expect(v.bpfObject).toMatch(/^[0-9a-f]{16}$/);
  const text = await runKloak(["version"]);
  expect(text.stdout).toBe(`kloak ${v.version}\ncommit ${v.commit}\nlibbpf ${v.libbpf}\nbpf object ${v.bpfObject}\n`);
});

test("kloak version with an unknown flag: a usage error", async () => {
  const r = await runKloak(["version", "--bogus"]);
  expect(r.code).toBe(2);
  expect(r.stderr).toBe("kloak: version: Unknown option '--bogus'; usage: kloak version [--json]\n");
});
