import { parseArgs } from "node:util";
import { UsageError } from "../errors.ts";
import { objectBytes } from "../dataplane/bpf-object.ts";
import { runChecks } from "../doctor/checks.ts";
import { formatJson, formatTable } from "../doctor/report.ts";
import { parseScanCap } from "../dataplane/scan-cap.ts";

export const DOCTOR_USAGE = `usage: kloak doctor [--json] [--scan-cap SIZE]

Checks whether this node can run kloak: the kernel's features, the mounts and
privileges kloak needs, and a trial load of the eBPF object in the rewrite mode
\`kloak exec\` would use (the same code decides). Exits 1 when kloak cannot run.

options:
  --json             machine-readable output
  --scan-cap SIZE    scan cap of the trial load (default 64KiB, as kloak exec)
  -h, --help         this text`;

export async function doctorCommand(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      options: { json: { type: "boolean" }, "scan-cap": { type: "string" }, help: { type: "boolean", short: "h" } },
    }).values;
  } catch (e) {
    throw new UsageError(`doctor: ${(e as Error).message.split("\n")[0]}; usage: kloak doctor [--json] [--scan-cap SIZE]`);
  }
  if (values.help) {
    process.stdout.write(DOCTOR_USAGE + "\n");
    return 0;
  }
  let scanCap: number | undefined;
  if (values["scan-cap"] !== undefined) {
    scanCap = parseScanCap("doctor: --scan-cap", values["scan-cap"]);
  }
  const result = await runChecks({ objectBytes: await objectBytes(), scanCap });
  process.stdout.write((values.json ? formatJson(result) : formatTable(result)) + "\n");
  return result.ok ? 0 : 1;
}
