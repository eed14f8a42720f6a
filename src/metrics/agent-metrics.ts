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
  const registers = [registry];
  const gauge = (name: string, help: string, value: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(value());
      },
    });
  const counter = (name: string, help: string, value: () => number) =>
    new Counter({
      name,
      help,
      registers,
      collect() {
        this.reset();
        this.inc(value());
      },
    });

  new Gauge({ name: "kloak_build_info", help: "kloak build; always 1", labelNames: ["version", "commit", "rewrite_mode"], registers }).set(
    { version: build.version, commit: build.commit, rewrite_mode: build.mode },
    1,
  );
  gauge("kloak_attached_processes", "processes of enabled pods kloak tracks and attaches to", state.attachedProcesses);
  gauge("kloak_uprobe_links", "uprobe attachments held (multi-uprobe links, or link + perf event per probe)", state.uprobeLinks);
  counter("kloak_uprobe_attach_errors_total", "uprobe attach attempts that failed", state.attachErrors);
  new Gauge({
    name: "kloak_bpf_map_entries",
    help: "entries in a BPF map",
    labelNames: ["map"],
    registers,
    collect() {
      for (const m of state.maps()) this.set({ map: m.name }, m.entries);
    },
  });
  new Gauge({
    name: "kloak_bpf_map_capacity",
    help: "maximum entries of a BPF map",
    labelNames: ["map"],
    registers,
    collect() {
      for (const m of state.maps()) this.set({ map: m.name }, m.capacity);
    },
  });
  gauge("kloak_secrets_tracked", "enabled Secrets whose keys are loaded", () => state.secrets().secrets);
  gauge("kloak_secret_keys_loaded", "secret keys loaded into the kernel", () => state.secrets().keys);
  gauge("kloak_pods_tracked", "enabled pods on this node handed to the attacher", state.pods);
  gauge("kloak_leader", "1 while this agent holds the Lease and writes shadow Secrets", () => (state.leader() ? 1 : 0));
  counter("kloak_shadow_writes_total", "shadow Secret creates, updates and deletes by this agent", () => state.shadowWrites().writes);
  counter("kloak_shadow_write_errors_total", "shadow Secret writes that failed (retried)", () => state.shadowWrites().errors);
  gauge(
    "kloak_secrets_unservable",
    "enabled Secrets the shadow writer refuses to serve (a value with no fitting placeholder, bad rules; see their KloakCannotServe Events)",
    () => state.shadowWrites().unservable ?? 0,
  );
  counter("kloak_kube_events_dropped_total", "Kubernetes Events not sent (rate limit or API error)", state.eventsDropped);
  new Gauge({
    name: "kloak_kube_watch_connected",
    help: "1 while the watch of a resource is connected",
    labelNames: ["resource"],
    registers,
    collect() {
      for (const w of state.watches()) this.set({ resource: w.resource }, w.connected ? 1 : 0);
    },
  });
  new Counter({
    name: "kloak_kube_watch_errors_total",
    help: "failed lists and watches, by resource (each is retried with backoff)",
    labelNames: ["resource"],
    registers,
    collect() {
      this.reset();
      for (const w of state.watches()) this.inc({ resource: w.resource }, w.errors);
    },
  });
  gauge("kloak_webhook_cert_expiry_timestamp_seconds", "notAfter of the webhook's serving certificate (Unix seconds)", () => {
    const t = state.certNotAfter();
    return t ? t.getTime() / 1000 : 0;
  });

  const requests = new Counter({
    name: "kloak_webhook_requests_total",
    help: "admission requests by path and outcome",
    labelNames: ["path", "outcome"],
    registers,
  });
  const latency = new Histogram({
    name: "kloak_webhook_request_duration_seconds",
    help: "time to answer an admission request",
    labelNames: ["path"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers,
  });
  return {
    webhook(path, outcome, seconds) {
      requests.inc({ path, outcome });
      latency.observe({ path }, seconds);
    },
  };
}
