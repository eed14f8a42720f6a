/** The committed object is exactly what the committed sources build (`bun run build:bpf`). */
import { expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../support/kloak.ts";

test("bpf/kloak.bpf.o is reproducible from bpf/*.c and bpf/*.h", () => {
  const out = join(tmpdir(), `kloak-rebuild-${process.pid}.o`);
  const r = Bun.spawnSync(["bash", join(ROOT, "scripts", "build-bpf.sh"), out], { stderr: "pipe" });
  if (!r.success) throw new Error(`build:bpf failed (needs clang, llvm, libbpf-dev): ${r.stderr}`);
  const rebuilt = readFileSync(out);
  rmSync(out);
  const committed = readFileSync(join(ROOT, "bpf", "kloak.bpf.o"));
  // A mismatch means the sources changed without `bun run build:bpf` (or another clang).
  expect(rebuilt.equals(committed)).toBe(true);
});
