import { parseArgs } from "node:util";
import { libbpfVersion } from "../../lib/libbpf.ts";
import { gitCommit, VERSION } from "../build-info.ts";
import { objectBuildId, objectBytes } from "../dataplane/bpf-object.ts";
import { UsageError } from "../errors.ts";

export const VERSION_USAGE = `usage: kloak version [--json]

Prints kloak's version, the commit it was built from, the libbpf it loads and
the build id of its eBPF object.

options:
  --json      one JSON object: version, commit, libbpf, bpfObject
  -h, --help  this text`;

export async function versionCommand(argv: string[] = []): Promise<number> {
  let values;
  try {
    values = parseArgs({ args: argv, strict: true, options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } } }).values;
  } catch (e) {
    throw new UsageError(`version: ${(e as Error).message.split("\n")[0]}; usage: kloak version [--json]`);
  }
  if (values.help) {
    process.stdout.write(VERSION_USAGE + "\n");
    return 0;
  }
  let libbpf: string;
  try {
    libbpf = libbpfVersion();
  } catch (e) {
    libbpf = `not found (${(e as Error).message.split("\n")[0]}); install libbpf1`;
  }
  const info = { version: VERSION, commit: gitCommit(), libbpf, bpfObject: objectBuildId(await objectBytes()) };
  process.stdout.write(
    values.json
      ? JSON.stringify(info) + "\n"
      : [`kloak ${info.version}`, `commit ${info.commit}`, `libbpf ${info.libbpf}`, `bpf object ${info.bpfObject}`].join("\n") + "\n",
  );
  return 0;
}
