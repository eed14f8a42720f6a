/**
 * Stop mode's half of HTTP/2 substitution (bpf/hpack.h is the kernel's):
 * a Huffman-coded placeholder is a bit string inside a header block, so the
 * value goes in as its own Huffman code, written into exactly the
 * placeholder's bits. The bits before and after (the end of "Bearer ", the
 * next literal, the padding) stay as they were, which is why the bytes are
 * read first and only the covered bits are changed. Value and placeholder
 * codes have the same length (src/secrets/placeholder.ts issues them so).
 */
import { huffmanBits, huffmanEncode } from "./hpack.ts";
import { LAYOUT, VALUE_MAX } from "./abi.ts";

/** The Huffman code of `bytes`, zero padded (what kloak_hcodes and the splice use). */
export function codeOf(bytes: Uint8Array): { code: Uint8Array; bits: number } {
  return huffmanEncode(bytes, 0);
}

/**
 * kloak_hcodes[id] for a secret: its placeholder's code, and whether the
 * value's code is exactly as long (the kernel refuses the secret's Huffman
 * candidates when not: hpack_code_length).
 */
export function encodeHcode(placeholder: Uint8Array, value: Uint8Array): Uint8Array {
  const { code, bits } = codeOf(placeholder);
  if (code.length > VALUE_MAX) throw new RangeError(`kloak_hcode holds at most ${VALUE_MAX} code bytes`);
  const b = new Uint8Array(LAYOUT.kloak_hcode.size);
  const v = new DataView(b.buffer);
  v.setUint32(LAYOUT.kloak_hcode.fields.bits, bits, true);
  v.setUint32(LAYOUT.kloak_hcode.fields.fits, huffmanBits(value) === bits ? 1 : 0, true);
  b.set(code, LAYOUT.kloak_hcode.fields.code);
  return b;
}

function bitAt(buf: Uint8Array, pos: number): number {
  return (buf[pos >> 3]! >> (7 - (pos & 7))) & 1;
}

/** Whether `span` holds `code` (bits long) from bit `shift` on. */
export function holdsCode(span: Uint8Array, shift: number, code: Uint8Array, bits: number): boolean {
  if (shift < 0 || shift > 7 || span.length !== (shift + bits + 7) >> 3) return false;
  for (let i = 0; i < bits; i++) if (bitAt(span, shift + i) !== bitAt(code, i)) return false;
  return true;
}

/** A copy of `span` with bits [shift, shift + bits) replaced by `code`. */
export function spliceCode(span: Uint8Array, shift: number, code: Uint8Array, bits: number): Uint8Array {
  const out = Uint8Array.from(span);
  for (let i = 0; i < bits; i++) {
    const pos = shift + i;
    const mask = 0x80 >> (pos & 7);
    if (bitAt(code, i)) out[pos >> 3]! |= mask;
    else out[pos >> 3]! &= ~mask;
  }
  return out;
}
