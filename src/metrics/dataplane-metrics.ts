/**
 * Prometheus metrics of the data plane. Values are read from the kernel's
 * counters (and the stop-mode worker's) at collection time, so a refusal is
 * counted even when its ring-buffer event was lost.
 */
import { Counter, Registry } from "prom-client";
import type { CounterName } from "../dataplane/abi.ts";
import type { WorkerStats } from "../dataplane/ring-protocol.ts";

export interface DataplaneSnapshot {
  counters: Record<CounterName, bigint>;
  /** stop mode only: substitutions the worker did or failed closed */
  worker?: WorkerStats;
}

/** The `reason` label of kloak_substitutions_refused_total, from the kernel counter that counts it. */
export const REFUSAL_COUNTERS: Record<string, CounterName> = {
  unknown_placeholder: "refused_unknown",
  truncated: "refused_truncated",
  scope_not_entitled: "refused_not_entitled",
  too_many_placeholders: "refused_too_many",
  no_value: "refused_no_value",
  write_failed: "refused_write_failed",
  ringbuf_full: "refused_ringbuf_full",
  beyond_scan_cap: "scan_truncated",
  concurrent_write: "refused_concurrent",
  destination_not_allowed: "refused_destination",
  sni_mismatch: "refused_sni",
  unknown_peer: "refused_unknown_peer",
};

export function dataplaneMetrics(read: () => DataplaneSnapshot, registry = new Registry()): Registry {
  const total = (name: string, help: string, value: (s: DataplaneSnapshot) => bigint | number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(Number(value(read())));
      },
    });
  total("kloak_tls_writes_total", "TLS writes of protected processes", (s) => s.counters.writes_seen);
  total(
    "kloak_tls_writes_skipped_total",
    "TLS writes not scanned (placeholders left in place): nested in another TLS write of the thread, or the " +
      "CPU's work slot held by a preempted probe",
    (s) => s.counters.nested_write,
  );
  total("kloak_bytes_scanned_total", "bytes of TLS writes scanned for placeholders", (s) => s.counters.bytes_scanned);
  total("kloak_substitutions_total", "placeholders replaced by their real value", (s) =>
    s.worker ? s.worker.patched : s.counters.substituted,
  );
  total(
    "kloak_unrestricted_substitutions_total",
    "substitutions of secrets that have no destination rules (allowed anywhere)",
    (s) => s.counters.unrestricted,
  );
  total("kloak_connections_bound_total", "TLS connections tied to their socket", (s) => s.counters.conns_bound);
  total(
    "kloak_connection_bind_conflicts_total",
    "TLS connections seen on two sockets (never substituted)",
    (s) => s.counters.bind_conflict,
  );
  total("kloak_events_lost_total", "data-plane events the ring buffer could not take", (s) => s.counters.events_lost);
  new Counter({
    name: "kloak_substitutions_refused_total",
    help: "placeholders left in place, by reason",
    labelNames: ["reason"],
    registers: [registry],
    collect() {
      const s = read();
      this.reset();
      for (const [reason, counter] of Object.entries(REFUSAL_COUNTERS)) this.inc({ reason }, Number(s.counters[counter]));
      if (s.worker) {
        this.inc({ reason: "writer_not_stopped" }, s.worker.notStopped);
        this.inc({ reason: "patch_failed" }, s.worker.patchFailed + s.worker.noValue);
      }
    },
  });
  return registry;
}
