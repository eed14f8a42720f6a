/**
 * Dependencies point one way (issue 15): lib/ knows nothing of kloak, and
 * cli/ and agent/ are the top floor, which nothing below imports (the agent
 * sits under its command, cli/agent.ts). Reads the
 * import lines of src/ and lib/ (static, re-exports, dynamic import() and
 * worker URLs) and lists every edge that breaks a rule.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { Glob } from "bun";

const ROOT = join(import.meta.dir, "../..");
const TOP = ["src/cli/", "src/agent/"];
/** What may import the top floor besides itself. */
const ENTRY = "src/main.ts";
/** Imports of the top floor allowed from below, by the imported file. */
const ALLOWED_TARGETS = new Set([
  "src/cli/refusals.ts", // refusal table: being moved
]);

interface Edge {
  from: string;
  to: string;
}

/** Drop comments, so an example in a doc comment is no edge (string contents stay). */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

/** The relative imports of one file, as repository paths. */
function importsOf(file: string): Edge[] {
  const text = code(readFileSync(join(ROOT, file), "utf8"));
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s*|\bnew\s+URL\(\s*)["']([^"']+)["']/gm;
  const edges: Edge[] = [];
  for (const m of text.matchAll(re)) {
    const spec = m[1]!;
    if (!spec.startsWith(".")) continue; // packages and node:/bun: builtins
    edges.push({ from: file, to: relative(ROOT, resolve(ROOT, dirname(file), spec)) });
  }
  return edges;
}

function files(pattern: string): string[] {
  return [...new Glob(pattern).scanSync(ROOT)].sort();
}

const SOURCES = [...files("src/**/*.ts"), ...files("lib/**/*.ts")];
const EDGES = SOURCES.flatMap(importsOf);
const show = (e: Edge) => `${e.from} -> ${e.to}`;
const inTop = (p: string) => TOP.some((t) => p.startsWith(t));

describe("layers", () => {
  test("the reader sees static, multi-line, dynamic and worker imports", () => {
    const seen = new Set(EDGES.map(show));
    // one of each form, as the tree has them today
    expect(seen).toContain("src/cli/agent.ts -> src/agent/agent.ts"); // await import(...)
    expect(seen).toContain("src/agent/agent.ts -> src/kube/reflector.ts");
    expect(seen).toContain("lib/fd-closer.ts -> lib/fd-closer-worker.ts"); // new URL(..., import.meta.url)
    expect(seen).toContain("src/dataplane/bpf-object.ts -> src/dataplane/kernel-support.ts"); // import {\n ...\n} from
  });

  test("lib/ imports nothing outside lib/", () => {
    const bad = EDGES.filter((e) => e.from.startsWith("lib/") && !e.to.startsWith("lib/")).map(show);
    expect(bad).toEqual([]);
  });

  test("lib/ names nothing of kloak: no KLOAK_ variables", () => {
    const bad = files("lib/**/*.ts").filter((f) => /KLOAK_/.test(readFileSync(join(ROOT, f), "utf8")));
    expect(bad).toEqual([]);
  });

  test(`only ${TOP.join(", ")} and ${ENTRY} import ${TOP.join(" or ")}`, () => {
    const bad = EDGES.filter((e) => inTop(e.to) && !inTop(e.from) && e.from !== ENTRY && !ALLOWED_TARGETS.has(e.to)).map(show);
    expect(bad).toEqual([]);
  });

  test("src/agent/ imports nothing from src/cli/ (cli/agent.ts is the agent's command, above it)", () => {
    const bad = EDGES.filter((e) => e.from.startsWith("src/agent/") && e.to.startsWith("src/cli/") && !ALLOWED_TARGETS.has(e.to)).map(show);
    expect(bad).toEqual([]);
  });
});
