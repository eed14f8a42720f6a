/** lib/libc.ts: reading a string out of a process's memory (here this one's, through the same syscall). */
import { expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { processVmReadString } from "../../lib/libc.ts";

const enc = (s: string) => Buffer.from(s + "\0", "latin1");

test("reads up to the NUL, also across a page boundary", () => {
  const buf = Buffer.alloc(3 * 4096);
  const base = BigInt(ptr(buf));
  // Put the string's middle on the first page boundary inside buf.
  const boundary = Number(4096n - (base % 4096n));
  const path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
  const at = boundary - 10;
  enc(path).copy(buf, at);
  expect(processVmReadString(process.pid, base + BigInt(at), 256)).toBe(path);
  expect(processVmReadString(process.pid, base + BigInt(at), path.length + 1)).toBe(path);
});

test("null when there is no NUL within max, or nothing mapped there", () => {
  const buf = enc("libssl.so.3");
  expect(processVmReadString(process.pid, BigInt(ptr(buf)), 5)).toBeNull();
  expect(processVmReadString(process.pid, 0x1000n, 256)).toBeNull();
});
