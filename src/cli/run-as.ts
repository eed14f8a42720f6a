/**
 * Who `kloak exec` runs CMD as. Never root by default: code in CMD that runs
 * as root could read the real values from kloak itself (its memory, its
 * /proc files) or stop it. Through sudo, CMD runs as the user who ran sudo;
 * otherwise --user says who; --user root is allowed, and said aloud.
 */
import { existsSync, readFileSync } from "node:fs";
import { UsageError } from "../errors.ts";

export interface RunAs {
  uid: number;
  gid: number;
  /** HOME, USER and LOGNAME of that user */
  env: Record<string, string>;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** getent by its path: kloak's own PATH may be anything (or unset). */
const GETENT = ["/usr/bin/getent", "/bin/getent"].find((p) => existsSync(p));

/** The entry of `key` (a name or a numeric id) in database passwd or group: through getent, so NSS
 * sources count too; from /etc/passwd or /etc/group where there is no getent (minimal images). */
function lookup(db: "passwd" | "group", key: string): string[] | undefined {
  let lines: string[];
  if (GETENT) {
    const r = Bun.spawnSync([GETENT, db, key], { stderr: "ignore" });
    lines = r.success ? r.stdout.toString().split("\n") : [];
  } else {
    try {
      lines = readFileSync(`/etc/${db}`, "utf8").split("\n");
    } catch {
      return undefined;
    }
  }
  return lines.map((l) => l.split(":")).find((f) => f.length >= 3 && (f[0] === key || f[2] === key));
}

function lookupUser(who: string): PasswdEntry | undefined {
  const f = lookup("passwd", who);
  if (!f || f.length < 7) return undefined;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

function lookupGroup(group: string): number | undefined {
  if (/^\d+$/.test(group)) return Number(group);
  const f = lookup("group", group);
  return f ? Number(f[2]) : undefined;
}

function runAs(p: { uid: number; gid: number; name?: string; home?: string }): RunAs {
  const env: Record<string, string> = {};
  if (p.name) env.USER = env.LOGNAME = p.name;
  if (p.home) env.HOME = p.home;
  return { uid: p.uid, gid: p.gid, env };
}

export function resolveRunAs(flag: string | undefined, env: Record<string, string | undefined>): RunAs {
  if (flag !== undefined) {
    const [user = "", group] = flag.split(":");
    const entry = lookupUser(user);
    if (!entry && !/^\d+$/.test(user))
      throw new UsageError(`exec: --user ${JSON.stringify(flag)}: no such user; give a user name or a numeric uid`);
    const uid = entry?.uid ?? Number(user);
    const gid = group === undefined ? (entry?.gid ?? uid) : lookupGroup(group);
    if (gid === undefined) throw new UsageError(`exec: --user ${JSON.stringify(flag)}: no such group ${JSON.stringify(group)}`);
    return runAs({ uid, gid, name: entry?.name, home: entry?.home });
  }
  const sudoUid = env.SUDO_UID;
  if (sudoUid && /^\d+$/.test(sudoUid)) {
    const entry = lookupUser(sudoUid);
    const gid = env.SUDO_GID && /^\d+$/.test(env.SUDO_GID) ? Number(env.SUDO_GID) : (entry?.gid ?? Number(sudoUid));
    return runAs({ uid: Number(sudoUid), gid, name: entry?.name ?? env.SUDO_USER, home: entry?.home });
  }
  if (process.getuid?.() === 0)
    throw new UsageError(
      "exec: who should CMD run as? kloak runs as root, and code in CMD that runs as root could read the real values " +
        "from kloak; pass --user NAME (or run kloak through sudo, which runs CMD as you); --user root keeps CMD as root " +
        "(protection against leaks only, docs/policy.md)",
    );
  const uid = process.getuid?.() ?? 0;
  return runAs({ uid, gid: process.getgid?.() ?? uid });
}
