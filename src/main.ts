#!/usr/bin/env bun
/** kloak's command line: one executable, a subcommand per job. */
import { KloakError } from "./errors.ts";

import { COMMANDS as TABLE, USAGE } from "./cli/commands.ts";

const COMMANDS = TABLE.map((c) => c.name);

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "exec":
      return (await import("./cli/exec.ts")).execCommand(rest);
    case "agent":
      return (await import("./cli/agent.ts")).agentCommand(rest);
    case "doctor":
      return (await import("./cli/doctor.ts")).doctorCommand(rest);
    case "version":
      return (await import("./cli/version.ts")).versionCommand(rest);
    case "completion":
      return (await import("./cli/completion.ts")).completionCommand(rest);
    case "--version":
      return (await import("./cli/version.ts")).versionCommand();
    case "__guardian":
      return (await import("./supervisor/guardian.ts")).guardianCommand(rest);
    case "help":
      if (rest.length > 0) {
        if (!COMMANDS.includes(rest[0]!)) {
          process.stderr.write(`kloak: help: no command ${JSON.stringify(rest[0])}; commands: ${COMMANDS.join(", ")}\n`);
          return 2;
        }
        return main([rest[0]!, "--help"]);
      }
      process.stdout.write(USAGE + "\n");
      return 0;
    case "--help":
    case "-h":
      process.stdout.write(USAGE + "\n");
      return 0;
    case undefined:
      process.stderr.write(USAGE + "\n");
      return 2;
    default:
      process.stderr.write(`kloak: unknown command ${JSON.stringify(cmd)}; run \`kloak help\`\n`);
      return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof KloakError) {
    process.stderr.write(`kloak: ${e.message}\n`);
    process.exitCode = e.exitCode;
  } else {
    process.stderr.write(`kloak: internal error: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  }
}
// Workers and handles must not keep a finished command alive.
process.exit(process.exitCode);
