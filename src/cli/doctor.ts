import { parseArgs } from "node:util";
import { UsageError } from "../errors.ts";
import { objectBytes } from "../dataplane/bpf-object.ts";
import { runChecks } from "../doctor/checks.ts";
import { formatJson, formatTable } from "../doctor/report.ts";

export async function doctorCommand(argv: string[]): Promise<number> {
  let json = false;
  try {
    json = !!parseArgs({ args: argv, strict: true, options: { json: { type: "boolean" } } }).values.json;
  } catch (e) {
    throw new UsageError(`doctor: ${(e as Error).message.split("\n")[0]}; usage: kloak doctor [--json]`);
  }
  const result = await runChecks({ objectBytes: await objectBytes() });
  process.stdout.write((json ? formatJson(result) : formatTable(result)) + "\n");
  return result.ok ? 0 : 1;
}
