/**
 * Which GnuTLS library a program will load. At an exec hold only the
 * executable and the loader are mapped, so the libraries a program links are
 * found from its DT_NEEDED entries and theirs (wget -> libgnutls;
 * git-remote-https -> libcurl-gnutls -> libgnutls), resolved in the standard
 * library directories of its root. Only programs that link GnuTLS pay for its
 * probes; one that dlopen()s it is not covered (its placeholders go out).
 */
import { statSync } from "node:fs";
import { neededLibraries } from "../../lib/elf-needed.ts";

const LIBGNUTLS = /^libgnutls\.so(\.[0-9.]+)?$/;
/** Levels of DT_NEEDED followed below the executable (git-remote-https needs 2). */
const DEPTH = 4;

const byFile = new Map<string, string[]>();

/** Root-relative paths of the libgnutls files in exe's DT_NEEDED closure ([] when none). */
export function gnutlsLinkedBy(root: string, exe: string, libDirs: readonly string[]): string[] {
  let key: string;
  try {
    const st = statSync(root + exe);
    key = `${root}\0${exe}\0${st.dev}:${st.ino}:${st.mtimeMs}`;
  } catch {
    return [];
  }
  const cached = byFile.get(key);
  if (cached) return cached;
  const found = new Set<string>();
  const seen = new Set<string>([exe]);
  let level = [exe];
  for (let depth = 0; depth < DEPTH && level.length > 0; depth++) {
    const next: string[] = [];
    for (const file of level) {
      let names: string[];
      try {
        names = neededLibraries(root + file);
      } catch {
        continue; // not ELF, or unreadable: nothing it links
      }
      for (const name of names) {
        const path = resolve(root, name, libDirs);
        if (!path || seen.has(path)) continue;
        seen.add(path);
        if (LIBGNUTLS.test(name)) found.add(path);
        else next.push(path);
      }
    }
    level = next;
  }
  const result = [...found];
  byFile.set(key, result);
  return result;
}

function resolve(root: string, name: string, libDirs: readonly string[]): string | null {
  if (name.includes("/")) return name;
  for (const dir of libDirs) {
    try {
      if (statSync(`${root}${dir}/${name}`).isFile()) return `${dir}/${name}`;
    } catch {
      // not in this directory
    }
  }
  return null;
}
