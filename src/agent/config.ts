/**
 * `kloak agent` configuration: flags, each with a KLOAK_* environment variable
 * (the DaemonSet sets most through the downward API). A flag beats its
 * variable. Everything is validated with valibot before anything starts; a bad
 * value is one line naming the flag, the variable and what to write instead.
 */
import { hostname as osHostname } from "node:os";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { UsageError } from "../errors.ts";
import { MAX_SCAN_CAP, MIN_SCAN_CAP } from "../dataplane/scan-cap.ts";
import { parseSize } from "../size.ts";
import { ACTIONS, type ViolationAction } from "../dataplane/refusals.ts";
import { HOLD_METHODS, type HoldMethod } from "../dataplane/holds.ts";
import type { RegistrationOptions } from "../webhook/registration.ts";

export const AGENT_USAGE = `usage: kloak agent [options]

Runs the node agent: loads the eBPF object, attaches to enabled pods on this
node, keeps shadow Secrets and the kernel's secret maps in sync, and serves the
admission webhook (HTTPS) and /healthz, /readyz, /metrics (HTTP).

Each option can also be set by its environment variable (the flag wins).

options:
  --kubeconfig FILE        KUBECONFIG          kubeconfig to use (default: in-cluster service account)
  --context NAME           KLOAK_CONTEXT       kubeconfig context (default: current)
  --node-name NAME         KLOAK_NODE_NAME     this node (required; downward API spec.nodeName)
  --namespace NS           KLOAK_NAMESPACE     kloak's namespace: Lease and TLS Secret (default kloak)
  --pod-name NAME          KLOAK_POD_NAME      identity in the Lease (default: host name)
  --webhook-port PORT      KLOAK_WEBHOOK_PORT  HTTPS admission webhook (default 443: a port GKE private
                                               clusters' control plane may reach without a firewall rule)
  --ops-port PORT          KLOAK_OPS_PORT      HTTP /healthz /readyz /metrics (default 9090)
  --bind-address IP        KLOAK_BIND_ADDRESS  address both servers listen on (default 0.0.0.0)
  --service-name NAME      KLOAK_SERVICE_NAME  webhook Service, for the certificate (default kloak-webhook)
  --webhook-config NAME    KLOAK_WEBHOOK_CONFIG  Mutating/ValidatingWebhookConfiguration name (default kloak);
                           the agent registers both itself once it serves, and keeps them as it wants them
  --cluster-role NAME      KLOAK_CLUSTER_ROLE  kloak's ClusterRole: owns the webhook configurations, so
                           deleting it (kubectl delete -k deploy) deletes them (default kloak)
  --cert-mode MODE         KLOAK_CERT_MODE     self (default: kloak's own CA in a Secret) or cert-manager
  --tls-secret NAME        KLOAK_TLS_SECRET    Secret holding the CA and serving cert (default kloak-webhook-tls)
  --cert-dir DIR           KLOAK_CERT_DIR      cert-manager mode: directory with tls.crt and tls.key
  --cert-manager-ca NAME   KLOAK_CERT_MANAGER_CA  cert-manager mode: the CA Certificate (in --namespace) the
                                               webhooks trust, via cert-manager.io/inject-ca-from
                                               (default kloak-webhook-ca)
  --lease-name NAME        KLOAK_LEASE_NAME    Lease electing the shadow writer (default kloak-shadow-writer)
  --lease-duration SECONDS KLOAK_LEASE_DURATION  (default 15)
  --cgroup-root DIR        KLOAK_CGROUP_ROOT   cgroup filesystem (default /sys/fs/cgroup)
  --dns-server IP[:PORT]   KLOAK_DNS_SERVERS   resolver for getkloak.io/hosts names (comma separated; default resolv.conf)
  --rewrite-mode MODE      KLOAK_REWRITE_MODE  auto (default), kernel or stop
  --scan-cap SIZE          KLOAK_SCAN_CAP      bytes of each TLS write scanned (default 64KiB)
  --on-violation ACTION    KLOAK_ON_VIOLATION  pass (default), block or kill: what an attempt to send a
                                               secret where it may not go does, for Secrets without
                                               getkloak.io/on-violation
  --strict-binding BOOL    KLOAK_STRICT_BINDING  true: refuse connections that write through the app's
                                               own BIO (docs/policy.md); default false
  --holds METHOD           KLOAK_HOLDS         ptrace (default): kloak traces pod processes, so no
                                               parent sees its holds; signals: job-control stops, for
                                               pods that run debuggers or strace (one tracer each)
  --shutdown-delay SECONDS KLOAK_SHUTDOWN_DELAY  at SIGTERM: not ready at once, the webhook keeps serving
                                               this long (endpoints go first), then drains (default 5)
  --handover MODE          KLOAK_HANDOVER      at SIGTERM, leave the data plane pinned for the next agent
                                               on this node (zero-gap upgrade): auto (default: when this
                                               agent's DaemonSet lives on), always or never
  --handover-timeout SECONDS KLOAK_HANDOVER_TIMEOUT  a handover nobody takes over within this is
                                               released: placeholders back, writers resumed (default 30)
  --log-level LEVEL        KLOAK_LOG_LEVEL     debug, info (default), warn or error
  -h, --help                                   this text`;

export interface AgentConfig {
  kubeconfig?: string;
  context?: string;
  nodeName: string;
  namespace: string;
  podName: string;
  webhookPort: number;
  opsPort: number;
  bindAddress: string;
  serviceName: string;
  webhookConfig: string;
  clusterRole: string;
  certMode: "self" | "cert-manager";
  tlsSecret: string;
  certDir?: string;
  certManagerCa: string;
  leaseName: string;
  leaseDurationSeconds: number;
  cgroupRoot: string;
  dnsServers: string[];
  rewriteMode: "auto" | "kernel" | "stop";
  scanCap: number;
  onViolation: ViolationAction;
  strictBinding: boolean;
  holds: HoldMethod;
  shutdownDelaySeconds: number;
  handover: "auto" | "always" | "never";
  handoverTimeoutSeconds: number;
  logLevel: "debug" | "info" | "warn" | "error";
}

interface Option {
  flag: string;
  env: string;
  default?: string;
}

// key -> where it comes from; the order is the order of messages.
const OPTIONS = {
  kubeconfig: { flag: "kubeconfig", env: "KUBECONFIG" },
  context: { flag: "context", env: "KLOAK_CONTEXT" },
  nodeName: { flag: "node-name", env: "KLOAK_NODE_NAME" },
  namespace: { flag: "namespace", env: "KLOAK_NAMESPACE", default: "kloak" },
  podName: { flag: "pod-name", env: "KLOAK_POD_NAME" },
  webhookPort: { flag: "webhook-port", env: "KLOAK_WEBHOOK_PORT", default: "443" },
  opsPort: { flag: "ops-port", env: "KLOAK_OPS_PORT", default: "9090" },
  bindAddress: { flag: "bind-address", env: "KLOAK_BIND_ADDRESS", default: "0.0.0.0" },
  serviceName: { flag: "service-name", env: "KLOAK_SERVICE_NAME", default: "kloak-webhook" },
  webhookConfig: { flag: "webhook-config", env: "KLOAK_WEBHOOK_CONFIG", default: "kloak" },
  clusterRole: { flag: "cluster-role", env: "KLOAK_CLUSTER_ROLE", default: "kloak" },
  certMode: { flag: "cert-mode", env: "KLOAK_CERT_MODE", default: "self" },
  tlsSecret: { flag: "tls-secret", env: "KLOAK_TLS_SECRET", default: "kloak-webhook-tls" },
  certDir: { flag: "cert-dir", env: "KLOAK_CERT_DIR" },
  certManagerCa: { flag: "cert-manager-ca", env: "KLOAK_CERT_MANAGER_CA", default: "kloak-webhook-ca" },
  leaseName: { flag: "lease-name", env: "KLOAK_LEASE_NAME", default: "kloak-shadow-writer" },
  leaseDurationSeconds: { flag: "lease-duration", env: "KLOAK_LEASE_DURATION", default: "15" },
  cgroupRoot: { flag: "cgroup-root", env: "KLOAK_CGROUP_ROOT", default: "/sys/fs/cgroup" },
  dnsServers: { flag: "dns-server", env: "KLOAK_DNS_SERVERS" },
  rewriteMode: { flag: "rewrite-mode", env: "KLOAK_REWRITE_MODE", default: "auto" },
  scanCap: { flag: "scan-cap", env: "KLOAK_SCAN_CAP", default: "64KiB" },
  onViolation: { flag: "on-violation", env: "KLOAK_ON_VIOLATION", default: "pass" },
  strictBinding: { flag: "strict-binding", env: "KLOAK_STRICT_BINDING", default: "false" },
  holds: { flag: "holds", env: "KLOAK_HOLDS", default: "ptrace" },
  shutdownDelaySeconds: { flag: "shutdown-delay", env: "KLOAK_SHUTDOWN_DELAY", default: "5" },
  handover: { flag: "handover", env: "KLOAK_HANDOVER", default: "auto" },
  handoverTimeoutSeconds: { flag: "handover-timeout", env: "KLOAK_HANDOVER_TIMEOUT", default: "30" },
  logLevel: { flag: "log-level", env: "KLOAK_LOG_LEVEL", default: "info" },
} satisfies Record<keyof AgentConfig, Option>;

type Key = keyof typeof OPTIONS;

// RFC 1123 names (Kubernetes object and namespace names).
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

const name = (what: string) =>
  v.pipe(v.string(), v.maxLength(253, `is longer than 253 characters`), v.regex(DNS_SUBDOMAIN, `is not a valid ${what} (lower-case letters, digits, '-' and '.')`));
const label = (what: string) =>
  v.pipe(v.string(), v.maxLength(63, `is longer than 63 characters`), v.regex(DNS_LABEL, `is not a valid ${what} (lower-case letters, digits and '-')`));
const port = v.pipe(
  v.string(),
  v.regex(/^\d{1,5}$/, "is not a port number; write e.g. 8443"),
  v.transform(Number),
  v.number(),
  v.minValue(1, "is not a port from 1 to 65535"),
  v.maxValue(65535, "is not a port from 1 to 65535"),
);
const seconds = (min: number, max: number) =>
  v.pipe(
    v.string(),
    v.regex(/^\d+$/, "is not a whole number of seconds"),
    v.transform(Number),
    v.number(),
    v.minValue(min, `must be ${min} to ${max} seconds`),
    v.maxValue(max, `must be ${min} to ${max} seconds`),
  );
const oneOf = <T extends string>(values: readonly T[]) =>
  v.picklist(values, `must be one of ${values.join(", ")}`);
const path = v.pipe(v.string(), v.minLength(1, "is empty; give a path"));

const SCHEMA = v.object({
  kubeconfig: v.optional(path),
  context: v.optional(v.pipe(v.string(), v.minLength(1, "is empty"))),
  nodeName: v.pipe(
    v.string(),
    v.maxLength(253, "is longer than 253 characters"),
    v.regex(DNS_SUBDOMAIN, "is not a valid node name"),
  ),
  namespace: label("namespace name"),
  podName: name("pod name"),
  webhookPort: port,
  opsPort: port,
  bindAddress: v.pipe(v.string(), v.ip("is not an IP address; write e.g. 0.0.0.0 or ::")),
  serviceName: label("Service name"),
  webhookConfig: name("webhook configuration name"),
  clusterRole: name("ClusterRole name"),
  certMode: oneOf(["self", "cert-manager"] as const),
  tlsSecret: name("Secret name"),
  certDir: v.optional(path),
  certManagerCa: name("Certificate name"),
  leaseName: name("Lease name"),
  leaseDurationSeconds: v.pipe(
    v.string(),
    v.regex(/^\d+$/, "is not a whole number of seconds"),
    v.transform(Number),
    v.number(),
    v.minValue(5, "must be 5 to 300 seconds"),
    v.maxValue(300, "must be 5 to 300 seconds"),
  ),
  cgroupRoot: path,
  dnsServers: v.pipe(
    v.optional(v.string(), ""),
    v.transform((s) => s.split(",").map((x) => x.trim()).filter((x) => x !== "")),
    v.array(v.pipe(v.string(), v.regex(/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:]+)(:\d{1,5})?$/, "is not IP[:PORT]"))),
  ),
  rewriteMode: oneOf(["auto", "kernel", "stop"] as const),
  scanCap: v.pipe(
    v.string(),
    v.transform((s) => parseSize("--scan-cap", s)),
    v.number(),
    v.minValue(MIN_SCAN_CAP, `must be at least ${MIN_SCAN_CAP} bytes`),
    v.maxValue(MAX_SCAN_CAP, `must be at most ${MAX_SCAN_CAP} bytes`),
  ),
  onViolation: oneOf(ACTIONS),
  strictBinding: v.pipe(oneOf(["true", "false"] as const), v.transform((s) => s === "true")),
  holds: oneOf(HOLD_METHODS),
  shutdownDelaySeconds: seconds(0, 120),
  handover: oneOf(["auto", "always", "never"] as const),
  handoverTimeoutSeconds: seconds(1, 600),
  logLevel: oneOf(["debug", "info", "warn", "error"] as const),
});

/** Parses argv (after `agent`) and env into a config, or throws UsageError (exit 2). */
export function parseAgentConfig(
  argv: string[],
  env: Record<string, string | undefined>,
  hostname: () => string = osHostname,
): AgentConfig | "help" {
  const flagOptions: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = { help: { type: "boolean", short: "h" } };
  for (const o of Object.values(OPTIONS) as Option[]) flagOptions[o.flag] = { type: "string", multiple: o.flag === "dns-server" };
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: argv, options: flagOptions, allowPositionals: false, strict: true }));
  } catch (e) {
    throw new UsageError(`agent: ${(e as Error).message.split("\n")[0]}; run \`kloak agent --help\``);
  }
  if (values.help) return "help";

  const raw: Record<string, string | undefined> = {};
  const source: Record<string, string> = {};
  for (const [key, o] of Object.entries(OPTIONS) as [Key, Option][]) {
    let flag = values[o.flag] as string | string[] | undefined;
    if (Array.isArray(flag)) flag = flag.join(",");
    if (flag !== undefined) {
      raw[key] = flag;
      source[key] = `--${o.flag}`;
    } else if (env[o.env] !== undefined && env[o.env] !== "") {
      raw[key] = env[o.env];
      source[key] = o.env;
    } else if (o.default !== undefined) {
      raw[key] = o.default;
      source[key] = "default";
    }
  }
  raw.podName ??= hostname().toLowerCase();
  source.podName ??= "host name";

  if (raw.nodeName === undefined) {
    throw new UsageError(
      "agent: --node-name (KLOAK_NODE_NAME) is required: pass --node-name or set KLOAK_NODE_NAME (the DaemonSet sets it from spec.nodeName)",
    );
  }
  let parsed: v.InferOutput<typeof SCHEMA>;
  try {
    parsed = v.parse(SCHEMA, raw, { abortEarly: true });
  } catch (e) {
    if (e instanceof UsageError) throw e;
    if (!(e instanceof v.ValiError)) throw e;
    const issue = e.issues[0];
    const key = (issue.path?.[0]?.key as Key | undefined) ?? null;
    const o = key ? (OPTIONS[key] as Option) : undefined;
    const where = o ? `--${o.flag} (${o.env})` : "option";
    const entry = issue.path && issue.path.length > 1 ? issue.input : raw[key ?? "nodeName"];
    const value = key && entry !== undefined ? ` ${JSON.stringify(entry)}` : "";
    const from = key && source[key] && source[key] !== `--${o?.flag}` ? ` [from ${source[key]}]` : "";
    throw new UsageError(`agent: ${where}${value}${from} ${issue.message}`);
  }
  if (parsed.certMode === "cert-manager" && !parsed.certDir) {
    throw new UsageError("agent: --cert-mode cert-manager needs --cert-dir (KLOAK_CERT_DIR): the directory where the cert-manager Secret is mounted");
  }
  if (parsed.webhookPort === parsed.opsPort) {
    throw new UsageError(`agent: --webhook-port and --ops-port are both ${parsed.opsPort}; give them different ports`);
  }
  return parsed;
}

/**
 * The webhook configurations this configuration registers. In cert-manager
 * mode they trust the CA Certificate, not the serving one: cainjector copies
 * the CA into caBundle, and that stays the same while cert-manager renews the
 * serving certificate under it — so a renewal never leaves the API server
 * trusting a CA the served certificate does not chain to (deploy/cert-manager).
 */
export function webhookRegistration(cfg: AgentConfig): RegistrationOptions {
  return {
    name: cfg.webhookConfig,
    namespace: cfg.namespace,
    service: cfg.serviceName,
    clusterRole: cfg.clusterRole,
    ca: cfg.certMode === "cert-manager" ? { mode: "cert-manager", certificate: `${cfg.namespace}/${cfg.certManagerCa}` } : { mode: "self" },
  };
}
