/** docs/policy.md's table of refusal reasons is refusals.ts's: every reason, no other, the same violations. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REFUSALS } from "../../src/dataplane/refusals.ts";

test("the refusal table of docs/policy.md lists exactly the reasons of refusals.ts, in order, with their violation flag", () => {
  const doc = readFileSync(join(import.meta.dir, "../../docs/policy.md"), "utf8");
  const at = doc.indexOf("<!-- refusal reasons: checked by test/docs/policy-doc.test.ts -->");
  expect(at).toBeGreaterThan(0);
  const rows = doc
    .slice(at)
    .split("\n")
    .slice(3)
    .filter((l, i, all) => l.startsWith("|") && all.slice(0, i).every((x) => x.startsWith("|")))
    .map((l) => l.split("|").map((c) => c.trim()));
  expect(rows.map((r) => [r[1], r[2]])).toEqual(REFUSALS.map((r) => [`\`${r.name}\``, r.violation ? "yes" : "no"]));
});
