/**
 * Output of `kloak doctor`: an aligned table for people, a stable JSON shape
 * for scripts (`--json`).
 */
import type { Check, DoctorResult } from "./checks.ts";

const STATUS_LABEL: Record<Check["status"], string> = { ok: "ok", warn: "WARN", fail: "FAIL" };

function requiredFailures(result: DoctorResult): number {
  return result.checks.filter((c) => c.required && c.status === "fail").length;
}

/** The verdict line that ends the table. */
export function verdict(result: DoctorResult): string {
  const failed = requiredFailures(result);
  if (result.ok && failed === 0) return `kloak can run on this node (rewrite mode: ${result.rewriteMode ?? "none"})`;
  return `kloak cannot run on this node: ${failed} required check(s) failed`;
}

export function formatTable(result: DoctorResult): string {
  const head = { check: "CHECK", status: "STATUS", detail: "DETAIL" };
  const rows = result.checks.map((c) => ({
    check: c.title,
    status: STATUS_LABEL[c.status],
    // Multi-line details (a libbpf log excerpt) continue under the DETAIL column.
    detail: c.detail.split("\n"),
  }));
  const w1 = Math.max(head.check.length, ...rows.map((r) => r.check.length));
  const w2 = Math.max(head.status.length, ...rows.map((r) => r.status.length));
  const indent = " ".repeat(w1 + 2 + w2 + 2);

  const lines = [`${head.check.padEnd(w1)}  ${head.status.padEnd(w2)}  ${head.detail}`];
  for (const r of rows) {
    const [first = "", ...rest] = r.detail;
    lines.push(`${r.check.padEnd(w1)}  ${r.status.padEnd(w2)}  ${first}`.trimEnd());
    for (const more of rest) lines.push(`${indent}${more}`.trimEnd());
  }

  const remedies = result.checks.filter((c) => c.status !== "ok" && c.remedy);
  if (remedies.length) {
    lines.push("", "Remedies:");
    for (const c of remedies) lines.push(`  ${STATUS_LABEL[c.status]} ${c.title}: ${c.remedy}`);
  }
  lines.push("", verdict(result));
  return `${lines.join("\n")}\n`;
}

/**
 * { ok, rewriteMode, verifier: [{ program, insns, limit }], checks: [{ id, title, status, required, detail, remedy }] };
 * remedy is null when none.
 */
export function formatJson(result: DoctorResult): string {
  const out = {
    ok: result.ok,
    rewriteMode: result.rewriteMode,
    verifier: result.verifier,
    checks: result.checks.map((c) => ({
      id: c.id,
      title: c.title,
      status: c.status,
      required: c.required,
      detail: c.detail,
      remedy: c.remedy ?? null,
    })),
  };
  return `${JSON.stringify(out, null, 2)}\n`;
}
