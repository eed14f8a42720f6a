/**
 * `kloak exec [options] -- CMD [ARGS]`: run CMD with placeholders instead of
 * secrets; CMD and every descendant get the real value substituted inside
 * their TLS writes.
 */
import { chmodSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { UsageError, EnvironmentError } from "../errors.ts";
import { selfCommand } from "../build-info.ts";
import { parseScanCap } from "../dataplane/scan-cap.ts";
import { Dataplane } from "../dataplane/dataplane.ts";
import { ensurePinDir, execPinPath, releaseUntilQuiet, stalePins } from "../dataplane/release.ts";
import { PlaceholderRegistry, placeholderKey } from "../secrets/placeholder.ts";
import { loadSecretsFile, mergeSecrets, parseSecretFlag, type SecretSpec } from "../secrets/secrets-file.ts";
import { kernelRules, PolicyEngine } from "../policy/policy-engine.ts";
import { dnsLookup } from "../policy/resolver.ts";
import { formatRule, MAX_RULES, parseRuleList, RuleError, type Rule } from "../policy/rules.ts";
import { RefusalLog } from "./refusals.ts";

export const EXEC_USAGE = `usage: kloak exec [options] -- CMD [ARGS...]

Runs CMD with each secret's environment variable set to a placeholder of the
same length; the real value is put into CMD's TLS writes (and its children's).

options:
  --secret NAME=VALUE      a secret (repeatable); VALUE is visible in ps: prefer
  --secret NAME            ... which takes the value from kloak's own environment
  --secrets-file FILE      YAML or JSON list of secrets (README: "Secrets file")
  --allow NAME=RULE[,RULE] where secret NAME may be sent (repeatable, adds to the
                           file's hosts): api.example.com, *.example.com,
                           host:443, 10.0.0.0/8, [::1]:8443 (docs/policy.md).
                           A secret without rules may go to any destination.
  --dns-server IP[:PORT]   resolve rule hosts with this DNS server (repeatable;
                           default: the system's resolv.conf)
  --metrics-file FILE      on exit, write Prometheus metrics to FILE
  --placeholder-dir DIR    also write each placeholder to DIR/NAME (mode 0600)
  --rewrite-mode MODE      auto (default), kernel or stop
  --scan-cap SIZE          bytes of each write scanned (default 64KiB, max 16MiB)
  --quiet                  no summary on exit
  -h, --help               this text`;

const SCOPE = 1;
const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH"] as const;

export interface ExecOptions {
  secrets: SecretSpec[];
  command: string[];
  mode: "auto" | "kernel" | "stop";
  scanCap: number;
  placeholderDir?: string;
  quiet: boolean;
  dnsServers: string[];
  metricsFile?: string;
}

export async function parseExecArgs(argv: string[], env: Record<string, string | undefined>): Promise<ExecOptions | "help"> {
  const dash = argv.indexOf("--");
  const own = dash < 0 ? argv : argv.slice(0, dash);
  const command = dash < 0 ? [] : argv.slice(dash + 1);
  let parsed;
  try {
    parsed = parseArgs({
      args: own,
      strict: true,
      allowPositionals: false,
      options: {
        secret: { type: "string", multiple: true },
        "secrets-file": { type: "string", multiple: true },
        allow: { type: "string", multiple: true },
        "dns-server": { type: "string", multiple: true },
        "metrics-file": { type: "string" },
        "placeholder-dir": { type: "string" },
        "rewrite-mode": { type: "string", default: "auto" },
        "scan-cap": { type: "string", default: "64KiB" },
        quiet: { type: "boolean", short: "q", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    const hint = dash < 0 ? "; put `--` between kloak's options and the command" : "; see `kloak exec --help`";
    throw new UsageError(`exec: ${msg}${hint}`);
  }
  const v = parsed.values;
  if (v.help) return "help";
  if (command.length === 0)
    throw new UsageError("exec: no command given; usage: kloak exec [--secret NAME=VALUE]... -- CMD [ARGS...]");
  const mode = v["rewrite-mode"]!;
  if (mode !== "auto" && mode !== "kernel" && mode !== "stop")
    throw new UsageError(`exec: --rewrite-mode ${JSON.stringify(mode)}: use auto, kernel or stop`);
  const scanCap = parseScanCap("--scan-cap", v["scan-cap"]!);
  const lists: SecretSpec[][] = [(v.secret ?? []).map((s) => parseSecretFlag(s, env))];
  for (const f of v["secrets-file"] ?? []) lists.push(await loadSecretsFile(f, env));
  const secrets = mergeSecrets(lists);
  if (secrets.length === 0)
    throw new UsageError("exec: no secrets given; add --secret NAME=VALUE, --secret NAME or --secrets-file FILE");
  applyAllowFlags(secrets, v.allow ?? []);
  const dnsServers = (v["dns-server"] ?? []).map(checkDnsServer);
  return {
    secrets,
    command,
    mode,
    scanCap,
    placeholderDir: v["placeholder-dir"],
    quiet: v.quiet!,
    dnsServers,
    metricsFile: v["metrics-file"],
  };
}

/** --allow NAME=RULE[,RULE]: adds to the secret's rules; all flags are checked before any is applied. */
function applyAllowFlags(secrets: SecretSpec[], flags: string[]): void {
  const added = new Map<SecretSpec, Rule[]>();
  for (const flag of flags) {
    const eq = flag.indexOf("=");
    const name = eq < 0 ? flag : flag.slice(0, eq);
    if (eq < 0 || name === "")
      throw new UsageError(`exec: --allow ${JSON.stringify(flag)}: write --allow NAME=RULE[,RULE], e.g. --allow API_TOKEN=api.example.com`);
    const secret = secrets.find((s) => s.name === name);
    if (!secret)
      throw new UsageError(`exec: --allow ${name}=...: no secret named ${name}; give it with --secret or --secrets-file first`);
    let rules: Rule[];
    try {
      rules = parseRuleList(flag.slice(eq + 1));
    } catch (e) {
      if (e instanceof RuleError) throw new UsageError(`exec: --allow ${name}: ${e.message}`);
      throw e;
    }
    added.set(secret, [...(added.get(secret) ?? []), ...rules]);
  }
  for (const [secret, rules] of added) {
    const seen = new Set(secret.rules.map(formatRule));
    const merged = [...secret.rules, ...rules.filter((r) => !seen.has(formatRule(r)) && seen.add(formatRule(r)))];
    if (merged.length > MAX_RULES)
      throw new UsageError(
        `exec: secret ${secret.name} has ${merged.length} rules; at most ${MAX_RULES} — use a wildcard or a CIDR to cover several`,
      );
    secret.rules = merged;
  }
}

function checkDnsServer(text: string): string {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+))(?::(\d{1,5}))?$/.exec(text.trim());
  const port = m?.[3] === undefined ? 53 : Number(m[3]);
  if (!m || port < 1 || port > 65535)
    throw new UsageError(`exec: --dns-server ${JSON.stringify(text)}: write an IP with an optional port, e.g. 10.0.0.10, 127.0.0.1:5353 or [::1]:53`);
  return text.trim();
}

function say(msg: string): void {
  process.stderr.write(`kloak: ${msg}\n`);
}

/** The environment CMD gets: placeholders under the secrets' names, and no real value anywhere. */
export function childEnvironment(
  env: Record<string, string | undefined>,
  secrets: SecretSpec[],
  placeholders: Map<string, string>,
): { env: Record<string, string>; dropped: string[] } {
  const real = new Set(secrets.map((s) => Buffer.from(s.value).toString("latin1")));
  const out: Record<string, string> = {};
  const dropped: string[] = [];
  for (const [k, val] of Object.entries(env)) {
    if (val === undefined) continue;
    // A variable that carries a real value (e.g. the source of valueEnv) must not reach CMD.
    if (real.has(Buffer.from(val).toString("latin1")) && !placeholders.has(k)) dropped.push(k);
    else out[k] = val;
  }
  for (const [name, ph] of placeholders) out[name] = ph;
  return { env: out, dropped };
}

export async function execCommand(argv: string[]): Promise<number> {
  const opts = await parseExecArgs(argv, process.env);
  if (opts === "help") {
    process.stdout.write(EXEC_USAGE + "\n");
    return 0;
  }

  // Everything that can be refused is checked before anything is loaded.
  const registry = new PlaceholderRegistry();
  const placeholders = new Map<string, string>();
  for (const s of opts.secrets) placeholders.set(s.name, registry.create(s.name, s.value.length));
  const { env, dropped } = childEnvironment(process.env, opts.secrets, placeholders);
  if (opts.placeholderDir) writePlaceholderFiles(opts.placeholderDir, placeholders);

  for (const stale of stalePins()) await releaseUntilQuiet(stale);

  const dp = await Dataplane.start({ mode: opts.mode, scanCap: opts.scanCap, warn: say });
  const refusals = new RefusalLog(new Map(opts.secrets.map((s, i) => [i + 1, s.name])));
  dp.onRefusal((e) => refusals.add(e));
  const policy = new PolicyEngine(dp, {
    lookup: dnsLookup(opts.dnsServers.length ? opts.dnsServers : undefined),
    warn: say,
  });
  dp.onSni((e) => policy.sawSni(e.sni));
  dp.holdAtNewSni(opts.secrets.some((s) => s.rules.some((r) => r.kind === "wildcard")));
  let guardian: ReturnType<typeof Bun.spawn> | undefined;
  const pin = execPinPath(process.pid);
  try {
    // Names first: a rule's host must have its addresses before CMD can connect.
    await policy.add(opts.secrets.flatMap((s) => s.rules));
    let id = 0;
    for (const s of opts.secrets) {
      const ph = placeholders.get(s.name)!;
      await dp.setSecret({
        id: ++id,
        placeholder: Buffer.from(ph),
        key: placeholderKey(ph),
        value: s.value,
        rules: kernelRules(s.rules),
      });
      dp.grant(SCOPE, id);
    }
    const unrestricted = opts.secrets.filter((s) => s.rules.length === 0).map((s) => s.name);
    if (unrestricted.length)
      say(
        `no destination rules for ${unrestricted.join(", ")}: may be sent to any TLS destination; ` +
          `restrict with --allow NAME=HOST[,HOST] or hosts: in the secrets file`,
      );
    for (const s of opts.secrets)
      for (const r of s.rules)
        if (r.kind === "host" && policy.addresses(r.host).length === 0)
          say(`${r.host} (a rule of ${s.name}) resolves to no address yet: ${s.name} is refused there until it does`);
    try {
      ensurePinDir();
      dp.pinProcesses(pin);
    } catch (e) {
      throw new EnvironmentError(
        `cannot pin the process map in bpffs (${(e as Error).message.split("\n")[0]}); mount it: mount -t bpf bpf /sys/fs/bpf`,
      );
    }
    guardian = Bun.spawn([...selfCommand(), "__guardian", pin], { stdin: "pipe", stdout: "ignore", stderr: "inherit" });

    if (!opts.quiet) {
      say(`rewrite mode ${dp.mode} (${dp.modeReason})`);
      if (dropped.length) say(`not passing ${dropped.join(", ")} to the command: it holds a real secret value`);
    }

    let child: ReturnType<typeof Bun.spawn>;
    dp.addLauncher(process.pid, SCOPE);
    try {
      child = Bun.spawn(opts.command, { env, stdio: ["inherit", "inherit", "inherit"] });
    } catch (e) {
      throw new UsageError(`cannot run ${opts.command[0]}: ${(e as Error).message}`);
    } finally {
      dp.removeLauncher(process.pid);
    }
    const handlers = FORWARDED.map((sig) => {
      const h = () => child.kill(sig);
      process.on(sig, h);
      return [sig, h] as const;
    });
    const code = await child.exited;
    for (const [sig, h] of handlers) process.off(sig, h);
    const signal = child.signalCode ? constants.signals[child.signalCode as NodeJS.Signals] : undefined;
    const exitCode = signal ? 128 + signal : code;

    // Let the last events (refusals of the final writes) arrive.
    await Bun.sleep(20);
    const counters = dp.counters();
    const stats = await dp.workerStats();
    if (!opts.quiet) {
      const substituted = dp.mode === "stop" ? stats.patched : Number(counters.substituted);
      say(
        `${substituted} substitution(s) in ${counters.writes_seen} TLS write(s)` +
          (stats.notStopped + stats.patchFailed ? `, ${stats.notStopped + stats.patchFailed} failed closed` : ""),
      );
      for (const line of refusals.summary()) say(line);
    }
    if (opts.metricsFile) await writeMetrics(opts.metricsFile, counters, stats);
    return exitCode;
  } finally {
    policy.close();
    await dp.close();
    rmSync(pin, { force: true });
    if (guardian) {
      (guardian.stdin as import("bun").FileSink).end();
      await guardian.exited;
    }
  }
}

async function writeMetrics(
  file: string,
  counters: ReturnType<Dataplane["counters"]>,
  stats: Awaited<ReturnType<Dataplane["workerStats"]>>,
): Promise<void> {
  // Loaded only when asked for: prom-client costs the agent a few MiB of RSS.
  const { dataplaneMetrics } = await import("../metrics/dataplane-metrics.ts");
  const registry = dataplaneMetrics(() => ({ counters, worker: stats }));
  try {
    writeFileSync(file, await registry.metrics());
  } catch (e) {
    say(`cannot write --metrics-file ${file}: ${(e as Error).message}`);
  }
}

function writePlaceholderFiles(dir: string, placeholders: Map<string, string>): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const [name, ph] of placeholders) {
      const f = join(dir, name);
      writeFileSync(f, ph, { mode: 0o600 });
      chmodSync(f, 0o600);
    }
  } catch (e) {
    throw new UsageError(`--placeholder-dir ${dir}: ${(e as Error).message}`);
  }
}
