/**
 * HPACK's static Huffman code (RFC 7541, Appendix B): what HTTP/2 clients
 * (nghttp2 in curl and node, Go's x/net/http2) use for header string literals
 * whenever it is shorter than the raw bytes. A placeholder that goes out
 * Huffman-coded is found, verified and replaced in its coded form
 * (bpf/hpack.h finds it; src/dataplane/hpack-splice.ts patches it), which
 * works only because the placeholder and its value have codes of exactly the
 * same bit length (src/secrets/placeholder.ts issues them so).
 */

/** [code, bits] for each byte 0..255, in the RFC's order (EOS is not a byte). */
// prettier-ignore
const TABLE: readonly number[] = [
  0x1ff8, 13, 0x7fffd8, 23, 0xfffffe2, 28, 0xfffffe3, 28, 0xfffffe4, 28, 0xfffffe5, 28, 0xfffffe6, 28, 0xfffffe7, 28,
  0xfffffe8, 28, 0xffffea, 24, 0x3ffffffc, 30, 0xfffffe9, 28, 0xfffffea, 28, 0x3ffffffd, 30, 0xfffffeb, 28, 0xfffffec, 28,
  0xfffffed, 28, 0xfffffee, 28, 0xfffffef, 28, 0xffffff0, 28, 0xffffff1, 28, 0xffffff2, 28, 0x3ffffffe, 30, 0xffffff3, 28,
  0xffffff4, 28, 0xffffff5, 28, 0xffffff6, 28, 0xffffff7, 28, 0xffffff8, 28, 0xffffff9, 28, 0xffffffa, 28, 0xffffffb, 28,
  0x14, 6, 0x3f8, 10, 0x3f9, 10, 0xffa, 12, 0x1ff9, 13, 0x15, 6, 0xf8, 8, 0x7fa, 11,
  0x3fa, 10, 0x3fb, 10, 0xf9, 8, 0x7fb, 11, 0xfa, 8, 0x16, 6, 0x17, 6, 0x18, 6,
  0x0, 5, 0x1, 5, 0x2, 5, 0x19, 6, 0x1a, 6, 0x1b, 6, 0x1c, 6, 0x1d, 6,
  0x1e, 6, 0x1f, 6, 0x5c, 7, 0xfb, 8, 0x7ffc, 15, 0x20, 6, 0xffb, 12, 0x3fc, 10,
  0x1ffa, 13, 0x21, 6, 0x5d, 7, 0x5e, 7, 0x5f, 7, 0x60, 7, 0x61, 7, 0x62, 7,
  0x63, 7, 0x64, 7, 0x65, 7, 0x66, 7, 0x67, 7, 0x68, 7, 0x69, 7, 0x6a, 7,
  0x6b, 7, 0x6c, 7, 0x6d, 7, 0x6e, 7, 0x6f, 7, 0x70, 7, 0x71, 7, 0x72, 7,
  0xfc, 8, 0x73, 7, 0xfd, 8, 0x1ffb, 13, 0x7fff0, 19, 0x1ffc, 13, 0x3ffc, 14, 0x22, 6,
  0x7ffd, 15, 0x3, 5, 0x23, 6, 0x4, 5, 0x24, 6, 0x5, 5, 0x25, 6, 0x26, 6,
  0x27, 6, 0x6, 5, 0x74, 7, 0x75, 7, 0x28, 6, 0x29, 6, 0x2a, 6, 0x7, 5,
  0x2b, 6, 0x76, 7, 0x2c, 6, 0x8, 5, 0x9, 5, 0x2d, 6, 0x77, 7, 0x78, 7,
  0x79, 7, 0x7a, 7, 0x7b, 7, 0x7ffe, 15, 0x7fc, 11, 0x3ffd, 14, 0x1ffd, 13, 0xffffffc, 28,
  0xfffe6, 20, 0x3fffd2, 22, 0xfffe7, 20, 0xfffe8, 20, 0x3fffd3, 22, 0x3fffd4, 22, 0x3fffd5, 22, 0x7fffd9, 23,
  0x3fffd6, 22, 0x7fffda, 23, 0x7fffdb, 23, 0x7fffdc, 23, 0x7fffdd, 23, 0x7fffde, 23, 0xffffeb, 24, 0x7fffdf, 23,
  0xffffec, 24, 0xffffed, 24, 0x3fffd7, 22, 0x7fffe0, 23, 0xffffee, 24, 0x7fffe1, 23, 0x7fffe2, 23, 0x7fffe3, 23,
  0x7fffe4, 23, 0x1fffdc, 21, 0x3fffd8, 22, 0x7fffe5, 23, 0x3fffd9, 22, 0x7fffe6, 23, 0x7fffe7, 23, 0xffffef, 24,
  0x3fffda, 22, 0x1fffdd, 21, 0xfffe9, 20, 0x3fffdb, 22, 0x3fffdc, 22, 0x7fffe8, 23, 0x7fffe9, 23, 0x1fffde, 21,
  0x7fffea, 23, 0x3fffdd, 22, 0x3fffde, 22, 0xfffff0, 24, 0x1fffdf, 21, 0x3fffdf, 22, 0x7fffeb, 23, 0x7fffec, 23,
  0x1fffe0, 21, 0x1fffe1, 21, 0x3fffe0, 22, 0x1fffe2, 21, 0x7fffed, 23, 0x3fffe1, 22, 0x7fffee, 23, 0x7fffef, 23,
  0xfffea, 20, 0x3fffe2, 22, 0x3fffe3, 22, 0x3fffe4, 22, 0x7ffff0, 23, 0x3fffe5, 22, 0x3fffe6, 22, 0x7ffff1, 23,
  0x3ffffe0, 26, 0x3ffffe1, 26, 0xfffeb, 20, 0x7fff1, 19, 0x3fffe7, 22, 0x7ffff2, 23, 0x3fffe8, 22, 0x1ffffec, 25,
  0x3ffffe2, 26, 0x3ffffe3, 26, 0x3ffffe4, 26, 0x7ffffde, 27, 0x7ffffdf, 27, 0x3ffffe5, 26, 0xfffff1, 24, 0x1ffffed, 25,
  0x7fff2, 19, 0x1fffe3, 21, 0x3ffffe6, 26, 0x7ffffe0, 27, 0x7ffffe1, 27, 0x3ffffe7, 26, 0x7ffffe2, 27, 0xfffff2, 24,
  0x1fffe4, 21, 0x1fffe5, 21, 0x3ffffe8, 26, 0x3ffffe9, 26, 0xffffffd, 28, 0x7ffffe3, 27, 0x7ffffe4, 27, 0x7ffffe5, 27,
  0xfffec, 20, 0xfffff3, 24, 0xfffed, 20, 0x1fffe6, 21, 0x3fffe9, 22, 0x1fffe7, 21, 0x1fffe8, 21, 0x7ffff3, 23,
  0x3fffea, 22, 0x3fffeb, 22, 0x1ffffee, 25, 0x1ffffef, 25, 0xfffff4, 24, 0xfffff5, 24, 0x3ffffea, 26, 0x7ffff4, 23,
  0x3ffffeb, 26, 0x7ffffe6, 27, 0x3ffffec, 26, 0x3ffffed, 26, 0x7ffffe7, 27, 0x7ffffe8, 27, 0x7ffffe9, 27, 0x7ffffea, 27,
  0x7ffffeb, 27, 0xffffffe, 28, 0x7ffffec, 27, 0x7ffffed, 27, 0x7ffffee, 27, 0x7ffffef, 27, 0x7fffff0, 27, 0x3ffffee, 26,
];

/** Code length in bits of each byte value. */
export const HUFFMAN_BITS: readonly number[] = Array.from({ length: 256 }, (_, i) => TABLE[i * 2 + 1]!);
/** Code of each byte value (right-aligned, HUFFMAN_BITS[i] bits). */
export const HUFFMAN_CODE: readonly number[] = Array.from({ length: 256 }, (_, i) => TABLE[i * 2]!);

/** Bit length of the Huffman code of `bytes` (before the padding to a whole byte). */
export function huffmanBits(bytes: Uint8Array | string): number {
  let n = 0;
  if (typeof bytes === "string") {
    for (let i = 0; i < bytes.length; i++) n += HUFFMAN_BITS[bytes.charCodeAt(i) & 0xff]!;
  } else {
    for (const b of bytes) n += HUFFMAN_BITS[b]!;
  }
  return n;
}

/**
 * The Huffman code of `bytes`, MSB first, left-aligned in ceil(bits / 8)
 * bytes; the bits after the code are `pad` (HPACK pads with ones, kloak's
 * splice wants zeros).
 */
export function huffmanEncode(bytes: Uint8Array | string, pad: 0 | 1 = 1): { code: Uint8Array; bits: number } {
  const src = typeof bytes === "string" ? Uint8Array.from(bytes, (c) => c.charCodeAt(0) & 0xff) : bytes;
  const bits = huffmanBits(src);
  const code = new Uint8Array((bits + 7) >> 3);
  let pos = 0;
  for (const b of src) {
    const len = HUFFMAN_BITS[b]!;
    const c = HUFFMAN_CODE[b]!;
    for (let i = len - 1; i >= 0; i--, pos++) if ((c >>> i) & 1) code[pos >> 3]! |= 0x80 >> (pos & 7);
  }
  if (pad) for (; pos < code.length * 8; pos++) code[pos >> 3]! |= 0x80 >> (pos & 7);
  return { code, bits };
}

/** Decodes a padded Huffman string literal; undefined when it is malformed. */
export function huffmanDecode(code: Uint8Array): Uint8Array | undefined {
  const out: number[] = [];
  let acc = 0;
  let n = 0;
  for (let pos = 0; pos < code.length * 8; pos++) {
    acc = (acc << 1) | ((code[pos >> 3]! >> (7 - (pos & 7))) & 1);
    n++;
    const sym = DECODE.get(n * 2 ** 32 + (acc >>> 0));
    if (sym !== undefined) {
      out.push(sym);
      acc = 0;
      n = 0;
    } else if (n > 30) return undefined;
  }
  // Padding: at most 7 bits, all ones.
  if (n > 7 || acc !== (1 << n) - 1) return undefined;
  return Uint8Array.from(out);
}

const DECODE = new Map<number, number>(Array.from({ length: 256 }, (_, i) => [HUFFMAN_BITS[i]! * 2 ** 32 + HUFFMAN_CODE[i]!, i]));

/** The placeholder alphabet and marker, repeated here so the tables below need nothing from src/secrets. */
const MARKER_TEXT = "kloak:";
const TAIL_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/**
 * The constants bpf/hpack.h is built on, as C, between its "generated"
 * markers (test/dataplane/hpack.test.ts checks the header holds exactly this):
 *  - HP_MARKER: the 37-bit code of "kloak:";
 *  - per bit alignment a (where in its first byte the marker's code starts),
 *    one byte wholly inside the code (HP_COREa, byte HP_ATa of the code's
 *    span) that the scan looks for a word at a time; a byte that is rare in
 *    ASCII text, so raw literals and DATA rarely wake the slow check;
 *  - hp_sym: for each 8-bit window, the placeholder tail character whose code
 *    starts it and that code's length (len << 8 | char), 0 for none. Tail
 *    characters code in 5 to 8 bits, so one window decodes one of them.
 */
export function bpfTables(): string {
  const { code } = huffmanEncode(MARKER_TEXT, 0);
  let m = 0n;
  for (const b of code) m = (m << 8n) | BigInt(b);
  const bits = huffmanBits(MARKER_TEXT);
  m >>= BigInt(code.length * 8 - bits);
  const lines = [`#define HP_MARKER_BITS ${bits}`, `#define HP_MARKER 0x${m.toString(16)}ULL`];
  for (let a = 0; a < 8; a++) {
    const w = m << BigInt(64 - bits - a);
    // Bytes wholly inside the code's span: 1..3 for every alignment.
    const candidates = [1, 2, 3].map((j) => ({ j, b: Number((w >> BigInt(56 - 8 * j)) & 0xffn) }));
    const rare = candidates.find((c) => c.b >= 0x80 || c.b < 0x20) ?? candidates[0]!;
    lines.push(`#define HP_CORE${a} 0x${rare.b.toString(16).padStart(2, "0")}`, `#define HP_AT${a} ${rare.j}`);
  }
  const sym = new Array<number>(256).fill(0);
  for (const c of TAIL_ALPHABET) {
    const b = c.charCodeAt(0);
    const len = HUFFMAN_BITS[b]!;
    const first = HUFFMAN_CODE[b]! << (8 - len);
    for (let v = first; v < first + (1 << (8 - len)); v++) sym[v] = (len << 8) | b;
  }
  lines.push("static const __u16 hp_sym[256] = {");
  for (let i = 0; i < 256; i += 8) lines.push(`\t${sym.slice(i, i + 8).map((x) => `0x${x.toString(16).padStart(3, "0")},`).join(" ")}`);
  lines.push("};");
  return lines.join("\n") + "\n";
}

if (import.meta.main && process.argv[2] === "--bpf-tables") process.stdout.write(bpfTables());
