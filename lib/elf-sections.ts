/**
 * Section headers of a 64-bit little-endian ELF file, and reading their
 * bytes: what a search of a stripped executable's code needs (Bun's
 * BoringSSL, see src/dataplane/bun-boringssl.ts).
 */
import { closeSync, openSync } from "node:fs";
import { readAt, readElfHeader, readSections, type SectionHeader } from "./elf-headers.ts";

export class ElfFile {
  readonly sections: SectionHeader[];
  readonly machine: number;
  readonly type: number;
  private readonly fd: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, "r");
    try {
      const h = readElfHeader(this.fd, path);
      this.type = h.type;
      this.machine = h.machine;
      this.sections = readSections(this.fd, h);
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  section(name: string): SectionHeader | undefined {
    return this.sections.find((s) => s.name === name);
  }

  /** The file bytes of a section (NOBITS sections have none). */
  read(s: SectionHeader): Buffer {
    return readAt(this.fd, s.offset, s.size);
  }

  close(): void {
    closeSync(this.fd);
  }
}
