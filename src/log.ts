/**
 * JSON-lines logging: one object per line on stderr with time, level and
 * message, plus fields. The one logger of kloak: the agent makes it, and the
 * modules it drives (kube, controllers, node, webhook) take its LogFn.
 * Callers pass names, keys, counts and destinations; never a secret value
 * (nothing here could tell one apart).
 */
export type Level = "debug" | "info" | "warn" | "error";
export type LogFn = (level: Level, msg: string, fields?: Record<string, unknown>) => void;

/** For callers given no logger. */
export const noLog: LogFn = () => {};

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function jsonLogger(min: Level, write: (line: string) => void = (l) => process.stderr.write(l)): LogFn {
  return (level, msg, fields) => {
    if (RANK[level] < RANK[min]) return;
    const rec: Record<string, unknown> = { time: new Date().toISOString(), level, msg };
    for (const [k, val] of Object.entries(fields ?? {})) {
      if (k in rec) continue;
      rec[k] = val instanceof Error ? val.message : val;
    }
    write(JSON.stringify(rec, (_k, x) => (typeof x === "bigint" ? x.toString() : x)) + "\n");
  };
}
