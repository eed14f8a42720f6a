/**
 * The VM harness fails loudly where a cell cannot run (the matrix itself,
 * `bun run test:kernels`, boots the kernels), and its cells cover every
 * kernel the product calls tested.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TESTED_KERNELS } from "../../src/dataplane/kernel-support.ts";
import { fetchKernel, kernelSpec, KERNELS } from "./kernels.ts";
import { CELLS } from "./matrix.ts";
import { runVm } from "./qemu.ts";

const saved = { ...process.env };
afterEach(() => {
  for (const k of ["KLOAK_QEMU", "KLOAK_VM_CACHE", "KLOAK_VM_MIRROR"]) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

describe("a cell that cannot run is an error, never a pass", () => {
  test("no qemu: runVm says what to install", async () => {
    process.env.KLOAK_QEMU = "/nonexistent/qemu-system-x86_64";
    await expect(
      runVm({ kernel: kernelSpec("6.1"), lockdown: "none", script: "true", cwd: "/", timeoutMs: 1000 }),
    ).rejects.toThrow("/nonexistent/qemu-system-x86_64 not found: apt-get install qemu-system-x86");
  });

  test("no route to Debian's archive, nothing cached: fetchKernel says which suite and which mirror", async () => {
    const cache = mkdtempSync(join(tmpdir(), "kloak-vm-cache-"));
    try {
      process.env.KLOAK_VM_CACHE = cache;
      process.env.KLOAK_VM_MIRROR = "http://127.0.0.1:9/debian"; // discard port: connection refused
      await expect(fetchKernel(kernelSpec("6.1"))).rejects.toThrow(
        "apt-get update for bookworm failed (is http://127.0.0.1:9/debian reachable?)",
      );
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  });
});

describe("the matrix", () => {
  test("every tested kernel series has a cell in each mode the docs name", () => {
    for (const t of TESTED_KERNELS)
      for (const mode of t.modes)
        expect({ series: t.series, mode, cell: CELLS.some((c) => c.series === t.series && c.expect === mode) }).toEqual({
          series: t.series,
          mode,
          cell: true,
        });
  });

  test("every VM cell names a kernel of the list; the refused cells include no bpf_loop and lockdown=confidentiality", () => {
    for (const c of CELLS) if (c.kernel !== "host") expect(KERNELS.map((k) => k.id)).toContain(c.kernel);
    const refused = CELLS.filter((c) => c.expect === "refused");
    expect(refused.some((c) => c.lockdown === "confidentiality")).toBe(true);
    expect(refused.some((c) => c.kernel === "5.10")).toBe(true);
    expect(CELLS.some((c) => kernelSpec(c.kernel === "host" ? "6.12-rt" : c.kernel).rt && c.threads)).toBe(true);
  });
});
