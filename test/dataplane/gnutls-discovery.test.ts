/**
 * GnuTLS is attached for the programs that link it, found from DT_NEEDED
 * before the process maps anything (at its exec hold): real binaries of this
 * machine.
 */
import { expect, test } from "bun:test";
import { statSync } from "node:fs";
import { neededLibraries } from "../../lib/elf-needed.ts";
import { gnutlsLinkedBy } from "../../src/dataplane/gnutls-discovery.ts";

const DIRS = ["/lib", "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];
const ino = (paths: string[]) => new Set(paths.map((p) => statSync(p).ino));
const LIBGNUTLS = ino(["/usr/lib/x86_64-linux-gnu/libgnutls.so.30"]);

test("DT_NEEDED of a real executable", () => {
  expect(neededLibraries("/usr/bin/wget")).toContain("libgnutls.so.30");
  expect(neededLibraries("/usr/bin/wget")).toContain("libc.so.6");
});

test("wget links libgnutls directly, git-remote-https through libcurl-gnutls", () => {
  expect(ino(gnutlsLinkedBy("", "/usr/bin/wget", DIRS))).toEqual(LIBGNUTLS);
  expect(neededLibraries("/usr/lib/git-core/git-remote-https")).not.toContain("libgnutls.so.30");
  expect(ino(gnutlsLinkedBy("", "/usr/lib/git-core/git-remote-https", DIRS))).toEqual(LIBGNUTLS);
});

test("programs that do not link GnuTLS, and files that are not ELF, pay nothing", () => {
  expect(gnutlsLinkedBy("", "/usr/bin/git", DIRS)).toEqual([]);
  expect(gnutlsLinkedBy("", "/etc/passwd", DIRS)).toEqual([]);
  expect(gnutlsLinkedBy("", "/no/such/file", DIRS)).toEqual([]);
});
