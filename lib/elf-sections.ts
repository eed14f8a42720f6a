/**
 * Section headers of a 64-bit little-endian ELF file, and reading their
 * bytes: what a search of a stripped executable's code needs (Bun's
 * BoringSSL, see src/dataplane/bun-boringssl.ts).
 */
import { closeSync, openSync, readSync } from "node:fs";

export interface ElfSection {
  name: string;
  type: number;
  /** virtual address when loaded */
  addr: number;
  /** where its bytes are in the file */
  offset: number;
  size: number;
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, b, done, length - done, offset + done);
    if (n <= 0) throw new Error(`short read at ${offset + done}`);
    done += n;
  }
  return b;
}

export class ElfFile {
  readonly sections: ElfSection[] = [];
  readonly machine: number;
  readonly type: number;
  private readonly fd: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, "r");
    try {
      const eh = readAt(this.fd, 0, 64);
      if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF file`);
      this.type = eh.readUInt16LE(0x10);
      this.machine = eh.readUInt16LE(0x12);
      const shoff = Number(eh.readBigUInt64LE(0x28));
      const shentsize = eh.readUInt16LE(0x3a);
      const shnum = eh.readUInt16LE(0x3c);
      const shstrndx = eh.readUInt16LE(0x3e);
      if (!shoff || !shnum) return;
      const sh = readAt(this.fd, shoff, shentsize * shnum);
      const raw = [];
      for (let i = 0; i < shnum; i++) {
        const o = i * shentsize;
        raw.push({
          nameOff: sh.readUInt32LE(o),
          type: sh.readUInt32LE(o + 4),
          addr: Number(sh.readBigUInt64LE(o + 16)),
          offset: Number(sh.readBigUInt64LE(o + 24)),
          size: Number(sh.readBigUInt64LE(o + 32)),
        });
      }
      const strtab = raw[shstrndx];
      const names = strtab ? readAt(this.fd, strtab.offset, strtab.size) : Buffer.alloc(0);
      for (const s of raw) {
        const end = names.indexOf(0, s.nameOff);
        this.sections.push({
          name: names.toString("latin1", s.nameOff, end < 0 ? names.length : end),
          type: s.type,
          addr: s.addr,
          offset: s.offset,
          size: s.size,
        });
      }
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  section(name: string): ElfSection | undefined {
    return this.sections.find((s) => s.name === name);
  }

  /** The file bytes of a section (NOBITS sections have none). */
  read(s: ElfSection): Buffer {
    return readAt(this.fd, s.offset, s.size);
  }

  close(): void {
    closeSync(this.fd);
  }
}
