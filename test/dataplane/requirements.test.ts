/**
 * A node kloak cannot run on is refused before anything is loaded: one line,
 * exit code 1, no stack trace, nothing pinned. The missing pieces are made
 * real in a child process: a private mount namespace hides BTF or bpffs;
 * setpriv drops root. tracefs is not needed (every tracepoint is a raw one). (Kernels without bpf_loop and with
 * lockdown=confidentiality are cells of the VM matrix: bun run test:kernels.)
 *
 * And the load itself: a kernel-mode trial that fails falls back to stop mode
 * and says why; an object that loads in no mode is one error, not a trace.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { loadObject, ObjectLoadError, objectBytes } from "../../src/dataplane/bpf-object.ts";
import { NodeFacts, type Lockdown } from "../../src/dataplane/kernel-support.ts";
import { EnvironmentError } from "../../src/errors.ts";
import { KLOAK } from "../support/kloak.ts";

for (const tool of ["/usr/bin/unshare", "/usr/bin/setpriv"])
  if (!existsSync(tool)) throw new Error(`${tool} is missing: apt-get install util-linux (needed by these tests)`);

const pins = () => (existsSync("/sys/fs/bpf/kloak") ? readdirSync("/sys/fs/bpf/kloak").sort() : []);

/** kloak exec under a wrapper; returns exit code and stderr. */
async function execUnder(wrapper: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  const p = Bun.spawn([...wrapper, ...KLOAK, "exec", "--user", "root", "--secret", "API_KEY=abcdefghijkl", "--", "echo", "CMD RAN"], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, HOME: "/tmp" },
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stderr, stdout };
}

/** In a private mount namespace: the host never sees the mount. */
const hidden = (script: string) => ["unshare", "-m", "sh", "-c", `${script} && exec "$@"`, "sh"];

describe("kloak exec refuses a node that lacks a requirement, in one line, before loading anything", () => {
  const cases: [name: string, wrapper: string[], says: RegExp][] = [
    ["no BTF", hidden("mount -t tmpfs none /sys/kernel/btf"), /this kernel has no BTF \(\/sys\/kernel\/btf\/vmlinux missing\).*CONFIG_DEBUG_INFO_BTF=y/],
    ["no bpffs", hidden("mount -t tmpfs none /sys/fs/bpf"), /\/sys\/fs\/bpf holds tmpfs, not bpffs.*mount -t bpf bpf \/sys\/fs\/bpf/],
    [
      "not root",
      ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"],
      /not root; missing CAP_BPF or CAP_SYS_ADMIN .*run kloak as root/,
    ],
  ];
  for (const [name, wrapper, says] of cases) {
    test(name, async () => {
      const before = pins();
      const r = await execUnder(wrapper);
      expect(r.code).toBe(1);
      const lines = r.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith("kloak: this node cannot run kloak: ");
      expect(lines[0]).toMatch(says);
      expect(r.stderr).not.toContain("    at ");
      expect(r.stdout).not.toContain("CMD RAN");
      expect(pins()).toEqual(before);
    });
  }
});

test("without tracefs kloak exec runs: every tracepoint it uses is a raw one", async () => {
  const r = await execUnder(hidden("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; true"));
  expect(r.stderr).not.toContain("tracefs");
  expect(r.stderr).not.toContain("cannot attach");
  expect(r.stdout).toContain("CMD RAN");
  expect(r.code).toBe(0);
});

/** This host's facts, except the lockdown level: as if the node reported none (libbpf 1.1 misreads lockdown, too). */
class ClaimsNoLockdown extends NodeFacts {
  override lockdown = (): Lockdown => ({ level: "none", how: "test: as if unlocked" });
}

describe("loading in auto mode", () => {
  test("a kernel-mode trial that the kernel rejects falls back to stop mode and says why", async () => {
    const loaded = loadObject(await objectBytes(), { mode: "auto", scanCap: 65536, facts: new ClaimsNoLockdown() });
    try {
      expect(loaded.mode).toBe("stop");
      // The first kernel-mode write program libbpf loads names the failure: the C libraries' or Go's (bpf/golang.h).
      expect(loaded.reason).toMatch(
        /^kernel mode failed its trial load \(kloak_(tls|go)_kernel: program of this type cannot use helper bpf_probe_write_user#36\); stop mode instead$/,
      );
      expect(loaded.budget[0]!.program).toMatch(/^kloak_(tls|go)_stop$/);
    } finally {
      loaded.obj.close();
    }
  });

  test("an object that loads in no mode: one ObjectLoadError (exit code 1) naming both attempts", async () => {
    let error: unknown;
    try {
      loadObject(new TextEncoder().encode("not an ELF file"), { mode: "auto", scanCap: 65536, facts: new ClaimsNoLockdown() }).obj.close();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ObjectLoadError);
    expect(error).toBeInstanceOf(EnvironmentError);
    const message = (error as ObjectLoadError).message;
    expect(message).toStartWith("kernel mode failed its trial load (object: ");
    expect(message).toContain("and stop mode failed too: cannot load the eBPF object in stop mode on Linux ");
    expect(message).toContain("bpf_object__open_mem");
    expect(message).toContain("what to do: run `kloak doctor`");
  });

  test("--rewrite-mode kernel where the node denies it: a one-line refusal before loading", async () => {
    expect(() => loadObject(new Uint8Array(), { mode: "kernel", scanCap: 65536 })).toThrow(
      /^--rewrite-mode kernel is not possible here: lockdown=integrity denies bpf_probe_write_user; use --rewrite-mode stop/,
    );
  });
});
