import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { UsageError } from "../../src/errors.ts";
import {
  ALPHABET,
  KEY_LEN,
  MARKER,
  PlaceholderRegistry,
  VALUE_MAX,
  VALUE_MIN,
  isPlaceholderShaped,
  MARKER_BITS,
  placeholderFits,
  placeholderKey,
  valueShape,
  type ValueShape,
} from "../../src/secrets/placeholder.ts";
import { huffmanBits } from "../../src/dataplane/hpack.ts";

const TAIL = /^[0-9A-HJKMNP-TV-Z]*$/;

/** A value of n bytes whose Huffman code has 7 bits per tail character (most alphabet characters do). */
function shape(n: number): ValueShape {
  return { length: n, huffmanBits: MARKER_BITS + 7 * (n - 6) };
}

/** 2-character keys of 14 code bits: the key space of 8-byte values of shape(8), counted by brute force. */
const KEYS_OF_8 = [...ALPHABET].flatMap((a) => [...ALPHABET].map((b) => a + b)).filter((k) => huffmanBits(k) === 14).length;

function keyOf(p: string): string {
  return p.slice(MARKER.length, MARKER.length + Math.min(KEY_LEN, p.length - MARKER.length));
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an exception");
}

/** Brute force: no key equals or starts another. */
function assertPrefixFree(keys: string[]): void {
  for (let i = 0; i < keys.length; i++) {
    for (let j = 0; j < keys.length; j++) {
      if (i !== j && (keys[j] as string).startsWith(keys[i] as string)) {
        throw new Error(`key ${keys[i]} prefixes ${keys[j]}`);
      }
    }
  }
}

describe("constants", () => {
  test("match bpf/kloak.h", () => {
    const h = readFileSync(join(import.meta.dir, "../../bpf/kloak.h"), "utf8");
    const def = (name: string) => Number(new RegExp(`#define ${name} (\\d+)`).exec(h)?.[1]);
    expect(def("KLOAK_MARKER_LEN")).toBe(MARKER.length);
    expect(def("KLOAK_VALUE_MIN")).toBe(VALUE_MIN);
    expect(def("KLOAK_VALUE_MAX")).toBe(VALUE_MAX);
    expect(def("KLOAK_KEY_LEN")).toBe(KEY_LEN);
  });

  test("alphabet is Crockford base32", () => {
    expect(ALPHABET.length).toBe(32);
    expect(new Set(ALPHABET).size).toBe(32);
    expect(ALPHABET).not.toMatch(/[ILOU]/);
  });
});

describe("create", () => {
  for (const n of [8, 9, 14, 15, 100, 4096]) {
    test(`a ${n}-byte value gets a ${n}-byte placeholder`, () => {
      const reg = new PlaceholderRegistry();
      const p = reg.create("API_TOKEN", shape(n));
      expect(p.length).toBe(n);
      expect(new TextEncoder().encode(p).length).toBe(n); // ASCII: chars == bytes
      expect(p.startsWith(MARKER)).toBe(true);
      expect(p.slice(MARKER.length)).toMatch(TAIL);
      expect(isPlaceholderShaped(p)).toBe(true);
      expect(reg.size).toBe(1);
      expect(reg.has(p)).toBe(true);
    });
  }

  for (const n of [7, 4097, 0, -1]) {
    test(`a ${n}-byte value is refused`, () => {
      const value = "x".repeat(Math.max(n, 0));
      const reg = new PlaceholderRegistry();
      const err = thrown(() => reg.create("API_TOKEN", { length: n, huffmanBits: 7 * n }));
      expect(err).toBeInstanceOf(UsageError);
      expect(err.message).toContain('secret "API_TOKEN"');
      expect(err.message).toContain(`is ${n} bytes`);
      expect(err.message).toContain("8 to 4096 bytes");
      if (value !== "") expect(err.message).not.toContain(value);
      expect(reg.size).toBe(0);
    });
  }

  test("a fractional length is refused", () => {
    expect(() => new PlaceholderRegistry().create("API_TOKEN", { length: 8.5, huffmanBits: 60 })).toThrow(UsageError);
  });

  test("placeholders are random", () => {
    const reg = new PlaceholderRegistry();
    const a = reg.create("A", shape(64));
    const b = reg.create("B", shape(64));
    expect(a).not.toBe(b);
  });

  test("1000 placeholders of mixed lengths have distinct, prefix-free keys", () => {
    const reg = new PlaceholderRegistry();
    const lengths = [8, 9, 10, 11, 12, 13, 14, 15, 20, 40, 4096];
    const all: string[] = [];
    for (let i = 0; i < 1000; i++) {
      const n = lengths[i % lengths.length] as number;
      // every feasible code length in turn (short ones at their extremes have a handful of keys)
      const bits = n < 14 ? shape(n).huffmanBits : MARKER_BITS + 5 * (n - 6) + (i % (3 * (n - 6) + 1));
      const p = reg.create(`S${i}`, { length: n, huffmanBits: bits });
      expect(huffmanBits(p)).toBe(bits);
      expect(p.length).toBe(n);
      all.push(p);
    }
    expect(reg.size).toBe(1000);
    expect(new Set(all).size).toBe(1000);
    assertPrefixFree(all.map(keyOf));
  });

  test("8-byte values of one code length exhaust their keys with a clear error", () => {
    const reg = new PlaceholderRegistry();
    const keys = new Set<string>();
    for (let i = 0; i < KEYS_OF_8; i++) keys.add(keyOf(reg.create(`S${i}`, shape(8))));
    expect(keys.size).toBe(KEYS_OF_8);
    const err = thrown(() => reg.create("ONE_MORE", shape(8)));
    expect(err).toBeInstanceOf(UsageError);
    expect(err.message).toContain('secret "ONE_MORE"');
    expect(err.message).toContain("no placeholder left");
    expect(err.message).toContain(String(KEYS_OF_8));
    // Other code lengths have keys of their own.
    const other = reg.create("OTHER", { length: 8, huffmanBits: MARKER_BITS + 12 });
    expect(huffmanBits(other)).toBe(MARKER_BITS + 12);
    // Releasing one frees exactly that key again.
    const freed = `${MARKER}${[...keys][100]}`;
    expect(reg.release(freed)).toBe(true);
    expect(reg.create("AGAIN", shape(8))).toBe(freed);
  });

  test("a longer key blocks the short key it starts with", () => {
    const reg = new PlaceholderRegistry();
    const long = reg.create("LONG", shape(9));
    let count = 0;
    for (;;) {
      try {
        const p = reg.create(`S${count}`, shape(8));
        expect(long.startsWith(p)).toBe(false);
        count++;
      } catch {
        break;
      }
    }
    expect(count).toBe(KEYS_OF_8 - (huffmanBits(keyOf(long).slice(0, 2)) === 14 ? 1 : 0));
  });
});

describe("Huffman code length (HTTP/2)", () => {
  test("the marker codes in 37 bits; tail characters in 5 to 8", () => {
    expect(MARKER_BITS).toBe(37);
    const bits = [...ALPHABET].map((c) => huffmanBits(c));
    expect(Math.min(...bits)).toBe(5);
    expect(Math.max(...bits)).toBe(8);
  });

  test("every feasible code length of a 10-byte value gets a placeholder of exactly that length", () => {
    const reg = new PlaceholderRegistry();
    for (let bits = MARKER_BITS + 5 * 4; bits <= MARKER_BITS + 8 * 4; bits++) {
      const p = reg.create(`S${bits}`, { length: 10, huffmanBits: bits });
      expect(p.length).toBe(10);
      expect(huffmanBits(p)).toBe(bits);
    }
  });

  test("real-looking values: same bytes, same code bits, random tails", () => {
    const reg = new PlaceholderRegistry();
    const values = [
      "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
      "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaZZZ",
      "0123456789abcdef0123456789abcdef",
      "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
      "Bearer-style+token/with=padding==",
      "x".repeat(4096),
    ];
    for (const [i, v] of values.entries()) {
      const p = reg.create(`V${i}`, new TextEncoder().encode(v));
      expect(p.length).toBe(v.length);
      expect(huffmanBits(p)).toBe(huffmanBits(v));
      expect(placeholderFits(p, valueShape(v))).toBe(true);
    }
  });

  test("a value of mostly 5-bit characters is refused, saying why and without the value", () => {
    const value = "aaaaeeeeoooo";
    const err = thrown(() => new PlaceholderRegistry().create("TOKEN", valueShape(value)));
    expect(err).toBeInstanceOf(UsageError);
    expect(err.message).toContain('secret "TOKEN"');
    expect(err.message).toContain("HPACK Huffman code");
    expect(err.message).toContain("5-bit codes");
    expect(err.message).toContain("Rotate it");
    expect(err.message).not.toContain(value);
  });

  test("a value of long codes (binary) is refused", () => {
    const value = Uint8Array.from({ length: 16 }, (_, i) => 0x80 + i);
    const err = thrown(() => new PlaceholderRegistry().create("BLOB", value));
    expect(err).toBeInstanceOf(UsageError);
    expect(err.message).toContain("too many characters with long codes");
  });

  test("rotation: a same-length value with another code length needs a new placeholder (upstream #269)", () => {
    const reg = new PlaceholderRegistry();
    const v1 = "Abcdefghijklmnop";
    const v2 = "Abcdefghijklmnoz"; // same length; 'z' codes in 7 bits, 'p' in 6
    expect(v2.length).toBe(v1.length);
    expect(huffmanBits(v2)).not.toBe(huffmanBits(v1));
    const p1 = reg.create("S", valueShape(v1));
    expect(placeholderFits(p1, valueShape(v1))).toBe(true);
    expect(placeholderFits(p1, valueShape(v2))).toBe(false);
    const v3 = "Abcdefghijklmnoq"; // 'q' codes in 7 bits too: v3 and v2 share a shape
    expect(placeholderFits(reg.create("T", valueShape(v2)), valueShape(v3))).toBe(true);
  });
});

describe("placeholderKey", () => {
  test("8-byte placeholder: 2 tail chars, zero padded", () => {
    const { tail, tailLen } = placeholderKey("kloak:AB");
    expect(tailLen).toBe(2);
    expect([...tail]).toEqual([65, 66, 0, 0, 0, 0, 0, 0]);
  });

  test("long placeholder: first KEY_LEN tail chars", () => {
    const { tail, tailLen } = placeholderKey("kloak:0123456789ABC");
    expect(tailLen).toBe(KEY_LEN);
    expect(new TextDecoder().decode(tail)).toBe("01234567");
  });

  test("refuses non-placeholders", () => {
    expect(() => placeholderKey("hello world")).toThrow();
  });
});

describe("isPlaceholderShaped", () => {
  test("accepts and refuses", () => {
    expect(isPlaceholderShaped("kloak:AB")).toBe(true);
    expect(isPlaceholderShaped(`kloak:${"Z".repeat(4090)}`)).toBe(true);
    expect(isPlaceholderShaped(`kloak:${"Z".repeat(4091)}`)).toBe(false); // 4097
    expect(isPlaceholderShaped("kloak:A")).toBe(false); // 7 bytes
    expect(isPlaceholderShaped("kloak:ab")).toBe(false); // lower case
    expect(isPlaceholderShaped("kloak:AI")).toBe(false); // I is not in the alphabet
    expect(isPlaceholderShaped("kloak:AB=")).toBe(false);
    expect(isPlaceholderShaped("Kloak:AB")).toBe(false);
  });
});

describe("adopt", () => {
  test("registers a placeholder that create then avoids", () => {
    const reg = new PlaceholderRegistry();
    reg.adopt("OLD", "kloak:AB");
    expect(reg.size).toBe(1);
    expect(reg.has("kloak:AB")).toBe(true);
    const ab = { length: 8, huffmanBits: huffmanBits("kloak:AB") };
    const n = [...ALPHABET].flatMap((a) => [...ALPHABET].map((b) => a + b)).filter((k) => huffmanBits(k) === huffmanBits("AB")).length;
    for (let i = 0; i < n - 1; i++) expect(keyOf(reg.create(`S${i}`, ab))).not.toBe("AB");
    expect(() => reg.create("FULL", ab)).toThrow(/no placeholder left/);
  });

  test("refuses the same placeholder twice", () => {
    const reg = new PlaceholderRegistry();
    reg.adopt("A", "kloak:0123456789");
    const err = thrown(() => reg.adopt("B", "kloak:0123456789"));
    expect(err).toBeInstanceOf(UsageError);
    expect(err.message).toContain('"B"');
    expect(err.message).toContain('"A"');
  });

  test("refuses keys that equal or prefix each other", () => {
    const reg = new PlaceholderRegistry();
    reg.adopt("LONG", "kloak:ABCDEFGH99");
    // Same 8-char key, different rest.
    expect(() => reg.adopt("SAME_KEY", "kloak:ABCDEFGHZZ")).toThrow(/secret "LONG"/);
    // Shorter key that starts the loaded one.
    expect(() => reg.adopt("SHORT", "kloak:AB")).toThrow(/secret "LONG"/);
    expect(() => reg.adopt("SHORT", "kloak:ABCD")).toThrow(/secret "LONG"/);
    // Longer key that the loaded short one starts.
    const reg2 = new PlaceholderRegistry();
    reg2.adopt("SHORT", "kloak:AB");
    expect(() => reg2.adopt("LONG", "kloak:ABCDEFGH99")).toThrow(/secret "SHORT"/);
    // Unrelated keys are fine.
    reg2.adopt("OTHER", "kloak:AC0000");
    expect(reg2.size).toBe(2);
  });

  test("refuses malformed placeholders without echoing them", () => {
    const reg = new PlaceholderRegistry();
    for (const bad of ["kloak:AI00", "secretvalue123", "kloak:ab12345", "kloak:A", `kloak:${"A".repeat(4091)}`]) {
      const err = thrown(() => reg.adopt("X", bad));
      expect(err).toBeInstanceOf(UsageError);
      expect(err.message).toContain('secret "X"');
      expect(err.message).not.toContain(bad);
    }
    expect(reg.size).toBe(0);
  });

  test("release frees the key for adopt", () => {
    const reg = new PlaceholderRegistry();
    reg.adopt("A", "kloak:ABCDEFGH99");
    expect(reg.release("kloak:ABCDEFGHZZ")).toBe(false); // same key, not the loaded placeholder
    expect(reg.release("kloak:AB")).toBe(false);
    expect(reg.release("nonsense")).toBe(false);
    expect(reg.release("kloak:ABCDEFGH99")).toBe(true);
    expect(reg.release("kloak:ABCDEFGH99")).toBe(false);
    expect(reg.size).toBe(0);
    reg.adopt("B", "kloak:AB");
    expect(reg.size).toBe(1);
  });
});
