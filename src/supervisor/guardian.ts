/**
 * `kloak __guardian BASE`: started by `kloak exec` and by the agent before
 * anything is attached, over an IPC channel. It holds no secret value (its
 * environment is empty) and cannot be read, stopped or killed by the protected
 * processes, which run as another user.
 *
 * - It watches its owner: a writer the owner left stopped past STUCK_MS is
 *   released, placeholders put back first; an owner found stopped is
 *   continued; when the channel closes without the owner having removed its
 *   pins (the owner died), it restores the placeholders of every write in
 *   flight and resumes the processes.
 * - For `kloak exec` it is CMD's parent: kloak traces CMD (holds its parent
 *   cannot see, tracer.ts), and ptrace wants the tracer and the real parent in
 *   different processes — a tracer that is also the parent's thread group
 *   would reap CMD's exit status itself. It runs CMD as the chosen user with
 *   no_new_privs, and reports its pid and how it ended.
 */
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { kill, SIGCONT, setNoNewPrivs } from "../../lib/libc.ts";
import { threadState } from "../../lib/proc.ts";
import { hardenSupervisor } from "./harden.ts";
import { pinPath, releaseDead, releaseStuck } from "../dataplane/release.ts";

/** How often the guardian looks for writers left stopped. */
const WATCH_MS = 250;

/** What the owner asks: run CMD (once). */
export interface RunRequest {
  type: "run";
  argv: string[];
  env: Record<string, string>;
  uid: number;
  gid: number;
}

export type FromGuardian =
  | { type: "ready" }
  | { type: "started"; pid: number }
  | { type: "failed"; error: string }
  /** CMD ended: its exit code, or the signal that killed it */
  | { type: "exited"; code: number | null; signal: number | null };

function send(m: FromGuardian): void {
  process.send?.(m);
}

function run(req: RunRequest): void {
  try {
    // CMD and everything it starts can never gain privileges back (setuid programs): it never reads kloak.
    setNoNewPrivs();
    const child = Bun.spawn(req.argv, { env: req.env, stdio: ["inherit", "inherit", "inherit"], uid: req.uid, gid: req.gid });
    send({ type: "started", pid: child.pid });
    void child.exited.then((code) => {
      const signal = child.signalCode ? constants.signals[child.signalCode as NodeJS.Signals] : null;
      send({ type: "exited", code: signal ? null : code, signal: signal ?? null });
    });
  } catch (e) {
    send({ type: "failed", error: (e as Error).message });
  }
}

export async function guardianCommand(args: string[]): Promise<number> {
  const base = args[0];
  if (!base || !process.send) return 2;
  const owner = process.ppid;
  // Terminal signals go to the whole process group; the guardian must outlive them.
  hardenSupervisor();
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE"] as const) process.on(sig, () => {});
  let ran = false;
  process.on("message", (m: RunRequest) => {
    if (m?.type === "run" && !ran) {
      ran = true;
      run(m);
    }
  });
  const watch = setInterval(() => {
    // A stopped kloak ends no hold: nothing but root could have stopped it, and it must go on.
    if (threadState(owner) === "T" && kill(owner, SIGCONT))
      process.stderr.write("kloak guardian: kloak was stopped; continued it (its holds must end)\n");
    try {
      const n = releaseStuck(base);
      if (n) process.stderr.write(`kloak guardian: released ${n} writer(s) left stopped over 1.5 s; placeholders put back first\n`);
    } catch {
      // pins gone meanwhile: the owner is shutting down
    }
  }, WATCH_MS);
  send({ type: "ready" });
  await new Promise<void>((resolve) => process.once("disconnect", () => resolve()));
  clearInterval(watch);
  if (!existsSync(pinPath(base, "procs"))) return 0; // clean exit: the owner removed its pins
  const { resumed, killed } = await releaseDead(base);
  process.stderr.write(
    `kloak guardian: kloak died; put back the placeholders of writes in flight, resumed ${resumed} process(es)` +
      (killed ? `, killed ${killed} whose placeholder could not be put back` : "") +
      "\n",
  );
  return 0;
}
