/**
 * Find where functions live in an ELF file, as the file offsets uprobes want.
 * Reads only the headers and symbol tables, so a large unstripped executable
 * (a 100 MB node) costs a few reads, not a full parse.
 */
import { closeSync, openSync, readSync } from "node:fs";

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
const PT_LOAD = 1;
const STT_FUNC = 2;
const STT_GNU_IFUNC = 10;

function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const n = readSync(fd, b, 0, length, offset);
  if (n !== length) throw new Error(`short read at ${offset}`);
  return b;
}

/**
 * File offsets of the named functions that the file defines (dynamic symbols
 * first, then the full symbol table). Names it does not define are absent.
 * Throws on files that are not 64-bit little-endian ELF.
 */
export function functionOffsets(path: string, names: readonly string[]): Map<string, number> {
  const fd = openSync(path, "r");
  try {
    const eh = Buffer.alloc(64);
    if (readSync(fd, eh, 0, 64, 0) !== 64 || eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF file`);
    const phoff = Number(eh.readBigUInt64LE(0x20));
    const shoff = Number(eh.readBigUInt64LE(0x28));
    const phentsize = eh.readUInt16LE(0x36);
    const phnum = eh.readUInt16LE(0x38);
    const shentsize = eh.readUInt16LE(0x3a);
    const shnum = eh.readUInt16LE(0x3c);

    const segments: { vaddr: number; memsz: number; offset: number }[] = [];
    const ph = readAt(fd, phoff, phentsize * phnum);
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize;
      if (ph.readUInt32LE(o) !== PT_LOAD) continue;
      segments.push({
        offset: Number(ph.readBigUInt64LE(o + 8)),
        vaddr: Number(ph.readBigUInt64LE(o + 16)),
        memsz: Number(ph.readBigUInt64LE(o + 40)),
      });
    }
    const sh = shoff && shnum ? readAt(fd, shoff, shentsize * shnum) : Buffer.alloc(0);
    const section = (i: number) => {
      const o = i * shentsize;
      return {
        type: sh.readUInt32LE(o + 4),
        offset: Number(sh.readBigUInt64LE(o + 24)),
        size: Number(sh.readBigUInt64LE(o + 32)),
        link: sh.readUInt32LE(o + 40),
        entsize: Number(sh.readBigUInt64LE(o + 56)),
      };
    };

    const wanted = new Set(names);
    const found = new Map<string, number>();
    for (const type of [SHT_DYNSYM, SHT_SYMTAB]) {
      for (let i = 0; i < shnum && found.size < wanted.size; i++) {
        const s = section(i);
        if (s.type !== type || !s.entsize) continue;
        const strtab = section(s.link);
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
