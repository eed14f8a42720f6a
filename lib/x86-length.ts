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

/**
 * One instruction being read: where it starts, how far the reader got, and
 * what its prefixes changed. Every way of finishing an instruction goes
 * through done(), so the past-the-end and 15-byte checks are never skipped.
 */
class Reader {
  p: number;
  /** 66 prefix: immediates sized by operand size (Iz) are 2 bytes, not 4 */
  opsize16 = false;
  /** 67 prefix: a moffs operand (A0-A3) is 4 bytes, not 8 */
  addr32 = false;
  /** REX.W: MOV r64, imm (B8-BF) takes an 8-byte immediate */
  rexW = false;

  constructor(
    readonly code: Uint8Array,
    readonly at: number,
  ) {
    this.p = at;
  }

  /** Iz: the immediate whose size follows the operand size (never 8 bytes). */
  get immZ(): number {
    return this.opsize16 ? 2 : 4;
  }

  need(n: number): void {
    if (this.p + n > this.code.length) throw new DecodeError(`instruction at ${this.at} runs past the end`);
  }

  next(): number {
    return this.code[this.p++]!;
  }

  /** Bytes the ModRM operand starting at the read position takes. */
  modrm(): number {
    return modrmLength(this.code, this.p);
  }

  /** The reg field of the ModRM byte, which some opcodes use to select the instruction. */
  modrmReg(): number {
    return (this.code[this.p]! >> 3) & 7;
  }

  /** Ends the instruction `extra` bytes further on. */
  done(extra: number, o: Partial<Insn> = {}): Insn {
    this.p += extra;
    if (this.p > this.code.length) throw new DecodeError(`instruction at ${this.at} runs past the end`);
    if (this.p - this.at > 15) throw new DecodeError(`instruction at ${this.at} longer than 15 bytes`);
    return { offset: this.at, length: this.p - this.at, ret: false, ...o };
  }

  /** A direct jump with an 8-bit displacement, relative to the next instruction. */
  rel8(): Insn {
    const insn = this.done(1);
    return { ...insn, jumpTarget: this.at + insn.length + ((this.code[this.p - 1]! << 24) >> 24) };
  }

  /** A direct jump with a 32-bit displacement, relative to the next instruction. */
  rel32(o: Partial<Insn> = {}): Insn {
    const insn = this.done(4, o);
    const disp = new DataView(this.code.buffer, this.code.byteOffset + this.p - 4, 4).getInt32(0, true);
    return { ...insn, jumpTarget: this.at + insn.length + disp };
  }
}

/** Legacy prefixes, then an optional REX byte: they change operand sizes, not what the opcode is. */
function readPrefixes(r: Reader): void {
  while (r.p < r.code.length && PREFIXES.has(r.code[r.p]!)) {
    if (r.code[r.p] === 0x66) r.opsize16 = true;
    if (r.code[r.p] === 0x67) r.addr32 = true;
    r.p++;
    if (r.p - r.at > 14) throw new DecodeError(`too many prefixes at ${r.at}`);
  }
  r.need(1);
  if ((r.code[r.p]! & 0xf0) === 0x40) {
    r.rexW = (r.code[r.p]! & 8) !== 0;
    r.p++;
    r.need(1);
  }
}

/**
 * VEX (C5: 1 more byte, C4: 2) and EVEX (62: 3): always so in 64-bit mode.
 * The prefix names the opcode map, and every VEX/EVEX instruction but
 * VZEROUPPER/VZEROALL has a ModRM operand.
 */
function decodeVex(r: Reader, op: number): Insn {
  let map: number;
  if (op === 0xc5) {
    r.need(1);
    r.p += 1;
    map = 1;
  } else if (op === 0xc4) {
    r.need(2);
    map = r.code[r.p]! & 0x1f;
    r.p += 2;
  } else {
    r.need(3);
    map = r.code[r.p]! & 0x7;
    r.p += 3;
  }
  r.need(1);
  const vop = r.next();
  if (map === 1) {
    if (vop === 0x77) return r.done(0); // VZEROUPPER/VZEROALL
    const m = map0F(vop);
    if (!m || !m[0]) throw new DecodeError(`unknown VEX/EVEX 0F opcode 0x${vop.toString(16)} at ${r.at}`);
    return r.done(r.modrm() + m[1]);
  }
  if (map === 2) return r.done(r.modrm());
  if (map === 3) return r.done(r.modrm() + 1);
  throw new DecodeError(`unknown VEX/EVEX map ${map} at ${r.at}`);
}

/** Two-byte opcodes (0F xx), including the three-byte maps 0F38 (no immediate) and 0F3A (imm8). */
function decodeMap0F(r: Reader): Insn {
  r.need(1);
  const op2 = r.next();
  if (op2 === 0x38 || op2 === 0x3a) {
    r.need(1);
    r.p++;
    return r.done(r.modrm() + (op2 === 0x3a ? 1 : 0));
  }
  const m = map0F(op2);
  if (!m) throw new DecodeError(`unknown opcode 0F ${op2.toString(16)} at ${r.at}`);
  if (op2 >= 0x80 && op2 <= 0x8f) return r.rel32(); // Jcc rel32
  return r.done((m[0] ? r.modrm() : 0) + m[1]);
}

/** The one-byte opcode map, one row per opcode or range: its ModRM operand (if any) plus its immediate bytes. */
function decodeMap1(r: Reader, op: number): Insn {
  if (op < 0x40) {
    // ALU rows (ADD, OR, ADC, SBB, AND, SUB, XOR, CMP): r/m forms, then AL,imm8 and eAX,Iz
    const low = op & 7;
    if (low <= 3) return r.done(r.modrm());
    if (low === 4) return r.done(1);
    if (low === 5) return r.done(r.immZ);
    throw new DecodeError(`unexpected opcode 0x${op.toString(16)} at ${r.at}`);
  }
  if (op >= 0x50 && op <= 0x5f) return r.done(0);
  if (op === 0x63) return r.done(r.modrm());
  if (op === 0x68) return r.done(r.immZ);
  if (op === 0x69) return r.done(r.modrm() + r.immZ);
  if (op === 0x6a) return r.done(1);
  if (op === 0x6b) return r.done(r.modrm() + 1);
  if (op >= 0x6c && op <= 0x6f) return r.done(0);
  if (op >= 0x70 && op <= 0x7f) return r.rel8();
  if (op === 0x80 || op === 0x83) return r.done(r.modrm() + 1);
  if (op === 0x81) return r.done(r.modrm() + r.immZ);
  if (op >= 0x84 && op <= 0x8f) return r.done(r.modrm());
  if (op >= 0x90 && op <= 0x9f) return r.done(0);
  if (op >= 0xa0 && op <= 0xa3) return r.done(r.addr32 ? 4 : 8); // MOV with a moffs address
  if (op >= 0xa4 && op <= 0xa7) return r.done(0);
  if (op === 0xa8) return r.done(1);
  if (op === 0xa9) return r.done(r.immZ);
  if (op >= 0xaa && op <= 0xaf) return r.done(0);
  if (op >= 0xb0 && op <= 0xb7) return r.done(1);
  if (op >= 0xb8 && op <= 0xbf) return r.done(r.rexW ? 8 : r.immZ);
  if (op === 0xc0 || op === 0xc1 || op === 0xc6) return r.done(r.modrm() + 1);
  if (op === 0xc2) return r.done(2, { ret: true });
  if (op === 0xc3) return r.done(0, { ret: true });
  if (op === 0xc7) return r.done(r.modrm() + r.immZ);
  if (op === 0xc8) return r.done(3);
  if (op === 0xc9 || op === 0xcc) return r.done(0);
  if (op === 0xcb || op === 0xcf) return r.done(0, { indirectJump: true }); // far RET, IRET
  if (op === 0xca) return r.done(2, { indirectJump: true });
  if (op === 0xcd) return r.done(1);
  if (op >= 0xd0 && op <= 0xd3) return r.done(r.modrm());
  if (op === 0xd7) return r.done(0);
  if (op >= 0xd8 && op <= 0xdf) return r.done(r.modrm());
  if (op >= 0xe0 && op <= 0xe3) return r.rel8();
  if (op >= 0xe4 && op <= 0xe7) return r.done(1);
  if (op === 0xe8) return r.done(4); // CALL rel32: comes back
  if (op === 0xe9) return r.rel32();
  if (op === 0xeb) return r.rel8();
  if (op >= 0xec && op <= 0xef) return r.done(0);
  if (op === 0xf1 || op === 0xf4 || op === 0xf5) return r.done(0);
  if (op === 0xf6 || op === 0xf7) {
    // Group 3: only TEST (/0, /1) carries an immediate
    const imm = r.modrmReg() <= 1 ? (op === 0xf6 ? 1 : r.immZ) : 0;
    return r.done(r.modrm() + imm);
  }
  if (op >= 0xf8 && op <= 0xfd) return r.done(0);
  if (op === 0xfe) return r.done(r.modrm());
  if (op === 0xff) return decodeGroup5(r);
  throw new DecodeError(`unknown opcode 0x${op.toString(16)} at ${r.at}`);
}

/** FF: INC, DEC, CALL, CALL far, JMP, JMP far, PUSH by ModRM.reg; /7 does not exist. */
function decodeGroup5(r: Reader): Insn {
  r.need(1);
  const reg = r.modrmReg();
  if (reg === 7) throw new DecodeError(`invalid FF /7 at ${r.at}`);
  return r.done(r.modrm(), reg === 4 || reg === 5 ? { indirectJump: true } : {});
}

/** Decode one instruction at `at`. */
export function decodeOne(code: Uint8Array, at: number): Insn {
  const r = new Reader(code, at);
  readPrefixes(r);
  const op = r.next();
  if (op === 0xc4 || op === 0xc5 || op === 0x62) return decodeVex(r, op);
  if (op === 0x0f) return decodeMap0F(r);
  if (INVALID_64.has(op)) throw new DecodeError(`opcode 0x${op.toString(16)} is invalid in 64-bit mode (at ${at})`);
  return decodeMap1(r, op);
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
