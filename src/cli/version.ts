import { libbpfVersion } from "../../lib/libbpf.ts";
import { gitCommit, VERSION } from "../build-info.ts";
import { objectBuildId, objectBytes } from "../dataplane/bpf-object.ts";

export async function versionCommand(): Promise<number> {
  let libbpf: string;
  try {
    libbpf = libbpfVersion();
  } catch (e) {
    libbpf = `not found (${(e as Error).message.split("\n")[0]}); install libbpf1`;
  }
  process.stdout.write(
    [
      `kloak ${VERSION}`,
      `commit ${gitCommit()}`,
      `libbpf ${libbpf}`,
      `bpf object ${objectBuildId(await objectBytes())}`,
    ].join("\n") + "\n",
  );
  return 0;
}
