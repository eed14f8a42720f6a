import { expect, test } from "bun:test";
import { functionOffsets } from "../../lib/elf.ts";

/** readelf's view: symbol value converted through the PT_LOAD segment that holds it. */
function readelfOffset(path: string, name: string): number | undefined {
  const syms = Bun.spawnSync(["readelf", "-W", "--dyn-syms", path]).stdout.toString();
  const line = syms.split("\n").find((l) => l.trim().split(/\s+/)[7]?.replace(/@.*/, "") === name && / FUNC /.test(l) && !/ UND /.test(l));
  if (!line) return undefined;
  const value = parseInt(line.trim().split(/\s+/)[1]!, 16);
  const segs = Bun.spawnSync(["readelf", "-W", "-l", path]).stdout.toString();
  for (const l of segs.split("\n")) {
    const f = l.trim().split(/\s+/);
    if (f[0] !== "LOAD") continue;
    const [off, vaddr, memsz] = [parseInt(f[1]!, 16), parseInt(f[2]!, 16), parseInt(f[5]!, 16)];
    if (value >= vaddr && value < vaddr + memsz) return value - vaddr + off;
  }
}

test("finds SSL_write and SSL_write_ex in libssl and in node, as readelf does", () => {
  for (const path of ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/bin/node"]) {
    const got = functionOffsets(path, ["SSL_write", "SSL_write_ex", "no_such_function"]);
    expect(got.get("SSL_write")).toBe(readelfOffset(path, "SSL_write")!);
    expect(got.get("SSL_write_ex")).toBe(readelfOffset(path, "SSL_write_ex")!);
    expect(got.has("no_such_function")).toBe(false);
  }
});

test("a file that is not ELF is refused", () => {
  expect(() => functionOffsets("/etc/hostname", ["x"])).toThrow(/not a 64-bit little-endian ELF/);
});
