/**
 * The headers of a 64-bit little-endian ELF file (file header, program
 * headers, section headers with their names) and reads at a file offset:
 * what elf.ts, elf-sections.ts, elf-needed.ts and gopclntab.ts build on.
 */
import { readSync } from "node:fs";

export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;

/** length bytes of fd at offset; throws when the file ends first. */
export function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, b, done, length - done, offset + done);
    if (n <= 0) throw new Error(`short read at ${offset + done}`);
    done += n;
  }
  return b;
}

export interface ElfHeader {
  /** e_type: ET_EXEC, ET_DYN, ... */
  type: number;
  machine: number;
  phoff: number;
  phentsize: number;
  phnum: number;
  shoff: number;
  shentsize: number;
  shnum: number;
  shstrndx: number;
}

/**
 * The file header. A file that is not 64-bit little-endian ELF (or too short
 * to have a header) throws NotElf with `${path}: not a 64-bit little-endian ELF file`.
 */
export function readElfHeader(fd: number, path: string, NotElf: new (message: string) => Error = Error): ElfHeader {
  const eh = Buffer.alloc(64);
  if (readSync(fd, eh, 0, 64, 0) !== 64 || eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1)
    throw new NotElf(`${path}: not a 64-bit little-endian ELF file`);
  return {
    type: eh.readUInt16LE(0x10),
    machine: eh.readUInt16LE(0x12),
    phoff: Number(eh.readBigUInt64LE(0x20)),
    shoff: Number(eh.readBigUInt64LE(0x28)),
    phentsize: eh.readUInt16LE(0x36),
    phnum: eh.readUInt16LE(0x38),
    shentsize: eh.readUInt16LE(0x3a),
    shnum: eh.readUInt16LE(0x3c),
    shstrndx: eh.readUInt16LE(0x3e),
  };
}

export interface Segment {
  /** p_type: PT_LOAD, PT_DYNAMIC, ... */
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
  memsz: number;
}

/** The program headers, in file order. */
export function readSegments(fd: number, h: ElfHeader): Segment[] {
  const ph = readAt(fd, h.phoff, h.phentsize * h.phnum);
  const out: Segment[] = [];
  for (let i = 0; i < h.phnum; i++) {
    const o = i * h.phentsize;
    out.push({
      type: ph.readUInt32LE(o),
      offset: Number(ph.readBigUInt64LE(o + 8)),
      vaddr: Number(ph.readBigUInt64LE(o + 16)),
      filesz: Number(ph.readBigUInt64LE(o + 32)),
      memsz: Number(ph.readBigUInt64LE(o + 40)),
    });
  }
  return out;
}

export interface SectionHeader {
  /** "" when the file has no section name table */
  name: string;
  type: number;
  /** virtual address when loaded */
  addr: number;
  /** where its bytes are in the file */
  offset: number;
  size: number;
  /** sh_link: for a symbol table, the index of its string table */
  link: number;
  entsize: number;
}

/** The section headers, by index; [] for a file without them. */
export function readSections(fd: number, h: ElfHeader): SectionHeader[] {
  if (!h.shoff || !h.shnum) return [];
  const sh = readAt(fd, h.shoff, h.shentsize * h.shnum);
  const raw = [];
  for (let i = 0; i < h.shnum; i++) {
    const o = i * h.shentsize;
    raw.push({
      nameOff: sh.readUInt32LE(o),
      type: sh.readUInt32LE(o + 4),
      addr: Number(sh.readBigUInt64LE(o + 16)),
      offset: Number(sh.readBigUInt64LE(o + 24)),
      size: Number(sh.readBigUInt64LE(o + 32)),
      link: sh.readUInt32LE(o + 40),
      entsize: Number(sh.readBigUInt64LE(o + 56)),
    });
  }
  const strtab = raw[h.shstrndx];
  const names = strtab ? readAt(fd, strtab.offset, strtab.size) : Buffer.alloc(0);
  return raw.map(({ nameOff, ...s }) => {
    const end = names.indexOf(0, nameOff);
    return { name: names.toString("latin1", nameOff, end < 0 ? names.length : end), ...s };
  });
}
