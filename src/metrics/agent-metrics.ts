/**
 * The agent's own metrics, next to the data plane's (dataplane-metrics.ts)
 * in one registry. Gauges read live state at collection time; counters and
 * the webhook histogram are updated as things happen. No label ever holds a
 * secret's name or value: secrets are counted, not listed.
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface AgentState {
  attachedProcesses(): number;
  uprobeLinks(): number;
  attachErrors(): number;
  maps(): { name: string; entries: number; capacity: number }[];
  secrets(): { secrets: number; keys: number };
  pods(): number;
  leader(): boolean;
  watches(): { resource: string; connected: boolean; errors: number }[];
  shadowWrites(): { writes: number; errors: number; unservable?: number };
  eventsDropped(): number;
  certNotAfter(): Date | undefined;
}

export interface AgentMetrics {
  webhook(path: string, outcome: string, seconds: number): void;
}

export function agentMetrics(registry: Registry, state: AgentState, build: { version: string; commit: string; mode: string }): AgentMetrics {
  const def = definers(registry);
  new Gauge({ name: "kloak_build_info", help: "kloak build; always 1", labelNames: ["version", "commit", "rewrite_mode"], registers: [registry] }).set(
    { version: build.version, commit: build.commit, rewrite_mode: build.mode },
    1,
  );
  dataplaneState(def, state);
  kubeState(def, state);
  return webhookMetrics(registry);
}

/** Metrics whose value is read from the agent's state when they are collected. */
interface Definers {
  gauge(name: string, help: string, value: () => number): void;
  counter(name: string, help: string, value: () => number): void;
  /** a gauge per label value */
  labelledGauge(name: string, help: string, label: string, values: () => [string, number][]): void;
  /** a counter per label value */
  labelledCounter(name: string, help: string, label: string, values: () => [string, number][]): void;
}

function definers(registry: Registry): Definers {
  const registers = [registry];
  return {
    gauge: (name, help, value) =>
      void new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value());
        },
      }),
    counter: (name, help, value) =>
      void new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(value());
        },
      }),
    labelledGauge: (name, help, label, values) =>
      void new Gauge({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          for (const [v, n] of values()) this.set({ [label]: v }, n);
        },
      }),
    labelledCounter: (name, help, label, values) =>
      void new Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          for (const [v, n] of values()) this.inc({ [label]: v }, n);
        },
      }),
  };
}

/** Probes, maps, secrets and pods. */
function dataplaneState({ gauge, counter, labelledGauge }: Definers, state: AgentState): void {
  gauge("kloak_attached_processes", "processes of enabled pods kloak tracks and attaches to", state.attachedProcesses);
  gauge("kloak_uprobe_links", "uprobe attachments held (multi-uprobe links, or link + perf event per probe)", state.uprobeLinks);
  counter("kloak_uprobe_attach_errors_total", "uprobe attach attempts that failed", state.attachErrors);
  labelledGauge("kloak_bpf_map_entries", "entries in a BPF map", "map", () => state.maps().map((m) => [m.name, m.entries]));
  labelledGauge("kloak_bpf_map_capacity", "maximum entries of a BPF map", "map", () => state.maps().map((m) => [m.name, m.capacity]));
  gauge("kloak_secrets_tracked", "enabled Secrets whose keys are loaded", () => state.secrets().secrets);
  gauge("kloak_secret_keys_loaded", "secret keys loaded into the kernel", () => state.secrets().keys);
  gauge("kloak_pods_tracked", "enabled pods on this node handed to the attacher", state.pods);
}

/** Leadership, shadow writes, Events, watches and the serving certificate. */
function kubeState({ gauge, counter, labelledGauge, labelledCounter }: Definers, state: AgentState): void {
  gauge("kloak_leader", "1 while this agent holds the Lease and writes shadow Secrets", () => (state.leader() ? 1 : 0));
  counter("kloak_shadow_writes_total", "shadow Secret creates, updates and deletes by this agent", () => state.shadowWrites().writes);
  counter("kloak_shadow_write_errors_total", "shadow Secret writes that failed (retried)", () => state.shadowWrites().errors);
  gauge(
    "kloak_secrets_unservable",
    "enabled Secrets the shadow writer refuses to serve (a value with no fitting placeholder, bad rules; see their KloakCannotServe Events)",
    () => state.shadowWrites().unservable ?? 0,
  );
  counter("kloak_kube_events_dropped_total", "Kubernetes Events not sent (rate limit or API error)", state.eventsDropped);
  labelledGauge("kloak_kube_watch_connected", "1 while the watch of a resource is connected", "resource", () =>
    state.watches().map((w) => [w.resource, w.connected ? 1 : 0]),
  );
  labelledCounter("kloak_kube_watch_errors_total", "failed lists and watches, by resource (each is retried with backoff)", "resource", () =>
    state.watches().map((w) => [w.resource, w.errors]),
  );
  gauge("kloak_webhook_cert_expiry_timestamp_seconds", "notAfter of the webhook's serving certificate (Unix seconds)", () => {
    const t = state.certNotAfter();
    return t ? t.getTime() / 1000 : 0;
  });
}

/** Updated as admission requests are answered. */
function webhookMetrics(registry: Registry): AgentMetrics {
  const requests = new Counter({
    name: "kloak_webhook_requests_total",
    help: "admission requests by path and outcome",
    labelNames: ["path", "outcome"],
    registers: [registry],
  });
  const latency = new Histogram({
    name: "kloak_webhook_request_duration_seconds",
    help: "time to answer an admission request",
    labelNames: ["path"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  });
  return {
    webhook(path, outcome, seconds) {
      requests.inc({ path, outcome });
      latency.observe({ path }, seconds);
    },
  };
}
