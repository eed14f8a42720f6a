/**
 * Probe placement (src/dataplane/probe-sites.ts): OpenSSL's write and read
 * wrappers are probed at the internal function they share, whose first
 * instruction the kernel emulates, and only when the decoded code proves it.
 * Synthetic code pins each rule; the system libssl shows what they pick in
 * practice. test/runtime/openssl-lines.test.ts runs OpenSSL 1.1, 3.0, 3.5 and
 * 3.6 under kloak with these placements (1.1 and 3.5 move like 3.0; 3.6's
 * internal functions begin with `sub` and keep the public probes).
 */
import { describe, expect, test } from "bun:test";
import { Fn } from "../../src/dataplane/abi.ts";
import { fileCode, isEmulated, placeProbes, type ProbeSite } from "../../src/dataplane/probe-sites.ts";
import { TlsTargetFinder } from "../../src/dataplane/tls-targets.ts";

/** A file image: code bytes placed at offsets. */
function image(parts: [number, number[]][]): (offset: number, length: number) => Uint8Array | null {
  const size = Math.max(...parts.map(([o, b]) => o + b.length)) + 64;
  const mem = new Uint8Array(size).fill(0xcc);
  for (const [o, b] of parts) mem.set(b, o);
  return (offset, length) => (offset < size ? mem.subarray(offset, Math.min(size, offset + length)) : null);
}
const rel32 = (from: number, to: number) => {
  const v = new DataView(new ArrayBuffer(4));
  v.setInt32(0, to - from, true);
  return [...new Uint8Array(v.buffer)];
};
/** call rel32 at `at` to `to` */
const call = (at: number, to: number) => [0xe8, ...rel32(at + 5, to)];
const jmp = (at: number, to: number) => [0xe9, ...rel32(at + 5, to)];
const SUB8 = [0x48, 0x83, 0xec, 0x08];
const ENDBR = [0xf3, 0x0f, 0x1e, 0xfa];
const PUSH_R14 = [0x41, 0x56];
const RET = [0xc3];

const site = (name: string, offset: number, cookie: number = Fn.SSL_WRITE_EX, ret = true): ProbeSite => ({ name, offset, cookie, ret });
const WRITE_EX = 0x100;
const WRITE = 0x200;
const INTERNAL = 0x400;

describe("isEmulated", () => {
  test("push of a register, with or without REX.B, call/jmp/jcc rel and nop are emulated", () => {
    for (const b of [[0x53], [0x55], [0x41, 0x57], [0xe8, 0, 0, 0, 0], [0xe9, 0, 0, 0, 0], [0xeb, 0], [0x74, 0], [0x0f, 0x84, 0, 0, 0, 0], [0x90]])
      expect(isEmulated(new Uint8Array(b))).toBe(true);
  });
  test("sub/mov/xor, endbr64, REX.W push and ret are single-stepped", () => {
    for (const b of [SUB8, [0x48, 0x89, 0xe5], [0x31, 0xc0], ENDBR, [0x48, 0x55], RET, [0x66, 0x90]])
      expect(isEmulated(new Uint8Array(b))).toBe(false);
  });
});

describe("placeProbes", () => {
  const wrappers = (internalFirst: number[], plainCallee = INTERNAL) =>
    image([
      [WRITE_EX, [...SUB8, ...call(WRITE_EX + 4, INTERNAL), ...RET]],
      [WRITE, [...SUB8, 0x85, 0xd2, 0x78, 0x10, ...call(WRITE + 8, plainCallee), ...RET]],
      [INTERNAL, [...internalFirst, ...RET]],
    ]);

  test("SSL_write and SSL_write_ex that both call one function beginning with push: one probe there, its return probed, as SSL_write_ex", () => {
    const out = placeProbes([site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX), site("SSL_free", 0x800, Fn.SSL_FREE, false)], wrappers(PUSH_R14));
    expect(out).toContainEqual({ name: "ssl_write_internal", offset: INTERNAL, cookie: Fn.SSL_WRITE_EX, ret: true });
    expect(out.map((f) => f.name).sort()).toEqual(["SSL_free", "ssl_write_internal"]);
  });

  test("the shared function starts with endbr64: the probe goes after it", () => {
    const out = placeProbes([site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX)], wrappers([...ENDBR, ...PUSH_R14]));
    expect(out).toEqual([{ name: "ssl_write_internal", offset: INTERNAL + 4, cookie: Fn.SSL_WRITE_EX, ret: true }]);
  });

  test("a shared function whose entry is single-stepped, or wrappers that call different functions, keep the public probes", () => {
    const fns = [site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX)];
    expect(placeProbes(fns, wrappers(SUB8))).toEqual(fns);
    expect(placeProbes(fns, wrappers(PUSH_R14, 0x600))).toEqual(fns);
  });

  test("an _ex function that does more than set up its stack before the call (an inlined build) keeps the public probes", () => {
    const code = image([
      [WRITE_EX, [0x48, 0x83, 0x7f, 0x30, 0x00, ...call(WRITE_EX + 5, INTERNAL), ...RET]], // cmpq $0,0x30(%rdi); call
      [WRITE, [...call(WRITE, INTERNAL), ...RET]],
      [INTERNAL, [...PUSH_R14, ...RET]],
    ]);
    const fns = [site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX)];
    expect(placeProbes(fns, code)).toEqual(fns);
  });

  test("an _ex function that jumps (jmp rel8) before its call is no pure wrapper: the public probes stay", () => {
    const code = image([
      [WRITE_EX, [0xeb, 0x00, ...call(WRITE_EX + 2, INTERNAL), ...RET]],
      [WRITE, [...call(WRITE, INTERNAL), ...RET]],
      [INTERNAL, [...PUSH_R14, ...RET]],
    ]);
    const fns = [site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX)];
    expect(placeProbes(fns, code)).toEqual(fns);
  });

  test("OpenSSL 3.3+: SSL_write_ex only jumps to SSL_write_ex2, which is the pure wrapper", () => {
    const EX2 = 0x300;
    const code = image([
      [WRITE_EX, [...ENDBR, 0x49, 0x89, 0xc8, 0x31, 0xc9, ...jmp(WRITE_EX + 9, EX2)]],
      [EX2, [...ENDBR, ...SUB8, ...call(EX2 + 8, INTERNAL), ...RET]],
      [WRITE, [...ENDBR, ...SUB8, ...call(WRITE + 8, INTERNAL), ...RET]],
      [INTERNAL, [...ENDBR, ...PUSH_R14, ...RET]],
    ]);
    const out = placeProbes([site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX), site("SSL_write_ex2", EX2)], code);
    expect(out).toEqual([{ name: "ssl_write_internal", offset: INTERNAL + 4, cookie: Fn.SSL_WRITE_EX, ret: true }]);
  });

  test("GnuTLS: gnutls_record_send, which only jumps to gnutls_record_send2, is not probed twice", () => {
    const SEND = 0x100;
    const SEND2 = 0x300;
    const code = image([
      [SEND, [0x45, 0x31, 0xc0, 0x31, 0xc9, ...jmp(SEND + 5, SEND2)]],
      [SEND2, [0x41, 0x57, ...RET]],
    ]);
    const c = Fn.GNUTLS_RECORD_SEND;
    expect(placeProbes([site("gnutls_record_send", SEND, c), site("gnutls_record_send2", SEND2, c)], code)).toEqual([site("gnutls_record_send2", SEND2, c)]);
    // a wrapper that calls (rather than jumps) does work of its own after the call: kept
    const calls = image([[SEND, [...call(SEND, SEND2), ...RET]], [SEND2, [0x41, 0x57, ...RET]]]);
    expect(placeProbes([site("gnutls_record_send", SEND, c), site("gnutls_record_send2", SEND2, c)], calls)).toHaveLength(2);
  });

  test("code that does not decode keeps the public probes", () => {
    const code = image([
      [WRITE_EX, [0x0f, 0x0b, 0x0f, 0x0b]], // ud2: no call
      [WRITE, [0x0f, 0xff]],
    ]);
    const fns = [site("SSL_write", WRITE, Fn.SSL_WRITE), site("SSL_write_ex", WRITE_EX)];
    expect(placeProbes(fns, code)).toEqual(fns);
  });
});

describe("this machine's libraries", () => {
  const finder = new TlsTargetFinder();
  const libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

  test("the system libssl's writes and reads are probed once each, on an instruction the kernel emulates", () => {
    const t = finder.targetsFor(process.pid, { extra: [libssl] }).find((x) => /\/libssl\.so/.test(x.path));
    expect(t).toBeDefined();
    const names = t!.functions.map((f) => f.name);
    expect(names).toContain("ssl_write_internal");
    expect(names).toContain("ssl_read_internal");
    for (const gone of ["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"]) expect(names).not.toContain(gone);
    const code = fileCode(t!.path);
    try {
      for (const f of t!.functions.filter((x) => x.name.startsWith("ssl_"))) expect(isEmulated(code.codeAt(f.offset, 16)!)).toBe(true);
    } finally {
      code.close();
    }
  });
});
