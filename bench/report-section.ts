/**
 * One section of bench/report/report.md (between its BEGIN/END markers,
 * replaced in place or appended) and one key of report.json: every part of
 * `bun run bench` writes its results through here.
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
