#!/usr/bin/env bun
/**
 * Generates src/dataplane/abi.generated.ts, the TypeScript view of the eBPF
 * object, from bpf/kloak.bpf.o itself: struct sizes and field offsets and
 * enum values from its BTF (.BTF), map names from the .maps data section,
 * custom data sections (.rodata.config), and program names from its symbol
 * table. bpf/kloak.bpf.c anchors every shared type (struct kloak_abi_anchor),
 * kloak.h's shared #defines included (enum kloak_abi_const).
 *
 *   bun run gen:abi          write the file
 *   bun run gen:abi --check  exit 1 when the committed file is stale
 *
 * test/dataplane/abi.test.ts runs generateAbi() and compares.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
export const OBJECT_PATH = join(ROOT, "bpf", "kloak.bpf.o");
export const GENERATED_PATH = join(ROOT, "src", "dataplane", "abi.generated.ts");

interface Section {
  name: string;
  type: number;
  flags: bigint;
  offset: number;
  size: number;
  link: number;
}

const SHT_SYMTAB = 2;
const SHF_EXECINSTR = 0x4n;
const STT_FUNC = 2;
const STB_GLOBAL = 1;

const cstr = (b: Uint8Array, at: number) => {
  let end = at;
  while (b[end] !== 0) end++;
  return new TextDecoder().decode(b.subarray(at, end));
};

/** The sections of a little-endian ELF64 file. */
function elfSections(b: Uint8Array): Section[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) throw new Error("not a little-endian ELF64 object");
  const shoff = Number(v.getBigUint64(0x28, true));
  const shentsize = v.getUint16(0x3a, true);
  const shnum = v.getUint16(0x3c, true);
  const shstrndx = v.getUint16(0x3e, true);
  const raw = Array.from({ length: shnum }, (_, i) => {
    const o = shoff + i * shentsize;
    return {
      nameOff: v.getUint32(o, true),
      type: v.getUint32(o + 4, true),
      flags: v.getBigUint64(o + 8, true),
      offset: Number(v.getBigUint64(o + 24, true)),
      size: Number(v.getBigUint64(o + 32, true)),
      link: v.getUint32(o + 40, true),
    };
  });
  const names = raw[shstrndx]!.offset;
  return raw.map(({ nameOff, ...s }) => ({ name: cstr(b, names + nameOff), ...s }));
}

/** Programs: global functions in executable sections other than .text (libbpf's rule), with their section. */
function elfPrograms(b: Uint8Array, sections: Section[]): Map<string, string> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const symtab = sections.find((s) => s.type === SHT_SYMTAB);
  if (!symtab) throw new Error("no symbol table");
  const strtab = sections[symtab.link]!.offset;
  const out = new Map<string, string>();
  for (let o = symtab.offset; o < symtab.offset + symtab.size; o += 24) {
    const info = b[o + 4]!;
    const sec = sections[v.getUint16(o + 6, true)];
    if ((info & 0xf) !== STT_FUNC || info >> 4 !== STB_GLOBAL || !sec) continue;
    if (!(sec.flags & SHF_EXECINSTR) || sec.name === ".text") continue;
    out.set(cstr(b, strtab + v.getUint32(o, true)), sec.name);
  }
  return out;
}

type BtfType =
  | { kind: "struct"; name: string; size: number; members: { name: string; type: number; bitOffset: number; bitfield: boolean }[] }
  | { kind: "enum"; name: string; values: { name: string; value: number | bigint }[] }
  | { kind: "var"; name: string; type: number }
  | { kind: "datasec"; name: string; vars: { type: number; offset: number; size: number }[] }
  | { kind: "other"; name: string };

const BTF_MAGIC = 0xeb9f;
const KIND = { STRUCT: 4, UNION: 5, ENUM: 6, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, ENUM64: 19 } as const;
/** Bytes after the common 12-byte header, by kind (vlen-sized kinds are handled apart). */
const FIXED_EXTRA: Record<number, number> = { 1: 4, 3: 12, 14: 4, 17: 4 };

/** The types of a .BTF section, indexed by type id (0: void). */
function btfTypes(b: Uint8Array): BtfType[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint16(0, true) !== BTF_MAGIC) throw new Error("not BTF (bad magic)");
  const hdrLen = v.getUint32(4, true);
  const typeOff = hdrLen + v.getUint32(8, true);
  const typeEnd = typeOff + v.getUint32(12, true);
  const strOff = hdrLen + v.getUint32(16, true);
  const str = (off: number) => cstr(b, strOff + off);
  const types: BtfType[] = [{ kind: "other", name: "void" }];
  for (let o = typeOff; o < typeEnd; ) {
    const name = str(v.getUint32(o, true));
    const info = v.getUint32(o + 4, true);
    const sizeOrType = v.getUint32(o + 8, true);
    const kind = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const kindFlag = info >>> 31 === 1;
    o += 12;
    switch (kind) {
      case KIND.STRUCT:
      case KIND.UNION: {
        const members = Array.from({ length: vlen }, (_, i) => {
          const m = o + i * 12;
          const bits = v.getUint32(m + 8, true);
          // kind_flag: the bitfield's size in the top 8 bits (kernel types have them; kloak's may not)
          const bitfield = kindFlag && bits >>> 24 !== 0;
          const bitOffset = kindFlag ? bits & 0xffffff : bits;
          return { name: str(v.getUint32(m, true)), type: v.getUint32(m + 4, true), bitOffset, bitfield };
        });
        types.push(kind === KIND.STRUCT ? { kind: "struct", name, size: sizeOrType, members } : { kind: "other", name });
        o += vlen * 12;
        break;
      }
      case KIND.ENUM:
      case KIND.ENUM64: {
        const wide = kind === KIND.ENUM64;
        const signed = kindFlag;
        const values = Array.from({ length: vlen }, (_, i) => {
          const e = o + i * (wide ? 12 : 8);
          const lo = v.getUint32(e + 4, true);
          const value = wide
            ? (BigInt(v.getUint32(e + 8, true)) << 32n) | BigInt(lo)
            : signed
              ? v.getInt32(e + 4, true)
              : lo;
          return { name: str(v.getUint32(e, true)), value };
        });
        types.push({ kind: "enum", name, values });
        o += vlen * (wide ? 12 : 8);
        break;
      }
      case KIND.FUNC_PROTO:
        types.push({ kind: "other", name });
        o += vlen * 8;
        break;
      case KIND.VAR:
        types.push({ kind: "var", name, type: sizeOrType });
        o += 4;
        break;
      case KIND.DATASEC: {
        const vars = Array.from({ length: vlen }, (_, i) => ({
          type: v.getUint32(o + i * 12, true),
          offset: v.getUint32(o + i * 12 + 4, true),
          size: v.getUint32(o + i * 12 + 8, true),
        }));
        types.push({ kind: "datasec", name, vars });
        o += vlen * 12;
        break;
      }
      default:
        if (kind === 0 || kind > KIND.ENUM64) throw new Error(`unknown BTF kind ${kind}`);
        types.push({ kind: "other", name });
        o += FIXED_EXTRA[kind] ?? 0;
    }
  }
  return types;
}

/** The shared types: kloak_* structs (the anchor itself aside) and enums. */
const SHARED = /^kloak_/;
const ANCHOR = "kloak_abi_anchor";
/** Data sections libbpf maps under their own name (custom .rodata.*, .data.*, .bss.* sections). */
const CUSTOM_DATA = /^\.(rodata|data|bss)\./;

const key = (k: string) => (/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));
const obj = (entries: [string, string | number | bigint][]) =>
  `{ ${entries.map(([k, v]) => `${key(k)}: ${typeof v === "string" ? JSON.stringify(v) : typeof v === "bigint" ? `${v}n` : v}`).join(", ")} }`;
const byName = <T extends { name: string }>(a: T, b: T) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** The generated module's text for an object's bytes. */
export function generateAbi(object: Uint8Array): string {
  const sections = elfSections(object);
  const btf = sections.find((s) => s.name === ".BTF");
  if (!btf) throw new Error("the object has no .BTF section");
  const types = btfTypes(object.subarray(btf.offset, btf.offset + btf.size));
  const named = <K extends BtfType["kind"]>(kind: K) =>
    types.filter((t): t is Extract<BtfType, { kind: K }> => t.kind === kind && SHARED.test(t.name)).sort(byName);
  const structs = named("struct").filter((s) => s.name !== ANCHOR);
  const offset = (s: string, m: { name: string; bitOffset: number; bitfield: boolean }) => {
    if (m.bitfield || m.bitOffset % 8 !== 0) throw new Error(`${s}.${m.name}: bitfields have no byte offset (not supported)`);
    return m.bitOffset / 8;
  };
  const enums = named("enum");
  const datasecs = types.filter((t): t is Extract<BtfType, { kind: "datasec" }> => t.kind === "datasec");
  const varName = (id: number) => {
    const t = types[id];
    if (t?.kind !== "var") throw new Error(`type ${id} is not a VAR`);
    return t.name;
  };
  const maps = (datasecs.find((d) => d.name === ".maps")?.vars ?? []).map((x) => varName(x.type)).sort();
  const data = datasecs.filter((d) => CUSTOM_DATA.test(d.name)).sort(byName);
  const programs = [...elfPrograms(object, sections)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (structs.length === 0 || enums.length === 0 || maps.length === 0 || programs.length === 0)
    throw new Error("the object's BTF lacks the kloak types, maps or programs");

  const out = [
    "// Generated by scripts/gen-abi.ts from bpf/kloak.bpf.o (BTF and symbols). Do not edit: run `bun run gen:abi`.",
    "// test/dataplane/abi.test.ts fails when this file is not what the committed object generates.",
    "",
    "/** Struct sizes and field offsets in bytes (struct kloak_*). */",
    "export const STRUCTS = {",
    ...structs.map((s) => `  ${s.name}: { size: ${s.size}, fields: ${obj(s.members.map((m) => [m.name, offset(s.name, m)]))} },`),
    "} as const;",
    "",
    "/** Enum values by their C names (enum kloak_*). */",
    "export const ENUMS = {",
    ...enums.flatMap((e) => [`  ${e.name}: {`, ...e.values.map((x) => `    ${x.name}: ${x.value},`), "  },"]),
    "} as const;",
    "",
    "/** The object's maps (the .maps section). */",
    "export const MAPS = [",
    ...maps.map((m) => `  ${JSON.stringify(m)},`),
    "] as const;",
    "export type MapName = (typeof MAPS)[number];",
    "",
    "/** Data sections libbpf maps under their own name: variable -> offset and size. */",
    "export const DATA_SECTIONS = {",
    ...data.map((d) => `  ${key(d.name)}: { ${d.vars.map((x) => `${key(varName(x.type))}: ${obj([["offset", x.offset], ["size", x.size]])}`).join(", ")} },`),
    "} as const;",
    "export type DataSectionName = keyof typeof DATA_SECTIONS;",
    "",
    "/** The object's programs and their ELF sections. */",
    "export const PROGRAMS = {",
    ...programs.map(([p, s]) => `  ${p}: ${JSON.stringify(s)},`),
    "} as const;",
    "export type ProgramName = keyof typeof PROGRAMS;",
    "",
  ];
  return out.join("\n");
}

if (import.meta.main) {
  const text = generateAbi(readFileSync(OBJECT_PATH));
  if (process.argv.includes("--check")) {
    let committed = "";
    try {
      committed = readFileSync(GENERATED_PATH, "utf8");
    } catch {}
    if (committed !== text) {
      console.error(`${GENERATED_PATH} is stale: run bun run gen:abi`);
      process.exit(1);
    }
  } else writeFileSync(GENERATED_PATH, text);
}
