/** The metrics read the kernel counters; every refusal reason the kernel reports has its counter. */
import { expect, test } from "bun:test";
import { COUNTERS, REFUSAL_REASONS, type CounterName } from "../../src/dataplane/abi.ts";
import { dataplaneMetrics, REFUSAL_COUNTERS } from "../../src/metrics/dataplane-metrics.ts";

test("every refusal reason of the kernel maps to a kernel counter", () => {
  for (const reason of Object.values(REFUSAL_REASONS)) {
    expect(REFUSAL_COUNTERS[reason]).toBeDefined();
    expect(COUNTERS).toContain(REFUSAL_COUNTERS[reason]!);
  }
});

test("kloak_substitutions_refused_total{reason} reads the counters at collection time", async () => {
  const counters = Object.fromEntries(COUNTERS.map((c) => [c, 0n])) as Record<CounterName, bigint>;
  const registry = dataplaneMetrics(() => ({ counters }));
  counters.refused_destination = 3n;
  counters.substituted = 5n;
  const text = await registry.metrics();
  expect(text).toContain('kloak_substitutions_refused_total{reason="destination_not_allowed"} 3');
  expect(text).toContain('kloak_substitutions_refused_total{reason="sni_mismatch"} 0');
  expect(text).toMatch(/^kloak_substitutions_total 5$/m);
  counters.refused_destination = 4n;
  expect(await registry.metrics()).toContain('kloak_substitutions_refused_total{reason="destination_not_allowed"} 4');
});
