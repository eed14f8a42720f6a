/**
 * HPACK Huffman pieces of the HTTP/2 path: the code table (against RFC 7541's
 * own examples and the test clients' copy), the tables generated into
 * bpf/hpack.h, and stop mode's bit splice (src/dataplane/hpack-splice.ts).
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { bpfTables, HUFFMAN_BITS, HUFFMAN_CODE, huffmanBits, huffmanDecode, huffmanEncode } from "../../src/dataplane/hpack.ts";
import { codeOf, encodeHcode, holdsCode, spliceCode } from "../../src/dataplane/hpack-splice.ts";
import { LAYOUT } from "../../src/dataplane/abi.ts";
import { checkSecret } from "../../src/secrets/secret-check.ts";
import { PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
// @ts-expect-error: a plain .mjs module of the test clients
import { HUFFMAN } from "../support/h2_huffman.mjs";

const ROOT = join(import.meta.dir, "../..");
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("Huffman code (RFC 7541 Appendix B)", () => {
  test("RFC 7541 C.4 examples", () => {
    expect(hex(huffmanEncode("www.example.com").code)).toBe("f1e3c2e5f23a6ba0ab90f4ff");
    expect(hex(huffmanEncode("no-cache").code)).toBe("a8eb10649cbf");
    expect(hex(huffmanEncode("custom-key").code)).toBe("25a849e95ba97d7f");
    expect(hex(huffmanEncode("custom-value").code)).toBe("25a849e95bb8e8b4bf");
  });

  test("the test clients' copy is the same table", () => {
    expect((HUFFMAN as [number, number][]).map(([c, b]) => [c, b])).toEqual(HUFFMAN_CODE.map((c, i) => [c, HUFFMAN_BITS[i]!]));
  });

  test("every byte round-trips", () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    expect(huffmanDecode(huffmanEncode(all).code)).toEqual(all);
    expect(huffmanBits(all)).toBe(HUFFMAN_BITS.reduce((a, b) => a + b, 0));
  });
});

describe("bpf/hpack.h", () => {
  test("holds exactly the generated tables", () => {
    const h = readFileSync(join(ROOT, "bpf/hpack.h"), "utf8");
    const m = /\/\* BEGIN generated: [^\n]*\*\/\n([\s\S]*?)\/\* END generated \*\//.exec(h);
    expect(m?.[1]).toBe(bpfTables());
  });

  test("kloak_hcode holds the longest placeholder's code with 8 spare bytes", () => {
    expect(LAYOUT.kloak_hcode.size - LAYOUT.kloak_hcode.fields.code).toBe(4096 + 8);
  });
});

describe("the bit splice of stop mode", () => {
  const reg = new PlaceholderRegistry();
  const value = "tok_9f8A7b6C5d4E3f2G1h0IjKlMnOpQrStUvWx";
  const ph = reg.create("S", valueShape(value));

  for (let shift = 0; shift < 8; shift++) {
    test(`alignment ${shift}: the value's code replaces exactly the placeholder's bits, and back`, () => {
      const p = codeOf(new TextEncoder().encode(ph));
      const v = codeOf(new TextEncoder().encode(value));
      expect(v.bits).toBe(p.bits);
      // A span whose bits around the code are random: they must survive.
      const span = crypto.getRandomValues(new Uint8Array((shift + p.bits + 7) >> 3));
      const withPh = spliceCode(span, shift, p.code, p.bits);
      expect(holdsCode(withPh, shift, p.code, p.bits)).toBe(true);
      const withValue = spliceCode(withPh, shift, v.code, v.bits);
      expect(holdsCode(withValue, shift, v.code, v.bits)).toBe(true);
      expect(holdsCode(withValue, shift, p.code, p.bits)).toBe(false);
      const back = spliceCode(withValue, shift, p.code, p.bits);
      expect(hex(back)).toBe(hex(withPh));
      // Neighbouring bits: the first byte's top `shift` bits and the last byte's tail.
      const tail = (shift + p.bits) % 8;
      expect(withValue[0]! >> (8 - shift)).toBe(span[0]! >> (8 - shift));
      if (tail) expect(withValue[withValue.length - 1]! & (0xff >> tail)).toBe(span[span.length - 1]! & (0xff >> tail));
    });
  }

  test("a Huffman literal holding the placeholder decodes to the value after the splice", () => {
    const text = `Bearer ${ph}`;
    const lit = huffmanEncode(text).code; // padded with ones, as HPACK sends it
    const shift = huffmanBits("Bearer ") % 8;
    const at = huffmanBits("Bearer ") >> 3;
    const p = codeOf(new TextEncoder().encode(ph));
    const v = codeOf(new TextEncoder().encode(value));
    const nb = (shift + p.bits + 7) >> 3;
    const span = lit.subarray(at, at + nb);
    expect(holdsCode(span, shift, p.code, p.bits)).toBe(true);
    const out = Uint8Array.from(lit);
    out.set(spliceCode(span, shift, v.code, v.bits), at);
    expect(new TextDecoder().decode(huffmanDecode(out))).toBe(`Bearer ${value}`);
  });

  test("kloak_hcodes entries say whether the value's code fits", () => {
    const enc = (s: string) => new TextEncoder().encode(s);
    const F = LAYOUT.kloak_hcode.fields;
    const fits = new DataView(encodeHcode(enc(ph), enc(value)).buffer);
    expect(fits.getUint32(F.bits, true)).toBe(huffmanBits(ph));
    expect(fits.getUint32(F.fits, true)).toBe(1);
    const other = new DataView(encodeHcode(enc(ph), enc(value.replace("9", "Z"))).buffer);
    expect(other.getUint32(F.fits, true)).toBe(0);
  });
});

describe("Kubernetes Secrets", () => {
  test("a value with no Huffman-exact placeholder is a problem of the Secret (webhook denial, Event), named by key", () => {
    const checked = checkSecret({ data: { good: Buffer.from("a-fine-token-0123").toString("base64"), bad: Buffer.from("aaaaeeeeoooo").toString("base64") } });
    expect(checked.problems).toHaveLength(1);
    expect(checked.problems[0]!.key).toBe("bad");
    expect(checked.problems[0]!.message).toContain('key "bad" cannot get a placeholder that HTTP/2 can carry');
    expect(checked.problems[0]!.message).not.toContain("aaaaeeeeoooo");
  });
});
