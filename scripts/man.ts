/**
 * Writes docs/kloak.1, the man page, from the same usage texts `--help` prints
 * (src/cli/completion.ts reads them); test/cli/completion.test.ts fails when
 * the committed page is stale. usage: bun scripts/man.ts [--check]
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { commandHelps } from "../src/cli/completion.ts";
import { USAGE } from "../src/cli/commands.ts";

export const MAN_PAGE = join(import.meta.dir, "..", "docs", "kloak.1");

/** roff-escape one line of text */
const esc = (s: string) => s.replace(/\\/g, "\\e").replace(/^([.'])/, "\\&$1").replace(/-/g, "\\-");

export async function manPage(): Promise<string> {
  const cmds = await commandHelps();
  const out = [
    '.TH KLOAK 1 "" "kloak" "User Commands"',
    ".SH NAME",
    "kloak \\- keep secrets out of workloads: placeholders in memory, real values only inside TLS writes to allowed hosts",
    ".SH SYNOPSIS",
    ".nf",
    ...USAGE.split("\n").map(esc),
    ".fi",
    ".SH DESCRIPTION",
    "A process gets a placeholder of the same length instead of each secret. When it writes to a TLS connection,",
    "an eBPF uprobe on the TLS library's write function finds the placeholder, and the real value is put into the",
    "plaintext just before encryption, only if the connection goes to a destination the secret may reach;",
    "the placeholder is put back when the call returns.",
    ".SH COMMANDS",
  ];
  for (const c of cmds) {
    out.push(`.SS ${c.name}`, ".nf", ...c.usage.split("\n").map(esc), ".fi");
  }
  out.push(
    ".SH FILES",
    ".TP",
    "/sys/fs/bpf/kloak",
    "maps pinned while kloak runs, so a crashed kloak's processes can be released",
    ".SH SEE ALSO",
    "The README and docs/ of the kloak repository: policy.md, kubernetes.md, kernels.md.",
  );
  return out.join("\n") + "\n";
}

if (import.meta.main) {
  const page = await manPage();
  if (process.argv.includes("--check")) {
    if (readFileSync(MAN_PAGE, "utf8") !== page) {
      console.error(`${MAN_PAGE} is stale: run bun scripts/man.ts`);
      process.exit(1);
    }
  } else writeFileSync(MAN_PAGE, page);
}
