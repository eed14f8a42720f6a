/**
 * The command `kloak exec` runs, looked up the way execvp(3) will look it up,
 * before anything is loaded: a command that cannot run is reported at once
 * with the shell's exit codes (127: not found, 126: found but not executable)
 * instead of after the data plane has started.
 */
import { statSync, type Stats } from "node:fs";
import { join } from "node:path";
import { CommandError } from "../errors.ts";

/** execvp's search path when PATH is unset (glibc). */
const DEFAULT_PATH = "/bin:/usr/bin";

/** Whether uid:gid may execute the file (CMD has no supplementary groups but gid: the guardian sets them so). */
function executableBy(st: Stats, uid: number, gid: number): boolean {
  if (!st.isFile()) return false;
  if (uid === 0) return (st.mode & 0o111) !== 0;
  if (st.uid === uid) return (st.mode & 0o100) !== 0;
  if (st.gid === gid) return (st.mode & 0o010) !== 0;
  return (st.mode & 0o001) !== 0;
}

/**
 * Throws CommandError unless `cmd` names a file uid:gid can execute: a path
 * when it contains a slash, else the first match in `path` (CMD's PATH).
 * Like execvp, a match that cannot be executed does not end the search.
 */
export function checkCommand(cmd: string, path: string | undefined, user: { uid: number; gid: number }): void {
  const search = !cmd.includes("/");
  const candidates = search ? (path ?? DEFAULT_PATH).split(":").map((dir) => join(dir || ".", cmd)) : [cmd];
  let denied: string | undefined;
  for (const file of candidates) {
    let st: Stats;
    try {
      st = statSync(file);
    } catch {
      continue;
    }
    if (executableBy(st, user.uid, user.gid)) return;
    denied ??= file;
  }
  if (denied !== undefined) {
    const what = statSync(denied).isDirectory() ? "is a directory" : `is not executable by uid ${user.uid}`;
    throw new CommandError(`cannot run ${cmd}: ${denied} ${what}; check the path, or chmod +x it`, 126);
  }
  throw new CommandError(
    search
      ? `cannot run ${cmd}: command not found in PATH (${path ?? DEFAULT_PATH}); check the name, or give its full path`
      : `cannot run ${cmd}: no such file; check the path`,
    127,
  );
}
