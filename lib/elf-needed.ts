/**
 * The DT_NEEDED entries of an ELF file (the shared libraries it names), read
 * from its dynamic segment: a few small reads, no section headers needed.
 */
import { closeSync, openSync } from "node:fs";
import { PT_DYNAMIC, PT_LOAD, readAt, readElfHeader, readSegments } from "./elf-headers.ts";

const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_STRTAB = 5n;
const DT_STRSZ = 10n;

/** Library names the file needs, in order; [] for a static file. Throws on files that are not 64-bit little-endian ELF. */
export function neededLibraries(path: string): string[] {
  const fd = openSync(path, "r");
  try {
    const segments = readSegments(fd, readElfHeader(fd, path));
    const loads = segments.filter((s) => s.type === PT_LOAD);
    const dynamic = segments.findLast((s) => s.type === PT_DYNAMIC);
    if (!dynamic) return [];
    const dyn = readAt(fd, dynamic.offset, dynamic.filesz);
    const needed: number[] = [];
    let strtab = -1;
    let strsz = 0;
    for (let o = 0; o + 16 <= dyn.length; o += 16) {
      const tag = dyn.readBigInt64LE(o);
      const val = dyn.readBigUInt64LE(o + 8);
      if (tag === DT_NULL) break;
      if (tag === DT_NEEDED) needed.push(Number(val));
      else if (tag === DT_STRTAB) strtab = Number(val);
      else if (tag === DT_STRSZ) strsz = Number(val);
    }
    const seg = loads.find((s) => strtab >= s.vaddr && strtab < s.vaddr + s.filesz);
    if (!seg || strsz === 0 || needed.length === 0) return [];
    const strs = readAt(fd, strtab - seg.vaddr + seg.offset, Math.min(strsz, seg.vaddr + seg.filesz - strtab));
    return needed.map((off) => strs.toString("latin1", off, strs.indexOf(0, off)));
  } finally {
    closeSync(fd);
  }
}
