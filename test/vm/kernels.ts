/**
 * The kernels of the test matrix, and how a Debian kernel gets onto this
 * machine without touching its apt state: apt-get runs with a private sources
 * list, lists and archive folder (all under the cache), downloads the
 * packages (signature-checked against Debian's keyring) and dpkg-deb extracts
 * them into the cache. Nothing is installed.
 */
import { $ } from "bun";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface KernelSpec {
  /** Short name used on the command line and in reports: "6.1", "6.12-rt", ... */
  id: string;
  /** Debian suite that carries it. */
  suite: string;
  /**
   * Packages that together hold boot/vmlinuz-* and its lib/modules. Pinned: a
   * cell boots the same kernel on every run until it is bumped here. From 7.x
   * Debian splits the image (linux-binary-unsigned-*) from its modules.
   */
  pkgs: readonly string[];
  /** Who runs it (for the docs table). */
  note: string;
  /** PREEMPT_RT flavour. */
  rt?: boolean;
}

/** Debian 7.x packages: the unsigned image, its modules and its config (base files). */
function split7(release: string): string[] {
  return [`linux-binary-unsigned-${release}`, `linux-modules-${release}`, `linux-base-${release}`];
}

/**
 * Debian's *generic* flavour: its 9p, virtio and overlay are modules the
 * initramfs can load (the cloud flavour has no 9p). 6.18 has no Debian
 * package left in the archive (trixie-backports went from 6.19 to 7.x and
 * keeps only the newest modules): this host runs 6.18, and its cell runs
 * natively (stop mode only: the host is locked down).
 */
export const KERNELS: readonly KernelSpec[] = [
  {
    id: "6.1",
    suite: "bookworm",
    pkgs: ["linux-image-6.1.0-50-amd64-unsigned"],
    note: "Debian 12; Amazon Linux 2023 class; no multi-uprobe links (< 6.6)",
  },
  { id: "6.12", suite: "trixie", pkgs: ["linux-image-6.12.117+deb13-amd64-unsigned"], note: "Debian 13, the current LTS" },
  { id: "7.2", suite: "sid", pkgs: split7("7.2.13+deb14-amd64"), note: "Debian sid" },
  { id: "7.3", suite: "trixie-backports", pkgs: split7("7.3.4+deb13-amd64"), note: "newest 7.x in Debian (trixie-backports)" },
  {
    id: "5.10",
    suite: "bullseye",
    pkgs: ["linux-image-5.10.0-32-amd64-unsigned"],
    note: "Debian 11: no bpf_loop (< 5.17), so kloak must refuse it cleanly",
  },
  {
    id: "6.12-rt",
    suite: "trixie",
    pkgs: ["linux-image-6.12.117+deb13-rt-amd64-unsigned"],
    note: "Debian 13, PREEMPT_RT",
    rt: true,
  },
];

export function kernelSpec(id: string): KernelSpec {
  const k = KERNELS.find((x) => x.id === id);
  if (!k) throw new Error(`unknown kernel "${id}"; the matrix has: ${KERNELS.map((x) => x.id).join(", ")}`);
  return k;
}

/** Kernels, initramfs images and apt's private state live here between runs. */
export function cacheDir(): string {
  return process.env.KLOAK_VM_CACHE || "/var/cache/kloak-vm";
}

export interface FetchedKernel {
  spec: KernelSpec;
  /** `uname -r` of the kernel. */
  release: string;
  vmlinuz: string;
  /** .../lib/modules/<release> */
  modules: string;
}

/** Where Debian's archive is (KLOAK_VM_MIRROR overrides). */
function mirror(): string {
  return process.env.KLOAK_VM_MIRROR || "http://deb.debian.org/debian";
}
/** apt's lists are refreshed at most this often (kernels are pinned; a stale list only matters when one is bumped). */
const LISTS_MAX_AGE_MS = 24 * 3600_000;

function aptOptions(suite: string): string[] {
  const state = join(cacheDir(), "apt", suite);
  for (const d of ["lists/partial", "archives/partial", "parts"]) mkdirSync(join(state, d), { recursive: true });
  const sources = join(state, "sources.list");
  writeFileSync(sources, `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror()} ${suite} main\n`);
  return [
    ["Dir::Etc::SourceList", sources],
    ["Dir::Etc::SourceParts", join(state, "parts")],
    ["Dir::State::Lists", join(state, "lists")],
    ["Dir::Cache", state],
    ["Dir::Cache::Archives", join(state, "archives")],
    ["Dir::State::status", "/dev/null"],
    ["APT::Get::List-Cleanup", "false"],
    ["Debug::NoLocking", "1"],
    ["APT::Sandbox::User", "root"],
  ].flatMap(([k, v]) => ["-o", `${k}=${v}`]);
}

/** The last apt run queued per suite: runs on one suite share its lists and archives folders. */
const aptQueue = new Map<string, Promise<unknown>>();

/**
 * apt-get on one suite, one run at a time: the matrix prepares its kernels
 * together, and two kernels of one suite (6.12 and 6.12-rt) updating the same
 * lists folder at once (apt's locking is off: the folders are ours) broke
 * each other's downloads ("Failed to stat .../lists/partial/...").
 */
function aptDownload(suite: string, pkgs: readonly string[], into: string): Promise<string[]> {
  const run = (aptQueue.get(suite) ?? Promise.resolve()).catch(() => {}).then(() => aptDownloadNow(suite, pkgs, into));
  aptQueue.set(suite, run);
  return run;
}

async function aptDownloadNow(suite: string, pkgs: readonly string[], into: string): Promise<string[]> {
  const opts = aptOptions(suite);
  const lists = join(cacheDir(), "apt", suite, "lists");
  const fresh = readdirSync(lists).some(
    (f) => f.includes("_Packages") && Date.now() - statSync(join(lists, f)).mtimeMs < LISTS_MAX_AGE_MS,
  );
  const update = async () => {
    const u = await $`apt-get ${opts} update -qq --error-on=any`.nothrow().quiet();
    if (u.exitCode !== 0) throw new Error(`apt-get update for ${suite} failed (is ${mirror()} reachable?):\n${u.stderr.toString().trim()}`);
  };
  if (!fresh) await update();
  rmSync(into, { recursive: true, force: true });
  mkdirSync(into, { recursive: true });
  const download = () => $`apt-get ${opts} download -qq ${pkgs}`.cwd(into).nothrow().quiet();
  let dl = await download();
  if (dl.exitCode !== 0 && fresh) {
    // Lists recent enough to keep can still be unusable (an update cut short left packages
    // apt cannot authenticate): fetch them again, once.
    await update();
    dl = await download();
  }
  if (dl.exitCode !== 0)
    throw new Error(`cannot download ${pkgs.join(", ")} from ${suite}:\n${dl.stderr.toString().trim()}`);
  return pkgs.map((pkg) => {
    const deb = readdirSync(into).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${into}`);
    return join(into, deb);
  });
}

/** The kernel, fetched and extracted on first use (a few hundred MB each). */
export async function fetchKernel(spec: KernelSpec): Promise<FetchedKernel> {
  const dir = join(cacheDir(), "kernels", spec.pkgs[0]!);
  if (!existsSync(join(dir, ".complete"))) {
    const tmp = `${dir}.partial-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    try {
      const debs = await aptDownload(spec.suite, spec.pkgs, `${tmp}.debs`);
      for (const deb of debs) {
        const x = await $`dpkg-deb -x ${deb} ${tmp}`.nothrow().quiet();
        if (x.exitCode !== 0) throw new Error(`dpkg-deb -x ${deb} failed: ${x.stderr.toString().trim()}`);
      }
      writeFileSync(join(tmp, ".complete"), `${spec.suite} ${spec.pkgs.join(" ")}\n`);
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
      rmSync(`${tmp}.debs`, { recursive: true, force: true });
    }
  }
  return locate(spec, dir);
}

/** boot/vmlinuz-<release> (6.x packages) or lib/modules/<release>/vmlinuz* (7.x), and the modules next to it. */
function locate(spec: KernelSpec, dir: string): FetchedKernel {
  const where = spec.pkgs.join(", ");
  for (const mods of [join(dir, "lib/modules"), join(dir, "usr/lib/modules")]) {
    if (!existsSync(mods)) continue;
    for (const release of readdirSync(mods)) {
      const modules = join(mods, release);
      const image = [join(dir, "boot", `vmlinuz-${release}`), join(modules, "vmlinuz"), join(modules, "vmlinuz.unsigned")].find(
        (p) => existsSync(p),
      );
      if (image) return { spec, release, vmlinuz: image, modules };
    }
  }
  throw new Error(`${where}: no kernel image with its lib/modules/<release> in ${dir}`);
}
