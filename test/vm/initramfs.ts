/**
 * The test VM's initramfs: a static busybox, the kernel's modules that the
 * host-root share needs (9p over virtio, overlay) with their dependencies,
 * and init.sh. Built once per kernel and cached next to it; rebuilt when
 * init.sh or this file changes.
 */
import { $ } from "bun";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { cacheDir, type FetchedKernel } from "./kernels.ts";

const INIT = join(import.meta.dir, "init.sh");
/** What init.sh mounts: the host root over 9p/virtio-pci, with an overlay on top. */
const WANTED = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];
const BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"];

function staticBusybox(): string {
  for (const p of BUSYBOX_CANDIDATES) {
    if (!existsSync(p)) continue;
    const head = readFileSync(p).subarray(0, 1 << 16);
    // A dynamic executable names its interpreter; busybox-static has none.
    if (!head.includes(Buffer.from("/lib64/ld-linux"))) return p;
  }
  throw new Error("no static busybox: apt-get install busybox-static (scripts/setup.sh does)");
}

/** name -> path of every module file of the kernel ("-" and "_" are the same in names). */
function moduleIndex(dir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ko(\.xz|\.zst|\.gz)?$/.test(e.name)) index.set(e.name.replace(/\.ko(\..*)?$/, "").replaceAll("-", "_"), p);
    }
  };
  walk(join(dir, "kernel"));
  return index;
}

async function moduleBytes(path: string): Promise<Buffer> {
  if (path.endsWith(".ko")) return readFileSync(path);
  const tool = path.endsWith(".xz") ? "xz" : path.endsWith(".zst") ? "zstd" : "gzip";
  const r = await $`${tool} -dc ${path}`.nothrow().quiet();
  if (r.exitCode !== 0) throw new Error(`${tool} -dc ${path} failed: ${r.stderr.toString().trim()}`);
  return r.stdout;
}

/** The module's `depends=` from its .modinfo strings. */
function dependsOf(ko: Buffer): string[] {
  const at = ko.indexOf("\0depends=");
  if (at < 0) return [];
  const end = ko.indexOf(0, at + 1);
  const list = ko.subarray(at + "\0depends=".length, end).toString("latin1");
  return list ? list.split(",").map((n) => n.replaceAll("-", "_")) : [];
}

function builtins(dir: string): Set<string> {
  const f = join(dir, "modules.builtin");
  if (!existsSync(f)) return new Set();
  return new Set(
    readFileSync(f, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => l.replace(/^.*\//, "").replace(/\.ko$/, "").replaceAll("-", "_")),
  );
}

/** Modules in load order (dependencies first); built-in ones are skipped. */
async function resolveModules(k: FetchedKernel): Promise<{ name: string; bytes: Buffer }[]> {
  const index = moduleIndex(k.modules);
  const builtin = builtins(k.modules);
  const done = new Map<string, Buffer>();
  const order: string[] = [];
  const visit = async (name: string, chain: string[]) => {
    if (done.has(name) || chain.includes(name)) return;
    const path = index.get(name);
    if (!path) {
      if (builtin.has(name)) return;
      throw new Error(`${k.release}: module ${name} (needed by ${chain.at(-1) ?? "init.sh"}) is neither a module nor built in`);
    }
    const bytes = await moduleBytes(path);
    for (const dep of dependsOf(bytes)) await visit(dep, [...chain, name]);
    done.set(name, bytes);
    order.push(name);
  };
  for (const m of WANTED) await visit(m, []);
  return order.map((name) => ({ name, bytes: done.get(name)! }));
}

/** Path of the kernel's initramfs (gzip'd newc cpio), built when missing or stale. */
export async function initramfs(k: FetchedKernel): Promise<string> {
  const busybox = staticBusybox();
  const key = createHash("sha256")
    .update(readFileSync(INIT))
    .update(readFileSync(import.meta.path))
    .update(readFileSync(busybox))
    .update(k.release)
    .digest("hex")
    .slice(0, 16);
  const out = join(cacheDir(), "initramfs", `${k.release}-${key}.cpio.gz`);
  if (existsSync(out)) return out;

  const stage = join(cacheDir(), "initramfs", `stage-${k.release}-${process.pid}`);
  rmSync(stage, { recursive: true, force: true });
  try {
    for (const d of ["bin", "dev", "proc", "sys", "modules"]) mkdirSync(join(stage, d), { recursive: true });
    copyFileSync(busybox, join(stage, "bin/busybox"));
    copyFileSync(INIT, join(stage, "init"));
    const mods = await resolveModules(k);
    for (const m of mods) writeFileSync(join(stage, "modules", `${m.name}.ko`), m.bytes);
    writeFileSync(join(stage, "modules/order"), mods.map((m) => `${m.name}.ko\n`).join(""));
    await $`chmod 0755 ${join(stage, "init")} ${join(stage, "bin/busybox")}`;
    const files = (await $`find . -mindepth 1`.cwd(stage).quiet()).stdout.toString();
    const cpio = await $`cpio --quiet -o -H newc -R 0:0 < ${new Response(files)}`.cwd(stage).nothrow().quiet();
    if (cpio.exitCode !== 0) throw new Error(`cpio failed: ${cpio.stderr.toString().trim()}`);
    const tmp = `${out}.${process.pid}`;
    writeFileSync(tmp, Bun.gzipSync(new Uint8Array(cpio.stdout)));
    renameSync(tmp, out);
    // Images of this kernel built from an older init.sh or busybox are stale now.
    for (const f of readdirSync(dirname(out)))
      if (f.startsWith(`${k.release}-`) && f.endsWith(".cpio.gz") && join(dirname(out), f) !== out) rmSync(join(dirname(out), f), { force: true });
    return out;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
