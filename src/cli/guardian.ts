/**
 * `kloak __guardian PIN`: started by `kloak exec` before the command. It waits
 * for its stdin to close; if the agent did not remove its pin first (it died),
 * it resumes every process the agent may have left stopped.
 */
import { existsSync } from "node:fs";
import { releaseUntilQuiet } from "../dataplane/release.ts";

export async function guardianCommand(args: string[]): Promise<number> {
  const pin = args[0];
  if (!pin) return 2;
  // Terminal signals go to the whole process group; the guardian must outlive them.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE"] as const) process.on(sig, () => {});
  for await (const _ of Bun.stdin.stream()) {
    // Nothing is sent; EOF means the agent is gone, one way or another.
  }
  if (!existsSync(pin)) return 0; // clean exit: the agent removed its pin
  const n = await releaseUntilQuiet(pin);
  process.stderr.write(`kloak guardian: agent died; resumed ${n} stopped process(es)\n`);
  return 0;
}
