/**
 * Bun links BoringSSL statically and strips its symbols: SSL_write has no
 * name in the binary. Its functions are found by signature, per Bun version
 * (bun-signatures.ts is the one table of covered versions; scripts/bun-signatures.ts
 * derives an entry from a Bun binary):
 *
 *  1. The binary is Bun: it has JavaScriptCore's opcode section and a
 *     "Bun vX.Y.Z" string in .rodata, which gives the version.
 *  2. The version has an entry; each function's byte pattern (its first
 *     instructions, with relocated fields as wildcards) matches exactly once
 *     in .text.
 *  3. Second check, independent of the pattern: the match is a function start
 *     (16-byte aligned, frame-pointer prologue), and its
 *     body raises the BoringSSL error that only that function raises:
 *     ERR_put_error(ERR_LIB_SSL, reason, ".../ssl/ssl_lib.cc", line), seen as
 *     `mov $imm32` of the file string's address and of the reason.
 *
 * Anything else is "unrecognised": no probe goes on the binary, the caller
 * reports it (a named reason with a hint), and the process runs on unharmed.
 */
import { ElfFile } from "../../lib/elf-sections.ts";
import { Fn } from "./abi.ts";
import { BUN_SIGNATURES, type BunFunction } from "./bun-signatures.ts";
import type { TlsFunction } from "./tls-targets.ts";

/** JavaScriptCore's opcode section: every Bun build has it; most programs do not. */
export const BUN_MARKER_SECTION = "__DATA,__jsc_opcodes";
const EM_X86_64 = 62;
const VERSION = /Bun v(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)[ (]/;
const SSL_LIB_FILE = "boringssl/ssl/ssl_lib.cc\0";

export const REFUSAL_HINT =
  "kloak knows Bun's BoringSSL by per-version signatures (src/dataplane/bun-signatures.ts): " +
  "run a covered Bun version, or derive this one with `bun scripts/bun-signatures.ts --write PATH-TO-BUN`";

export type BunLookup =
  | { kind: "not-bun" }
  | { kind: "bun"; version: string; functions: { name: BunFunction; offset: number }[] }
  | { kind: "unrecognised"; version: string; why: string };

/** Bytes of .text with where they are (virtual address and file offset). */
export interface Code {
  bytes: Buffer;
  addr: number;
  offset: number;
}

/** The version in a Bun binary's .rodata, or null. */
export function bunVersion(rodata: Buffer): string | null {
  let at = rodata.indexOf("Bun v");
  while (at >= 0) {
    const m = VERSION.exec(rodata.toString("latin1", at, at + 48));
    if (m) return m[1]!;
    at = rodata.indexOf("Bun v", at + 5);
  }
  return null;
}

/** Virtual address of the NUL-terminated string that names BoringSSL's ssl_lib.cc (what error sites load). */
export function sslLibFileAddress(rodata: Buffer, rodataAddr: number): number | null {
  const end = rodata.indexOf(SSL_LIB_FILE);
  if (end < 0) return null;
  let start = end;
  while (start > 0 && rodata[start - 1] !== 0) start--;
  return rodataAddr + start;
}

// mov $imm32, %r32: b8+r (eax..edi) or 41 b8+r (r8d..r15d), in SysV argument order
const ARG_REGS = [7, 6, 2, 1, 8, 9]; // edi esi edx ecx r8d r9d

interface MovImm {
  at: number;
  len: number;
  reg: number;
  imm: number;
}

function movImmAt(b: Buffer, i: number): MovImm | null {
  if (i + 5 <= b.length && b[i]! >= 0xb8 && b[i]! <= 0xbf) return { at: i, len: 5, reg: b[i]! - 0xb8, imm: b.readUInt32LE(i + 1) };
  if (i + 6 <= b.length && b[i] === 0x41 && b[i + 1]! >= 0xb8 && b[i + 1]! <= 0xbf)
    return { at: i, len: 6, reg: 8 + b[i + 1]! - 0xb8, imm: b.readUInt32LE(i + 2) };
  return null;
}

/** xor %r32,%r32 (2 or 3 bytes) and register-to-register moves (3 bytes):
 * compilers put these among the argument moves */
function xorSelfLen(b: Buffer, i: number): number {
  if ((b[i]! & 0xf0) === 0x40 && (b[i]! & 8) !== 0 && (b[i + 1] === 0x89 || b[i + 1] === 0x8b) && b[i + 2]! >= 0xc0) return 3;
  if (b[i] === 0x31 && b[i + 1]! >= 0xc0 && ((b[i + 1]! >> 3) & 7) === (b[i + 1]! & 7)) return 2;
  if (b[i] === 0x45 && b[i + 1] === 0x31 && b[i + 2]! >= 0xc0 && ((b[i + 2]! >> 3) & 7) === (b[i + 2]! & 7)) return 3;
  return 0;
}

export interface ErrorSite {
  /** offset in .text of the mov of the file address */
  at: number;
  reason: number;
}

/**
 * Calls ERR_put_error(ERR_LIB_SSL, [unused,] reason, file, line) with file =
 * fileAddr, in code[from, to). The reason is the argument just before the file
 * (two ABIs are in use: LTO drops the unused argument in some Bun builds).
 */
export function errorSites(code: Buffer, fileAddr: number, from = 0, to = code.length): ErrorSite[] {
  const sites: ErrorSite[] = [];
  const needle = Buffer.alloc(4);
  needle.writeUInt32LE(fileAddr);
  for (let p = code.indexOf(needle, from); p >= 0 && p < to; p = code.indexOf(needle, p + 1)) {
    const mov = movImmAt(code, p - 1) ?? movImmAt(code, p - 2);
    if (!mov || mov.imm !== fileAddr) continue;
    const slot = ARG_REGS.indexOf(mov.reg);
    if (slot < 1) continue;
    const reasonReg = ARG_REGS[slot - 1]!;
    // the argument moves around it: the run that follows, and one before
    const movs: MovImm[] = [];
    for (let i = mov.at + mov.len, n = 0; n < 6; n++) {
      const m = movImmAt(code, i);
      if (m) {
        movs.push(m);
        i += m.len;
        continue;
      }
      const x = xorSelfLen(code, i);
      if (!x) break;
      i += x;
    }
    for (const back of [5, 6]) {
      const m = movImmAt(code, mov.at - back);
      if (m && m.len === back) movs.push(m);
    }
    const lib = movs.find((m) => m.reg === 7);
    const reason = movs.find((m) => m.reg === reasonReg);
    if (lib?.imm === 0x10 && reason) sites.push({ at: mov.at, reason: reason.imm });
  }
  return sites;
}

/** A function start: 16-byte aligned, push %rbp; mov %rsp,%rbp (Bun keeps frame pointers). Usually
 * after int3 padding, but not always: a function can follow one that ends on the boundary. */
export function isFunctionStart(code: Code, i: number): boolean {
  const b = code.bytes;
  return (
    (code.addr + i) % 16 === 0 &&
    b[i] === 0x55 &&
    b[i + 1] === 0x48 &&
    b[i + 2] === 0x89 &&
    b[i + 3] === 0xe5
  );
}

/** The start of the function holding code offset i (null when none within 64 KiB). */
export function functionStartBefore(code: Code, i: number): number | null {
  let a = i - ((code.addr + i) % 16);
  for (const stop = Math.max(0, i - 65536); a > stop; a -= 16) if (isFunctionStart(code, a)) return a;
  return null;
}

/** Where the function at start ends: the next function start, at most 16 KiB on. */
export function functionEnd(code: Code, start: number): number {
  const stop = Math.min(code.bytes.length, start + 16384);
  for (let a = start + 16; a < stop; a += 16) if (isFunctionStart(code, a)) return a;
  return stop;
}

/** "55 48 ?? e5": hex bytes, ?? for any byte. */
export function parsePattern(p: string): (number | null)[] {
  return p
    .trim()
    .split(/\s+/)
    .map((t) => (t === "??" ? null : parseInt(t, 16)));
}

/** Offsets in code where the pattern matches (up to `limit`). */
export function findPattern(code: Buffer, pattern: string, limit = 2): number[] {
  const p = parsePattern(pattern);
  // search for the longest run of fixed bytes, then check the rest
  let best = { at: 0, len: 0 };
  for (let i = 0; i < p.length; ) {
    if (p[i] === null) {
      i++;
      continue;
    }
    let j = i;
    while (j < p.length && p[j] !== null) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j;
  }
  if (best.len < 4) throw new Error(`pattern has no run of 4 fixed bytes: ${pattern}`);
  const run = Buffer.from(p.slice(best.at, best.at + best.len) as number[]);
  const hits: number[] = [];
  for (let k = code.indexOf(run); k >= 0; k = code.indexOf(run, k + 1)) {
    const s = k - best.at;
    if (s < 0 || s + p.length > code.length) continue;
    let ok = true;
    for (let i = 0; i < p.length && ok; i++) ok = p[i] === null || code[s + i] === p[i];
    if (ok) {
      hits.push(s);
      if (hits.length >= limit) break;
    }
  }
  return hits;
}

/** Sections of a Bun binary that the search needs; null when the file is not Bun. */
export function openBun(path: string): { elf: ElfFile; rodata: Buffer; rodataAddr: number; version: string | null } | null {
  const elf = new ElfFile(path);
  try {
    const ro = elf.section(".rodata");
    if (!elf.section(BUN_MARKER_SECTION) || !ro) {
      elf.close();
      return null;
    }
    const rodata = elf.read(ro);
    const version = bunVersion(rodata);
    if (version === null) {
      elf.close();
      return null;
    }
    return { elf, rodata, rodataAddr: ro.addr, version };
  } catch (e) {
    elf.close();
    throw e;
  }
}

export function readText(elf: ElfFile): Code | null {
  const tx = elf.section(".text");
  return tx ? { bytes: elf.read(tx), addr: tx.addr, offset: tx.offset } : null;
}

/** Find the probed BoringSSL functions of a Bun binary (see the header). */
export function lookupBun(path: string): BunLookup {
  const bun = openBun(path);
  if (!bun) return { kind: "not-bun" };
  const { elf, version } = bun;
  try {
    if (elf.machine !== EM_X86_64) return { kind: "unrecognised", version: version!, why: "only x86-64 Bun builds have signatures" };
    const entry = BUN_SIGNATURES[version!];
    if (!entry) return { kind: "unrecognised", version: version!, why: `no signature for Bun ${version}` };
    const fileAddr = sslLibFileAddress(bun.rodata, bun.rodataAddr);
    const code = readText(elf);
    if (fileAddr === null || !code) return { kind: "unrecognised", version: version!, why: "no BoringSSL ssl_lib.cc in the binary" };
    const functions: { name: BunFunction; offset: number }[] = [];
    for (const sig of entry.functions) {
      const hits = findPattern(code.bytes, sig.pattern);
      if (hits.length !== 1)
        return { kind: "unrecognised", version: version!, why: `${sig.name}: its signature matches ${hits.length ? "more than once" : "nowhere"}` };
      const start = hits[0]!;
      if (!isFunctionStart(code, start)) return { kind: "unrecognised", version: version!, why: `${sig.name}: the match is no function start` };
      const sites = errorSites(code.bytes, fileAddr, start, functionEnd(code, start));
      const missing = sig.reasons.filter((r) => !sites.some((s) => s.reason === r));
      if (missing.length)
        return { kind: "unrecognised", version: version!, why: `${sig.name}: the match does not raise SSL error(s) ${missing.join(", ")}` };
      functions.push({ name: sig.name, offset: code.offset + start });
    }
    return { kind: "bun", version: version!, functions };
  } finally {
    elf.close();
  }
}

/** How each found function is probed (cookie: enum kloak_fn; ret: its return too). */
const PROBES: Record<BunFunction, { cookie: number; ret: boolean }> = {
  SSL_write: { cookie: Fn.SSL_WRITE, ret: true },
  SSL_do_handshake: { cookie: Fn.SSL_DO_HANDSHAKE, ret: true },
  SSL_set_tlsext_host_name: { cookie: Fn.BSSL_SET_HOSTNAME, ret: false },
  SSL_new: { cookie: Fn.BUN_SSL_NEW, ret: true },
};

/** The probes for a Bun binary; null when the file is no Bun. */
export function bunTlsFunctions(path: string): { functions: TlsFunction[] } | { unrecognised: { version: string; why: string } } | null {
  const r = lookupBun(path);
  if (r.kind === "not-bun") return null;
  if (r.kind === "unrecognised") return { unrecognised: { version: r.version, why: r.why } };
  return { functions: r.functions.map((f) => ({ name: f.name, offset: f.offset, ...PROBES[f.name] })) };
}
