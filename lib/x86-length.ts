/**
 * A minimal x86-64 instruction length decoder: where each instruction of a
 * function starts, whether it returns, and where its direct jumps go. Enough
 * to find every return of a compiled Go function (kloak probes each RET,
 * since a uretprobe's return-address swap breaks Go's moving stacks).
 *
 * Covers legacy prefixes, REX, the one-byte, 0F, 0F38 and 0F3A maps, VEX and
 * EVEX. Anything it does not know throws: a caller must never guess where an
 * instruction ends (a 0xC3 byte inside an immediate is no return).
 */

export interface Insn {
  offset: number;
  length: number;
  /** RET (C3) or RET imm16 (C2) */
  ret: boolean;
  /** direct JMP/Jcc/LOOP/JRCXZ: the target offset (relative to the code's start) */
  jumpTarget?: number;
  /** JMP r/m (FF /4, /5) or a far jump: a way out whose target is unknown */
  indirectJump?: boolean;
}

export class DecodeError extends Error {}

const PREFIXES = new Set([0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x66, 0x67]);

/** One-byte opcodes invalid in 64-bit mode. */
const INVALID_64 = new Set([0x06, 0x07, 0x0e, 0x16, 0x17, 0x1e, 0x1f, 0x27, 0x2f, 0x37, 0x3f, 0x60, 0x61, 0x82, 0x9a, 0xce, 0xd4, 0xd5, 0xd6, 0xea]);

/** Bytes a ModRM operand takes after the opcode (the ModRM byte, SIB, displacement). */
function modrmLength(code: Uint8Array, at: number): number {
  if (at >= code.length) throw new DecodeError("ModRM past the end");
  const modrm = code[at]!;
  const mod = modrm >> 6;
  const rm = modrm & 7;
  let n = 1;
  if (mod === 3) return n;
  if (rm === 4) {
    if (at + 1 >= code.length) throw new DecodeError("SIB past the end");
    const sib = code[at + 1]!;
    n++;
    if (mod === 0 && (sib & 7) === 5) n += 4;
  } else if (mod === 0 && rm === 5) {
    n += 4; // RIP-relative
  }
  if (mod === 1) n += 1;
  else if (mod === 2) n += 4;
  return n;
}

/** 0F map: [has ModRM, immediate bytes], or null when unknown. */
function map0F(op: number): [boolean, number] | null {
  if (op === 0x0f) return [true, 1]; // 3DNow!: ModRM + imm8 suffix
  if ([0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0x0e, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x77, 0xa0, 0xa1, 0xa2, 0xa8, 0xa9, 0xaa].includes(op))
    return [false, 0];
  if (op >= 0xc8 && op <= 0xcf) return [false, 0]; // BSWAP
  if (op >= 0x80 && op <= 0x8f) return [false, 4]; // Jcc rel32
  if ([0x70, 0x71, 0x72, 0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6].includes(op)) return [true, 1];
  if (op <= 0x03 || op === 0x0d || (op >= 0x10 && op <= 0x2f) || (op >= 0x40 && op <= 0x7f) || op >= 0x90) return [true, 0];
  return null;
}

/** Decode one instruction at `at`. */
export function decodeOne(code: Uint8Array, at: number): Insn {
  let p = at;
  let opsize16 = false;
  let rexW = false;
  const need = (n: number) => {
    if (p + n > code.length) throw new DecodeError(`instruction at ${at} runs past the end`);
  };
  while (p < code.length && PREFIXES.has(code[p]!)) {
    if (code[p] === 0x66) opsize16 = true;
    p++;
    if (p - at > 14) throw new DecodeError(`too many prefixes at ${at}`);
  }
  need(1);
  if ((code[p]! & 0xf0) === 0x40) {
    rexW = (code[p]! & 8) !== 0;
    p++;
    need(1);
  }
  const op = code[p++]!;
  const done = (extra: number, o: Partial<Insn> = {}): Insn => {
    p += extra;
    if (p > code.length) throw new DecodeError(`instruction at ${at} runs past the end`);
    if (p - at > 15) throw new DecodeError(`instruction at ${at} longer than 15 bytes`);
    return { offset: at, length: p - at, ret: false, ...o };
  };
  const immZ = opsize16 ? 2 : 4;

  // VEX (C4 3-byte, C5 2-byte) and EVEX (62): always so in 64-bit mode.
  if (op === 0xc4 || op === 0xc5 || op === 0x62) {
    let map: number;
    if (op === 0xc5) {
      need(1);
      p += 1;
      map = 1;
    } else if (op === 0xc4) {
      need(2);
      map = code[p]! & 0x1f;
      p += 2;
    } else {
      need(3);
      map = code[p]! & 0x7;
      p += 3;
    }
    need(1);
    const vop = code[p++]!;
    if (map === 1) {
      if (vop === 0x77) return done(0); // VZEROUPPER/VZEROALL
      const m = map0F(vop);
      if (!m || !m[0]) throw new DecodeError(`unknown VEX/EVEX 0F opcode 0x${vop.toString(16)} at ${at}`);
      return done(modrmLength(code, p) + m[1]);
    }
    if (map === 2) return done(modrmLength(code, p));
    if (map === 3) return done(modrmLength(code, p) + 1);
    throw new DecodeError(`unknown VEX/EVEX map ${map} at ${at}`);
  }

  if (op === 0x0f) {
    need(1);
    const op2 = code[p++]!;
    if (op2 === 0x38) {
      need(1);
      p++;
      return done(modrmLength(code, p));
    }
    if (op2 === 0x3a) {
      need(1);
      p++;
      return done(modrmLength(code, p) + 1);
    }
    const m = map0F(op2);
    if (!m) throw new DecodeError(`unknown opcode 0F ${op2.toString(16)} at ${at}`);
    const len = (m[0] ? modrmLength(code, p) : 0) + m[1];
    if (op2 >= 0x80 && op2 <= 0x8f) {
      const insn = done(len);
      return { ...insn, jumpTarget: at + insn.length + new DataView(code.buffer, code.byteOffset + p - 4, 4).getInt32(0, true) };
    }
    return done(len);
  }

  if (INVALID_64.has(op)) throw new DecodeError(`opcode 0x${op.toString(16)} is invalid in 64-bit mode (at ${at})`);
  const rel8 = (): Insn => {
    const insn = done(1);
    return { ...insn, jumpTarget: at + insn.length + ((code[p - 1]! << 24) >> 24) };
  };
  const rel32 = (o: Partial<Insn> = {}): Insn => {
    const insn = done(4, o);
    return { ...insn, jumpTarget: at + insn.length + new DataView(code.buffer, code.byteOffset + p - 4, 4).getInt32(0, true) };
  };

  if (op < 0x40) {
    const low = op & 7;
    if (low <= 3) return done(modrmLength(code, p));
    if (low === 4) return done(1);
    if (low === 5) return done(immZ);
    throw new DecodeError(`unexpected opcode 0x${op.toString(16)} at ${at}`);
  }
  if (op >= 0x50 && op <= 0x5f) return done(0);
  if (op === 0x63) return done(modrmLength(code, p));
  if (op === 0x68) return done(immZ);
  if (op === 0x69) return done(modrmLength(code, p) + immZ);
  if (op === 0x6a) return done(1);
  if (op === 0x6b) return done(modrmLength(code, p) + 1);
  if (op >= 0x6c && op <= 0x6f) return done(0);
  if (op >= 0x70 && op <= 0x7f) return rel8();
  if (op === 0x80 || op === 0x83) return done(modrmLength(code, p) + 1);
  if (op === 0x81) return done(modrmLength(code, p) + immZ);
  if (op >= 0x84 && op <= 0x8f) return done(modrmLength(code, p));
  if (op >= 0x90 && op <= 0x9f) return done(0);
  if (op >= 0xa0 && op <= 0xa3) return done(code[at] === 0x67 || code.subarray(at, p).includes(0x67) ? 4 : 8);
  if (op >= 0xa4 && op <= 0xa7) return done(0);
  if (op === 0xa8) return done(1);
  if (op === 0xa9) return done(immZ);
  if (op >= 0xaa && op <= 0xaf) return done(0);
  if (op >= 0xb0 && op <= 0xb7) return done(1);
  if (op >= 0xb8 && op <= 0xbf) return done(rexW ? 8 : immZ);
  if (op === 0xc0 || op === 0xc1 || op === 0xc6) return done(modrmLength(code, p) + 1);
  if (op === 0xc2) return done(2, { ret: true });
  if (op === 0xc3) return done(0, { ret: true });
  if (op === 0xc7) return done(modrmLength(code, p) + immZ);
  if (op === 0xc8) return done(3);
  if (op === 0xc9 || op === 0xcb || op === 0xcc || op === 0xcf) return done(0, op === 0xcb || op === 0xcf ? { indirectJump: true } : {});
  if (op === 0xca) return done(2, { indirectJump: true });
  if (op === 0xcd) return done(1);
  if (op >= 0xd0 && op <= 0xd3) return done(modrmLength(code, p));
  if (op === 0xd7) return done(0);
  if (op >= 0xd8 && op <= 0xdf) return done(modrmLength(code, p));
  if (op >= 0xe0 && op <= 0xe3) return rel8();
  if (op >= 0xe4 && op <= 0xe7) return done(1);
  if (op === 0xe8) return done(4); // CALL rel32: comes back
  if (op === 0xe9) return rel32();
  if (op === 0xeb) return rel8();
  if (op >= 0xec && op <= 0xef) return done(0);
  if (op === 0xf1 || op === 0xf4 || op === 0xf5) return done(0);
  if (op === 0xf6 || op === 0xf7) {
    const reg = (code[p]! >> 3) & 7;
    const imm = reg <= 1 ? (op === 0xf6 ? 1 : immZ) : 0;
    return done(modrmLength(code, p) + imm);
  }
  if (op >= 0xf8 && op <= 0xfd) return done(0);
  if (op === 0xfe) return done(modrmLength(code, p));
  if (op === 0xff) {
    need(1);
    const reg = (code[p]! >> 3) & 7;
    if (reg === 7) throw new DecodeError(`invalid FF /7 at ${at}`);
    return done(modrmLength(code, p), reg === 4 || reg === 5 ? { indirectJump: true } : {});
  }
  throw new DecodeError(`unknown opcode 0x${op.toString(16)} at ${at}`);
}

/** Every instruction of code, in order. Throws DecodeError on anything unknown. */
export function decodeAll(code: Uint8Array): Insn[] {
  const out: Insn[] = [];
  for (let at = 0; at < code.length; ) {
    const insn = decodeOne(code, at);
    out.push(insn);
    at += insn.length;
  }
  return out;
}

/**
 * The offsets of every RET of a function's code, after checking that RET is
 * its only way out: every direct jump lands inside it, and there is no
 * indirect jump (a tail call would leave without a RET). Trailing INT3
 * padding is decoded like any instruction.
 */
export function returnSites(code: Uint8Array): number[] {
  const insns = decodeAll(code);
  const starts = new Set(insns.map((i) => i.offset));
  const rets: number[] = [];
  for (const i of insns) {
    if (i.ret) rets.push(i.offset);
    if (i.indirectJump) throw new DecodeError(`indirect jump at ${i.offset}: a way out that is no RET`);
    if (i.jumpTarget !== undefined && !starts.has(i.jumpTarget))
      throw new DecodeError(`jump at ${i.offset} to ${i.jumpTarget}: outside the function or into an instruction`);
  }
  if (rets.length === 0) throw new DecodeError("no RET");
  return rets;
}
