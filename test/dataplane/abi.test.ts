/**
 * src/dataplane/abi.generated.ts is what scripts/gen-abi.ts generates from the
 * committed object (bpf/kloak.bpf.o, itself checked against its sources by
 * test/bpf/object.test.ts): abi.ts takes every number from it.
 */
import { test } from "bun:test";
import { readFileSync } from "node:fs";
import { generateAbi, GENERATED_PATH, OBJECT_PATH } from "../../scripts/gen-abi.ts";

test("abi.generated.ts is fresh: what bpf/kloak.bpf.o generates", () => {
  const fresh = generateAbi(readFileSync(OBJECT_PATH));
  const committed = readFileSync(GENERATED_PATH, "utf8");
  if (committed !== fresh) throw new Error("src/dataplane/abi.generated.ts is stale: run bun run gen:abi");
});
