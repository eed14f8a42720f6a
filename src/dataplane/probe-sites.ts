/**
 * Where in a TLS library the entry probes go, so that a probe hit costs a
 * trap and nothing more.
 *
 * A uprobe replaces the probed instruction with int3. After the programs ran,
 * the kernel either emulates the original instruction (push of a register,
 * call/jmp/jcc rel, nop: arch/x86/kernel/uprobes.c, on every kernel kloak
 * supports) or copies it to a page of the process and single-steps it there:
 * a second trap, and on a virtual machine a costly one (about 15-40 µs per hit
 * on the machines kloak is measured on, against about 1 µs for an emulated
 * one). OpenSSL's SSL_write, SSL_write_ex, SSL_read and SSL_read_ex all begin
 * with `sub $n,%rsp`, which is single-stepped; each is a thin wrapper around
 * one internal function (ssl_write_internal, ssl_read_internal) that begins
 * with `push`. Probing that function instead covers both public functions
 * with one probe, on an emulated instruction, with the same arguments
 * (SSL*, buffer, size_t length) and the return address on top of the stack
 * (so the uretprobe works as on the public function).
 *
 * The internal function is found by decoding, never guessed: the `_ex`
 * function must be nothing but stack set-up and a direct call, and the other
 * wrapper's first call must go to the same place. Anything else (inlined
 * builds, other libraries, a decoding doubt) keeps the public functions.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { DecodeError, decodeOne } from "../../lib/x86-length.ts";
import { Fn } from "./abi.ts";

/** One probe of a library: where (file offset), which program branch (cookie), whether its return is probed. */
export interface ProbeSite {
  name: string;
  offset: number;
  cookie: number;
  ret: boolean;
}

/** The code bytes at file offsets of one file. */
type CodeAt = (offset: number, length: number) => Uint8Array | null;

const ENDBR64 = [0xf3, 0x0f, 0x1e, 0xfa];

/** Bytes an endbr64 at `at` takes (0 when there is none): it changes nothing a probe reads, so a probe may sit after it. */
function endbrLength(code: Uint8Array, at = 0): number {
  return ENDBR64.every((b, i) => code[at + i] === b) ? ENDBR64.length : 0;
}

/**
 * Does the kernel emulate the instruction at code[at] when a uprobe sits on
 * it? push reg (50-57, or 41 50-57), call rel32, jmp rel8/rel32, jcc rel8/rel32
 * and a one-byte nop. 66-prefixed forms are refused by the kernel: not these.
 */
export function isEmulated(code: Uint8Array, at = 0): boolean {
  const b0 = code[at];
  const b1 = code[at + 1];
  if (b0 === undefined) return false;
  if (b0 >= 0x50 && b0 <= 0x57) return true;
  if (b0 === 0x41 && b1 !== undefined && b1 >= 0x50 && b1 <= 0x57) return true;
  if (b0 === 0xe8 || b0 === 0xe9 || b0 === 0xeb || b0 === 0x90) return true;
  if (b0 >= 0x70 && b0 <= 0x7f) return true;
  return b0 === 0x0f && b1 !== undefined && b1 >= 0x80 && b1 <= 0x8f;
}

/** push reg (50-57, or 41 50-57) */
function isPushReg(b: Uint8Array): boolean {
  if (b.length === 1) return b[0]! >= 0x50 && b[0]! <= 0x57;
  return b.length === 2 && b[0] === 0x41 && b[1]! >= 0x50 && b[1]! <= 0x57;
}

/** Stack set-up that leaves the argument registers as the caller passed them: sub $imm,%rsp or push reg. */
function isStackSetup(code: Uint8Array, at: number, length: number): boolean {
  const b = code.subarray(at, at + length);
  if (length === 4 && b[0] === 0x48 && b[1] === 0x83 && b[2] === 0xec) return true; // sub $imm8,%rsp
  if (length === 7 && b[0] === 0x48 && b[1] === 0x81 && b[2] === 0xec) return true; // sub $imm32,%rsp
  return isPushReg(b);
}

/** Target (file offset) of the direct call at code[at] of a function at `base`. */
function callTarget(code: Uint8Array, at: number, base: number): number {
  const rel = new DataView(code.buffer, code.byteOffset + at + 1, 4).getInt32(0, true);
  return base + at + 5 + rel;
}

/** A wrapper that only sets up its stack and calls: the callee, or null. */
function pureWrapperCallee(code: Uint8Array, base: number): number | null {
  let at = endbrLength(code);
  for (let i = 0; i < 6; i++) {
    const insn = decodeOne(code, at);
    if (code[at] === 0xe8 && insn.length === 5) return callTarget(code, at, base);
    if (!isStackSetup(code, at, insn.length)) return null;
    at += insn.length;
  }
  return null;
}

/** The first direct call of a function, within its first instructions, before any way out: its callee, or null. */
function firstCallee(code: Uint8Array, base: number): number | null {
  let at = 0;
  for (let i = 0; i < 24 && at < code.length; i++) {
    const insn = decodeOne(code, at);
    if (code[at] === 0xe8 && insn.length === 5) return callTarget(code, at, base);
    if (insn.ret || insn.indirectJump || code[at] === 0xe9 || code[at] === 0xeb) return null;
    at += insn.length;
  }
  return null;
}

/** The emulated entry of a function at `offset`: after a leading endbr64, or null when single-stepped. */
function emulatedEntry(codeAt: CodeAt, offset: number): number | null {
  const code = codeAt(offset, 16);
  if (!code) return null;
  const skip = endbrLength(code);
  return isEmulated(code, skip) ? offset + skip : null;
}

/** The two public wrappers of one internal function, and the cookie its probe takes. */
const SHARED = [
  // OpenSSL 3.3+: SSL_write_ex2 is the pure wrapper (SSL_write_ex jumps to it, dropped above).
  { ex: ["SSL_write_ex2", "SSL_write_ex"], plain: "SSL_write", cookie: Fn.SSL_WRITE_EX, name: "ssl_write_internal" },
  { ex: ["SSL_read_ex"], plain: "SSL_read", cookie: Fn.SSL_READ_EX, name: "ssl_read_internal" },
] as const;

/**
 * Exported functions that only move arguments and jump to another exported
 * function kloak probes with the same cookie (GnuTLS's gnutls_record_send is
 * gnutls_record_send2 with no flags): the wrapper's own probe would be a second,
 * single-stepped hit on the same call.
 */
const TAIL_WRAPPERS = [
  { wrapper: "gnutls_record_send", callee: "gnutls_record_send2" },
  { wrapper: "SSL_write_ex", callee: "SSL_write_ex2" }, // OpenSSL 3.3+
] as const;

/** Only register set-up, then an unconditional direct jump: no call, no memory written, no return. */
function isTailJump(code: Uint8Array): boolean {
  let at = endbrLength(code);
  for (let i = 0; i < 6; i++) {
    const insn = decodeOne(code, at);
    if (code[at] === 0xe9 || code[at] === 0xeb) return true;
    if (insn.ret || insn.indirectJump || insn.jumpTarget !== undefined || code[at] === 0xe8) return false;
    if (!isRegisterSetup(code.subarray(at, at + insn.length))) return false;
    at += insn.length;
  }
  return false;
}

/** xor r32,r32 (31/33 with mod 3) or mov r,r (89/8b with mod 3), optionally REX-prefixed. */
function isRegisterSetup(b: Uint8Array): boolean {
  const op = b[0]! >= 0x40 && b[0]! <= 0x4f ? 1 : 0;
  if (b.length !== op + 2) return false;
  return [0x31, 0x33, 0x89, 0x8b].includes(b[op]!) && b[op + 1]! >> 6 === 3;
}

/**
 * The probe sites for a library's functions (entry offsets from its symbol
 * table): each wrapper pair moved to its shared internal function when that is
 * safe, tail-jump wrappers dropped, every other function kept; an entry after
 * endbr64 when the next instruction is emulated.
 */
export function placeProbes(fns: ProbeSite[], codeAt: CodeAt): ProbeSite[] {
  let out = fns;
  for (const t of TAIL_WRAPPERS) {
    const w = out.find((f) => f.name === t.wrapper);
    const c = out.find((f) => f.name === t.callee);
    if (!w || !c || w.cookie !== c.cookie) continue;
    const code = codeAt(w.offset, 32);
    try {
      if (code && isTailJump(code)) out = out.filter((f) => f !== w);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
    }
  }
  for (const pair of SHARED) {
    const wrappers = out.filter((f) => f.name === pair.plain || (pair.ex as readonly string[]).includes(f.name));
    const ex = pair.ex.map((n) => out.find((f) => f.name === n)).find((f) => f !== undefined);
    if (!ex) continue;
    const target = sharedCallee(codeAt, ex.offset, wrappers);
    if (target === null) continue;
    out = out.filter((f) => !wrappers.includes(f));
    out.push({ name: pair.name, offset: target, cookie: pair.cookie, ret: true });
  }
  return out.map((f) => {
    const at = emulatedEntry(codeAt, f.offset);
    return at !== null && at !== f.offset ? { ...f, offset: at } : f;
  });
}

/**
 * The internal function `ex` is a pure wrapper of, when every wrapper of the
 * pair calls it first and its entry is emulated; else null.
 */
function sharedCallee(codeAt: CodeAt, exOffset: number, wrappers: ProbeSite[]): number | null {
  try {
    const exCode = codeAt(exOffset, 48);
    const target = exCode && pureWrapperCallee(exCode, exOffset);
    if (target === null || target === undefined) return null;
    for (const w of wrappers) {
      const code = codeAt(w.offset, 128);
      if (!code || firstCallee(code, w.offset) !== target) return null;
    }
    return emulatedEntry(codeAt, target);
  } catch (e) {
    if (e instanceof DecodeError) return null;
    throw e;
  }
}

/** Code reader over one file (file offsets, as uprobes take them). */
export function fileCode(path: string): { codeAt: CodeAt; close(): void } {
  const fd = openSync(path, "r");
  return {
    codeAt(offset, length) {
      const b = Buffer.alloc(length);
      const n = readSync(fd, b, 0, length, offset);
      return n > 0 ? new Uint8Array(b.buffer, b.byteOffset, n) : null;
    },
    close: () => closeSync(fd),
  };
}
