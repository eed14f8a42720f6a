/**
 * The owner's end of the guardian (guardian.ts): start it over an IPC channel
 * with an empty environment, ask it to run CMD, hear how CMD ended, and close
 * the channel — which, with the owner's pins removed, lets it exit; with the
 * pins still there (the owner died), makes it release everything.
 */
import { selfCommand } from "../build-info.ts";
import type { FromGuardian, RunRequest, ToGuardian } from "./guardian.ts";

export interface CommandEnd {
  code: number | null;
  /** the number of the signal that killed CMD */
  signal: number | null;
}

export class Guardian {
  private started?: { resolve: (pid: number) => void; reject: (e: Error) => void };
  private ended?: (end: CommandEnd) => void;
  private readonly endPromise: Promise<CommandEnd>;

  private constructor(private readonly proc: ReturnType<typeof Bun.spawn>) {
    this.endPromise = new Promise((r) => (this.ended = r));
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** Start the guardian of the pins at base; resolves once it watches them. */
  static async start(base: string, opts: { waitServing?: boolean } = {}): Promise<Guardian> {
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    let g: Guardian | undefined;
    const proc = Bun.spawn([...selfCommand(), "__guardian", base, ...(opts.waitServing ? ["--wait-serving"] : [])], {
      // Inherited: CMD, its child, gets kloak's terminal and output.
      stdio: ["inherit", "inherit", "inherit"],
      env: {},
      serialization: "json",
      ipc(m: FromGuardian) {
        if (m.type === "ready") ready();
        else g?.onMessage(m);
      },
    });
    g = new Guardian(proc);
    const died = proc.exited.then((code) => {
      throw new Error(`the guardian exited (${code}) before it was ready`);
    });
    await Promise.race([isReady, died]);
    return g;
  }

  private onMessage(m: FromGuardian): void {
    switch (m.type) {
      case "started":
        this.started?.resolve(m.pid);
        break;
      case "failed":
        this.started?.reject(new Error(m.error));
        break;
      case "exited":
        this.ended?.({ code: m.code, signal: m.signal });
        break;
    }
  }

  /** Run CMD as the guardian's child; resolves with its pid. */
  run(req: Omit<RunRequest, "type">): Promise<number> {
    return new Promise((resolve, reject) => {
      this.started = { resolve, reject };
      this.proc.send({ type: "run", ...req } satisfies RunRequest);
    });
  }

  /** The owner serves its writes now: writers left stopped past STUCK_MS are released again. */
  serving(): void {
    this.note({ type: "serving" });
  }

  /** The owner begins to hand over: writers it leaves stopped from now on are not stuck (they wait for the successor). */
  handingOver(): void {
    this.note({ type: "handing-over" });
  }

  /** The owner handed over its data plane (handover.ts): the guardian releases it if nobody takes it by the deadline. */
  handover(dir: string, deadline: number): void {
    this.note({ type: "handover", dir, deadline });
  }

  private note(m: ToGuardian): void {
    try {
      this.proc.send(m);
    } catch {
      // gone: nothing to tell
    }
  }

  /** How CMD ended. */
  get commandEnded(): Promise<CommandEnd> {
    return this.endPromise;
  }

  /**
   * Close the channel without waiting for the guardian: after a handover it
   * outlives this process, waiting for a successor (guardian.ts).
   */
  leave(): void {
    try {
      this.proc.disconnect();
    } catch {
      // already closed
    }
    this.proc.unref();
  }

  /** Close the channel and wait for the guardian to exit (with the pins gone, at once). */
  async close(): Promise<void> {
    try {
      this.proc.disconnect();
    } catch {
      // already closed
    }
    await this.proc.exited;
  }
}
