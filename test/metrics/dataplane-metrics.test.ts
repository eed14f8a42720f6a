/** The metrics read the kernel's counters at collection time; every refusal reason has its label. */
import { expect, test } from "bun:test";
import { COUNTERS, type CounterName } from "../../src/dataplane/abi.ts";
import { REFUSALS } from "../../src/dataplane/refusals.ts";
import { dataplaneMetrics } from "../../src/metrics/dataplane-metrics.ts";
import { noWorkerStats } from "../../src/dataplane/ring-protocol.ts";

const zero = () => Object.fromEntries(COUNTERS.map((c) => [c, 0n])) as Record<CounterName, bigint>;
const noWorker = noWorkerStats();

test("kloak_substitutions_refused_total has one series per reason of refusals.ts, read at collection time", async () => {
  const counters = zero();
  const refusals: Record<string, bigint> = { destination_not_allowed: 3n };
  const worker = { ...noWorker, notStopped: 2, patched: 5 };
  const registry = dataplaneMetrics(() => ({ mode: "stop", counters, refusals, worker }));
  counters.substituted = 5n;
  const text = await registry.metrics();
  for (const r of REFUSALS) expect(text).toContain(`kloak_substitutions_refused_total{reason="${r.name}"}`);
  expect(text).toContain('kloak_substitutions_refused_total{reason="destination_not_allowed"} 3');
  expect(text).toContain('kloak_substitutions_refused_total{reason="sni_mismatch"} 0');
  expect(text).toContain('kloak_substitutions_refused_total{reason="writer_not_stopped"} 2');
  expect(text).toMatch(/^kloak_substitutions_total 5$/m);
  refusals.destination_not_allowed = 4n;
  expect(await registry.metrics()).toContain('kloak_substitutions_refused_total{reason="destination_not_allowed"} 4');
});

test("kloak_substitutions_total: the kernel's count in kernel mode (the worker's stats there hold no patches), the worker's in stop mode, less writes not taken", async () => {
  const counters = zero();
  counters.substituted = 7n;
  counters.subst_not_taken = 2n;
  const worker = { ...noWorker, patched: 3, traced: 1 };
  // kloak exec hands the worker's stats over in both modes
  expect(await dataplaneMetrics(() => ({ mode: "kernel", counters, refusals: {}, worker })).metrics()).toMatch(/^kloak_substitutions_total 5$/m);
  expect(await dataplaneMetrics(() => ({ mode: "stop", counters, refusals: {}, worker })).metrics()).toMatch(/^kloak_substitutions_total 1$/m);
  expect(await dataplaneMetrics(() => ({ mode: "stop", counters, refusals: {} })).metrics()).toMatch(/^kloak_substitutions_total 0$/m);
});

test("kills (no restore possible, or the violation policy) and blocks are counted", async () => {
  const counters = zero();
  counters.violation_kills = 1n;
  counters.killed_no_restore = 1n;
  const registry = dataplaneMetrics(() => ({ mode: "stop", counters, refusals: {}, worker: { ...noWorker, killedNoRestore: 1, blocked: 2 } }));
  const text = await registry.metrics();
  expect(text).toMatch(/^kloak_writers_killed_total 3$/m);
  expect(text).toMatch(/^kloak_connections_blocked_total 2$/m);
});

test("traced and untraced processes are counted", async () => {
  const registry = dataplaneMetrics(() => ({ mode: "stop", counters: zero(), refusals: {}, worker: { ...noWorker, traced: 4, traceFailed: 1 } }));
  const text = await registry.metrics();
  expect(text).toMatch(/^kloak_processes_traced_total 4$/m);
  expect(text).toMatch(/^kloak_processes_untraced_total 1$/m);
});
