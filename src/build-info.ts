/** Version facts; `bun run build` bakes the commit in, development reads it from git. */
import pkg from "../package.json" with { type: "json" };

declare const KLOAK_BUILD_COMMIT: string | undefined;

export const VERSION: string = pkg.version;

export function gitCommit(): string {
  if (typeof KLOAK_BUILD_COMMIT !== "undefined") return KLOAK_BUILD_COMMIT;
  const r = Bun.spawnSync(["git", "rev-parse", "--short=12", "HEAD"], { cwd: import.meta.dir, stderr: "ignore" });
  return r.success ? r.stdout.toString().trim() : "unknown";
}

/** How to run this same program again (compiled executable, or bun + entry script). */
export function selfCommand(): string[] {
  return Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
}
