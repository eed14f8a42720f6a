/**
 * Go toolchains for the runtime tests: Debian's, fetched into
 * /var/cache/kloak-runtime/go/1.NN when absent, and the test client
 * (test/runtime/go, standard library only) built with one of them.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../support/kloak.ts";

const CACHE = "/var/cache/kloak-runtime/go";
/** Where each release line comes from (debian-fetch SUITE). */
export const SUITES: Record<string, string> = { "1.19": "bookworm", "1.22": "bookworm-backports", "1.23": "bookworm-backports", "1.24": "trixie", "1.26": "sid" };
const SRC = join(ROOT, "test/runtime/go");

export function goroot(v: string): string {
  const root = join(CACHE, v, `usr/lib/go-${v}`);
  if (!existsSync(join(root, "bin/go"))) {
    const fetch = ["/work/shared/tools/debian-fetch", SUITES[v]!, join(CACHE, v), `golang-${v}-go`, `golang-${v}-src`];
    const r = Bun.spawnSync(fetch, { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0 || !existsSync(join(root, "bin/go")))
      throw new Error(`Go ${v} toolchain missing and could not be fetched; run: ${fetch.join(" ")}\n${r.stderr.toString()}`);
  }
  return root;
}

export type Variant = { pie: boolean; stripped: boolean };
export const variantName = (o: Variant) => `${o.pie ? "pie" : "exe"}${o.stripped ? "-stripped" : ""}`;

/** The test client built by Go v into dir (once per dir). */
export function buildGoClient(v: string, o: Variant, dir: string): string {
  const out = join(dir, `go${v}-${variantName(o)}`);
  if (existsSync(out)) return out;
  const cache = join(CACHE, `gocache-${v}`);
  mkdirSync(cache, { recursive: true });
  const env = { ...process.env, GOROOT: goroot(v), GOCACHE: cache, GOFLAGS: "-mod=mod", GOPROXY: "off", GO111MODULE: "off", CGO_ENABLED: "0" };
  const args = ["build", "-o", out, ...(o.pie ? ["-buildmode=pie"] : []), ...(o.stripped ? ["-ldflags=-s -w"] : []), "."];
  const r = Bun.spawnSync([join(goroot(v), "bin/go"), ...args], { cwd: SRC, env, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`go ${v} build ${variantName(o)} failed:\n${r.stderr.toString()}`);
  return out;
}
