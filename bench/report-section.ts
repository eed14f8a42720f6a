/**
 * One section of bench/report/report.md (between its BEGIN/END markers,
 * replaced in place or appended) and one key of report.json: the parts of
 * `bun run bench` write their results through here, except the data plane,
 * which writes the whole file and keeps the others' sections (keepSections).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Writes `markdown` as section `name` and `json` under report.json's `name`; returns the section as written. */
export function writeReportSection(dir: string, name: string, markdown: string, json: unknown): string {
  const begin = `<!-- BEGIN ${name} section -->`;
  const end = `<!-- END ${name} section -->`;
  mkdirSync(dir, { recursive: true });
  const section = `${begin}\n${markdown}\n${end}`;
  const mdPath = join(dir, "report.md");
  let md = existsSync(mdPath) ? readFileSync(mdPath, "utf8") : "# kloak benchmark\n";
  const i = md.indexOf(begin);
  const j = md.indexOf(end);
  md = i >= 0 && j > i ? md.slice(0, i) + section + md.slice(j + end.length) : `${md.trimEnd()}\n\n${section}\n`;
  writeFileSync(mdPath, md);
  const jsonPath = join(dir, "report.json");
  let all: Record<string, unknown> = {};
  try {
    all = JSON.parse(readFileSync(jsonPath, "utf8")) as Record<string, unknown>;
  } catch {
    // start fresh
  }
  all[name] = json;
  writeFileSync(jsonPath, JSON.stringify(all, null, 2) + "\n");
  return section;
}

const SECTION_RE = /<!-- BEGIN (\S+) section -->[\s\S]*?<!-- END \1 section -->/g;

/** The sections (name and text, markers included) of the report.md in `dir`. */
function sectionsIn(dir: string): { name: string; text: string }[] {
  let md: string;
  try {
    md = readFileSync(join(dir, "report.md"), "utf8");
  } catch {
    return [];
  }
  return [...md.matchAll(SECTION_RE)].map((m) => ({ name: m[1]!, text: m[0] }));
}

/**
 * `md` (a part that writes the whole report.md, the data plane) with every
 * section of the report.md already in `dir` that `md` does not have appended,
 * so running that part does not erase the others' results.
 */
export function keepSections(md: string, dir: string): string {
  const old = sectionsIn(dir).filter((s) => !md.includes(`<!-- BEGIN ${s.name} section -->`));
  return old.length ? `${md.trimEnd()}\n\n${old.map((s) => s.text).join("\n\n")}` : md;
}

/** The same for report.json: the entries of the sections kept by keepSections. */
export function keepSectionJson(json: Record<string, unknown>, dir: string): Record<string, unknown> {
  let old: Record<string, unknown>;
  try {
    old = JSON.parse(readFileSync(join(dir, "report.json"), "utf8")) as Record<string, unknown>;
  } catch {
    return json;
  }
  const out = { ...json };
  for (const { name } of sectionsIn(dir)) if (!(name in out) && old[name] !== undefined) out[name] = old[name];
  return out;
}
