/** Messages between the main thread and the ring worker (structured-clone safe). */
import type { DataplaneEvent } from "./abi.ts";

export type ToWorker =
  | { type: "init"; ringFd: number; ringSize: number; bellFd: number; stopReleasedFd: number; stopWaitMs: number }
  | { type: "secret"; seq: number; id: number; placeholder: Uint8Array; value: Uint8Array }
  /** a secret is being deleted: serve every request already in the ring (a pending restore
   * still needs the placeholder), then drop the value and placeholder; acked */
  | { type: "delete"; seq: number; id: number }
  | { type: "stats" }
  | { type: "stop" };

export interface WorkerStats {
  /** placeholders replaced by their value in a stopped writer */
  patched: number;
  /** placeholders put back at return */
  restored: number;
  patchFailed: number;
  /** requests dropped because the writer was not seen stopped in time */
  notStopped: number;
  noValue: number;
}

export type FromWorker =
  | { type: "ready" }
  | { type: "ack"; seq: number }
  | { type: "events"; events: DataplaneEvent[] }
  | { type: "stats"; stats: WorkerStats }
  | { type: "stopped"; stats: WorkerStats };
