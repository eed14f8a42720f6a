import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError } from "../../src/errors.ts";
import { formatRule } from "../../src/policy/rules.ts";
import { loadEnvFile, loadSecretsFile, mergeSecrets, parseSecretFlag, type SecretSpec } from "../../src/secrets/secrets-file.ts";

let dir: string;
let n = 0;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kloak-secrets-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Writes `text` to a fresh file in the temp dir and returns its path. */
function file(text: string | Uint8Array, name = `secrets-${n++}.yaml`): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

async function loadError(path: string, env: Record<string, string | undefined> = {}): Promise<UsageError> {
  try {
    await loadSecretsFile(path, env);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    const e = err as UsageError;
    expect(e.exitCode).toBe(2);
    expect(e.message).not.toContain("\n"); // one line
    expect(e.message.startsWith(`${path}: `)).toBe(true);
    return e;
  }
  throw new Error("expected loadSecretsFile to fail");
}

function flagError(arg: string, env: Record<string, string | undefined> = {}): UsageError {
  try {
    parseSecretFlag(arg, env);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return err as UsageError;
  }
  throw new Error("expected parseSecretFlag to fail");
}

describe("loadSecretsFile: valid files", () => {
  test("YAML with value, valueFile and valueEnv", async () => {
    mkdirSync(join(dir, "sub"), { recursive: true });
    writeFileSync(join(dir, "sub", "token.txt"), "file-secret-1\n");
    const path = file(`
secrets:
  - name: API_TOKEN
    value: "inline-secret"
    hosts: ["api.example.com", "*.example.net:443"]
  - name: FROM_FILE
    valueFile: ./sub/token.txt
  - name: from_env_2
    valueEnv: REAL_TOKEN
`);
    const specs = await loadSecretsFile(path, { REAL_TOKEN: "env-secret-value" });
    expect(specs.map((s) => s.name)).toEqual(["API_TOKEN", "FROM_FILE", "from_env_2"]);
    expect(text(specs[0]!.value)).toBe("inline-secret");
    expect(specs[0]!.hosts).toEqual(["api.example.com", "*.example.net:443"]);
    expect(specs[0]!.rules).toEqual([
      { kind: "host", host: "api.example.com", port: null, text: "api.example.com" },
      { kind: "wildcard", suffix: "example.net", port: 443, text: "*.example.net:443" },
    ]);
    expect(specs[0]!.source).toBe(`${path}: secrets[0]`);
    expect(text(specs[1]!.value)).toBe("file-secret-1"); // trailing newline stripped
    expect(specs[1]!.hosts).toEqual([]);
    expect(specs[1]!.rules).toEqual([]); // no hosts: any destination
    expect(specs[1]!.source).toBe(`${path}: secrets[1]`);
    expect(text(specs[2]!.value)).toBe("env-secret-value");
  });

  test("JSON, chosen by content whatever the extension", async () => {
    const path = file(
      JSON.stringify({ secrets: [{ name: "A", value: "json-secret", hosts: ["h.example"] }] }),
      "secrets.conf",
    );
    const specs = await loadSecretsFile(path, {});
    expect(specs).toHaveLength(1);
    expect(specs[0]!.name).toBe("A");
    expect(text(specs[0]!.value)).toBe("json-secret");
    expect(specs[0]!.hosts).toEqual(["h.example"]);
    expect(specs[0]!.rules.map(formatRule)).toEqual(["h.example"]);
  });

  test("hosts: every rule form, normalised and deduplicated", async () => {
    const path = file(`
secrets:
  - name: A
    value: abcdefgh
    hosts:
      - API.Example.com.
      - api.example.com
      - "*.svc.example:8443"
      - 10.0.0.0/8
      - "[fd00::/8]:443"
      - "::ffff:10.1.2.3"
`);
    const specs = await loadSecretsFile(path, {});
    expect(specs[0]!.rules.map(formatRule)).toEqual([
      "api.example.com",
      "*.svc.example:8443",
      "10.0.0.0/8",
      "[fd00::/8]:443",
      "10.1.2.3",
    ]);
    // hosts stays as written
    expect(specs[0]!.hosts).toHaveLength(6);
  });

  test("UTF-8 values are encoded as bytes", async () => {
    const specs = await loadSecretsFile(file(`secrets:\n  - name: A\n    value: "pässwörd"\n`), {});
    expect(specs[0]!.value.length).toBe(10);
  });

  test("valueFile: relative to the secrets file, only one newline stripped, bytes kept", async () => {
    const sub = join(dir, "rel");
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, "two-newlines"), "abc12345\n\n");
    writeFileSync(join(sub, "crlf"), "abc12345\r\n");
    writeFileSync(join(sub, "none"), "abc12345");
    writeFileSync(join(sub, "binary"), new Uint8Array([0, 1, 2, 255, 10]));
    const path = join(sub, "secrets.yaml");
    writeFileSync(
      path,
      `secrets:
  - { name: TWO, valueFile: two-newlines }
  - { name: CRLF, valueFile: crlf }
  - { name: NONE, valueFile: ./none }
  - { name: BIN, valueFile: binary }
`,
    );
    // Loaded from another working directory: the path must still resolve against the file.
    const specs = await loadSecretsFile(path, {});
    expect(text(specs[0]!.value)).toBe("abc12345\n");
    expect(text(specs[1]!.value)).toBe("abc12345");
    expect(text(specs[2]!.value)).toBe("abc12345");
    expect([...specs[3]!.value]).toEqual([0, 1, 2, 255]);
  });

  test("absolute valueFile", async () => {
    const tokenPath = join(dir, "abs-token");
    writeFileSync(tokenPath, "absolute-secret");
    const specs = await loadSecretsFile(file(`secrets:\n  - name: A\n    valueFile: ${tokenPath}\n`), {});
    expect(text(specs[0]!.value)).toBe("absolute-secret");
  });
});

describe("loadSecretsFile: errors name the file and field", () => {
  const cases: [string, string, RegExp][] = [
    ["empty file", "", /empty/],
    ["only a comment", "# nothing\n", /empty/],
    ["top level is a list", "- name: A\n  value: abcdefgh\n", /top level/],
    ["top level is a scalar", "hello\n", /top level/],
    ["no secrets key", "other: 1\n", /secrets: is missing/],
    ["missing secrets", "{}\n", /secrets: is missing/],
    ["secrets not a list", "secrets: 3\n", /secrets: must be a list/],
    ["empty list", "secrets: []\n", /secrets: the list is empty/],
    ["unknown top-level key", "secrets:\n  - { name: A, value: abcdefgh }\nextra: 1\n", /\(top level\): has an unknown key \(not shown, in case it is a value\); allowed keys: secrets/],
    ["field name at the wrong level", "secrets:\n  - { name: A, value: abcdefgh }\nhosts: [a]\n", /: hosts: unknown key here; allowed keys: secrets/],
    ["misspelt top-level key", "Secret:\n  - { name: A, value: abcdefgh }\n", /: Secret: unknown key; did you mean secrets\?/],
    ["item not a mapping", "secrets:\n  - API_TOKEN\n", /secrets\[0\]: must be a mapping/],
    ["unknown item key", "secrets:\n  - { name: A, value: abcdefgh }\n  - { name: B, vaule: abcdefgh }\n", /secrets\[1\]\.vaule: unknown key; did you mean value\? \(allowed keys: name, value, valueFile, valueEnv, hosts, onViolation\)/],
    ["other unknown item key", "secrets:\n  - { name: A, value: abcdefgh, comment: hi }\n", /secrets\[0\]: has an unknown key/],
    ["missing name", "secrets:\n  - { value: abcdefgh }\n", /secrets\[0\]\.name: is missing/],
    ["bad name", "secrets:\n  - { name: 9abc, value: abcdefgh }\n", /secrets\[0\]\.name: must be an environment-variable name/],
    ["name with dash", "secrets:\n  - { name: api-token, value: abcdefgh }\n", /secrets\[0\]\.name: must be an environment-variable name/],
    ["no value source", "secrets:\n  - { name: A, value: abcdefgh }\n  - { name: B, hosts: [x] }\n", /secrets\[1\]: give exactly one of value, valueFile, valueEnv/],
    ["two value sources", "secrets:\n  - { name: A, value: abcdefgh, valueEnv: X }\n", /secrets\[0\]: give exactly one of value, valueFile, valueEnv/],
    ["value is a number", "secrets:\n  - { name: A, value: 12345678 }\n", /secrets\[0\]\.value: must be a string \(quote it/],
    ["value is null", "secrets:\n  - { name: A, value: }\n", /secrets\[0\]\.value: must be a string/],
    ["empty value", 'secrets:\n  - { name: A, value: "" }\n', /secrets\[0\]\.value: the value of secret "A" is empty/],
    ["bad valueEnv name", "secrets:\n  - { name: A, valueEnv: 1X }\n", /secrets\[0\]\.valueEnv: must be an environment-variable name/],
    ["unset valueEnv", "secrets:\n  - { name: A, valueEnv: NOT_SET_ANYWHERE }\n", /secrets\[0\]\.valueEnv: environment variable NOT_SET_ANYWHERE is not set/],
    ["empty valueEnv", "secrets:\n  - { name: A, valueEnv: EMPTY }\n", /secrets\[0\]\.valueEnv: the value of secret "A" is empty/],
    ["missing valueFile", "secrets:\n  - { name: A, valueFile: ./no-such-file }\n", /secrets\[0\]\.valueFile: .*no-such-file does not exist \(relative paths start at the secrets file's directory\)/],
    ["valueFile is a directory", "secrets:\n  - { name: A, valueFile: . }\n", /secrets\[0\]\.valueFile: .* is a directory/],
    ["hosts not a list", "secrets:\n  - { name: A, value: abcdefgh, hosts: api.example.com }\n", /secrets\[0\]\.hosts: must be a list of host patterns/],
    ["host not a string", "secrets:\n  - { name: A, value: abcdefgh, hosts: [a.example, 3] }\n", /secrets\[0\]\.hosts\[1\]: must be a string/],
    ["bad host rule", "secrets:\n  - { name: A, value: abcdefgh }\n  - { name: API_TOKEN, value: abcdefgh, hosts: [a.example, \"*.\"] }\n", /: secrets\[1\]\.hosts\[1\]: rule "\*\.": a wildcard must be "\*\." followed by a domain, e\.g\. "\*\.example\.com"$/],
    ["host rule with a bad port", "secrets:\n  - { name: A, value: abcdefgh, hosts: [\"a.example:99999\"] }\n", /: secrets\[0\]\.hosts\[0\]: rule "a\.example:99999": port 99999 is out of range; use 1-65535$/],
    ["host rule is a URL", "secrets:\n  - { name: A, value: abcdefgh, hosts: [\"https://a.example/x\"] }\n", /secrets\[0\]\.hosts\[0\]: rule "https:\/\/a\.example\/x": a rule is a host, not a URL; write "a\.example"$/],
    ["host rule with host bits", "secrets:\n  - { name: A, value: abcdefgh, hosts: [10.1.2.3/8] }\n", /secrets\[0\]\.hosts\[0\]: rule "10\.1\.2\.3\/8": host bits are set .* "10\.0\.0\.0\/8"$/],
    ["empty host entry", "secrets:\n  - { name: A, value: abcdefgh, hosts: [a.example, \"\"] }\n", /secrets\[0\]\.hosts\[1\]: rule "": empty rule/],
    ["whitespace-only host entry", "secrets:\n  - { name: A, value: abcdefgh, hosts: [\"  \"] }\n", /secrets\[0\]\.hosts\[0\]: rule "  ": empty rule/],
    ["comma in a host entry", "secrets:\n  - { name: A, value: abcdefgh, hosts: [\"a.example,b.example\"] }\n", /secrets\[0\]\.hosts\[0\]: rule "a\.example,b\.example": contains a comma; give each rule as its own entry/],
    ["empty hosts list", "secrets:\n  - { name: A, value: abcdefgh, hosts: [] }\n", /secrets\[0\]\.hosts: the list is empty; .*remove hosts: to allow any destination/],
    ["too many hosts", `secrets:\n  - { name: A, value: abcdefgh, hosts: [${Array.from({ length: 17 }, (_, i) => `h${i}.example`).join(", ")}] }\n`, /secrets\[0\]\.hosts: 17 rules, more than the limit of 16 per secret/],
    ["duplicate name in file", "secrets:\n  - { name: A, value: abcdefgh }\n  - { name: A, value: abcdefgi }\n", /secrets\[1\]\.name: secret "A" is already defined by secrets\[0\]; keep one/],
    ["YAML syntax error", "secrets:\n  - name: A\n    value: \"unterminated\n", /line \d+, column \d+: not valid YAML or JSON/],
    ["duplicate YAML key", "secrets:\n  - name: A\n    name: B\n    value: abcdefgh\n", /line 3, column 5: not valid YAML or JSON \(duplicate key\)/],
    ["JSON syntax error", '{"secrets": [{"name": "A", "value": "abcdefgh"}', /line 1, column \d+: not valid JSON; fix the syntax/],
  ];
  for (const [what, content, expected] of cases) {
    test(what, async () => {
      const err = await loadError(file(content), { EMPTY: "" });
      expect(err.message).toMatch(expected);
    });
  }

  test("unreadable file", async () => {
    const path = join(dir, "does-not-exist.yaml");
    const err = await loadError(path);
    expect(err.message).toBe(`${path}: the secrets file does not exist`);
  });

  test("secrets file is a directory", async () => {
    const err = await loadError(dir);
    expect(err.message).toContain("is a directory");
  });
});

describe("error messages never contain a value", () => {
  const SECRET = "sk-LIVE-9f8e7d6c5b4a";
  const NUMERIC = "98765432109876";
  const files: [string, string][] = [
    ["number value", `secrets:\n  - { name: A, value: ${NUMERIC} }\n`],
    ["value in a list", `secrets:\n  - { name: A, value: [${SECRET}] }\n`],
    ["unterminated quote", `secrets:\n  - name: A\n    value: "${SECRET}\n`],
    ["bad escape", `secrets:\n  - name: A\n    value: "${SECRET}\\q"\n`],
    ["bad indentation", `secrets:\n  - name: A\n      value: ${SECRET}\n   x: y\n`],
    ["value pasted as a key", `secrets:\n  - { name: A, ${SECRET}: 1, value: abcdefgh }\n`],
    ["value pasted as a name", `secrets:\n  - { name: ${SECRET}, value: abcdefgh }\n`],
    ["value as valueEnv", `secrets:\n  - { name: A, valueEnv: ${SECRET} }\n`],
    ["value and valueEnv", `secrets:\n  - { name: A, value: ${SECRET}, valueEnv: B }\n`],
    ["duplicate names", `secrets:\n  - { name: A, value: ${SECRET} }\n  - { name: A, value: ${SECRET} }\n`],
    ["bad hosts", `secrets:\n  - { name: A, value: ${SECRET}, hosts: ${SECRET} }\n`],
    ["credentials in a host URL", `secrets:\n  - { name: A, value: abcdefgh, hosts: ["https://user:${SECRET}@a.example/"] }\n`],
    ["top-level value", `${SECRET}\n`],
  ];
  for (const [what, content] of files) {
    test(`file: ${what}`, async () => {
      const err = await loadError(file(content), { B: SECRET });
      expect(err.message).not.toContain(SECRET);
      expect(err.message).not.toContain(NUMERIC);
      expect(err.message).not.toContain("9f8e7d");
    });
  }

  test("flags", () => {
    for (const arg of [SECRET, `${SECRET}=x`, `A=`, `BAD NAME=${SECRET}`, `-A=${SECRET}`]) {
      expect(flagError(arg, {}).message).not.toContain(SECRET);
    }
  });
});

describe("parseSecretFlag", () => {
  test("NAME=VALUE", () => {
    const spec = parseSecretFlag("API_TOKEN=abc=def", {});
    expect(spec.name).toBe("API_TOKEN");
    expect(text(spec.value)).toBe("abc=def"); // split at the first "="
    expect(spec.hosts).toEqual([]);
    expect(spec.rules).toEqual([]);
    expect(spec.source).toBe("--secret API_TOKEN");
  });

  test("NAME reads kloak's environment", () => {
    const spec = parseSecretFlag("API_TOKEN", { API_TOKEN: "from-env-secret" });
    expect(text(spec.value)).toBe("from-env-secret");
    expect(spec.source).toBe("--secret API_TOKEN");
  });

  test("NAME with the variable unset", () => {
    const err = flagError("API_TOKEN", { OTHER: "x" });
    expect(err.message).toContain("--secret API_TOKEN");
    expect(err.message).toContain("environment variable API_TOKEN is not set");
  });

  test("empty values", () => {
    expect(flagError("API_TOKEN=").message).toContain('secret "API_TOKEN" is empty');
    expect(flagError("API_TOKEN", { API_TOKEN: "" }).message).toContain('secret "API_TOKEN" is empty');
  });

  test("invalid names", () => {
    for (const arg of ["", "=abc", "9X=abc", "A-B=abc", "A B", "é=abc"]) {
      expect(flagError(arg).message).toContain("--secret: the name must be an environment-variable name");
    }
  });
});

describe("mergeSecrets", () => {
  const spec = (name: string, source: string): SecretSpec => ({
    name,
    value: new TextEncoder().encode("abcdefgh"),
    hosts: [],
    rules: [],
    source,
  });

  test("concatenates in order", () => {
    const merged = mergeSecrets([[spec("A", "--secret A")], [], [spec("B", "f: secrets[0]"), spec("C", "f: secrets[1]")]]);
    expect(merged.map((s) => s.name)).toEqual(["A", "B", "C"]);
  });

  test("names are case-sensitive", () => {
    expect(mergeSecrets([[spec("a", "x")], [spec("A", "y")]])).toHaveLength(2);
  });

  test("duplicate across --secret and a file names both sources", async () => {
    const path = file("secrets:\n  - { name: B, value: abcdefgh }\n  - { name: API_TOKEN, value: file-secret }\n");
    const fromFile = await loadSecretsFile(path, {});
    const fromFlag = [parseSecretFlag("API_TOKEN=flag-secret", {})];
    let err: unknown;
    try {
      mergeSecrets([fromFlag, fromFile]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    const msg = (err as Error).message;
    expect(msg).toBe(`secret "API_TOKEN" is defined twice: by --secret API_TOKEN and by ${path}: secrets[1]; keep one`);
    expect(msg).not.toContain("flag-secret");
    expect(msg).not.toContain("file-secret");
  });
});

describe("loadSecretsFile: the mistakes people make", () => {
  test("an unquoted wildcard host in YAML: the line, and to quote it", async () => {
    const e = await loadError(file("secrets:\n  - name: A\n    value: abcdefgh\n    hosts:\n      - *.example.com\n"));
    expect(e.message).toContain('line 5: a YAML value starting with * is an alias; quote wildcard hosts: - "*.example.com"');
  });

  test("JSON with a trailing comma is refused (YAML would have taken it), naming the line, never the text", async () => {
    const path = file('{"secrets": [\n  {"name": "A", "value": "topsecretvalue",}\n]}', `s-${n++}.json`);
    const e = await loadError(path);
    expect(e.message).toBe(`${path}: line 2: a trailing comma; not valid JSON; fix the syntax (or write the file as YAML)`);
  });

  test("valid JSON is read as before", async () => {
    const specs = await loadSecretsFile(file('{"secrets": [{"name": "A", "value": "abcdefgh", "hosts": ["*.example.com"]}]}', `s-${n++}.json`), {});
    expect(specs.map((s) => [s.name, s.hosts])).toEqual([["A", ["*.example.com"]]]);
  });
});

describe("loadEnvFile (--env-file)", () => {
  test("dotenv syntax: comments, export, quotes; each variable a secret without rules", () => {
    const specs = loadEnvFile(file('# tokens\nexport A=abcdefgh\nB="with spaces 123"\nC=\'single\'x\n\n', `e-${n++}.env`));
    expect(specs.map((s) => [s.name, text(s.value), s.rules.length])).toEqual([
      ["A", "abcdefgh", 0],
      ["B", "with spaces 123", 0],
      ["C", "'single'x", 0],
    ]);
  });

  test("a line without NAME=, an invalid name, an empty value: refused, naming the line or name, never a value", () => {
    for (const [body, msg] of [
      ["A=abcdefgh\nsecretvalue123\n", "line 2 is not NAME=VALUE"],
      ["1A=abcdefgh\n", "line 1: the name must be an environment-variable name"],
      ["A=\n", "A: the value is empty"],
    ] as const) {
      const path = file(body, `e-${n++}.env`);
      let err: unknown;
      try {
        loadEnvFile(path);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UsageError);
      expect((err as Error).message).toContain(msg);
      expect((err as Error).message).not.toContain("abcdefgh");
      expect((err as Error).message).not.toContain("secretvalue123");
    }
  });
});
