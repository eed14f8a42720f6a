/**
 * The DT_NEEDED entries of an ELF file (the shared libraries it names), read
 * from its dynamic segment: a few small reads, no section headers needed.
 */
import { closeSync, openSync, readSync } from "node:fs";

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_STRTAB = 5n;
const DT_STRSZ = 10n;

function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  if (readSync(fd, b, 0, length, offset) !== length) throw new Error(`short read at ${offset}`);
  return b;
}

/** Library names the file needs, in order; [] for a static file. Throws on files that are not 64-bit little-endian ELF. */
export function neededLibraries(path: string): string[] {
  const fd = openSync(path, "r");
  try {
    const eh = readAt(fd, 0, 64);
    if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF file`);
    const phoff = Number(eh.readBigUInt64LE(0x20));
    const phentsize = eh.readUInt16LE(0x36);
    const phnum = eh.readUInt16LE(0x38);
    const ph = readAt(fd, phoff, phentsize * phnum);
    const loads: { offset: number; vaddr: number; filesz: number }[] = [];
    let dynamic: { offset: number; size: number } | undefined;
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize;
      const type = ph.readUInt32LE(o);
      const seg = { offset: Number(ph.readBigUInt64LE(o + 8)), vaddr: Number(ph.readBigUInt64LE(o + 16)), filesz: Number(ph.readBigUInt64LE(o + 32)) };
      if (type === PT_LOAD) loads.push(seg);
      else if (type === PT_DYNAMIC) dynamic = { offset: seg.offset, size: seg.filesz };
    }
    if (!dynamic) return [];
    const dyn = readAt(fd, dynamic.offset, dynamic.size);
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
