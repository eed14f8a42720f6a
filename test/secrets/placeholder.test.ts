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
  placeholderKey,
} from "../../src/secrets/placeholder.ts";

const TAIL = /^[0-9A-HJKMNP-TV-Z]*$/;

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
      const p = reg.create("API_TOKEN", n);
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
      const err = thrown(() => reg.create("API_TOKEN", n));
      expect(err).toBeInstanceOf(UsageError);
      expect(err.message).toContain('secret "API_TOKEN"');
      expect(err.message).toContain(`is ${n} bytes`);
      expect(err.message).toContain("8 to 4096 bytes");
      if (value !== "") expect(err.message).not.toContain(value);
      expect(reg.size).toBe(0);
    });
  }

  test("a fractional length is refused", () => {
    expect(() => new PlaceholderRegistry().create("API_TOKEN", 8.5)).toThrow(UsageError);
  });

  test("placeholders are random", () => {
    const reg = new PlaceholderRegistry();
    const a = reg.create("A", 64);
    const b = reg.create("B", 64);
    expect(a).not.toBe(b);
  });

  test("2000 placeholders of mixed lengths have distinct, prefix-free keys", () => {
    const reg = new PlaceholderRegistry();
    const lengths = [8, 9, 10, 11, 12, 13, 14, 15, 20, 40, 4096];
    const all: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const n = lengths[i % lengths.length] as number;
      const p = reg.create(`S${i}`, n);
      expect(p.length).toBe(n);
      all.push(p);
    }
    expect(reg.size).toBe(2000);
    expect(new Set(all).size).toBe(2000);
    assertPrefixFree(all.map(keyOf));
  });

  test("8-byte values exhaust at 1024 placeholders with a clear error", () => {
    const reg = new PlaceholderRegistry();
    const keys = new Set<string>();
    for (let i = 0; i < 1024; i++) keys.add(keyOf(reg.create(`S${i}`, 8)));
    expect(keys.size).toBe(1024);
    const err = thrown(() => reg.create("ONE_MORE", 8));
    expect(err).toBeInstanceOf(UsageError);
    expect(err.message).toContain('secret "ONE_MORE"');
    expect(err.message).toContain("no placeholder left");
    expect(err.message).toContain("1024");
    // Every longer key starts with some 2-char key now, so nothing fits.
    expect(() => reg.create("LONGER", 30)).toThrow(/no placeholder left/);
    // Releasing one frees exactly that key again.
    const freed = `${MARKER}${[...keys][500]}`;
    expect(reg.release(freed)).toBe(true);
    expect(reg.create("AGAIN", 8)).toBe(freed);
  });

  test("a longer key blocks the short key it starts with", () => {
    const reg = new PlaceholderRegistry();
    const long = reg.create("LONG", 9);
    let count = 0;
    for (;;) {
      try {
        const p = reg.create(`S${count}`, 8);
        expect(long.startsWith(p)).toBe(false);
        count++;
      } catch {
        break;
      }
    }
    expect(count).toBe(1023);
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
    for (let i = 0; i < 1023; i++) expect(keyOf(reg.create(`S${i}`, 8))).not.toBe("AB");
    expect(() => reg.create("FULL", 8)).toThrow(/no placeholder left/);
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
