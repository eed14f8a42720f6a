/**
 * Running the real kloak CLI from tests: `bun src/main.ts`, or the compiled
 * executable when KLOAK_BIN is set (CI can test dist/kloak that way).
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { huffmanProblem, placeholderFits, valueShape } from "../../src/secrets/placeholder.ts";

export const ROOT = join(import.meta.dir, "..", "..");
export const KLOAK: string[] = process.env.KLOAK_BIN ? [process.env.KLOAK_BIN] : [process.execPath, join(ROOT, "src", "main.ts")];

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * `kloak exec` refuses to run CMD as root unless told (--user root); the
 * data-plane tests are about substitution, not about who CMD runs as, and
 * their files (certificates, requests) are root's. Tests that are about the
 * user (test/security/supervisor.test.ts) pass --user themselves.
 */
export function asRootUnlessTold(args: string[]): string[] {
  if (args[0] !== "exec") return args;
  const own = args.indexOf("--") < 0 ? args : args.slice(0, args.indexOf("--"));
  if (own.some((a) => a === "--user" || a.startsWith("--user=") || a === "-h" || a === "--help")) return args;
  return ["exec", "--user", "root", ...args.slice(1)];
}

export function spawnKloak(args: string[], o: { env?: Record<string, string | undefined> } = {}) {
  return Bun.spawn([...KLOAK, ...asRootUnlessTold(args)], { env: { ...process.env, ...o.env }, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
}

export async function runKloak(args: string[], o: { env?: Record<string, string | undefined>; timeoutMs?: number } = {}): Promise<Run> {
  const p = spawnKloak(args, o);
  const timer = setTimeout(() => p.kill("SIGKILL"), o.timeoutMs ?? 60_000);
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/**
 * A synthetic secret value (never a real one) of the given length, safe in
 * headers, and one kloak accepts: short random values can have a Huffman
 * code length no placeholder has (src/secrets/placeholder.ts), so draw again.
 */
export function fakeSecret(length = 32): string {
  for (;;) {
    const v = randomBytes(length).toString("base64url").slice(0, length);
    if (huffmanProblem("fake", valueShape(v)) === undefined) return v;
  }
}

/**
 * A new synthetic value that placeholder ph still fits: same length and same
 * HPACK Huffman code length (a rotation that keeps the placeholder; any other
 * rotation gets a new one, src/secrets/placeholder.ts).
 */
export function fakeSecretFitting(ph: string): string {
  for (;;) {
    const v = fakeSecret(ph.length);
    if (placeholderFits(ph, valueShape(v))) return v;
  }
}

/** How many times needle occurs in hay. Assert on counts so a failing test never prints the value. */
export function occurrences(hay: Buffer | string, needle: string): number {
  const h = Buffer.isBuffer(hay) ? hay : Buffer.from(hay);
  const n = Buffer.from(needle);
  let count = 0;
  for (let i = h.indexOf(n); i >= 0; i = h.indexOf(n, i + 1)) count++;
  return count;
}

/** Count of placeholders (marker + tail) in the data. */
export function placeholderCount(hay: Buffer | string): number {
  return (Buffer.from(hay).toString("latin1").match(/kloak:[0-9A-HJKMNP-TV-Z]{2,}/g) ?? []).length;
}
