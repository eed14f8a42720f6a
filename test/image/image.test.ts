/**
 * The image, built for real: scripts/image.ts lays out deploy/Containerfile's
 * context and buildah builds it (no registry: FROM scratch). Then the image's
 * own kloak runs inside the image's root filesystem (`buildah run --isolation
 * chroot`: no OCI runtime is needed, and no library of this machine is
 * visible), through the image's ENTRYPOINT.
 *
 * Needs buildah (scripts/setup.sh installs it) and root; fails, never skips,
 * without them.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { $ } from "bun";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildImage } from "../../scripts/image.ts";

const ROOT = join(import.meta.dir, "../..");
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
const TAG = `localhost/kloak-image-test:${process.pid}`;
const work = mkdtempSync(join(tmpdir(), "kloak-image-"));
const archive = join(work, "kloak.tar");
const containers: string[] = [];
let imageId = "";
let buildSeconds = 0;
let buildah = "";

type Obj = Record<string, any>;

beforeAll(async () => {
  const b = Bun.which("buildah");
  if (!b) throw new Error("buildah is not installed: test/image builds the image with it. Run scripts/setup.sh (as root): it installs Debian's buildah.");
  buildah = b;
  if (process.getuid?.() !== 0) throw new Error("test/image runs buildah as root (rootless storage is not set up here); run as root");
  const t0 = performance.now();
  imageId = await buildImage({ tag: TAG, context: join(work, "context"), archive, quiet: true });
  buildSeconds = (performance.now() - t0) / 1000;
}, 180_000);

afterAll(async () => {
  for (const c of containers) await $`${buildah} rm ${c}`.quiet().nothrow();
  await $`${buildah} rmi -f ${TAG}`.quiet().nothrow();
  rmSync(work, { recursive: true, force: true });
});

async function inspect(): Promise<Obj> {
  return JSON.parse((await $`${buildah} inspect --type image ${TAG}`.quiet()).stdout.toString()) as Obj;
}

/** A working container of the image; its root filesystem, mounted. */
async function container(): Promise<{ name: string; rootfs: string }> {
  const name = (await $`${buildah} from ${TAG}`.quiet()).stdout.toString().trim();
  containers.push(name);
  const rootfs = (await $`${buildah} mount ${name}`.quiet()).stdout.toString().trim();
  return { name, rootfs };
}

/** Runs argv inside the container's root filesystem (chroot isolation: the image's files only). */
async function run(name: string, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = await $`${buildah} run --isolation chroot ${name} -- ${argv}`.quiet().nothrow();
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

async function entrypoint(): Promise<string[]> {
  return (await inspect()).OCIv1.config.Entrypoint as string[];
}

describe("bun run image (scripts/image.ts + deploy/Containerfile)", () => {
  test("builds, and says how big and how long", async () => {
    expect(imageId).toMatch(/^[0-9a-f]{64}$/);
    const size = Number((await $`${buildah} images --format {{.Size}} --noheading ${TAG}`.quiet().nothrow()).stdout.toString().trim().split(" ")[0]);
    const layers = (await inspect()).OCIv1.rootfs.diff_ids.length;
    console.log(`image ${TAG}: ${imageId.slice(0, 12)}, ${size || "?"} MB, ${layers} layer(s), built in ${buildSeconds.toFixed(1)} s`);
    expect(layers).toBe(1);
  });

  test("runs `kloak agent` as root by default, and is labelled", async () => {
    const cfg = (await inspect()).OCIv1.config as Obj;
    expect(cfg.Entrypoint).toEqual(["/usr/local/bin/kloak"]);
    expect(cfg.Cmd).toEqual(["agent"]);
    expect(cfg.User).toBe("0");
    expect(cfg.Labels["org.opencontainers.image.source"]).toMatch(/^https:\/\//);
    expect(cfg.Labels["org.opencontainers.image.licenses"]).toBe("Apache-2.0");
  });

  test("holds kloak, its libraries with their copyright files, and nothing else (no shell)", async () => {
    const { rootfs } = await container();
    const files = (await $`find . -type f`.cwd(rootfs).quiet()).stdout.toString().trim().split("\n").map((f) => f.slice(1)).sort();
    const libs = files.filter((f) => /^\/usr\/lib(64)?\//.test(f)).map((f) => f.split("/").at(-1)).sort();
    expect(libs).toEqual(["ld-linux-x86-64.so.2", "libbpf.so.1", "libc.so.6", "libdl.so.2", "libelf.so.1", "libm.so.6", "libpthread.so.0", "libz.so.1"]);
    const packages = readFileSync(join(rootfs, "usr/share/kloak/packages"), "utf8").trim().split("\n").map((l) => l.split(" ")[0]!.replace(/:.*$/, ""));
    expect(packages).toEqual(["libbpf1", "libc6", "libelf1", "zlib1g"]);
    expect(files.filter((f) => !/^\/usr\/lib(64)?\//.test(f))).toEqual([
      "/etc/group",
      "/etc/passwd",
      "/usr/local/bin/kloak",
      ...packages.map((p) => `/usr/share/doc/${p}/copyright`),
      "/usr/share/kloak/packages",
    ]);
    expect(readFileSync(join(rootfs, "usr/local/bin/kloak")).equals(readFileSync(join(ROOT, "dist/kloak")))).toBe(true);
    for (const sh of ["bin/sh", "usr/bin/sh", "bin/bash"]) expect({ sh, present: existsSync(join(rootfs, sh)) }).toEqual({ sh, present: false });
  });

  test("`kloak version` from the entrypoint: this version and commit, libbpf loaded from the image", async () => {
    const { name } = await container();
    const r = await run(name, [...(await entrypoint()), "version", "--json"]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    const v = JSON.parse(r.stdout) as Obj;
    const commit = (await $`git -C ${ROOT} rev-parse --short=12 HEAD`.quiet()).stdout.toString().trim();
    expect(v.version).toBe(pkg.version);
    expect(v.commit).toMatch(new RegExp(`^${commit}(-dirty)?$`));
    expect(v.libbpf).toMatch(/^1\.\d+(\.\d+)?$/);
    const host = JSON.parse((await $`${join(ROOT, "dist/kloak")} version --json`.quiet()).stdout.toString()) as Obj;
    expect(v.bpfObject).toBe(host.bpfObject);
  });

  test("`kloak doctor --help` prints its usage; `kloak doctor` finds libbpf in the image", async () => {
    const { name } = await container();
    const ep = await entrypoint();
    const help = await run(name, [...ep, "doctor", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("usage: kloak doctor");
    expect(help.stdout).toContain("Checks whether this node can run kloak");
    // The verdict depends on this machine's kernel and the dropped capabilities; the libbpf check does not.
    const doctor = await run(name, [...ep, "doctor", "--json"]);
    const checks = (JSON.parse(doctor.stdout) as Obj).checks as Obj[];
    expect(checks.find((c) => c.id === "libbpf")).toMatchObject({ status: "ok", detail: expect.stringMatching(/^libbpf\.so\.1 version 1\.\d+/) });
  });

  test("the run sees only the image: without its libbpf.so.1, kloak says libbpf is missing", async () => {
    const { name, rootfs } = await container();
    rmSync(join(rootfs, "usr/lib/x86_64-linux-gnu/libbpf.so.1"));
    const r = await run(name, ["/usr/local/bin/kloak", "version", "--json"]);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as Obj).libbpf).toMatch(/^not found .*libbpf\.so\.1.*install libbpf1$/);
  });

  test("is reproducible: the same tree builds the same image id (through the CLI the docs use)", async () => {
    const context = join(work, "context-again");
    const r = await $`bun ${join(ROOT, "scripts/image.ts")} --no-build --tag ${TAG}-again --context ${context}`.cwd(ROOT).quiet().nothrow();
    await $`${buildah} rmi ${TAG}-again`.quiet().nothrow();
    expect({ code: r.exitCode, stderr: r.stderr.toString() }).toEqual({ code: 0, stderr: "" });
    expect(r.stdout.toString()).toContain(`built ${TAG}-again (${imageId.slice(0, 12)}) with buildah`);
    expect(readFileSync(join(context, "image-id"), "utf8").trim()).toBe(`sha256:${imageId}`);
  }, 120_000);

  test("--archive writes a docker-archive tagged for `kind load image-archive` / `k3d image import`", async () => {
    const manifest = JSON.parse((await $`tar -xOf ${archive} manifest.json`.quiet()).stdout.toString()) as Obj[];
    expect(manifest).toHaveLength(1);
    expect(manifest[0]!.RepoTags).toEqual([TAG]);
  });
});
