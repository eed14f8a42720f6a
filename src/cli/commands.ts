/**
 * kloak's subcommands as the top-level help lists them: the one table that
 * `kloak help`, the completion scripts and the man page are made from.
 */
export interface CommandEntry {
  name: string;
  synopsis: string;
  summary: string;
}

export const COMMANDS: CommandEntry[] = [
  { name: "exec", synopsis: "exec [options] -- CMD [ARGS]", summary: "run CMD with placeholders; real values only inside its TLS writes" },
  { name: "agent", synopsis: "agent [options]", summary: "the Kubernetes node agent (DaemonSet); see kloak agent --help" },
  { name: "doctor", synopsis: "doctor [--json]", summary: "check whether this node can run kloak" },
  { name: "version", synopsis: "version [--json]", summary: "version, commit, libbpf and eBPF object build id" },
  { name: "completion", synopsis: "completion SHELL", summary: "a completion script for bash, zsh or fish" },
];

export const COMMAND_SUMMARIES: Record<string, string> = Object.fromEntries(COMMANDS.map((c) => [c.name, c.summary]));

const width = Math.max(...COMMANDS.map((c) => c.synopsis.length), "help [COMMAND]".length) + 3;

export const USAGE = `usage: kloak <command> [options]

commands:
${[...COMMANDS.map((c) => [c.synopsis, c.summary]), ["help [COMMAND]", "this text, or a command's (same as COMMAND --help)"]]
  .map(([syn, sum]) => `  ${syn!.padEnd(width)}${sum}`)
  .join("\n")}`;
