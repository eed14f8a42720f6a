/**
 * Doctor: can kloak substitute in the Bun on this node? Bun links BoringSSL
 * without symbols; kloak finds it by per-version signatures, and a Bun it
 * does not recognise sends its placeholders as they are.
 */
import { realpathSync } from "node:fs";
import { lookupBun, REFUSAL_HINT } from "../dataplane/bun-boringssl.ts";
import { BUN_VERSIONS } from "../dataplane/bun-signatures.ts";
import { ok, warn, type CheckDef } from "../dataplane/kernel-support.ts";

/** The Bun binaries the check looks at: `bun` on PATH, and KLOAK_DOCTOR_BUN (colon-separated paths). */
function bunBinaries(): string[] {
  const paths = new Set<string>();
  const extra = (process.env.KLOAK_DOCTOR_BUN ?? "").split(":").filter(Boolean);
  for (const p of [Bun.which("bun"), ...extra]) {
    if (!p) continue;
    try {
      paths.add(realpathSync(p));
    } catch {
      // a dangling link: nothing to check
    }
  }
  return [...paths];
}

export const bunCheck: CheckDef = {
  id: "bun",
  title: "Bun (BoringSSL by signature)",
  required: false,
  remedy: REFUSAL_HINT,
  run: () => {
    const covered = `covered: ${BUN_VERSIONS.join(", ")}`;
    const found = bunBinaries().map((p) => ({ p, r: lookupBun(p) }));
    const bad = found.filter((f) => f.r.kind === "unrecognised");
    const good = found.filter((f) => f.r.kind === "bun");
    if (bad.length)
      return warn(
        bad.map(({ p, r }) => `${p}: ${r.kind === "unrecognised" ? `Bun ${r.version} not recognised (${r.why})` : ""}`).join("; ") +
          `: its TLS writes are not substituted (bun_unrecognised); ${covered}`,
        REFUSAL_HINT,
      );
    if (good.length) return ok(`${good.map(({ p, r }) => `${p}: Bun ${r.kind === "bun" ? r.version : ""} recognised`).join("; ")} (${covered})`);
    return ok(`no Bun binary on PATH (${covered})`);
  },
};
