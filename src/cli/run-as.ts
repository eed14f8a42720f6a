/**
 * Who `kloak exec` runs CMD as. Never root by default: code in CMD that runs
 * as root could read the real values from kloak itself (its memory, its
 * /proc files) or stop it. Through sudo, CMD runs as the user who ran sudo;
 * otherwise --user says who; --user root is allowed, and said aloud.
 */
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

/** The user database entry of a name or uid, through getent (so NSS sources count too). */
function lookupUser(who: string): PasswdEntry | undefined {
  const r = Bun.spawnSync(["getent", "passwd", who], { stderr: "ignore" });
  const f = r.success ? r.stdout.toString().trim().split("\n")[0]?.split(":") : undefined;
  if (!f || f.length < 7) return undefined;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

function lookupGroup(group: string): number | undefined {
  if (/^\d+$/.test(group)) return Number(group);
  const r = Bun.spawnSync(["getent", "group", group], { stderr: "ignore" });
  const f = r.success ? r.stdout.toString().trim().split(":") : [];
  return f.length >= 3 ? Number(f[2]) : undefined;
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
