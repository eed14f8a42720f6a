/** Messages between the main thread and the ring worker (structured-clone safe). */
import type { DataplaneEvent } from "./abi.ts";
import type { HoldReason } from "./tracer.ts";

export type ToWorker =
  | {
      type: "init";
      eventsFd: number;
      eventsSize: number;
      writesFd: number;
      writesSize: number;
      bellFd: number;
      stopReleasedFd: number;
      procsFd: number;
      stopWaitMs: number;
      /** hold by ptrace (tracer.ts); false: group stops, which parents see */
      trace: boolean;
      /**
       * Taking over a predecessor's rings (handover.ts): leave kloak_writes
       * unread, and adopt nobody, until "serve" — its requests need values the
       * worker does not hold yet.
       */
      paused?: boolean;
    }
  /** start serving kloak_writes (after paused init) */
  | { type: "serve" }
  | { type: "secret"; seq: number; id: number; placeholder: Uint8Array; value: Uint8Array }
  /** a secret is being deleted: serve every request already in the ring (a pending restore
   * still needs the placeholder), then drop the value and placeholder; acked */
  | { type: "delete"; seq: number; id: number }
  /** a hold announced on tls_events is over: exec, fork or library open (attached), SNI (name resolved) */
  | { type: "release"; reason: HoldReason; tgid: number; tid: number; seq: bigint }
  /** trace a running process that joined a scope (agent: pods already running) */
  | { type: "adopt"; tgid: number }
  /** stop tracing a process that left its scope */
  | { type: "disown"; tgid: number }
  | { type: "stats" }
  /** handover: holds of traced threads become group stops (served in the last pass, or by the successor) */
  | { type: "stop"; handover?: boolean };

export interface WorkerStats {
  /** placeholders replaced by their value in a stopped writer */
  patched: number;
  /** placeholders put back at return */
  restored: number;
  patchFailed: number;
  /** requests dropped because the writer was not seen stopped in time */
  notStopped: number;
  noValue: number;
  /** items whose mapping the kernel could not check (memory map locked), checked by the worker */
  buffersChecked: number;
  /** ... and found outside private anonymous memory: left as placeholders (refusal buffer_not_private) */
  bufferRefused: number;
  /** writers killed because a placeholder could not be put back */
  killedNoRestore: number;
  /** connections shut down by the violation policy "block" */
  blocked: number;
  /** processes kloak traced (their holds are invisible to their parents) */
  traced: number;
  /** processes kloak could not trace (already traced by another): held with group stops */
  traceFailed: number;
  /** holds ended by the tracer */
  holdsEnded: number;
}

/** Every count at zero: the worker's start, the main thread's totals. */
export function noWorkerStats(): WorkerStats {
  return {
    patched: 0,
    restored: 0,
    patchFailed: 0,
    notStopped: 0,
    noValue: 0,
    buffersChecked: 0,
    bufferRefused: 0,
    killedNoRestore: 0,
    blocked: 0,
    traced: 0,
    traceFailed: 0,
    holdsEnded: 0,
  };
}

export type FromWorker =
  | { type: "ready" }
  | { type: "ack"; seq: number }
  | { type: "events"; events: DataplaneEvent[] }
  | { type: "stats"; stats: WorkerStats }
  | { type: "stopped"; stats: WorkerStats };
