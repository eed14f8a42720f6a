/**
 * Find where functions live in an ELF file, as the file offsets uprobes want.
 * Reads only the headers and symbol tables, so a large unstripped executable
 * (a 100 MB node) costs a few reads, not a full parse.
 */
import { closeSync, openSync } from "node:fs";
import { PT_LOAD, readAt, readElfHeader, readSections, readSegments } from "./elf-headers.ts";

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
const STT_FUNC = 2;
const STT_GNU_IFUNC = 10;

/**
 * File offsets of the named functions that the file defines (dynamic symbols
 * first, then the full symbol table). Names it does not define are absent.
 * Throws on files that are not 64-bit little-endian ELF.
 */
export function functionOffsets(path: string, names: readonly string[]): Map<string, number> {
  const fd = openSync(path, "r");
  try {
    const h = readElfHeader(fd, path);
    const segments = readSegments(fd, h).filter((s) => s.type === PT_LOAD);
    const sections = readSections(fd, h);

    const wanted = new Set(names);
    const found = new Map<string, number>();
    for (const type of [SHT_DYNSYM, SHT_SYMTAB]) {
      for (const s of sections) {
        if (found.size === wanted.size) break;
        if (s.type !== type || !s.entsize) continue;
        const strtab = sections[s.link];
        if (!strtab) throw new RangeError(`${path}: symbol table links to no section`);
        const syms = readAt(fd, s.offset, s.size);
        const strs = readAt(fd, strtab.offset, strtab.size);
        for (let o = 0; o + 24 <= syms.length; o += s.entsize) {
          const info = syms[o + 4]! & 0xf;
          const shndx = syms.readUInt16LE(o + 6);
          if ((info !== STT_FUNC && info !== STT_GNU_IFUNC) || shndx === 0) continue;
          const nameOff = syms.readUInt32LE(o);
          const end = strs.indexOf(0, nameOff);
          const name = strs.toString("latin1", nameOff, end);
          if (!wanted.has(name) || found.has(name)) continue;
          const value = Number(syms.readBigUInt64LE(o + 8));
          const seg = segments.find((g) => value >= g.vaddr && value < g.vaddr + g.memsz);
          if (seg) found.set(name, value - seg.vaddr + seg.offset);
        }
      }
    }
    return found;
  } finally {
    closeSync(fd);
  }
}
