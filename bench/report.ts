/**
 * Writing bench/report/report.{md,json}: each part of `bun run bench` owns
 * sections of report.md (between BEGIN/END markers, replaced in place or
 * appended) and keys of report.json; the data plane writes the whole file and
 * keeps the others' sections (keepSections). Also the markdown pieces and the
 * number formats every part's tables use, so a figure reads the same in every
 * section.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

// ---------------------------------------------------------------- sections

/**
 * The agent's section keeps the markers it was first written with, so a
 * report.md from before the other parts had sections still merges.
 */
function markers(name: string): { begin: string; end: string } {
  return name === "agent"
    ? { begin: "<!-- kloak-bench:agent:begin -->", end: "<!-- kloak-bench:agent:end -->" }
    : { begin: `<!-- BEGIN ${name} section -->`, end: `<!-- END ${name} section -->` };
}

function readJson(path: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** Writes `markdown` as section `name` and `json` under report.json's `name`; returns the section as written. */
export function writeReportSection(dir: string, name: string, markdown: string, json: unknown): string {
  const { begin, end } = markers(name);
  mkdirSync(dir, { recursive: true });
  const section = `${begin}\n${markdown}\n${end}`;
  const mdPath = join(dir, "report.md");
  let md = existsSync(mdPath) ? readFileSync(mdPath, "utf8") : "# kloak benchmark\n";
  const i = md.indexOf(begin);
  const j = md.indexOf(end);
  md = i >= 0 && j > i ? md.slice(0, i) + section + md.slice(j + end.length) : `${md.trimEnd()}\n\n${section}\n`;
  writeFileSync(mdPath, md.endsWith("\n") ? md : md + "\n");
  const jsonPath = join(dir, "report.json");
  const all = readJson(jsonPath) ?? {};
  all[name] = json;
  writeFileSync(jsonPath, JSON.stringify(all, null, 2) + "\n");
  return section;
}

const SECTION_RE = /<!-- BEGIN (\S+) section -->[\s\S]*?<!-- END \1 section -->/g;

/** The sections (name and text, markers included) of the report.md in `dir`: the agent's first, then the others in file order. */
function sectionsIn(dir: string): { name: string; text: string }[] {
  let md: string;
  try {
    md = readFileSync(join(dir, "report.md"), "utf8");
  } catch {
    return [];
  }
  const { begin, end } = markers("agent");
  const i = md.indexOf(begin);
  const j = md.indexOf(end);
  const agent = i >= 0 && j > i ? [{ name: "agent", text: md.slice(i, j + end.length) }] : [];
  return [...agent, ...[...md.matchAll(SECTION_RE)].map((m) => ({ name: m[1]!, text: m[0] }))];
}

/**
 * `md` (a part that writes the whole report.md, the data plane) with every
 * section of the report.md already in `dir` that `md` does not have appended,
 * so running that part does not erase the others' results.
 */
export function keepSections(md: string, dir: string): string {
  const old = sectionsIn(dir).filter((s) => !md.includes(markers(s.name).begin));
  return old.length ? `${md.trimEnd()}\n\n${old.map((s) => s.text).join("\n\n")}` : md;
}

/** The same for report.json: the entries of the sections kept by keepSections, and the agent's whether or not its section is there. */
export function keepSectionJson(json: Record<string, unknown>, dir: string): Record<string, unknown> {
  const old = readJson(join(dir, "report.json"));
  if (!old) return json;
  const out = { ...json };
  if (old.agent !== undefined) out.agent = old.agent;
  for (const { name } of sectionsIn(dir)) if (!(name in out) && old[name] !== undefined) out[name] = old[name];
  return out;
}

// ---------------------------------------------------------------- numbers

/** `f(x)`, or "n/a" when x is NaN or infinite (a part that measured nothing). */
export const na = (x: number, f: (x: number) => string) => (Number.isFinite(x) ? f(x) : "n/a");

export const fmtMiB = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
/** MB = 10^6 bytes, as the agent's memory target is stated. */
export const fmtMB = (b: number) => na(b, (x) => `${(x / 1e6).toFixed(1)} MB`);
export const fmtBytes = (b: number) => (b >= 1048576 ? `${b / 1048576} MiB` : b >= 1024 ? `${b / 1024} KiB` : `${b} B`);
export const fmtCount = (n: number) => n.toLocaleString("en-US");
export const fmtUs = (ns: number) => na(ns, (x) => `${(x / 1000).toFixed(1)} µs`);
export const fmtMs = (ms: number) => na(ms, (x) => (x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`));
export const fmtS = (s: number) => na(s, (x) => `${x.toFixed(2)} s`);
/** With its sign always shown (a typographic minus), for a difference against a baseline. */
export const fmtSigned = (x: number, digits = 1) => na(x, (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(digits)}`);
export const fmtSignedUs = (ns: number) => na(ns, (x) => `${x >= 0 ? "+" : "−"}${(Math.abs(x) / 1000).toFixed(1)} µs`);
export const pct = (r: number) => na(r, (x) => `${(x * 100).toFixed(1)}%`);
/** a / b as "1.23×" */
export const fmtRatio = (a: number, b: number) => na(a / b, (x) => `${x.toFixed(2)}×`);

// ---------------------------------------------------------------- markdown

/** A markdown text built line by line; `line` is bound, so `const L = md.line` reads like print. */
export class Markdown {
  private readonly lines: string[] = [];
  readonly line = (s = ""): void => {
    this.lines.push(s);
  };
  /** A fenced block: the "!!!" alerts, so they read the same rendered or not. */
  readonly fenced = (lines: string[]): void => {
    this.line("```");
    for (const l of lines) this.line(l);
    this.line("```");
  };
  /** A table's header row and its separator. */
  readonly tableHead = (cols: string[]): void => {
    for (const l of tableHead(cols)) this.line(l);
  };
  readonly row = (cells: (string | number)[]): void => {
    this.line(tableRow(cells));
  };
  toString(): string {
    return this.lines.join("\n");
  }
}

export const tableRow = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
export const tableHead = (cols: string[]) => [tableRow(cols), `|${cols.map(() => "---|").join("")}`];
