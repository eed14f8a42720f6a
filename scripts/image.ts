/**
 * `bun run image`: builds the kloak image from deploy/Containerfile without
 * pulling anything (no registry needs to be reachable).
 *
 * The Containerfile is `FROM scratch` plus one directory, so this script
 * prepares that directory: dist/kloak (rebuilt by `bun run build` unless
 * --no-build) and exactly the shared objects it needs at run time, taken from
 * this machine — what `ldd dist/kloak` lists (glibc) plus libbpf.so.1, which
 * kloak dlopen()s at run time (lib/libbpf.ts) and ldd cannot see, and
 * libbpf's own dependencies (libelf, libz). Each library's Debian copyright
 * file and a package list go with it. Build on Debian 12 (scripts/setup.sh)
 * for the image the docs describe: the libraries are the build machine's.
 *
 * The build is reproducible: layer file times and the image's creation time
 * are the commit time of HEAD (buildah --timestamp), the rootfs is laid out
 * in sorted order, and nothing else varies, so the same tree gives the same
 * image id.
 *
 *   bun scripts/image.ts [--tag NAME] [--archive FILE] [--no-build] [--context DIR]
 *
 * --archive writes a docker-archive (for `kind load image-archive`,
 * `k3d image import`, `minikube image load`, `docker load`).
 */
import { $ } from "bun";
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";

const root = join(import.meta.dir, "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };

/** The dynamic objects ldd resolves for `file`: absolute paths as the loader finds them. */
export async function lddPaths(file: string): Promise<string[]> {
  const out = await $`ldd ${file}`.quiet().nothrow();
  if (out.exitCode !== 0) throw new Error(`ldd ${file} exited ${out.exitCode}: ${out.stderr.toString().trim()}`);
  const paths: string[] = [];
  for (const line of out.stdout.toString().split("\n")) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m) paths.push(m[1]!);
    else if (/not found/.test(line)) throw new Error(`ldd ${file}: ${line.trim()}`);
  }
  return paths;
}

/** Where the loader finds libbpf.so.1 on this machine (as dlopen would: the ld.so cache). */
export async function findLibbpf(): Promise<string> {
  const out = (await $`ldconfig -p`.quiet().nothrow()).stdout.toString();
  const m = /^\s*libbpf\.so\.1 \([^)]*x86-64[^)]*\) => (\S+)$/m.exec(out) ?? /^\s*libbpf\.so\.1 \([^)]*\) => (\S+)$/m.exec(out);
  if (!m) throw new Error("libbpf.so.1 is not installed: apt-get install libbpf1 (scripts/setup.sh does)");
  return m[1]!;
}

/** The Debian package owning `path` (dpkg knows the merged-/usr name or the /lib one). */
async function owner(path: string): Promise<string> {
  for (const p of [path, realpathSync(path), realpathSync(dirname(path)) + "/" + basename(path)]) {
    const out = await $`dpkg-query -S ${p}`.quiet().nothrow();
    if (out.exitCode === 0) return out.stdout.toString().split(":")[0]!.trim();
  }
  throw new Error(`no Debian package owns ${path}; build the image on Debian 12 (scripts/setup.sh)`);
}

/**
 * Lays out the image's root filesystem in `rootfs`: the executable, its
 * libraries at the paths the loader looks in (the machine's own layout, with
 * its top-level symlinks such as /lib -> usr/lib), empty mount points, and a
 * /tmp for when no volume is mounted there.
 */
export async function assembleRootfs(rootfs: string, kloak: string): Promise<{ libraries: string[]; packages: string[] }> {
  rmSync(rootfs, { recursive: true, force: true });
  mkdirSync(rootfs, { recursive: true });
  const libbpf = await findLibbpf();
  const libs = [...new Set([...(await lddPaths(kloak)), libbpf, ...(await lddPaths(libbpf))])].sort();

  // Merged /usr: /lib and /lib64 are symlinks into /usr on Debian 12; keep them so.
  for (const top of ["/lib", "/lib64"]) {
    if (existsSync(top) && lstatSync(top).isSymbolicLink()) symlinkSync(readlinkSync(top), join(rootfs, top));
  }
  const packages = new Map<string, string>();
  for (const lib of libs) {
    const dest = join(rootfs, realpathSync(dirname(lib)), basename(lib));
    mkdirSync(dirname(dest), { recursive: true });
    copyFileSync(realpathSync(lib), dest); // the content, under the name the loader asks for
    chmodSync(dest, 0o755);
    const p = await owner(lib);
    const version = (await $`dpkg-query -W -f=${"${Version}"} ${p}`.quiet()).stdout.toString().trim();
    packages.set(p, version);
  }
  // Licences of what is copied in (glibc, libbpf, libelf, zlib are LGPL/BSD/zlib-licensed).
  for (const p of [...packages.keys()].sort()) {
    const name = p.replace(/:.*$/, "");
    const copyright = `/usr/share/doc/${name}/copyright`;
    if (!existsSync(copyright)) throw new Error(`${copyright} is missing; the image must carry the licence of ${name}`);
    mkdirSync(join(rootfs, "usr/share/doc", name), { recursive: true });
    copyFileSync(copyright, join(rootfs, "usr/share/doc", name, "copyright"));
  }
  mkdirSync(join(rootfs, "usr/share/kloak"), { recursive: true });
  writeFileSync(
    join(rootfs, "usr/share/kloak/packages"),
    [...packages].sort(([a], [b]) => a.localeCompare(b)).map(([p, v]) => `${p} ${v}\n`).join(""),
  );

  mkdirSync(join(rootfs, "usr/local/bin"), { recursive: true });
  copyFileSync(kloak, join(rootfs, "usr/local/bin/kloak"));
  chmodSync(join(rootfs, "usr/local/bin/kloak"), 0o755);
  // Mount points the runtime fills (it would create them, but not on a read-only root with every runtime).
  for (const d of ["proc", "sys", "dev", "etc", "run"]) mkdirSync(join(rootfs, d), { recursive: true });
  // The DaemonSet mounts an emptyDir on /tmp; `podman run` and `kloak doctor` elsewhere want one too.
  mkdirSync(join(rootfs, "tmp"));
  chmodSync(join(rootfs, "tmp"), 0o1777);
  // root only: the agent runs as uid 0, and some libc calls look the user up.
  writeFileSync(join(rootfs, "etc/passwd"), "root:x:0:0:root:/root:/usr/local/bin/kloak\n");
  writeFileSync(join(rootfs, "etc/group"), "root:x:0:\n");
  return { libraries: libs, packages: [...packages.keys()].sort() };
}

/** buildah if installed, else podman (both take the same build flags here). */
export function builder(): string {
  const b = Bun.which("buildah") ?? Bun.which("podman");
  if (!b) throw new Error("neither buildah nor podman is installed: apt-get install buildah (scripts/setup.sh does)");
  return b;
}

export interface ImageOptions {
  tag: string;
  build?: boolean;
  context?: string;
  archive?: string;
  quiet?: boolean;
}

/** Builds the image; returns its id. */
export async function buildImage(o: ImageOptions): Promise<string> {
  const say = (s: string) => o.quiet || console.log(s);
  if (o.build !== false) await $`bun run build`.cwd(root).quiet();
  const kloak = join(root, "dist/kloak");
  if (!existsSync(kloak)) throw new Error("dist/kloak is missing: run `bun run build` first (or leave out --no-build)");
  const context = o.context ?? join(root, "dist/image");
  const { libraries } = await assembleRootfs(join(context, "rootfs"), kloak);
  say(`rootfs: dist/kloak + ${libraries.map((l) => basename(l)).join(", ")}`);

  const epoch = (await $`git -C ${root} log -1 --format=%ct`.quiet().nothrow()).stdout.toString().trim() || "0";
  const tool = builder();
  const iidfile = join(context, "image-id");
  await $`${tool} build --timestamp ${epoch} --iidfile ${iidfile} -f ${join(root, "deploy/Containerfile")} -t ${o.tag} ${context}`.quiet();
  const imageId = readFileSync(iidfile, "utf8").trim().replace(/^sha256:/, "");
  say(`built ${o.tag} (${imageId.slice(0, 12)}) with ${basename(tool)}`);
  if (o.archive) {
    rmSync(o.archive, { force: true });
    await $`${tool} push ${o.tag} docker-archive:${o.archive}:${o.tag}`.quiet();
    say(`wrote ${o.archive}`);
  }
  return imageId;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      tag: { type: "string", default: `ghcr.io/getkloak/kloak:${pkg.version}` },
      archive: { type: "string" },
      context: { type: "string" },
      "no-build": { type: "boolean" },
    },
    strict: true,
  });
  try {
    await buildImage({ tag: values.tag!, archive: values.archive, context: values.context, build: !values["no-build"] });
  } catch (e) {
    const err = e as Error & { stderr?: Buffer };
    console.error(`image: ${err.message}${err.stderr ? `\n${err.stderr.toString().trim()}` : ""}`);
    process.exit(1);
  }
}
