#!/usr/bin/env bun
/**
 * Rewrites the rows of src/dataplane/go-offsets.ts from real Go toolchains: builds
 * test/runtime/go (standard library only, offline) with each one and asks it,
 * through reflect on that toolchain's own types, where the fields bpf/golang.h
 * reads are. Usage:
 *   bun scripts/go-offsets.ts [GOROOT...]   (default: /var/cache/kloak-runtime/go/*\/usr/lib/go-*)
 * Toolchains: /work/shared/tools/debian-fetch SUITE /var/cache/kloak-runtime/go/1.NN golang-1.NN-go golang-1.NN-src
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const CACHE = "/var/cache/kloak-runtime/go";

function goroots(): string[] {
  if (process.argv.length > 2) return process.argv.slice(2);
  return readdirSync(CACHE).flatMap((v) => {
    const dir = join(CACHE, v, "usr/lib");
    try {
      return readdirSync(dir).filter((d) => d.startsWith("go-")).map((d) => join(dir, d));
    } catch {
      return [];
    }
  });
}

const rows: Record<string, unknown>[] = [];
for (const goroot of goroots()) {
  const tmp = mkdtempSync(join(tmpdir(), "kloak-go-offsets-"));
  try {
    const env = { ...process.env, GOROOT: goroot, GOCACHE: join(CACHE, `gocache-${/go-(\d+\.\d+)$/.exec(goroot)?.[1] ?? "other"}`), GOFLAGS: "-mod=mod", GOPROXY: "off", GO111MODULE: "off", CGO_ENABLED: "0" };
    const bin = join(tmp, "layout");
    const b = Bun.spawnSync([join(goroot, "bin/go"), "build", "-o", bin, "."], { cwd: join(ROOT, "test/runtime/go"), env, stderr: "pipe" });
    if (b.exitCode !== 0) throw new Error(`${goroot}: go build failed: ${b.stderr.toString()}`);
    const r = Bun.spawnSync([bin, "layout"], { stdout: "pipe" });
    rows.push(JSON.parse(r.stdout.toString()));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
const minor = (v: string) => /^go(\d+\.\d+)/.exec(v)![1]!;
rows.sort((a, b) => Number(minor(a.version as string).split(".")[1]) - Number(minor(b.version as string).split(".")[1]));
const body = rows
  .map(
    (r) =>
      `  "${minor(r.version as string)}": { measured: "${r.version}", connConn: ${r.tlsConnConn}, connConfig: ${r.tlsConnConfig}, configServerName: ${r.configServerName}, tcpConnFd: ${r.tcpConnFd}, netFdSysfd: ${r.netFdSysfd} },`,
  )
  .join("\n");
// The file's header (what the rows mean, the GoOffsets type) stays as written there; the rows are replaced.
const file = join(ROOT, "src/dataplane/go-offsets.ts");
const src = readFileSync(file, "utf8");
const open = "export const GO_OFFSETS: Record<string, GoOffsets> = {\n";
const at = src.indexOf(open);
if (at < 0) throw new Error(`${file}: no "${open.trim()}" to put the rows after`);
writeFileSync(file, `${src.slice(0, at + open.length)}${body}\n};\n`);
console.log(`src/dataplane/go-offsets.ts: ${rows.map((r) => r.version).join(", ")}`);
