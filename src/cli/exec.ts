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
import { MAX_SCAN, VALUE_MAX } from "../dataplane/abi.ts";
import { Dataplane } from "../dataplane/dataplane.ts";
import { ensurePinDir, execPinPath, releaseUntilQuiet, stalePins } from "../dataplane/release.ts";
import { PlaceholderRegistry, placeholderKey } from "../secrets/placeholder.ts";
import { loadSecretsFile, mergeSecrets, parseSecretFlag, type SecretSpec } from "../secrets/secrets-file.ts";
import { RefusalLog } from "./refusals.ts";

export const EXEC_USAGE = `usage: kloak exec [options] -- CMD [ARGS...]

Runs CMD with each secret's environment variable set to a placeholder of the
same length; the real value is put into CMD's TLS writes (and its children's).

options:
  --secret NAME=VALUE      a secret (repeatable); VALUE is visible in ps: prefer
  --secret NAME            ... which takes the value from kloak's own environment
  --secrets-file FILE      YAML or JSON list of secrets (see docs/secrets-file.md)
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
}

export function parseSize(flag: string, text: string): number {
  const m = /^(\d+)\s*(|b|k|kb|kib|m|mb|mib)$/i.exec(text.trim());
  if (!m) throw new UsageError(`${flag} ${JSON.stringify(text)}: not a size; write e.g. 65536, 64KiB or 1MiB`);
  const unit = m[2]!.toLowerCase();
  const mult = unit.startsWith("k") ? 1024 : unit.startsWith("m") ? 1024 * 1024 : 1;
  return Number(m[1]) * mult;
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
  const scanCap = parseSize("--scan-cap", v["scan-cap"]!);
  if (scanCap < VALUE_MAX || scanCap > MAX_SCAN)
    throw new UsageError(`exec: --scan-cap ${v["scan-cap"]}: must be between ${VALUE_MAX} bytes and ${MAX_SCAN >> 20}MiB`);
  const lists: SecretSpec[][] = [(v.secret ?? []).map((s) => parseSecretFlag(s, env))];
  for (const f of v["secrets-file"] ?? []) lists.push(await loadSecretsFile(f, env));
  const secrets = mergeSecrets(lists);
  if (secrets.length === 0)
    throw new UsageError("exec: no secrets given; add --secret NAME=VALUE, --secret NAME or --secrets-file FILE");
  return { secrets, command, mode, scanCap, placeholderDir: v["placeholder-dir"], quiet: v.quiet! };
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
  let guardian: ReturnType<typeof Bun.spawn> | undefined;
  const pin = execPinPath(process.pid);
  try {
    let id = 0;
    for (const s of opts.secrets) {
      const ph = placeholders.get(s.name)!;
      await dp.setSecret({ id: ++id, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: s.value });
      dp.grant(SCOPE, id);
    }
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
      say(
        `no destination policy yet: ${opts.secrets.map((s) => s.name).join(", ")} may be sent to any TLS destination`,
      );
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
    return exitCode;
  } finally {
    await dp.close();
    rmSync(pin, { force: true });
    if (guardian) {
      (guardian.stdin as import("bun").FileSink).end();
      await guardian.exited;
    }
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
