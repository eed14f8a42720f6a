/**
 * Helpers of the GnuTLS and OpenSSL-lines runtime tests: Debian packages of
 * other suites fetched into private roots (never into the system), and the
 * command-line plumbing both tests share.
 */
import { existsSync, lstatSync, symlinkSync } from "node:fs";
import { join } from "node:path";

export const CACHE = "/var/cache/kloak-runtime";
const DEBIAN_FETCH = process.env.KLOAK_DEBIAN_FETCH ?? "/work/shared/tools/debian-fetch";

/** Packages to fetch from one suite into a root. */
export interface Fetch {
  suite: string;
  packages: string[];
}

/**
 * A root holding `wants` (paths relative to it), fetched with debian-fetch
 * when any is absent. Throws, saying what to run, when it cannot: a runtime
 * test that cannot get its library fails, it never skips.
 */
export function debianRoot(root: string, fetches: Fetch[], wants: string[]): string {
  const missing = () => wants.filter((w) => !existsSync(join(root, w)));
  if (missing().length > 0) {
    const commands = fetches.map((f) => [DEBIAN_FETCH, f.suite, root, ...f.packages]);
    for (const cmd of commands) {
      const r = existsSync(DEBIAN_FETCH) ? Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" }) : undefined;
      if (!r?.success) {
        throw new Error(
          `cannot fetch ${cmd.slice(3).join(" ")} (${cmd[1]}) into ${root}: ${r ? r.stderr.toString().trim() : `${DEBIAN_FETCH} not found`}\n` +
            `run: ${commands.map((c) => c.join(" ")).join(" && ")}`,
        );
      }
    }
    // Packages of merged-/usr suites ship no /lib and /lib64: the loader's path (PT_INTERP) needs them.
    for (const [link, target] of [["lib", "usr/lib"], ["lib64", "usr/lib64"]] as const) {
      if (!exists(join(root, link)) && existsSync(join(root, target))) symlinkSync(target, join(root, link));
    }
  }
  const still = missing();
  if (still.length > 0) throw new Error(`${root} lacks ${still.join(", ")} after fetching ${fetches.map((f) => `${f.suite}: ${f.packages.join(" ")}`).join("; ")}`);
  return root;
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Shell-quote for sh -c. */
export const q = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

/** KEY=value lines of a client's stdout, each key's values in order. */
export function keyValues(out: string): Record<string, string[]> {
  const r: Record<string, string[]> = {};
  for (const line of out.split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) (r[m[1]!] ??= []).push(m[2]!);
  }
  return r;
}
