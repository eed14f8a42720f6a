/**
 * The data-plane part's model: the variants and workloads `bun run bench`
 * measures, what one run records, and issue 14's targets. bench/run.ts runs
 * them; bench/dataplane-report.ts turns the runs into the report.
 */
import type { ServerStats } from "./server.ts";

/** Issue 14's targets (same-run ratios). */
export const TARGETS = {
  noPh1k: 0.97,
  noPh16k: 0.9,
  addedP99Us: 300,
  /** kloak+ph req/s over the egress proxy's, 1 KiB request loop */
  phVsProxy: 1,
  rssBytes: 80 * 1000 * 1000, // "80 MB", read strictly as 80×10^6 bytes
};

export type VariantId = "baseline" | "kloak" | "kloak+ph" | "kloak+rules" | "kloak+ph+rules" | "proxy" | "outside" | "floor";
export type WorkloadId = "request" | "bulk";

export interface Variant {
  id: VariantId;
  label: string;
  kloak: boolean;
  placeholder: boolean;
  /** the secret has destination rules (the server's address is allowed) */
  rules?: boolean;
  /** the client talks to an nginx egress proxy that injects the real value (bench/nginx.ts) */
  proxy?: boolean;
  /** the client runs outside any scope beside a kloak exec tree that has the same libssl attached (bench/outside.ts) */
  outside?: boolean;
  /** the client alone, with empty BPF programs on kloak's probe sites of its libssl (bench/floor.ts) */
  floor?: boolean;
  /** the workloads this variant runs (default: all) */
  workloads?: WorkloadId[];
  /** kloak exec takes its secrets from this file instead of --secret NAME (growth part) */
  secretsFile?: string;
  /** more kloak exec options (growth part: --scan-cap) */
  kloakArgs?: string[];
}
export interface Workload {
  id: WorkloadId;
  label: string;
  size: number;
  /** request loop: keep-alive connections the client sends round-robin across (default 1) */
  connections?: number;
  /** bulk: where the placeholder or filler sits in each record (default: the middle) */
  tokenOffset?: number;
}

export const VARIANTS: Variant[] = [
  { id: "baseline", label: "baseline (no kloak)", kloak: false, placeholder: false },
  { id: "kloak", label: "kloak, no placeholder sent", kloak: true, placeholder: false },
  { id: "kloak+ph", label: "kloak, 1 placeholder per write", kloak: true, placeholder: true },
  { id: "kloak+rules", label: "kloak with rules, no placeholder sent", kloak: true, placeholder: false, rules: true },
  { id: "kloak+ph+rules", label: "kloak with rules, 1 placeholder per write", kloak: true, placeholder: true, rules: true },
  // The alternative to kloak+ph: the app holds no credential, the proxy adds it on the way out.
  // The client sends filler where the placeholder would be, as the "kloak" variant does.
  {
    id: "proxy",
    label: "egress proxy (nginx, TLS terminate + inject + TLS originate)",
    kloak: false,
    placeholder: false,
    proxy: true,
    workloads: ["request"],
  },
  { id: "outside", label: "non-enabled process, same libssl (kloak attached beside it)", kloak: false, placeholder: false, outside: true },
  // What any uprobe-based design pays at kloak's sites before its programs do anything.
  { id: "floor", label: "probe floor: empty programs on kloak's probe sites, no kloak", kloak: false, placeholder: false, floor: true },
];
export const variantsFor = (w: WorkloadId) => VARIANTS.filter((v) => !v.workloads || v.workloads.includes(w));
/** host rule first (resolved-address path), then the address itself (CIDR path) */
export const RULES = "localhost,127.0.0.1";
export const WORKLOADS: Workload[] = [
  { id: "request", label: "request loop (1 KiB request, keep-alive)", size: 1024 },
  { id: "bulk", label: "bulk (16 KiB writes)", size: 16384 },
];

export interface Latency {
  n: number;
  mean_ns: number;
  min_ns: number;
  p50_ns: number;
  p90_ns: number;
  p99_ns: number;
  p999_ns: number;
  max_ns: number;
}

export interface ClientResult {
  workload: WorkloadId;
  size: number;
  measured: number;
  warmup_writes: number;
  writes_total: number;
  elapsed_ns: number;
  bytes: number;
  ops_per_s: number;
  mib_per_s: number;
  latency: Latency;
  cpu_user_s: number;
  cpu_sys_s: number;
  t_start_wall_ns: number;
  t_connected_wall_ns: number;
  connections: number;
  /** seconds to open all connections (handshakes), and to send the first request on each when there are several */
  connect_s: number;
  prime_s: number;
  placeholder_sent: boolean;
  restored: boolean | null;
  tls_version: string;
  cipher: string;
  openssl: string;
  python: string;
}

export interface KloakInfo {
  pid: number;
  mode?: string;
  modeReason?: string;
  substitutions?: number;
  tlsWrites?: number;
  failedClosed: number;
  /** VmHWM of the kloak exec process, read while the client is still alive */
  hwm: number;
  /** max VmRSS seen by 50 ms polling */
  rssPolledMax: number;
  threads: number;
  guardianHwm?: number;
  /** agent CPU (all threads) during the client's measured window, seconds */
  cpuWindowS: number;
  /** per-thread CPU during the measured window */
  threadCpuWindow: { comm: string; cpuS: number }[];
}

export interface RunResult {
  rep: number;
  workload: WorkloadId;
  variant: VariantId;
  client: ClientResult;
  server: ServerStats;
  /** ms from spawn until the client process started (kloak startup + python startup) */
  startupMs: number;
  /** ms from spawn until the TLS connection was up */
  connectedMs: number;
  clientHwm: number;
  kloak?: KloakInfo;
  /** proxy variant: nginx during the measured window */
  proxy?: { pid: number; cpuWindowS: number; hwm: number };
  /** outside variant: the scoped process beside the client */
  scoped?: { pid: number; libssl: string | null; substitutions: number | undefined; exitCode: number };
  checks: { name: string; ok: boolean; detail: string }[];
  /** machine CPU during the measured window, seconds (all CPUs summed) */
  window: { seconds: number; busyS: number; oursS: number; foreignS: number; stealS: number };
  /** diagnostic runs only: BPF programs of the agent during the window */
  bpf?: { name: string; runs: number; nsPerRun: number; runsPerWrite: number; nsPerWrite: number }[];
  stderr: string;
}
