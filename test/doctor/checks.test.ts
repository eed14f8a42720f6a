/**
 * `kloak doctor` against this machine's real kernel (see DESIGN.md, facts of
 * this machine): lockdown=integrity, no kprobes, uprobes/bpf_loop/ring buffers
 * present, CAP_SYS_RESOURCE absent. Scenarios that need a different machine
 * state (bpffs or securityfs missing, capabilities dropped) run the doctor in
 * a child process inside a private mount namespace or with a reduced
 * capability bounding set, so the host is never changed.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { mount } from "../../lib/libc.ts";
import { loadInMode, ObjectLoadError } from "../../src/dataplane/bpf-object.ts";
import { type Check, type DoctorResult, runChecks } from "../../src/doctor/checks.ts";
import { formatJson, formatTable } from "../../src/doctor/report.ts";

const ROOT = join(import.meta.dir, "../..");
const OBJECT = join(ROOT, "bpf/kloak.bpf.o");
const objectBytes = () => new Uint8Array(readFileSync(OBJECT));

function bpffsMounted(): boolean {
  const lines = readFileSync("/proc/self/mountinfo", "utf8").split("\n");
  return lines.some((l) => {
    const [left = "", right = ""] = l.split(" - ");
    return left.split(" ")[4] === "/sys/fs/bpf" && right.startsWith("bpf ");
  });
}

function byId(result: DoctorResult, id: string): Check {
  const c = result.checks.find((x) => x.id === id);
  if (!c) throw new Error(`no check ${id} in ${result.checks.map((x) => x.id).join(", ")}`);
  return c;
}

/** Run the doctor in a child process (optionally under a wrapper command) and parse its JSON. */
async function doctorIn(wrapper: string[], withObject = false): Promise<DoctorResult> {
  const script = `
    import { runChecks } from ${JSON.stringify(join(ROOT, "src/doctor/checks.ts"))};
    import { formatJson } from ${JSON.stringify(join(ROOT, "src/doctor/report.ts"))};
    const bytes = ${withObject} ? new Uint8Array(await Bun.file(${JSON.stringify(OBJECT)}).arrayBuffer()) : undefined;
    process.stdout.write(formatJson(await runChecks({ objectBytes: bytes })));
  `;
  const proc = Bun.spawn([...wrapper, process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`doctor child exited ${code}: ${err}`);
  return JSON.parse(out) as DoctorResult;
}

describe("runChecks on this machine", () => {
  let result: DoctorResult;

  beforeAll(async () => {
    if (!bpffsMounted()) mount("bpf", "/sys/fs/bpf", "bpf"); // mount -t bpf bpf /sys/fs/bpf
    result = await runChecks({ objectBytes: objectBytes() });
  });

  test("the node can run kloak, in stop mode", () => {
    const failed = result.checks.filter((c) => c.required && c.status === "fail");
    expect(failed).toEqual([]);
    expect(result.ok).toBe(true);
    expect(result.rewriteMode).toBe("stop");
  });

  test("every check has an id, a title and a detail; every non-ok check has a remedy", () => {
    const ids = result.checks.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const c of result.checks) {
      expect(c.title.length).toBeGreaterThan(0);
      expect(c.detail.length).toBeGreaterThan(0);
      if (c.status !== "ok") expect(c.remedy?.length ?? 0).toBeGreaterThan(0);
    }
    expect(ids).toEqual(
      expect.arrayContaining([
        "kernel",
        "libbpf",
        "btf",
        "helper.bpf_loop",
        "helper.bpf_send_signal",
        "helper.bpf_get_attach_cookie",
        "ringbuf",
        "bpffs",
        "uprobes",
        "kprobes",
        "cgroup2",
        "syscall-tracepoints",
        "uprobe-multi",
        "capabilities",
        "memlock",
        "lockdown",
        "rewrite-mode",
        "object",
      ]),
    );
  });

  test("lockdown is integrity, which rules out kernel mode", () => {
    const lockdown = byId(result, "lockdown");
    expect(lockdown.status).toBe("ok");
    expect(lockdown.detail).toStartWith("integrity");
    const mode = byId(result, "rewrite-mode");
    expect(mode.status).toBe("ok");
    expect(mode.required).toBe(true);
    expect(mode.detail).toBe("stop (lockdown=integrity denies bpf_probe_write_user)");
  });

  test("kprobes are unavailable, which is only a warning", () => {
    const k = byId(result, "kprobes");
    expect(k.status).toBe("warn");
    expect(k.required).toBe(false);
    expect(k.detail).toBe("unavailable (CONFIG_KPROBES off); not required");
  });

  test("helpers, ring buffer, BTF, uprobes, bpffs, libbpf and the kernel pass", () => {
    for (const id of [
      "kernel",
      "libbpf",
      "btf",
      "helper.bpf_loop",
      "helper.bpf_send_signal",
      "helper.bpf_get_attach_cookie",
      "ringbuf",
      "uprobes",
      "bpffs",
      "capabilities",
    ]) {
      const c = byId(result, id);
      expect({ id, status: c.status, required: c.required }).toEqual({ id, status: "ok", required: true });
    }
    expect(byId(result, "btf").detail).toBe("/sys/kernel/btf/vmlinux");
    expect(byId(result, "kernel").detail).toMatch(/^6\.18\.\S+: tested series \(stop mode\)$/);
  });

  test("CAP_SYS_RESOURCE is absent here and reported as harmless (memcg accounting)", () => {
    const m = byId(result, "memlock");
    expect(m.status).toBe("ok");
    expect(m.required).toBe(false);
    expect(m.detail).toContain("CAP_SYS_RESOURCE absent");
    expect(m.detail).toContain("memory cgroup");
  });

  test("cgroup v2 is never required; tracefs is not a check (no program goes through tracefs)", () => {
    expect(byId(result, "cgroup2").required).toBe(false);
    expect(["ok", "warn"]).toContain(byId(result, "cgroup2").status);
    expect(result.checks.find((c) => c.id === "tracefs")).toBeUndefined();
  });

  test("the syscall program attaches in the trial (raw tracepoint sys_enter) and is detached again", () => {
    expect(byId(result, "syscall-tracepoints")).toMatchObject({
      status: "ok",
      detail: "raw tracepoint sys_enter attaches (connection binding: write, writev, sendto, sendmsg; opens of TLS libraries)",
    });
  });

  test("the object loads in stop mode, with every program's verifier count", () => {
    const o = byId(result, "object");
    expect(o.status).toBe("ok");
    expect(o.detail).toStartWith("loaded in stop mode (kloak_tls_stop, kloak_tls_ret_stop)");
    // The largest is a write program: the C libraries' or Go's (bpf/golang.h), which share the write path.
    expect(o.detail).toMatch(/largest program kloak_(tls|go)_stop: [\d,]+ of 1,000,000 verifier instructions \(\d+x headroom\)/);
    expect(result.verifier.map((b) => b.program)).toContain("kloak_tls_stop");
    expect(result.verifier.map((b) => b.program)).not.toContain("kloak_tls_kernel");
    for (const b of result.verifier) {
      expect(b.insns).toBeGreaterThan(0);
      expect(b.limit).toBe(1_000_000);
    }
  });

  test("without object bytes there is no load check and no verdict on the mode", async () => {
    const r = await runChecks();
    expect(r.checks.some((c) => c.id === "object")).toBe(false);
    expect(r.rewriteMode).toBeNull();
    expect(byId(r, "rewrite-mode").status).toBe("warn");
    expect(r.ok).toBe(true);
  });

  test("a broken object is a failed required check, not a crash", async () => {
    const r = await runChecks({ objectBytes: new TextEncoder().encode("not an ELF file") });
    const o = byId(r, "object");
    expect(o.status).toBe("fail");
    expect(o.required).toBe(true);
    expect(o.detail).toContain("bpf_object__open_mem");
    expect(o.remedy).toBeTruthy();
    expect(r.ok).toBe(false);
  });

  test("the kernel-mode programs really are refused here: the error names the program, the mode and the verifier's tail", () => {
    let error: unknown;
    try {
      loadInMode(objectBytes(), "kernel", { scanCap: 65536 }, "single").obj.close();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ObjectLoadError);
    const e = error as ObjectLoadError;
    expect(e.mode).toBe("kernel");
    // The first kernel-mode write program libbpf loads: Go's (bpf/golang.h) or the C libraries'.
    expect(e.program).toMatch(/^kloak_(tls|go)_kernel$/);
    expect(e.tail.some((l) => l.includes("bpf_probe_write_user"))).toBe(true);
    expect(e.tail.at(-1)).toMatch(/^processed \d+ insns/);
    expect(e.message).toStartWith("cannot load the eBPF object in kernel mode on Linux 6.18");
    expect(e.message).toContain("what to do: ");
    expect(e.message).toContain("--rewrite-mode stop");
    expect(e.exitCode).toBe(1);
  });
});

describe("runChecks in other machine states (child processes)", () => {
  // util-linux provides both (scripts/setup.sh installs it); without them these
  // cases would not run, so that is a failure, not a skip.
  for (const tool of ["/usr/bin/unshare", "/usr/bin/setpriv"])
    if (!existsSync(tool)) throw new Error(`${tool} is missing: apt-get install util-linux (needed by the doctor tests)`);

  test("securityfs unmounted: the doctor mounts it and still reads integrity", async () => {
    // A private mount namespace: the umount is invisible to the host.
    const r = await doctorIn(["unshare", "-m", "sh", "-c", 'umount /sys/kernel/security 2>/dev/null; exec "$@"', "sh"], true);
    expect(byId(r, "lockdown").detail).toStartWith("integrity (mounted securityfs to read it");
    expect(r.rewriteMode).toBe("stop");
  });

  test("bpffs unmounted: a required failure with the mount command as remedy", async () => {
    const r = await doctorIn(["unshare", "-m", "sh", "-c", 'umount /sys/fs/bpf 2>/dev/null; exec "$@"', "sh"]);
    const b = byId(r, "bpffs");
    expect(b.status).toBe("fail");
    expect(b.remedy).toContain("mount -t bpf bpf /sys/fs/bpf");
    expect(r.ok).toBe(false);
  });

  test("tracefs unmounted: nothing fails (every tracepoint kloak uses is a raw one)", async () => {
    const r = await doctorIn([
      "unshare",
      "-m",
      "sh",
      "-c",
      'umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; exec "$@"',
      "sh",
    ], true);
    expect(byId(r, "syscall-tracepoints").status).toBe("ok");
    expect(byId(r, "object").status).toBe("ok");
    expect(r.ok).toBe(true);
  });

  test("not root: what only root can see is 'unverified', never 'unavailable'", async () => {
    const r = await doctorIn(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    const sys = byId(r, "syscall-tracepoints");
    expect(sys.status).toBe("warn");
    expect(sys.detail).toStartWith("not tried: the trial load did not run");
    const multi = byId(r, "uprobe-multi");
    expect(multi).toMatchObject({ status: "warn", detail: "unverified: trial loads need CAP_BPF or CAP_SYS_ADMIN" });
    expect(byId(r, "capabilities").status).toBe("fail");
    expect(r.ok).toBe(false);
  });

  test("CAP_SYS_PTRACE, CAP_KILL and CAP_SYS_ADMIN dropped: capabilities fail, nothing is loaded, no mode", async () => {
    const r = await doctorIn(["setpriv", "--bounding-set=-sys_ptrace,-kill,-sys_admin"], true);
    const caps = byId(r, "capabilities");
    expect(caps.status).toBe("fail");
    expect(caps.detail).toContain("CAP_SYS_PTRACE");
    expect(caps.detail).toContain("CAP_KILL");
    expect(caps.remedy).toBeTruthy();
    expect(r.rewriteMode).toBeNull();
    expect(byId(r, "object").detail).toBe("not tried: a required check above failed");
    expect(r.ok).toBe(false);
  });
});

describe("report formatting", () => {
  const synthetic: DoctorResult = {
    ok: false,
    rewriteMode: "stop",
    verifier: [{ program: "kloak_tls_stop", insns: 40350, limit: 1000000 }],
    checks: [
      { id: "kernel", title: "Kernel version", status: "ok", detail: "6.18.0", required: true },
      {
        id: "bpffs",
        title: "bpffs (/sys/fs/bpf)",
        status: "fail",
        detail: "not mounted",
        remedy: "mount -t bpf bpf /sys/fs/bpf",
        required: true,
      },
      {
        id: "kprobes",
        title: "kprobes",
        status: "warn",
        detail: "unavailable (CONFIG_KPROBES off); not required",
        remedy: "nothing to do",
        required: false,
      },
      {
        id: "object",
        title: "BPF object load",
        status: "fail",
        detail: "bpf_object__load: Invalid argument (errno 22)\nlibbpf: failed to load object 'kloak'",
        remedy: "see the log",
        required: true,
      },
    ],
  };

  test("table: header, aligned columns, remedies, verdict", () => {
    const text = formatTable(synthetic);
    const lines = text.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^CHECK\s+STATUS\s+DETAIL$/);
    const statusCol = lines[0]!.indexOf("STATUS");
    const detailCol = lines[0]!.indexOf("DETAIL");
    for (const [i, title, status, detail] of [
      [1, "Kernel version", "ok", "6.18.0"],
      [2, "bpffs (/sys/fs/bpf)", "FAIL", "not mounted"],
      [3, "kprobes", "WARN", "unavailable"],
      [4, "BPF object load", "FAIL", "bpf_object__load"],
    ] as const) {
      const line = lines[i]!;
      expect(line.startsWith(title)).toBe(true);
      expect(line.slice(statusCol, statusCol + status.length)).toBe(status);
      expect(line.slice(detailCol)).toStartWith(detail);
    }
    // A multi-line detail continues under the DETAIL column.
    expect(lines[5]).toBe(`${" ".repeat(detailCol)}libbpf: failed to load object 'kloak'`);
    expect(text).toContain("\nRemedies:\n");
    expect(text).toContain("bpffs (/sys/fs/bpf): mount -t bpf bpf /sys/fs/bpf");
    expect(text).toContain("kprobes: nothing to do");
    expect(text).not.toContain("Kernel version: ");
    expect(lines.at(-1)).toBe("kloak cannot run on this node: 2 required check(s) failed");
  });

  test("table: a passing result names the rewrite mode and has no remedies", () => {
    const passing: DoctorResult = { ok: true, rewriteMode: "stop", verifier: [], checks: [synthetic.checks[0]!] };
    const text = formatTable(passing);
    expect(text).not.toContain("Remedies:");
    expect(text.trimEnd().split("\n").at(-1)).toBe("kloak can run on this node (rewrite mode: stop)");
  });

  test("json: stable shape", () => {
    const parsed = JSON.parse(formatJson(synthetic));
    expect(Object.keys(parsed)).toEqual(["ok", "rewriteMode", "verifier", "checks"]);
    expect(parsed.ok).toBe(false);
    expect(parsed.rewriteMode).toBe("stop");
    expect(parsed.verifier).toEqual([{ program: "kloak_tls_stop", insns: 40350, limit: 1000000 }]);
    expect(parsed.checks).toHaveLength(4);
    for (const c of parsed.checks) {
      expect(Object.keys(c)).toEqual(["id", "title", "status", "required", "detail", "remedy"]);
    }
    expect(parsed.checks[0].remedy).toBeNull();
    expect(parsed.checks[1]).toEqual({
      id: "bpffs",
      title: "bpffs (/sys/fs/bpf)",
      status: "fail",
      required: true,
      detail: "not mounted",
      remedy: "mount -t bpf bpf /sys/fs/bpf",
    });
  });
});
