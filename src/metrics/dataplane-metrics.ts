/**
 * Prometheus metrics of the data plane. Values are read from the kernel's
 * counters (and the stop-mode worker's) at collection time, so a refusal is
 * counted even when its ring-buffer event was lost.
 */
import { Counter, Registry } from "prom-client";
import { MAX_CANDIDATES, type CounterName } from "../dataplane/abi.ts";
import { REFUSALS } from "../dataplane/refusals.ts";
import { UNHOOKABLE_REASONS } from "../dataplane/unhookable.ts";
import type { DataplaneSnapshot } from "../dataplane/dataplane.ts";

export type { DataplaneSnapshot };

type Value = (s: DataplaneSnapshot) => bigint | number;
type Counts = (s: DataplaneSnapshot) => [reason: string, n: number][];

/**
 * Placeholders replaced by their value: the kernel's count in kernel mode, the
 * worker's in stop mode (the kernel counts stop mode's requests, not what the
 * worker did), less those of writes the library returned as not done (the
 * app retries the same bytes: one placeholder, one substitution). The one
 * count of substitutions: metrics and `kloak exec`'s summary.
 */
export function substitutionsDone(s: Pick<DataplaneSnapshot, "mode" | "counters" | "worker">): bigint {
  const done = s.mode === "stop" ? BigInt(s.worker?.patched ?? 0) : s.counters.substituted;
  const n = done - s.counters.subst_not_taken;
  return n > 0n ? n : 0n;
}

/** Counters read from the snapshot at collection time: name, help, value. */
const TOTALS: readonly [name: string, help: string, value: Value][] = [
  ["kloak_tls_writes_total", "TLS writes of protected processes", (s) => s.counters.writes_seen],
  [
    "kloak_tls_writes_skipped_total",
    "TLS writes not scanned (placeholders left in place): nested in another TLS write of the thread, or every " +
      "work slot of the CPU held by preempted probes",
    (s) => s.counters.nested_write,
  ],
  ["kloak_bytes_scanned_total", "bytes of TLS writes scanned for placeholders", (s) => s.counters.bytes_scanned],
  [
    "kloak_syscall_runs_skipped_total",
    "runs of kloak's send program (sys_enter) the kernel skipped, the program being preempted on that CPU (kernels 7.0+), " +
      "for any syscall: its backup runs the watched ones (kloak_syscall_runs_recovered_total)",
    (s) => s.syscallRunsSkipped ?? 0,
  ],
  [
    "kloak_syscall_runs_recovered_total",
    "watched syscalls (writes, sends, opens) the send program was skipped for, run by its backup (kernels 7.0+)",
    (s) => s.counters.syscall_runs_recovered,
  ],
  [
    "kloak_syscall_backup_runs_skipped_total",
    "runs of the send program's backup the kernel skipped (kernels 7.0+): a watched syscall both were skipped for is missed, " +
      "and a send missed can leave a connection unbound (its placeholders refused)",
    (s) => s.syscallBackupRunsSkipped ?? 0,
  ],
  [
    "kloak_buffers_checked_by_worker_total",
    "stop mode: placeholders whose buffer mapping the kernel could not check (the memory map was locked), checked by kloak before writing",
    (s) => s.worker?.buffersChecked ?? 0,
  ],
  ["kloak_bytes_unscanned_total", "bytes of TLS writes beyond the scan cap (never looked at)", (s) => s.counters.bytes_unscanned],
  [
    "kloak_markers_unexamined_total",
    `"kloak:" markers beyond the first ${MAX_CANDIDATES} of one write: never examined, left as they are (placeholders among them went out unreplaced)`,
    (s) => s.counters.candidates_dropped,
  ],
  ["kloak_substitutions_total", "placeholders replaced by their real value", substitutionsDone],
  [
    "kloak_substitutions_not_taken_total",
    "substitutions in writes the TLS library returned as not done (SSL_write <= 0; the app retries the same bytes): not counted as substitutions",
    (s) => s.counters.subst_not_taken,
  ],
  ["kloak_unrestricted_substitutions_total", "substitutions of secrets that have no destination rules (allowed anywhere)", (s) => s.counters.unrestricted],
  ["kloak_connections_bound_total", "TLS connections tied to their socket", (s) => s.counters.conns_bound],
  ["kloak_connection_bind_conflicts_total", "TLS connections seen on two sockets (never substituted)", (s) => s.counters.bind_conflict],
  ["kloak_events_lost_total", "data-plane events the ring buffer could not take", (s) => s.counters.events_lost],
  [
    "kloak_writers_killed_total",
    "processes killed: a placeholder could not be put back, or the violation policy said kill",
    (s) => s.counters.killed_no_restore + s.counters.violation_kills + BigInt(s.worker?.killedNoRestore ?? 0),
  ],
  ["kloak_connections_blocked_total", "connections shut down by the violation policy (block)", (s) => BigInt(s.worker?.blocked ?? 0)],
  ["kloak_exec_holds_total", "execs in a scope held until kloak had attached to their image", (s) => s.counters.exec_held],
  [
    "kloak_library_open_holds_total",
    "opens of a TLS library held until kloak had loaded its TLS programs and attached the file",
    (s) => s.counters.lib_open_held,
  ],
  [
    "kloak_library_opens_unheld_total",
    "opens of a TLS library that could not be held (another thread had a stop in flight): its writes may keep their placeholders",
    (s) => s.counters.lib_open_unheld,
  ],
  [
    "kloak_library_open_paths_unread_total",
    "opens (of any file, while TLS libraries are watched) whose path the kernel program could not read, not being resident: held while kloak read it",
    (s) => s.counters.lib_open_unread,
  ],
  ["kloak_execs_known_total", "execs of a traced process into an image kloak had attached already: not held", (s) => s.counters.exec_known],
  [
    "kloak_processes_traced_total",
    "processes kloak traced: their holds (exec, stop-mode writes, new SNI) are invisible to their parents",
    (s) => BigInt(s.worker?.traced ?? 0),
  ],
  [
    "kloak_processes_untraced_total",
    "processes kloak could not trace (another tracer has them): held with group stops their parents can see",
    (s) => BigInt(s.worker?.traceFailed ?? 0),
  ],
];

/** Counters labelled by reason: every reason counts() lists, zeros included. */
const BY_REASON: readonly [name: string, help: string, counts: Counts][] = [
  [
    "kloak_substitutions_refused_total",
    "placeholders left in place, by reason",
    (s) =>
      REFUSALS.map((r) => {
        // User-space reasons the data plane counts itself (go_binary_unsupported) come with the kernel's.
        const own = r.kernel !== null || r.name in s.refusals;
        // buffer_not_private is decided by the kernel, or by the worker for buffers the kernel could not check.
        return [r.name, (own ? Number(s.refusals[r.name] ?? 0n) : 0) + (s.worker && r.worker ? r.worker(s.worker) : 0)];
      }),
  ],
  [
    "kloak_tls_unhookable_total",
    "processes in a scope that did TLS through a library kloak has no probes in (placeholders sent as they are), by reason",
    (s) => Object.keys(UNHOOKABLE_REASONS).map((reason) => [reason, s.unhookable?.[reason] ?? 0]),
  ],
];

export function dataplaneMetrics(read: () => DataplaneSnapshot, registry = new Registry()): Registry {
  for (const [name, help, value] of TOTALS)
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(Number(value(read())));
      },
    });
  for (const [name, help, counts] of BY_REASON)
    new Counter({
      name,
      help,
      labelNames: ["reason"],
      registers: [registry],
      collect() {
        const s = read();
        this.reset();
        for (const [reason, n] of counts(s)) this.inc({ reason }, n);
      },
    });
  return registry;
}
