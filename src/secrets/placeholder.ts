/**
 * Placeholders: the strings a workload sees instead of a secret value.
 *
 * A placeholder is exactly as long as its value, so substituting one for the
 * other inside a TLS write never changes the write's length (no buffer to grow,
 * no Content-Length to fix). It is MARKER followed by random ALPHABET
 * characters. The kernel finds the secret by the first KEY_LEN characters after
 * the marker (the "key"); this module keeps the loaded keys prefix-free so that
 * at most one of them can match at any position.
 */
import { UsageError } from "../errors.ts";

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

/** Length of the lookup key of a placeholder of `length` bytes. */
function keyLength(length: number): number {
  return Math.min(KEY_LEN, length - MARKER.length);
}

function randomChars(count: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(count));
  let out = "";
  // 32 divides 256, so masking keeps every symbol equally likely: no rejection needed.
  for (const b of bytes) out += ALPHABET.charAt(b & (RADIX - 1));
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
   * A new placeholder as long as the secret's value. Throws UsageError when the
   * length is out of range or no key of the needed length is free. The value
   * itself is never passed in, so it cannot leak into a message.
   */
  create(secretName: string, valueLength: number): string {
    const problem = lengthProblem(`secret "${secretName}"`, valueLength);
    if (problem !== undefined) throw new UsageError(problem);
    const keyLen = keyLength(valueLength);
    const key = this.#freeKey(secretName, valueLength, keyLen);
    const placeholder = MARKER + key + randomChars(valueLength - MARKER.length - keyLen);
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

  #freeKey(secretName: string, valueLength: number, keyLen: number): string {
    for (let i = 0; i < RANDOM_ATTEMPTS; i++) {
      const key = randomChars(keyLen);
      if (this.#conflict(key) === undefined) return key;
    }
    // The space is crowded (short keys have few forms): count the free keys and
    // pick one uniformly, so we only fail when none is left.
    const total = this.#countFree(this.#root, keyLen);
    if (total === 0) {
      throw new UsageError(
        `no placeholder left for secret "${secretName}" (${valueLength} bytes): ` +
          `placeholders of that length have only ${RADIX ** keyLen} possible lookup keys ` +
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
        // Untouched subtree: every completion is free, so r indexes it directly in base 32.
        for (let d = depth; d < keyLen; d++) {
          const weight = RADIX ** (keyLen - d - 1);
          key += ALPHABET.charAt(Math.floor(r / weight));
          r %= weight;
        }
        break;
      }
      for (const c of ALPHABET) {
        const child: Node | undefined = node.children.get(c);
        const free = this.#countFree(child, remaining);
        if (r < free) {
          key += c;
          node = child;
          break;
        }
        r -= free;
      }
    }
    return key;
  }

  /** Free keys of `remaining` more chars below `node` (undefined: nothing loaded there). */
  #countFree(node: Node | undefined, remaining: number): number {
    if (node === undefined) return RADIX ** remaining;
    if (node.placeholder !== undefined || remaining === 0) return 0;
    let sum = 0;
    for (const c of ALPHABET) sum += this.#countFree(node.children.get(c), remaining - 1);
    return sum;
  }
}
