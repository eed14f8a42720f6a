/**
 * Run one command in a VM by hand:
 *
 *   bun test/vm/run.ts --kernel 6.1 --lockdown none -- bun src/main.ts doctor
 *
 * The command runs in the current directory as root; its output streams to
 * this terminal and its exit code is this command's (125 when the VM never
 * ran it: boot failure or timeout).
 */
import { parseArgs } from "node:util";
import { KERNELS, kernelSpec } from "./kernels.ts";
import { runVm, type Lockdown } from "./qemu.ts";

const sep = process.argv.indexOf("--");
const { values } = parseArgs({
  args: process.argv.slice(2, sep < 0 ? undefined : sep),
  options: {
    kernel: { type: "string", default: "6.1" },
    lockdown: { type: "string", default: "none" },
    timeout: { type: "string", default: "900" },
    cpus: { type: "string", default: "1" },
    help: { type: "boolean", short: "h" },
  },
});
const cmd = sep < 0 ? [] : process.argv.slice(sep + 1);
if (values.help || cmd.length === 0) {
  console.log(`usage: bun test/vm/run.ts [--kernel ID] [--lockdown none|integrity|confidentiality] [--timeout S] [--cpus N] -- CMD [ARGS...]
kernels: ${KERNELS.map((k) => k.id).join(", ")}`);
  process.exit(cmd.length === 0 && !values.help ? 2 : 0);
}
const lockdown = values.lockdown as Lockdown;
if (!["none", "integrity", "confidentiality"].includes(lockdown)) {
  console.error(`--lockdown must be none, integrity or confidentiality, not "${lockdown}"`);
  process.exit(2);
}
const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const r = await runVm({
  kernel: kernelSpec(values.kernel!),
  lockdown,
  script: cmd.map(shq).join(" "),
  cwd: process.cwd(),
  timeoutMs: Number(values.timeout) * 1000,
  cpus: Number(values.cpus),
  onOutput: (s) => process.stdout.write(s),
});
console.error(
  `\nkloak-vm: ${r.timedOut ? "timed out" : r.code === null ? "the command never ran" : `exit ${r.code}`}` +
    ` (boot ${r.bootMs ?? "-"} ms, total ${r.totalMs} ms)`,
);
process.exit(r.code ?? 125);
