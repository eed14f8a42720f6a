/**
 * The x86-64 length decoder on hand-assembled instructions (encodings checked
 * with objdump). test/runtime/go.test.ts checks it against objdump on the
 * real crypto/tls.(*Conn).Write of every covered Go toolchain.
 */
import { describe, expect, test } from "bun:test";
import { buildinfoVersion, goMinor, parsePclntab } from "../../lib/gopclntab.ts";
import { decodeAll, DecodeError, returnSites } from "../../lib/x86-length.ts";

const hex = (s: string) => Uint8Array.from(s.split(/\s+/).filter(Boolean).map((b) => parseInt(b, 16)));

describe("x86-64 lengths", () => {
  const cases: [string, string][] = [
    ["mov rax, [rsp+0x28]", "48 8b 44 24 28"],
    ["cmp rsp, [r14+0x10]", "49 3b 66 10"],
    ["mov dword [rip+0x1234], 0x5", "c7 05 34 12 00 00 05 00 00 00"],
    ["movabs rax, imm64", "48 b8 c3 c3 c3 c3 c3 c3 c3 c3"],
    ["mov eax, imm32 (a C3 inside the immediate)", "b8 c3 00 00 00"],
    ["lea rcx, [rax+rbx*8+0x100]", "48 8d 8c d8 00 01 00 00"],
    ["mov ax, 0x1234 (66 prefix)", "66 b8 34 12"],
    ["movups xmm15, [rsp+0x10]", "44 0f 10 7c 24 10"],
    ["pshufd xmm0, xmm1, 0x1b", "66 0f 70 c1 1b"],
    ["pshufb xmm0, xmm1 (0F38)", "66 0f 38 00 c1"],
    ["palignr xmm0, xmm1, 4 (0F3A)", "66 0f 3a 0f c1 04"],
    ["vmovdqu ymm0, [rsi] (VEX C5)", "c5 fe 6f 06"],
    ["vpshufb ymm0, ymm1, ymm2 (VEX C4 map 2)", "c4 e2 75 00 c2"],
    ["vzeroupper", "c5 f8 77"],
    ["test byte [rax], 1 (F6 /0 ib)", "f6 00 01"],
    ["neg qword [rax] (F7 /3)", "48 f7 18"],
    ["nopw 0x0(rax,rax,1)", "66 0f 1f 44 00 00"],
    ["lock cmpxchg [rdx], rcx", "f0 48 0f b1 0a"],
    ["xchg rax, rax (nop)", "90"],
    ["call rel32", "e8 00 00 00 00"],
    ["int3", "cc"],
  ];
  for (const [name, bytes] of cases)
    test(name, () => {
      const code = hex(bytes);
      const insns = decodeAll(code);
      expect(insns.length).toBe(1);
      expect(insns[0]!.length).toBe(code.length);
    });

  test("RETs are found by decoding, not by scanning for C3 bytes", () => {
    // mov eax, 0xc3; jne +1; ret; ret imm16; int3 padding
    const code = hex("b8 c3 00 00 00  75 01  c3  c2 08 00  cc cc");
    expect(returnSites(code)).toEqual([7, 8]);
  });

  test("a way out that is no RET makes the function undecidable", () => {
    expect(() => returnSites(hex("ff e0 c3"))).toThrow(DecodeError); // jmp rax
    expect(() => returnSites(hex("e9 00 10 00 00 c3"))).toThrow(DecodeError); // jmp far outside
    expect(() => returnSites(hex("eb 01 c3 c3"))).not.toThrow(); // jmp to an instruction inside
    expect(() => returnSites(hex("eb 00 b8 c3 00 00 00 c3"))).not.toThrow();
    expect(() => returnSites(hex("eb 01 b8 c3 00 00 00 c3"))).toThrow(DecodeError); // into an immediate
  });

  test("unknown or truncated instructions throw", () => {
    expect(() => decodeAll(hex("48 8b"))).toThrow(DecodeError);
    expect(() => decodeAll(hex("06"))).toThrow(DecodeError); // push es: invalid in 64-bit mode
    expect(() => decodeAll(hex("ff f8"))).toThrow(DecodeError); // FF /7
  });
});

describe("Go build info and pclntab headers", () => {
  test("the version of a Go 1.18+ .go.buildinfo", () => {
    const b = Buffer.alloc(64);
    b.write("\xff Go buildinf:", 0, "latin1");
    b[14] = 8;
    b[15] = 2;
    b[32] = 8;
    b.write("go1.24.4", 33, "latin1");
    expect(buildinfoVersion(b)).toBe("go1.24.4");
    b[15] = 0;
    expect(buildinfoVersion(b)).toBeNull(); // pointer-based (before 1.18): not read
    expect(goMinor("go1.26rc1")).toBe("1.26");
  });

  test("a pclntab before Go 1.18 is refused, not guessed at", () => {
    const t = Buffer.alloc(128);
    t.writeUInt32LE(0xfffffffa, 0); // Go 1.16-1.17
    expect(() => parsePclntab(t, ["main.main"], 0x401000)).toThrow(/before 1\.18/);
  });
});
