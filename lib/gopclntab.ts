/**
 * Functions of a Go executable, found through its pclntab (the runtime's own
 * function table, which `go build -ldflags=-s -w` keeps: stack unwinding and
 * panics need it), and the Go version it was built with (.go.buildinfo).
 *
 * Covers the pclntab layouts of Go 1.18-1.19 (magic 0xfffffff0) and 1.20+
 * (0xfffffff1), PIE and non-PIE, 64-bit little-endian ELF. Older layouts are
 * reported as such, never guessed at.
 */
import { closeSync, openSync } from "node:fs";
import { PT_LOAD, readAt, readElfHeader, readSections, readSegments } from "./elf-headers.ts";

const MAGIC_118 = 0xfffffff0;
const MAGIC_120 = 0xfffffff1;

export interface GoFunction {
  name: string;
  /** link-time virtual address of the entry */
  addr: number;
  /** bytes up to the next function's entry (the end includes the linker's padding) */
  size: number;
  /** file offset of the entry: what a uprobe is attached at */
  offset: number;
}

export interface GoBinary {
  /** "go1.24.4"; null when .go.buildinfo is absent or in a pre-1.18 format */
  version: string | null;
  /** the named functions the binary has (absent names are not in the map) */
  functions: Map<string, GoFunction>;
  /** the bytes of a function, read from the file */
  code(f: GoFunction): Buffer;
}

export class NotGoError extends Error {}

/** Reads a Go executable's sections; throws NotGoError for files that are no Go ELF. */
export function readGoBinary(path: string, names: readonly string[]): GoBinary {
  const fd = openSync(path, "r");
  try {
    const h = readElfHeader(fd, path, NotGoError);
    if (!h.shoff || !h.shnum || h.shstrndx >= h.shnum) throw new NotGoError(`${path}: no section headers`);
    const segments = readSegments(fd, h).filter((s) => s.type === PT_LOAD);
    const sections = readSections(fd, h);
    // Non-PIE: .gopclntab; PIE (relocated data): .data.rel.ro.gopclntab.
    const pcln = sections.find((s) => s.name === ".gopclntab" || s.name === ".data.rel.ro.gopclntab");
    if (!pcln) throw new NotGoError(`${path}: no .gopclntab section`);
    const tab = readAt(fd, pcln.offset, pcln.size);
    const text = sections.find((s) => s.name === ".text");
    const functions = parsePclntab(tab, names, text?.addr ?? 0);
    const fileOffset = (addr: number) => {
      const seg = segments.find((g) => addr >= g.vaddr && addr < g.vaddr + g.filesz);
      if (!seg) throw new Error(`${path}: address 0x${addr.toString(16)} is in no loaded segment`);
      return addr - seg.vaddr + seg.offset;
    };
    const out = new Map<string, GoFunction>();
    for (const [name, f] of functions) out.set(name, { name, ...f, offset: fileOffset(f.addr) });
    const bi = sections.find((s) => s.name === ".go.buildinfo");
    const version = bi ? buildinfoVersion(readAt(fd, bi.offset, Math.min(bi.size, 4096))) : null;
    return {
      version,
      functions: out,
      code: (f) => {
        const fd2 = openSync(path, "r");
        try {
          return readAt(fd2, f.offset, f.size);
        } finally {
          closeSync(fd2);
        }
      },
    };
  } finally {
    closeSync(fd);
  }
}

/**
 * The named functions of a pclntab (Go 1.18+ layout). textFallback: the .text
 * address, for a header whose textStart the file leaves to a relocation (PIE).
 */
export function parsePclntab(tab: Buffer, names: readonly string[], textFallback: number): Map<string, { addr: number; size: number }> {
  if (tab.length < 72) throw new NotGoError("pclntab too short");
  const magic = tab.readUInt32LE(0);
  if (magic !== MAGIC_118 && magic !== MAGIC_120) {
    throw new NotGoError(`pclntab magic 0x${magic.toString(16)}: a Go version before 1.18 (or no Go binary)`);
  }
  if (tab[4] !== 0 || tab[5] !== 0 || tab[7] !== 8) throw new NotGoError("pclntab header is not that of a 64-bit Go binary");
  const word = (o: number) => Number(tab.readBigUInt64LE(o));
  const nfunc = word(8);
  let textStart = word(24);
  if (textStart === 0) textStart = textFallback;
  if (textStart === 0) throw new NotGoError("pclntab: no text start address");
  const funcnameOff = word(32);
  const pclnOff = word(64);
  if (pclnOff + (nfunc + 1) * 8 > tab.length) throw new NotGoError("pclntab: function table runs past the section");
  const wanted = new Set(names);
  const found = new Map<string, { addr: number; size: number }>();
  for (let i = 0; i < nfunc && found.size < wanted.size; i++) {
    const e = pclnOff + i * 8;
    const entry = tab.readUInt32LE(e);
    const funcOff = tab.readUInt32LE(e + 4);
    const next = tab.readUInt32LE(e + 8); // the table ends with the end of text
    const f = pclnOff + funcOff;
    if (f + 8 > tab.length) throw new NotGoError("pclntab: _func out of range");
    const nameOff = tab.readInt32LE(f + 4);
    const start = funcnameOff + nameOff;
    const end = tab.indexOf(0, start);
    if (start < 0 || end < 0) throw new NotGoError("pclntab: function name out of range");
    const name = tab.toString("latin1", start, end);
    if (wanted.has(name) && !found.has(name)) {
      if (tab.readUInt32LE(f) !== entry) throw new NotGoError(`pclntab: ${name}: entry mismatch`);
      found.set(name, { addr: textStart + entry, size: next - entry });
    }
  }
  return found;
}

const BUILDINFO_MAGIC = Buffer.from("\xff Go buildinf:", "latin1");

/** The Go version of a .go.buildinfo section (Go 1.18+ inline strings), or null. */
export function buildinfoVersion(b: Buffer): string | null {
  if (b.length < 33 || !b.subarray(0, 14).equals(BUILDINFO_MAGIC)) return null;
  if ((b[15]! & 2) === 0) return null; // pointer-based (before 1.18): not read
  let len = 0;
  let shift = 0;
  let o = 32;
  for (; o < b.length; o++) {
    len |= (b[o]! & 0x7f) << shift;
    shift += 7;
    if ((b[o]! & 0x80) === 0) break;
  }
  o++;
  if (len <= 0 || len > 64 || o + len > b.length) return null;
  const v = b.toString("latin1", o, o + len);
  return /^go\d+\.\d+/.test(v) ? v : null;
}

/** "go1.24.4" -> "1.24"; "go1.26rc1" -> "1.26"; null when unparsable. */
export function goMinor(version: string): string | null {
  return /^go(\d+\.\d+)/.exec(version)?.[1] ?? null;
}
