/**
 * Where secret values come from: a secrets file (YAML or JSON) and --secret
 * flags. This module gathers names, values and destination rules (parsed by
 * policy/rules.ts); value length is checked by PlaceholderRegistry.
 *
 * Every error is a one-line UsageError naming the file and field. No message may
 * contain a value, so user input is echoed only where it cannot be one (field
 * names, env-var names, paths), and parser messages that quote source text
 * (YAML's and valibot's defaults) are never passed through.
 */
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { parse as parseDotenv } from "dotenv";
import { dirname, resolve } from "node:path";
import * as v from "valibot";
import { parseDocument } from "yaml";
import { UsageError } from "../errors.ts";
import { parseRules, RuleError, type Rule } from "../policy/rules.ts";
import { ACTIONS, type ViolationAction } from "../dataplane/refusals.ts";

export interface SecretSpec {
  name: string;
  value: Uint8Array;
  /** Host patterns as written, for messages. */
  hosts: string[];
  /** `hosts` parsed and deduplicated; empty means any destination. */
  rules: Rule[];
  /** What a violation with this secret does; undefined: the run's default (--on-violation). */
  onViolation?: ViolationAction;
  /** Where the secret was defined, for messages: "--secret API_TOKEN", "secrets.yaml: secrets[2]". */
  source: string;
}

// Secret names double as env-var names (--secret NAME reads $NAME), so use that syntax.
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const NAME_RULE = "letters, digits and _, not starting with a digit";
const VALUE_FIELDS = ["value", "valueFile", "valueEnv"] as const;
const SECRET_FIELDS = ["name", ...VALUE_FIELDS, "hosts", "onViolation"] as const;

// Custom messages everywhere: valibot's defaults include the received input,
// which for `value` would be the secret itself.
const str = (hint = "") => v.string(`must be a string${hint}`);
const nameSchema = v.pipe(str(), v.regex(NAME_RE, `must be an environment-variable name (${NAME_RULE})`));

const KNOWN_KEYS: readonly string[] = ["secrets", ...SECRET_FIELDS];

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row.push(Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost));
    }
    prev = row;
  }
  return prev[b.length] ?? 0;
}

/**
 * The known key an unknown key is a typo of, if any. Unknown keys are echoed
 * only then: a key near "valueFile" is a typo, any other key might be a value
 * pasted in the wrong place.
 */
function lookalike(key: unknown, allowed: readonly string[] = KNOWN_KEYS): string | undefined {
  if (typeof key !== "string" || key.length > 16) return undefined;
  return allowed.find((k) => editDistance(k.toLowerCase(), key.toLowerCase()) <= 2);
}

/** Whether a key may appear in a message: a field name or a typo of one. */
function echoable(key: unknown): key is string {
  return typeof key === "string" && (KNOWN_KEYS.includes(key) || lookalike(key) !== undefined);
}

// Message of a strictObject issue: an unknown key, a missing key, or not an object at all.
const keyIssue = (allowed: readonly string[]) => (issue: v.BaseIssue<unknown>) => {
  const list = `allowed keys: ${allowed.join(", ")}`;
  if (issue.expected === "never") {
    if (!echoable(issue.input)) return `has an unknown key (not shown, in case it is a value); ${list}`;
    const guess = lookalike(issue.input, allowed);
    return guess !== undefined ? `unknown key; did you mean ${guess}? (${list})` : `unknown key here; ${list}`;
  }
  return issue.expected?.startsWith('"') ? "is missing" : "must be a mapping (key: value)";
};

const secretSchema = v.strictObject(
  {
    name: nameSchema,
    // Unquoted YAML numbers would lose leading zeros; insist on strings.
    value: v.optional(str(' (quote it: value: "...")')),
    valueFile: v.optional(str(" (a path)")),
    valueEnv: v.optional(nameSchema),
    hosts: v.optional(v.array(str(), 'must be a list of host patterns, e.g. ["api.example.com"]')),
    onViolation: v.optional(v.picklist(ACTIONS, `must be one of ${ACTIONS.join(", ")}`)),
  },
  keyIssue(SECRET_FIELDS),
);

const fileSchema = v.strictObject(
  { secrets: v.array(secretSchema, "must be a list of secrets") },
  keyIssue(["secrets"]),
);

/** `secrets[1].valueFile` from a valibot issue path. */
function formatPath(issue: v.BaseIssue<unknown>): string {
  let out = "";
  for (const item of issue.path ?? []) {
    const key: unknown = item.key;
    if (typeof key === "number") out += `[${key}]`;
    else if (echoable(key)) out += out === "" ? key : `.${key}`;
    // Any other key is left out; the message says there is an unknown one.
  }
  return out;
}

function describeIoError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case "ENOENT":
      return "does not exist";
    case "EACCES":
    case "EPERM":
      return "is not readable (permission denied)";
    case "EISDIR":
      return "is a directory, not a file";
    default:
      return `cannot be read (${typeof code === "string" ? code : "I/O error"})`;
  }
}

/** Strips one trailing newline (LF or CRLF): editors add one, values rarely end in one. */
function stripNewline(bytes: Uint8Array): Uint8Array {
  let end = bytes.length;
  if (bytes[end - 1] === 0x0a) {
    end--;
    if (bytes[end - 1] === 0x0d) end--;
  }
  return bytes.subarray(0, end);
}

/**
 * Reads a secrets file, YAML or JSON (a file that starts with { or [, or is
 * named .json, must be valid JSON). `env` is kloak's own environment (for
 * valueEnv); tests pass their own.
 */
export async function loadSecretsFile(
  path: string,
  env: Record<string, string | undefined> = process.env,
): Promise<SecretSpec[]> {
  const fail = (where: string, what: string): never => {
    throw new UsageError(`${path}: ${where}${where === "" ? "" : ": "}${what}`);
  };

  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    return fail("", `the secrets file ${describeIoError(err)}`);
  }

  // JSON is read as JSON: YAML would accept what JSON does not (a trailing comma), and the
  // file would mean something its author did not check.
  if (/^\s*[{[]/.test(text) || path.endsWith(".json")) {
    try {
      JSON.parse(text);
    } catch {
      // Not the parser's message: it may quote the text, and the text holds values.
      const comma = /,\s*[}\]]/.exec(text);
      const pos = parseDocument(text).errors[0]?.linePos?.[0]; // YAML's parser knows where JSON breaks off
      const at = comma
        ? `line ${text.slice(0, comma.index).split("\n").length}: a trailing comma; `
        : pos
          ? `line ${pos.line}, column ${pos.col}: `
          : "";
      return fail("", `${at}not valid JSON; fix the syntax (or write the file as YAML)`);
    }
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax !== undefined) {
    // Only the code and position: YAML's message quotes the offending line.
    const pos = syntax.linePos?.[0];
    const at = pos === undefined ? "" : `line ${pos.line}, column ${pos.col}: `;
    return fail("", `${at}not valid YAML or JSON (${syntax.code.toLowerCase().replaceAll("_", " ")}); fix the syntax`);
  }
  let data: unknown;
  try {
    data = doc.toJS();
  } catch (e) {
    // In YAML a bare `*` starts an alias: `- *.example.com` is the usual way to get here.
    if (/unresolved alias/i.test((e as Error).message)) {
      const bare = /^[ \t]*(?:-[ \t]+|[\w-]+:[ \t]+)\*/m.exec(text);
      const at = bare ? `line ${text.slice(0, bare.index).split("\n").length}: ` : "";
      return fail("", `${at}a YAML value starting with * is an alias; quote wildcard hosts: - "*.example.com"`);
    }
    // e.g. too many aliases (the "billion laughs" guard)
    return fail("", "the file could not be read as data; simplify it (no deep YAML aliases)");
  }
  if (data === null || data === undefined) {
    return fail("", "the file is empty; expected a `secrets:` list");
  }
  if (typeof data !== "object" || Array.isArray(data)) {
    return fail("", "expected a mapping with a `secrets:` list at the top level");
  }

  const parsed = v.safeParse(fileSchema, data);
  if (!parsed.success) {
    // One message: a misspelt key first, since it explains the key that is then missing.
    const issue =
      parsed.issues.find((i) => i.expected === "never" && echoable(i.input)) ?? parsed.issues[0];
    return fail(formatPath(issue) || "(top level)", issue.message);
  }
  const entries = parsed.output.secrets;
  if (entries.length === 0) return fail("secrets", "the list is empty; add at least one secret");

  const baseDir = dirname(resolve(path));
  const specs: SecretSpec[] = [];
  for (const [i, entry] of entries.entries()) {
    const where = `secrets[${i}]`;
    const given = VALUE_FIELDS.filter((f) => entry[f] !== undefined);
    if (given.length !== 1) fail(where, `give exactly one of ${VALUE_FIELDS.join(", ")}`);

    let value: Uint8Array;
    if (entry.valueFile !== undefined) {
      const file = resolve(baseDir, entry.valueFile);
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await readFile(file));
      } catch (err) {
        return fail(
          `${where}.valueFile`,
          `${file} ${describeIoError(err)} (relative paths start at the secrets file's directory)`,
        );
      }
      value = stripNewline(bytes);
    } else if (entry.valueEnv !== undefined) {
      const fromEnv = env[entry.valueEnv];
      if (fromEnv === undefined) {
        return fail(
          `${where}.valueEnv`,
          `environment variable ${entry.valueEnv} is not set in kloak's environment; export it`,
        );
      }
      value = new TextEncoder().encode(fromEnv);
    } else {
      value = new TextEncoder().encode(entry.value ?? "");
    }
    if (value.length === 0) fail(`${where}.${given[0]}`, `the value of secret "${entry.name}" is empty`);

    const twin = specs.findIndex((s) => s.name === entry.name);
    if (twin !== -1) fail(`${where}.name`, `secret "${entry.name}" is already defined by secrets[${twin}]; keep one`);
    const hosts = entry.hosts ?? [];
    // `hosts: []` would mean "any destination"; say so rather than guess what was meant.
    if (entry.hosts?.length === 0) {
      fail(
        `${where}.hosts`,
        "the list is empty; list the hosts this secret may be sent to, or remove hosts: to allow any destination",
      );
    }
    let rules: Rule[];
    try {
      rules = parseRules(hosts);
    } catch (err) {
      if (!(err instanceof RuleError)) throw err;
      return fail(`${where}.hosts${err.index === null ? "" : `[${err.index}]`}`, err.message);
    }
    specs.push({
      name: entry.name,
      value,
      hosts,
      rules,
      source: `${path}: ${where}`,
      ...(entry.onViolation ? { onViolation: entry.onViolation } : {}),
    });
  }
  return specs;
}

/**
 * `--secret NAME=VALUE`, or `--secret NAME` to take the value from kloak's own
 * environment variable NAME (keeps the value out of the process list).
 */
export function parseSecretFlag(arg: string, env: Record<string, string | undefined>): SecretSpec {
  const eq = arg.indexOf("=");
  const name = eq === -1 ? arg : arg.slice(0, eq);
  if (!NAME_RE.test(name)) {
    // Not echoed: a bare `--secret <value>` by mistake would land here.
    throw new UsageError(
      `--secret: the name must be an environment-variable name (${NAME_RULE}); ` +
        `use --secret NAME=VALUE or --secret NAME`,
    );
  }
  const source = `--secret ${name}`;
  let text: string;
  if (eq === -1) {
    const fromEnv = env[name];
    if (fromEnv === undefined) {
      throw new UsageError(
        `${source}: environment variable ${name} is not set in kloak's environment; ` +
          `export it, or put the secret in a secrets file`,
      );
    }
    text = fromEnv;
  } else {
    text = arg.slice(eq + 1);
  }
  if (text === "") throw new UsageError(`${source}: the value of secret "${name}" is empty`);
  return { name, value: new TextEncoder().encode(text), hosts: [], rules: [], source };
}

/**
 * `--env-file FILE`: a dotenv file (NAME=VALUE lines, # comments, quotes as
 * dotenv has them), each variable a secret without rules — the file a secret
 * manager's `run --env-file` takes. Errors name the file and line, never a value.
 */
export function loadEnvFile(path: string): SecretSpec[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`--env-file ${path}: ${code === "ENOENT" ? "no such file" : `cannot read it (${code ?? (e as Error).message})`}`);
  }
  // dotenv skips lines it cannot read; a secret silently dropped is worse than an error.
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const m = /^(?:export\s+)?([^=\s:]+)\s*[=:]/.exec(line);
    if (!m) throw new UsageError(`--env-file ${path}: line ${i + 1} is not NAME=VALUE`);
    if (!NAME_RE.test(m[1]!)) throw new UsageError(`--env-file ${path}: line ${i + 1}: the name must be an environment-variable name (${NAME_RULE})`);
  });
  const specs: SecretSpec[] = [];
  for (const [name, value] of Object.entries(parseDotenv(text))) {
    const source = `${path}: ${name}`;
    if (value === "") throw new UsageError(`${source}: the value is empty`);
    specs.push({ name, value: new TextEncoder().encode(value), hosts: [], rules: [], source });
  }
  return specs;
}

/** Concatenates secret lists, refusing a name defined twice (anywhere). */
export function mergeSecrets(lists: SecretSpec[][]): SecretSpec[] {
  const seen = new Map<string, SecretSpec>();
  const out: SecretSpec[] = [];
  for (const list of lists) {
    for (const spec of list) {
      const first = seen.get(spec.name);
      if (first !== undefined) {
        throw new UsageError(
          `secret "${spec.name}" is defined twice: by ${first.source} and by ${spec.source}; keep one`,
        );
      }
      seen.set(spec.name, spec);
      out.push(spec);
    }
  }
  return out;
}
