/**
 * Placeholders: the strings a workload sees instead of a secret value.
 *
 * A placeholder is exactly as long as its value, so substituting one for the
 * other inside a TLS write never changes the write's length (no buffer to grow,
 * no Content-Length to fix). It is MARKER followed by random ALPHABET
 * characters. The kernel finds the secret by the first KEY_LEN characters after
 * the marker (the "key"); this module keeps the loaded keys prefix-free so that
 * at most one of them can match at any position.
 *
 * HTTP/2 sends header values Huffman-coded (HPACK, RFC 7541), and a string
 * literal's length prefix counts the coded bytes. So a placeholder also has
 * exactly the value's Huffman code length in bits: then the value's code can
 * replace the placeholder's bit for bit, wherever it starts in a byte. The
 * marker's code is fixed (MARKER_BITS); each tail character codes in 5 to 8
 * bits, and the tail is drawn so that the total is the value's. A value whose
 * code is shorter than 5 bits per tail character (nearly all characters with
 * 5-bit codes) or longer than 8 bits each (binary, rare punctuation) has no
 * such placeholder and is refused (huffmanProblem).
 */
import { UsageError } from "../errors.ts";
import { HUFFMAN_BITS, huffmanBits } from "../dataplane/hpack.ts";

// These four must match bpf/kloak.h (test/secrets/placeholder.test.ts checks).
export const MARKER = "kloak:";
export const VALUE_MIN = 8;
export const VALUE_MAX = 4096;
export const KEY_LEN = 8;

/**
 * Crockford base32 (no I, L, O, U): unambiguous to read aloud or copy by hand,
 * and needs no escaping in headers, URLs, JSON, env vars or file names.
 * 32 symbols, so a random byte masked to 5 bits picks one uniformly.
 */
export const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const RADIX = ALPHABET.length; // 32
/** Huffman code length of the marker, and of each alphabet character (5..8 bits). */
export const MARKER_BITS = huffmanBits(MARKER);
const CHAR_BITS = [...ALPHABET].map((c) => HUFFMAN_BITS[c.charCodeAt(0)]!);
const MIN_CHAR_BITS = Math.min(...CHAR_BITS);
const MAX_CHAR_BITS = Math.max(...CHAR_BITS);
const TAIL_RE = /^[0-9A-HJKMNP-TV-Z]+$/;
// Random guesses before switching to an exact search of the free keys; with a
// sparse key space the first guess almost always succeeds.
const RANDOM_ATTEMPTS = 32;

/** Why `length` cannot be a value/placeholder length, or undefined if it can. */
function lengthProblem(what: string, length: number): string | undefined {
  if (Number.isInteger(length) && length >= VALUE_MIN && length <= VALUE_MAX) return undefined;
  return (
    `${what} is ${length} bytes; kloak needs values of ${VALUE_MIN} to ${VALUE_MAX} bytes ` +
    `(a placeholder must fit in the same length)`
  );
}

/** What a placeholder must match: the value's byte length and Huffman code length. */
export interface ValueShape {
  length: number;
  huffmanBits: number;
}

export function valueShape(value: Uint8Array | string): ValueShape {
  return { length: value.length, huffmanBits: huffmanBits(value) };
}

/**
 * Why no placeholder can have the Huffman code length of a value of this
 * shape (the value itself is never looked at, so it cannot leak into the
 * message), or undefined if one can.
 */
export function huffmanProblem(what: string, shape: ValueShape): string | undefined {
  const n = shape.length - MARKER.length;
  const min = MARKER_BITS + n * MIN_CHAR_BITS;
  const max = MARKER_BITS + n * MAX_CHAR_BITS;
  if (shape.huffmanBits >= min && shape.huffmanBits <= max) return undefined;
  const why =
    shape.huffmanBits < min
      ? `shorter than any ${shape.length}-byte placeholder's (at least ${min} bits): nearly all its ` +
        `characters have 5-bit codes (0 1 2 a c e i o s t)`
      : `longer than any ${shape.length}-byte placeholder's (at most ${max} bits): it has too many ` +
        `characters with long codes (bytes outside letters, digits and common punctuation, e.g. binary or non-ASCII)`;
  return (
    `${what} cannot get a placeholder that HTTP/2 can carry: its HPACK Huffman code is ` +
    `${shape.huffmanBits} bits, ${why}; kloak would corrupt HTTP/2 headers carrying it. ` +
    `Rotate it to a value with more varied characters, or give it in an encoding (e.g. base64) the server accepts`
  );
}

/** True when `placeholder` can stand for a value of this shape (also after a rotation). */
export function placeholderFits(placeholder: string, shape: ValueShape): boolean {
  return (
    isPlaceholderShaped(placeholder) && placeholder.length === shape.length && huffmanBits(placeholder) === shape.huffmanBits
  );
}

/** Length of the lookup key of a placeholder of `length` bytes. */
function keyLength(length: number): number {
  return Math.min(KEY_LEN, length - MARKER.length);
}

/** ways[m][b]: strings of m alphabet characters (m <= KEY_LEN) whose codes total b bits. */
const WAYS: number[][] = [[1]];
for (let m = 1; m <= KEY_LEN; m++) {
  const row = new Array<number>(m * MAX_CHAR_BITS + 1).fill(0);
  WAYS[m - 1]!.forEach((w, b) => {
    for (const l of CHAR_BITS) row[b + l]! += w;
  });
  WAYS.push(row);
}

/** Strings of m (<= KEY_LEN) characters whose code length lies in [lo, hi]. */
function ways(m: number, lo: number, hi: number): number {
  const row = WAYS[m]!;
  let n = 0;
  for (let b = Math.max(lo, 0); b <= Math.min(hi, row.length - 1); b++) n += row[b]!;
  return n;
}

/** Bits the key of a placeholder of this shape may take, so that its rest can still hit the total. */
function keyBitRange(shape: ValueShape, keyLen: number): [number, number] {
  const rest = shape.length - MARKER.length - keyLen;
  const target = shape.huffmanBits - MARKER_BITS;
  return [target - rest * MAX_CHAR_BITS, target - rest * MIN_CHAR_BITS];
}

/** The r-th (0-based) string of m characters with code length in [lo, hi], in ALPHABET order. */
function nthKey(m: number, lo: number, hi: number, r: number): string {
  let out = "";
  for (let d = 0; d < m; d++) {
    for (let i = 0; i < RADIX; i++) {
      const l = CHAR_BITS[i]!;
      const w = ways(m - d - 1, lo - l, hi - l);
      if (r < w) {
        out += ALPHABET.charAt(i);
        lo -= l;
        hi -= l;
        break;
      }
      r -= w;
    }
  }
  return out;
}

/**
 * Random characters whose codes total exactly `bits`: each one drawn
 * uniformly among those that leave the rest reachable (5..8 bits a
 * character, every length in between taken by some character).
 */
function randomCharsOfBits(count: number, bits: number): string {
  let out = "";
  for (let left = count; left > 0; left--) {
    for (;;) {
      const i = crypto.getRandomValues(new Uint8Array(1))[0]! & (RADIX - 1);
      const rest = bits - CHAR_BITS[i]!;
      if (rest < (left - 1) * MIN_CHAR_BITS || rest > (left - 1) * MAX_CHAR_BITS) continue;
      out += ALPHABET.charAt(i);
      bits = rest;
      break;
    }
  }
  return out;
}

/** Uniform integer in [0, n) for n <= 2^48. */
function randomBelow(n: number): number {
  const space = 2 ** 48;
  const limit = space - (space % n); // reject the biased top slice
  for (;;) {
    const b = crypto.getRandomValues(new Uint8Array(6));
    let x = 0;
    for (const byte of b) x = x * 256 + byte;
    if (x < limit) return x % n;
  }
}

/** True if `s` has the form of a placeholder (marker, allowed length, alphabet-only tail). */
export function isPlaceholderShaped(s: string): boolean {
  return (
    s.length >= VALUE_MIN &&
    s.length <= VALUE_MAX &&
    s.startsWith(MARKER) &&
    TAIL_RE.test(s.slice(MARKER.length))
  );
}

/**
 * The kernel map key of a placeholder (struct kloak_ph_key): its first
 * min(KEY_LEN, length - marker) tail chars as ASCII, zero padded to KEY_LEN.
 */
export function placeholderKey(placeholder: string): { tail: Uint8Array; tailLen: number } {
  if (!isPlaceholderShaped(placeholder)) {
    throw new Error(`placeholderKey: not a kloak placeholder (${placeholder.length} chars)`);
  }
  const tailLen = keyLength(placeholder.length);
  const tail = new Uint8Array(KEY_LEN);
  for (let i = 0; i < tailLen; i++) tail[i] = placeholder.charCodeAt(MARKER.length + i);
  return { tail, tailLen };
}

/** Trie over loaded keys; a node with `placeholder` set ends a key (and has no children). */
interface Node {
  children: Map<string, Node>;
  placeholder?: string;
  secret?: string;
}

function newNode(): Node {
  return { children: new Map() };
}

/**
 * Every placeholder currently loaded, indexed by key. Keys are kept prefix-free:
 * no key equals or is a prefix of another, because the kernel matches a key
 * against the bytes after "kloak:" and must never find two candidates.
 */
export class PlaceholderRegistry {
  readonly #root: Node = newNode();
  #size = 0;

  get size(): number {
    return this.#size;
  }

  has(placeholder: string): boolean {
    if (!isPlaceholderShaped(placeholder)) return false;
    return this.#nodeAt(this.#keyOf(placeholder))?.placeholder === placeholder;
  }

  /**
   * A new placeholder with the value's length and Huffman code length (pass
   * the value or its valueShape). Throws UsageError when the value cannot
   * have one (length out of range, no placeholder of its code length) or no
   * key of the needed length is free. Messages never hold the value.
   */
  create(secretName: string, value: Uint8Array | ValueShape): string {
    const shape = value instanceof Uint8Array ? valueShape(value) : value;
    const problem =
      lengthProblem(`secret "${secretName}"`, shape.length) ?? huffmanProblem(`secret "${secretName}"`, shape);
    if (problem !== undefined) throw new UsageError(problem);
    const keyLen = keyLength(shape.length);
    const [lo, hi] = keyBitRange(shape, keyLen);
    const key = this.#freeKey(secretName, shape.length, keyLen, lo, hi);
    const keyBits = huffmanBits(key);
    const placeholder =
      MARKER + key + randomCharsOfBits(shape.length - MARKER.length - keyLen, shape.huffmanBits - MARKER_BITS - keyBits);
    this.#insert(key, placeholder, secretName);
    return placeholder;
  }

  /**
   * Registers a placeholder made earlier (so a secret keeps its placeholder
   * across updates). Throws UsageError if it is malformed or its key overlaps a
   * loaded one. The placeholder is not echoed: a malformed one might be a value.
   */
  adopt(secretName: string, placeholder: string): void {
    const problem = lengthProblem(`the placeholder of secret "${secretName}"`, placeholder.length);
    if (problem !== undefined) throw new UsageError(problem);
    if (!isPlaceholderShaped(placeholder)) {
      throw new UsageError(
        `the placeholder of secret "${secretName}" is not a kloak placeholder: it must be ` +
          `"${MARKER}" followed by characters of ${ALPHABET}; let kloak create a new one`,
      );
    }
    const key = this.#keyOf(placeholder);
    const other = this.#conflict(key);
    if (other !== undefined) {
      throw new UsageError(
        `the placeholder of secret "${secretName}" overlaps the placeholder of secret ` +
          `"${other.secret ?? "?"}" (one lookup key equals or starts the other); ` +
          `drop one of them and let kloak create a new one`,
      );
    }
    this.#insert(key, placeholder, secretName);
  }

  /** Forgets a placeholder so its key can be reused. Returns false if it was not loaded. */
  release(placeholder: string): boolean {
    if (!isPlaceholderShaped(placeholder)) return false;
    const key = this.#keyOf(placeholder);
    const path: Node[] = [this.#root];
    for (const c of key) {
      const next = path[path.length - 1]?.children.get(c);
      if (next === undefined) return false;
      path.push(next);
    }
    const end = path[path.length - 1];
    if (end === undefined || end.placeholder !== placeholder) return false;
    delete end.placeholder;
    delete end.secret;
    this.#size--;
    // Prune now-empty branches so they stop blocking shorter keys.
    for (let i = key.length; i > 0; i--) {
      const node = path[i];
      if (node === undefined || node.children.size > 0 || node.placeholder !== undefined) break;
      path[i - 1]?.children.delete(key.charAt(i - 1));
    }
    return true;
  }

  #keyOf(placeholder: string): string {
    return placeholder.slice(MARKER.length, MARKER.length + keyLength(placeholder.length));
  }

  #nodeAt(key: string): Node | undefined {
    let node: Node | undefined = this.#root;
    for (const c of key) {
      node = node.children.get(c);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /** The loaded entry whose key equals, prefixes, or is prefixed by `key`, if any. */
  #conflict(key: string): Node | undefined {
    let node: Node = this.#root;
    for (const c of key) {
      if (node.placeholder !== undefined) return node; // a loaded key prefixes `key`
      const next = node.children.get(c);
      if (next === undefined) return undefined;
      node = next;
    }
    // `key` equals a loaded key, or is a proper prefix of one: report any below.
    while (node.placeholder === undefined) {
      const first: Node | undefined = node.children.values().next().value;
      if (first === undefined) return undefined; // unreachable: empty nodes are pruned
      node = first;
    }
    return node;
  }

  #insert(key: string, placeholder: string, secret: string): void {
    let node = this.#root;
    for (const c of key) {
      let next = node.children.get(c);
      if (next === undefined) {
        next = newNode();
        node.children.set(c, next);
      }
      node = next;
    }
    node.placeholder = placeholder;
    node.secret = secret;
    this.#size++;
  }

  /** A free key of keyLen characters whose code length lies in [lo, hi]. */
  #freeKey(secretName: string, valueLength: number, keyLen: number, lo: number, hi: number): string {
    const all = ways(keyLen, lo, hi);
    for (let i = 0; i < RANDOM_ATTEMPTS && all > 0; i++) {
      const key = nthKey(keyLen, lo, hi, randomBelow(all));
      if (this.#conflict(key) === undefined) return key;
    }
    // The space is crowded (short keys have few forms): count the free keys and
    // pick one uniformly, so we only fail when none is left.
    const total = this.#countFree(this.#root, keyLen, lo, hi);
    if (total === 0) {
      throw new UsageError(
        `no placeholder left for secret "${secretName}" (${valueLength} bytes): ` +
          `placeholders of that length and Huffman code length have only ${all} possible lookup keys ` +
          `and all are taken or blocked by the ${this.#size} loaded placeholders; ` +
          `use fewer secrets of ${valueLength} bytes or longer values`,
      );
    }
    let r = randomBelow(total);
    let node: Node | undefined = this.#root;
    let key = "";
    for (let depth = 0; depth < keyLen; depth++) {
      const remaining = keyLen - depth - 1;
      if (node === undefined) {
        // Untouched subtree: every completion in range is free.
        key += nthKey(remaining + 1, lo, hi, r);
        break;
      }
      for (let i = 0; i < RADIX; i++) {
        const c = ALPHABET.charAt(i);
        const l = CHAR_BITS[i]!;
        const child: Node | undefined = node.children.get(c);
        const free = this.#countFree(child, remaining, lo - l, hi - l);
        if (r < free) {
          key += c;
          node = child;
          lo -= l;
          hi -= l;
          break;
        }
        r -= free;
      }
    }
    return key;
  }

  /** Free keys of `remaining` more chars below `node` whose codes total [lo, hi] bits (undefined: nothing loaded there). */
  #countFree(node: Node | undefined, remaining: number, lo: number, hi: number): number {
    if (hi < 0 || lo > remaining * MAX_CHAR_BITS) return 0;
    if (node === undefined) return ways(remaining, lo, hi);
    if (node.placeholder !== undefined || remaining === 0) return 0;
    let sum = 0;
    for (let i = 0; i < RADIX; i++) {
      const l = CHAR_BITS[i]!;
      sum += this.#countFree(node.children.get(ALPHABET.charAt(i)), remaining - 1, lo - l, hi - l);
    }
    return sum;
  }
}
