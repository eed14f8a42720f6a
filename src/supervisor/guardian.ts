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
import { kill, monotonicNs, SIGCONT, setNoNewPrivs } from "../../lib/libc.ts";
import { threadState } from "../../lib/proc.ts";
import { hardenSupervisor } from "./harden.ts";
import { pinPath, releaseDead, releaseStuck } from "../dataplane/release.ts";
import { claimHandover, listHandovers, releaseHandover } from "../dataplane/handover.ts";

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

/** The owner serves its writes now (started with --wait-serving: it took over a handover's rings). */
export interface ServingNote {
  type: "serving";
}

/**
 * The owner handed its data plane over (handover.ts) and is about to exit:
 * the pins at BASE are gone on purpose. Until the deadline the handover is
 * left to a successor; a handover still offered then is released.
 */
export interface HandoverNote {
  type: "handover";
  dir: string;
  deadline: number;
}

/** The owner is handing over: its worker stops serving, writers it stops from now on wait for the successor. */
export interface HandingOverNote {
  type: "handing-over";
}

export type ToGuardian = RunRequest | ServingNote | HandoverNote | HandingOverNote;

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
  // Taking over a handover, writers stopped before the owner serves are waiting for it, not stuck.
  let watchStuck = !args.includes("--wait-serving");
  // Claims from before the owner served (the gap's) are measured from when it began to.
  let servingSince = 0n;
  let handover: HandoverNote | undefined;
  process.on("message", (m: ToGuardian) => {
    if (m?.type === "run" && !ran) {
      ran = true;
      run(m);
    } else if (m?.type === "serving") {
      watchStuck = true;
      servingSince = monotonicNs();
    }
    else if (m?.type === "handing-over") watchStuck = false;
    else if (m?.type === "handover") {
      // Writers stopped from now on wait for the successor: never released as stuck.
      watchStuck = false;
      handover = m;
    }
  });
  const watch = setInterval(() => {
    // A stopped kloak ends no hold: nothing but root could have stopped it, and it must go on.
    if (threadState(owner) === "T" && kill(owner, SIGCONT))
      process.stderr.write("kloak guardian: kloak was stopped; continued it (its holds must end)\n");
    if (!watchStuck) return;
    try {
      const n = releaseStuck(base, servingSince);
      if (n) process.stderr.write(`kloak guardian: released ${n} writer(s) left stopped over 1.5 s; placeholders put back first\n`);
    } catch {
      // pins gone meanwhile: the owner is shutting down
    }
  }, WATCH_MS);
  send({ type: "ready" });
  await new Promise<void>((resolve) => process.once("disconnect", () => resolve()));
  clearInterval(watch);
  // The note may not have arrived before the channel closed: a handover offered by the owner says the same.
  const offered = handover ?? listHandovers().offered.find((o) => o.pid === owner);
  if (offered) return awaitSuccessor("path" in offered ? { type: "handover", dir: offered.path, deadline: offered.deadline } : offered);
  if (!existsSync(pinPath(base, "procs"))) return 0; // clean exit: the owner removed its pins
  const { resumed, killed } = await releaseDead(base);
  process.stderr.write(
    `kloak guardian: kloak died; put back the placeholders of writes in flight, resumed ${resumed} process(es)` +
      (killed ? `, killed ${killed} whose placeholder could not be put back` : "") +
      "\n",
  );
  return 0;
}

/**
 * The owner handed over and exited. A successor that takes the handover
 * renames it away; one still offered at the deadline is claimed here and
 * released (placeholders back, writers resumed, probes gone). In a pod this
 * process dies with the container; then the next agent start releases an
 * expired handover (agent.ts).
 */
async function awaitSuccessor(h: HandoverNote): Promise<number> {
  for (;;) {
    if (!existsSync(h.dir)) return 0; // taken over (or released by a newer agent)
    if (Date.now() >= h.deadline) break;
    await Bun.sleep(Math.min(200, Math.max(1, h.deadline - Date.now())));
  }
  const offer = listHandovers().offered.find((o) => o.path === h.dir);
  const mine = offer && claimHandover(offer);
  if (!mine) return 0;
  const { resumed, killed } = await releaseHandover(mine.path);
  process.stderr.write(
    `kloak guardian: no agent took over the data plane within its deadline; released it: placeholders put back, resumed ${resumed} process(es)` +
      (killed ? `, killed ${killed} whose placeholder could not be put back` : "") +
      "\n",
  );
  return 0;
}
