/**
 * `kloak exec [options] -- CMD [ARGS]`: run CMD with placeholders instead of
 * secrets; CMD and every descendant get the real value substituted inside
 * their TLS writes.
 */
import { accessSync, chmodSync, chownSync, constants as fsConstants, mkdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { CommandError, UsageError } from "../errors.ts";
import { checkCommand } from "./command-path.ts";
import { parseScanCap } from "../dataplane/scan-cap.ts";
import { MAX_CANDIDATES } from "../dataplane/abi.ts";
import { ACTIONS, workerRefusals, type ViolationAction } from "../dataplane/refusals.ts";
import { HOLD_METHODS, type HoldMethod } from "../dataplane/holds.ts";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane } from "../dataplane/dataplane.ts";
import { type UnhookableReport, unhookableMessage } from "../dataplane/unhookable.ts";
import { execPinBase } from "../dataplane/release.ts";
import { hardenSupervisor, scrubStartArgs } from "../supervisor/harden.ts";
import { Guardian } from "../supervisor/guardian-client.ts";
import { resolveRunAs, type RunAs } from "./run-as.ts";
import { PlaceholderRegistry, placeholderKey } from "../secrets/placeholder.ts";
import { loadEnvFile, loadSecretsFile, mergeSecrets, parseSecretFlag, type SecretSpec } from "../secrets/secrets-file.ts";
import { kernelRules } from "../policy/policy-engine.ts";
import { Phases } from "../lifecycle/phases.ts";
import { startProtection, type Protection } from "../lifecycle/protection.ts";
import { dnsLookup } from "../policy/resolver.ts";
import { formatRule, MAX_RULES, parseRuleList, RuleError, type Rule } from "../policy/rules.ts";
import { RefusalLog } from "./refusals.ts";
import { substitutionsDone, type DataplaneSnapshot } from "../metrics/dataplane-metrics.ts";

/** kloak exec's exit code under --fail-on-refusal when CMD exited 0 but a placeholder went out. */
export const REFUSED_EXIT = 3;

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
  --on-violation ACTION    what an attempt to send a secret where it may not go
                           does: pass (default: the placeholder goes out),
                           block (the connection is shut down) or kill (the
                           process is killed); a secrets file's onViolation:
                           sets it per secret
  --user USER[:GROUP]      run CMD as this user (name or uid; group: its primary
                           group by default). Default: the user who ran sudo
                           (SUDO_UID/SUDO_GID). CMD as root (--user root) can read
                           the real values from kloak: threat model A only
  --strict-binding         refuse connections that write through the app's own
                           BIO (curl, Node, asyncio): code in the process could
                           route their ciphertext elsewhere (docs/policy.md)
  --holds METHOD           ptrace (default): kloak traces CMD's tree, so no
                           parent sees it hold a process; signals: job-control
                           stops instead, for trees that run a debugger or
                           strace themselves (a process has one tracer)
  --rewrite-mode MODE      auto (default), kernel or stop
  --scan-cap SIZE          bytes of each write scanned (default 64KiB, max 16MiB)
  --fail-on-refusal        exit ${REFUSED_EXIT} when CMD succeeded but a substitution was
                           refused (or failed closed): for CI jobs and checks
  --env-file FILE          dotenv file (NAME=VALUE lines): each variable is a
                           secret, as with --secret NAME=VALUE (repeatable)
  --summary FORMAT         text (default) or json: the exit summary as one JSON
                           line on stderr (substitutions, refusals, exit code)
  -q, --quiet              errors, refused substitutions and problems only
  --silent                 errors only
  -v, --verbose            also say how kloak runs (rewrite mode)
  -h, --help               this text

exit status: CMD's; 128+N when CMD was killed by signal N; ${REFUSED_EXIT} under
--fail-on-refusal; 127 CMD not found, 126 CMD not executable; 2 bad usage;
1 this machine cannot run kloak (kloak doctor says why).`;

const SCOPE = 1;

/** After a run in which kloak saw no TLS write: why that can be, and what it means for the placeholders. */
export const NO_TLS_WRITES =
  "no TLS write went through a library kloak hooks (OpenSSL, GnuTLS, Go's crypto/tls, Bun's BoringSSL): " +
  "plain HTTP is never substituted, and a client whose TLS kloak cannot hook sent its placeholder (docs/exec.md)";
/** A write held more "kloak:" markers than the kernel examines: the rest went out as they were. */
export const unexaminedMessage = (n: number) =>
  `${n} "kloak:" marker(s) beyond the first ${MAX_CANDIDATES} of one TLS write were not examined: ` +
  "left as they were (placeholders among them went out unreplaced); split such writes";
const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH"] as const;

export type Verbosity = "silent" | "quiet" | "normal" | "verbose";
const LEVEL: Record<Verbosity, number> = { silent: 0, quiet: 1, normal: 2, verbose: 3 };

export interface ExecOptions {
  secrets: SecretSpec[];
  command: string[];
  /** who CMD runs as */
  user: RunAs;
  onViolation: ViolationAction;
  strictBinding: boolean;
  holds: HoldMethod;
  mode: "auto" | "kernel" | "stop";
  scanCap: number;
  placeholderDir?: string;
  /** what kloak says on stderr: silent = errors only; quiet = errors and refusals */
  verbosity: Verbosity;
  summary: "text" | "json";
  failOnRefusal: boolean;
  dnsServers: string[];
  metricsFile?: string;
}

/** kloak exec's own flags (before `--`), as EXEC_USAGE lists them. */
const EXEC_FLAGS = {
  secret: { type: "string", multiple: true },
  "secrets-file": { type: "string", multiple: true },
  allow: { type: "string", multiple: true },
  "dns-server": { type: "string", multiple: true },
  "metrics-file": { type: "string" },
  "placeholder-dir": { type: "string" },
  "rewrite-mode": { type: "string", default: "auto" },
  "on-violation": { type: "string", default: "pass" },
  "strict-binding": { type: "boolean", default: false },
  holds: { type: "string", default: "ptrace" },
  user: { type: "string" },
  "scan-cap": { type: "string", default: "64KiB" },
  "env-file": { type: "string", multiple: true },
  summary: { type: "string", default: "text" },
  quiet: { type: "boolean", short: "q", default: false },
  silent: { type: "boolean", default: false },
  verbose: { type: "boolean", short: "v", default: false },
  "fail-on-refusal": { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/**
 * The flags before `--`. Without a `--`, CMD's own options land here and
 * look like unknown kloak options, so the error says where `--` goes.
 */
function parseExecFlags(own: string[], hasDash: boolean) {
  try {
    return parseArgs({ args: own, strict: true, allowPositionals: false, options: EXEC_FLAGS }).values;
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    const hint = hasDash ? "; see `kloak exec --help`" : "; put `--` between kloak's options and the command";
    throw new UsageError(`exec: ${msg}${hint}`);
  }
}

type ExecFlags = ReturnType<typeof parseExecFlags>;

/** Secrets from --secret, then --secrets-file, then --env-file, merged; at least one is required. */
async function collectSecrets(v: ExecFlags, env: Record<string, string | undefined>): Promise<SecretSpec[]> {
  const lists: SecretSpec[][] = [(v.secret ?? []).map((s) => parseSecretFlag(s, env))];
  for (const f of v["secrets-file"] ?? []) lists.push(await loadSecretsFile(f, env));
  for (const f of v["env-file"] ?? []) lists.push(loadEnvFile(f));
  const secrets = mergeSecrets(lists);
  if (secrets.length === 0)
    throw new UsageError("exec: no secrets given; add --secret NAME=VALUE, --secret NAME, --secrets-file FILE or --env-file FILE");
  return secrets;
}

/** --silent, --quiet and --verbose each set the verbosity, so at most one may be given. */
function verbosityOf(v: ExecFlags): Verbosity {
  const loud = [v.silent && "--silent", v.quiet && "--quiet", v.verbose && "--verbose"].filter(Boolean);
  if (loud.length > 1) throw new UsageError(`exec: ${loud.join(" and ")} contradict each other; give one`);
  return v.silent ? "silent" : v.quiet ? "quiet" : v.verbose ? "verbose" : "normal";
}

export async function parseExecArgs(argv: string[], env: Record<string, string | undefined>): Promise<ExecOptions | "help"> {
  const dash = argv.indexOf("--");
  const own = dash < 0 ? argv : argv.slice(0, dash);
  const command = dash < 0 ? [] : argv.slice(dash + 1);
  const v = parseExecFlags(own, dash >= 0);
  if (v.help) return "help";
  if (command.length === 0)
    throw new UsageError("exec: no command given; usage: kloak exec [--secret NAME=VALUE]... -- CMD [ARGS...]");
  const mode = v["rewrite-mode"]!;
  if (mode !== "auto" && mode !== "kernel" && mode !== "stop")
    throw new UsageError(`exec: --rewrite-mode ${JSON.stringify(mode)}: use auto, kernel or stop`);
  const scanCap = parseScanCap("--scan-cap", v["scan-cap"]!);
  const onViolation = v["on-violation"]! as ViolationAction;
  if (!ACTIONS.includes(onViolation))
    throw new UsageError(`exec: --on-violation ${JSON.stringify(v["on-violation"])}: use ${ACTIONS.join(", ")}`);
  const holds = v.holds! as HoldMethod;
  if (!HOLD_METHODS.includes(holds)) throw new UsageError(`exec: --holds ${JSON.stringify(v.holds)}: use ${HOLD_METHODS.join(" or ")}`);
  const secrets = await collectSecrets(v, env);
  const summary = v.summary!;
  if (summary !== "text" && summary !== "json") throw new UsageError(`exec: --summary ${JSON.stringify(summary)}: use text or json`);
  const verbosity = verbosityOf(v);
  applyAllowFlags(secrets, v.allow ?? []);
  const dnsServers = (v["dns-server"] ?? []).map(checkDnsServer);
  if (v["metrics-file"] !== undefined) checkOutputFile("--metrics-file", v["metrics-file"]);
  const user = resolveRunAs(v.user, env);
  return {
    secrets,
    command,
    user,
    onViolation,
    strictBinding: v["strict-binding"]!,
    holds,
    mode,
    scanCap,
    placeholderDir: v["placeholder-dir"],
    verbosity,
    summary,
    failOnRefusal: v["fail-on-refusal"]!,
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

/** A file kloak writes once CMD has ended must be writable before CMD starts: its output is not lost. */
function checkOutputFile(flag: string, file: string): void {
  const dir = dirname(resolve(file));
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {}
  if (!isDir) throw new UsageError(`exec: ${flag} ${file}: no directory ${dir}; create it or choose another path`);
  let existing: ReturnType<typeof statSync> | undefined;
  try {
    existing = statSync(file);
  } catch {}
  if (existing?.isDirectory()) throw new UsageError(`exec: ${flag} ${file}: is a directory; name a file`);
  try {
    accessSync(existing ? file : dir, fsConstants.W_OK);
  } catch {
    throw new UsageError(`exec: ${flag} ${file}: ${existing ? "the file" : dir} is not writable; choose another path`);
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
  // A value given as --secret NAME=VALUE, or read from kloak's environment, leaves
  // the command line and environment this process was started with (while it
  // may still open its own /proc/self/mem: before it stops being dumpable).
  scrubStartArgs(opts.secrets.map((s) => s.value));
  hardenSupervisor();

  // Everything that can be refused is checked before anything is loaded.
  const command = prepareCommand(opts);
  const level = LEVEL[opts.verbosity];
  // Problems kloak hit (an attach that failed, a writer it had to kill, a name that does not
  // resolve) are shown down to --quiet; advice about the configuration only by default.
  const warn = level >= LEVEL.quiet ? say : () => {};
  const advise = level >= LEVEL.normal ? say : () => {};
  const phases = new Phases((phase, e) => warn(`stopping ${phase}: ${e.message}`));
  try {
    const pins = execPinBase(process.pid);
    const p = await startProtection(phases, {
      pins,
      onStale: () => {},
      // CMD's parent-to-be is a second process: its start overlaps the data plane's. Until the
      // pins exist it has nothing to watch, and without them it exits quietly.
      guardian: { first: true, start: () => Guardian.start(pins) },
      dataplane: () => Dataplane.start({ mode: opts.mode, scanCap: opts.scanCap, holds: opts.holds, warn, programsOnDemand: true }),
      policy: { lookup: dnsLookup(opts.dnsServers.length ? opts.dnsServers : undefined), warn },
    });
    const outcomes = watchOutcomes(p.dp, opts);
    await loadSecrets(p, opts, command.placeholders, advise);
    if (level >= LEVEL.verbose) say(`rewrite mode ${p.dp.mode} (${p.dp.modeReason})`);
    if (level >= LEVEL.normal) {
      if (command.dropped.length) say(`not passing ${command.dropped.join(", ")} to the command: it holds a real secret value`);
      if (opts.user.uid === 0)
        say("CMD runs as root (--user root): code in it can read the real values from kloak; protection against leaks only (threat model A)");
    }
    const exitCode = await runCommand(p, opts, command.env);
    return await summarize(p.dp, opts, outcomes, exitCode);
  } finally {
    await phases.stop();
  }
}

/** The placeholders, CMD's environment (placeholders in, values out) and CMD itself, checked runnable. */
function prepareCommand(opts: ExecOptions): { placeholders: Map<string, string>; env: Record<string, string>; dropped: string[] } {
  const registry = new PlaceholderRegistry();
  const placeholders = new Map<string, string>();
  for (const s of opts.secrets) placeholders.set(s.name, registry.create(s.name, s.value));
  const { env, dropped } = childEnvironment(process.env, opts.secrets, placeholders);
  Object.assign(env, opts.user.env);
  checkCommand(opts.command[0]!, env.PATH, opts.user);
  if (opts.placeholderDir) writePlaceholderFiles(opts.placeholderDir, placeholders, opts.user);
  return { placeholders, env, dropped };
}

/** What the summary reports, collected while CMD runs. */
interface Outcomes {
  refusals: RefusalLog;
  unhookable: UnhookableReport[];
}

function watchOutcomes(dp: Dataplane, opts: ExecOptions): Outcomes {
  const refusals = new RefusalLog(new Map(opts.secrets.map((s, i) => [i + 1, s.name])));
  dp.onRefusal((e) => refusals.add(e));
  const unhookable: UnhookableReport[] = [];
  dp.unhookable.on((r) => unhookable.push(r));
  return { refusals, unhookable };
}

/** The tree's scope and every secret, with its rules' names resolved: all in place before CMD can connect. */
async function loadSecrets({ dp, policy }: Protection, opts: ExecOptions, placeholders: Map<string, string>, advise: (msg: string) => void): Promise<void> {
  dp.holdAtNewSni(opts.secrets.some((s) => s.rules.some((r) => r.kind === "wildcard")));
  // The tree's sockets must be in kloak's own network namespace, where it resolves the rules.
  dp.setScope(SCOPE, { netns: netnsInode(process.pid), strictBinding: opts.strictBinding, onViolation: opts.onViolation });
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
    if (s.onViolation) dp.setViolationAction(id, s.onViolation);
    dp.grant(SCOPE, id);
  }
  const unrestricted = opts.secrets.filter((s) => s.rules.length === 0).map((s) => s.name);
  if (unrestricted.length)
    advise(
      `no destination rules for ${unrestricted.join(", ")}: may be sent to any TLS destination; ` +
        `restrict with --allow NAME=HOST[,HOST] or hosts: in the secrets file`,
    );
  for (const s of opts.secrets)
    for (const r of s.rules)
      if (r.kind === "host" && policy.addresses(r.host).length === 0)
        advise(`${r.host} (a rule of ${s.name}) resolves to no address yet: ${s.name} is refused there until it does`);
}

/** Run CMD under the guardian, kloak's signals forwarded to it; its exit status as a shell gives it. */
async function runCommand({ dp, guardian }: Protection, opts: ExecOptions, env: Record<string, string>): Promise<number> {
  // The guardian is CMD's parent: its children join the scope, and kloak,
  // their tracer, is a process apart from their parent (see guardian.ts).
  let pid: number;
  dp.addLauncher(guardian.pid, SCOPE);
  try {
    pid = await guardian.run({ argv: opts.command, env, uid: opts.user.uid, gid: opts.user.gid });
  } catch (e) {
    // checkCommand saw it runnable; it changed since, or the kernel refused (e.g. a bad ELF).
    const msg = (e as Error).message;
    throw new CommandError(`cannot run ${opts.command[0]}: ${msg}`, /ENOENT/.test(msg) ? 127 : 126);
  } finally {
    dp.removeLauncher(guardian.pid);
  }
  let running = true;
  const handlers = FORWARDED.map((sig) => {
    const h = () => {
      if (running) process.kill(pid, sig);
    };
    process.on(sig, h);
    return [sig, h] as const;
  });
  const end = await guardian.commandEnded;
  running = false;
  for (const [sig, h] of handlers) process.off(sig, h);
  return end.signal ? 128 + end.signal : (end.code ?? 1);
}

/** Say what kloak did (or print it as json), write --metrics-file; kloak's exit status. */
async function summarize(dp: Dataplane, opts: ExecOptions, { refusals, unhookable }: Outcomes, exitCode: number): Promise<number> {
  const level = LEVEL[opts.verbosity];
  // The worker drains its rings before it answers: the events of CMD's last writes
  // (refusals) have arrived once it has.
  const stats = await dp.workerStats();
  const snapshot = dp.snapshot(stats);
  const { counters, refusals: refusalCounts } = snapshot;
  const substituted = Number(substitutionsDone(snapshot));
  const failedClosed = stats.notStopped + stats.patchFailed + stats.bufferRefused;
  // Markers past the first MAX_CANDIDATES of a write were never examined: placeholders among them went out.
  const unexamined = Number(counters.candidates_dropped ?? 0n);
  const refused = Object.values(refusalCounts).reduce((a, n) => a + Number(n), 0) + workerRefusals(stats) + unexamined;
  const failRun = opts.failOnRefusal && refused > 0 && exitCode === 0;
  const kloakExit = failRun ? REFUSED_EXIT : exitCode;
  if (opts.summary === "json") {
    // Asked for by name: printed whatever the verbosity, for the machine that reads it.
    say(
      JSON.stringify({
        exitCode: kloakExit,
        commandExitCode: exitCode,
        rewriteMode: dp.mode,
        substitutions: substituted,
        tlsWrites: Number(counters.writes_seen),
        failedClosed,
        refusals: refusals.list(),
        markersUnexamined: unexamined,
        unhookable: unhookable.map(unhookableMessage),
        notes: counters.writes_seen === 0n && unhookable.length === 0 ? [NO_TLS_WRITES] : [],
      }),
    );
  } else {
    if (level >= LEVEL.normal) {
      say(`${substituted} substitution(s) in ${counters.writes_seen} TLS write(s)` + (failedClosed ? `, ${failedClosed} failed closed` : ""));
      // TLS kloak could not see is named; the generic note only when nothing was
      if (counters.writes_seen === 0n && unhookable.length === 0) say(NO_TLS_WRITES);
    }
    // A process whose TLS kloak cannot hook sent placeholders: a problem, shown down to --quiet.
    if (level >= LEVEL.quiet) for (const r of unhookable) say(`warning: ${unhookableMessage(r)}`);
    if (level >= LEVEL.quiet) for (const line of refusals.summary()) say(line);
    if (level >= LEVEL.quiet && unexamined > 0) say(unexaminedMessage(unexamined));
  }
  if (opts.metricsFile)
    await writeMetrics(opts.metricsFile, snapshot);
  if (failRun) say(`${refused} substitution(s) refused or failed closed: exit ${REFUSED_EXIT} (--fail-on-refusal)`);
  return kloakExit;
}

async function writeMetrics(file: string, snapshot: DataplaneSnapshot): Promise<void> {
  // Loaded only when asked for: prom-client costs the agent a few MiB of RSS.
  const { dataplaneMetrics } = await import("../metrics/dataplane-metrics.ts");
  const registry = dataplaneMetrics(() => snapshot);
  try {
    writeFileSync(file, await registry.metrics());
  } catch (e) {
    say(`cannot write --metrics-file ${file}: ${(e as Error).message}`);
  }
}

function writePlaceholderFiles(dir: string, placeholders: Map<string, string>, owner: RunAs): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, owner.uid, owner.gid);
    for (const [name, ph] of placeholders) {
      const f = join(dir, name);
      writeFileSync(f, ph, { mode: 0o600 });
      chmodSync(f, 0o600);
      chownSync(f, owner.uid, owner.gid);
    }
  } catch (e) {
    throw new UsageError(`--placeholder-dir ${dir}: ${(e as Error).message}`);
  }
}
