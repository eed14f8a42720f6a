/**
 * lib/fd-closer.ts: fds handed over are closed by background threads; a
 * backlog starts more threads (slow closes then share the kernel's grace
 * periods), a few closes at a time keep one.
 */
import { expect, test } from "bun:test";
import { existsSync, openSync } from "node:fs";
import { FdCloser } from "../../lib/fd-closer.ts";

const open = (n: number) => Array.from({ length: n }, () => openSync("/dev/null", "r"));
const isOpen = (fd: number) => existsSync(`/proc/self/fd/${fd}`);

test("a few closes at a time: one thread, every fd closed", async () => {
  const closer = new FdCloser();
  for (let i = 0; i < 5; i++) {
    const fds = open(2);
    closer.close(fds);
    await closer.drain();
    for (const fd of fds) expect(isOpen(fd)).toBe(false);
  }
  expect(closer.threads).toBe(1);
  await closer.stop();
});

test("a backlog starts more threads, up to the limit; drain waits for every close", async () => {
  const closer = new FdCloser(3);
  const fds = open(60);
  for (const fd of fds) closer.close([fd]);
  expect(closer.threads).toBe(3);
  await closer.drain();
  for (const fd of fds) expect(isOpen(fd)).toBe(false);
  await closer.stop();
});
