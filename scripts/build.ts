/**
 * `bun run build`: one executable, dist/kloak, embedding the prebuilt eBPF
 * object and the worker scripts; libbpf.so.1 is loaded from the system at run time.
 *
 * --bytecode: the bundle is shipped as JavaScriptCore bytecode, so a start does
 * not parse ~10 MB of JavaScript first (`kloak version` 210 -> 40 ms here);
 * bytecode needs the ESM output format for the top-level await in main.ts.
 */
import { $ } from "bun";
import { join } from "node:path";

const root = join(import.meta.dir, "..");
const commit = (await $`git -C ${root} rev-parse --short=12 HEAD`.nothrow().quiet()).stdout.toString().trim() || "unknown";
const dirty = (await $`git -C ${root} status --porcelain`.nothrow().quiet()).stdout.toString().trim() ? "-dirty" : "";
await $`bun build --compile --bytecode --format=esm --minify-syntax \
  ${join(root, "src/main.ts")} ${join(root, "src/dataplane/ring-worker.ts")} ${join(root, "lib/fd-closer-worker.ts")} \
  --define KLOAK_BUILD_COMMIT=${JSON.stringify(commit + dirty)} \
  --outfile ${join(root, "dist/kloak")}`.cwd(root);
console.log(`built dist/kloak (commit ${commit}${dirty})`);
