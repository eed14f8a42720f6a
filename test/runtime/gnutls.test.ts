/**
 * GnuTLS clients under the real `kloak exec`, against a real local TLS server
 * that records what arrived:
 *
 *   wget          GnuTLS 3.7 (bookworm); its fd handed over with
 *                 gnutls_transport_set_ptr: an app transport, bound by sends
 *   git           git-remote-https over libcurl3-gnutls (curl's own push
 *                 function: an app transport), exec'd by git
 *   gnutls-cli    gnutls-bin (bookworm), fetched into a private root when not
 *                 installed; gnutls_transport_set_int2: bound like SSL_set_fd
 *
 * Each with rules (the SNI's name allowed), a disallowed destination, and no
 * rules; strict binding, and an SNI that names another host, show which
 * binding and which name kloak took from the GnuTLS calls. A client of our
 * own (gnutls_binding_client.c) tries what wget and curl do not: relaying
 * its ciphertext elsewhere through its own push function, counted SNIs, and
 * corked sends.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { CACHE, debianRoot, keyValues, q } from "./gnutls-support.ts";

let certs: TestCerts;
let server: TlsServer;
let evil: TlsServer; // 127.0.0.2: no rule allows it
const build = mkdtempSync(join(tmpdir(), "kloak-gnutls-test-"));
const BINDING_CLIENT = join(build, "gnutls_binding_client");

beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer({ host: "127.0.0.1" });
  evil = await startTlsServer({ host: "127.0.0.2" });
  const src = join(import.meta.dir, "gnutls_binding_client.c");
  const cc = Bun.spawnSync(["gcc", "-O2", "-Wall", "-Werror", "-o", BINDING_CLIENT, src, "/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "-lpthread"], { stderr: "pipe" });
  if (!cc.success) throw new Error(`gcc failed: ${cc.stderr.toString()}`);
});
afterAll(async () => {
  await Promise.all([server.close(), evil.close()]);
  rmSync(build, { recursive: true, force: true });
});
beforeEach(() => {
  server.reset();
  evil.reset();
});

function gnutlsCli(): string {
  if (existsSync("/usr/bin/gnutls-cli")) return "/usr/bin/gnutls-cli";
  const root = debianRoot(join(CACHE, "gnutls-bin"), [{ suite: "bookworm", packages: ["gnutls-bin"] }], ["usr/bin/gnutls-cli"]);
  return join(root, "usr/bin/gnutls-cli");
}

/** `kloak exec` of a shell command that reads the placeholder from $T. */
async function exec(secret: string, allow: string[], cmd: string, more: string[] = []) {
  return runKloak(["exec", "--secret", `T=${secret}`, ...allow.flatMap((a) => ["--allow", `T=${a}`]), ...more, "--", "sh", "-c", cmd]);
}

const refusal = (reason: string, n: number) => `refused ${n}x: secret T to 127.0.0.1:${server.port} (SNI localhost): ${reason}`;

describe("wget (GnuTLS)", () => {
  const wget = () =>
    `wget -q -O - --ca-certificate=${q(certs.caFile)} --header="Authorization: Bearer $T" --post-data="t=$T" https://localhost:${server.port}/w`;

  test("allowed destination: the value in the header and the body, no placeholder", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, ["localhost"], wget());
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("ok\n");
    const got = server.received();
    expect(occurrences(got, `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(occurrences(got, `t=${secret}`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
    expect(server.sni).toEqual(["localhost"]);
  });

  test("disallowed destination: the placeholder goes out, the refusal is reported", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, ["127.0.0.2"], wget());
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain(refusal("destination_not_allowed", 2));
  });

  test("no rules: substituted, with the warning", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, [], wget());
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(2);
    expect(r.stderr).toContain("may be sent to any TLS destination");
  });

  test("strict binding: wget's transport is its own (gnutls_transport_set_ptr): refused as app_bio", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, ["localhost"], wget(), ["--strict-binding"]);
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toMatch(/refused 2x: secret T to unknown destination \(SNI localhost\): app_bio/);
  });
});

describe("git over https (git-remote-https, libcurl3-gnutls)", () => {
  // The server answers every request "200 ok", which git rejects after it
  // sent the request: the exit code says nothing here, what arrived does.
  const git = () =>
    `GIT_SSL_CAINFO=${q(certs.caFile)} git -c http.extraHeader="Authorization: Bearer $T" ls-remote https://localhost:${server.port}/r.git`;

  test("allowed destination: http.extraHeader carries the value", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, ["localhost"], git());
    expect(server.requests.map((x) => x.target)).toEqual(["/r.git/info/refs?service=git-upload-pack"]);
    const got = server.received();
    expect(occurrences(got, `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
    expect(r.stderr).toContain("kloak: 1 substitution(s) in 1 TLS write(s)");
  });

  test("disallowed destination: the placeholder goes out, the refusal is reported", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, ["127.0.0.2"], git());
    const got = server.received();
    expect(server.requests.length).toBe(1);
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(1);
    expect(r.stderr).toContain(refusal("destination_not_allowed", 1));
  });

  test("no rules: substituted", async () => {
    const secret = fakeSecret(40);
    const r = await exec(secret, [], git());
    expect(occurrences(server.received(), `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(r.stderr).toContain("may be sent to any TLS destination");
  });
});

describe("gnutls-cli", () => {
  /** One POST from stdin; gnutls-cli prints the reply and ends when the server closes. */
  const cli = (secret: string, target = "localhost") =>
    `printf 'POST /c HTTP/1.1\\r\\nHost: x\\r\\nX-Key: %s\\r\\nContent-Length: ${secret.length + 2}\\r\\nConnection: close\\r\\n\\r\\nk=%s' "$T" "$T" | ` +
    `${q(gnutlsCli())} --x509cafile ${q(certs.caFile)} -p ${server.port} ${target}`;

  test("allowed destination, strict binding: gnutls_transport_set_int2 binds the session to its socket", async () => {
    const secret = fakeSecret(32);
    const r = await exec(secret, ["localhost"], cli(secret), ["--strict-binding"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("HTTP/1.1 200 OK");
    const got = server.received();
    expect(occurrences(got, `X-Key: ${secret}\r\n`)).toBe(1);
    expect(occurrences(got, `k=${secret}`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
  });

  test("disallowed destination: the placeholder goes out, the refusal is reported", async () => {
    const secret = fakeSecret(32);
    const r = await exec(secret, ["127.0.0.2"], cli(secret));
    expect(r.code).toBe(0);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain(refusal("destination_not_allowed", 2));
  });

  test("an SNI naming another host than the allowed one (gnutls_server_name_set): sni_mismatch", async () => {
    const secret = fakeSecret(32);
    const r = await exec(secret, ["localhost"], cli(secret, "--sni-hostname=kloak.test 127.0.0.1"));
    expect(server.sni).toEqual(["kloak.test"]);
    const got = server.received();
    expect(occurrences(got, secret)).toBe(0);
    expect(placeholderCount(got)).toBe(2);
    expect(r.stderr).toContain(`refused 2x: secret T to 127.0.0.1:${server.port} (SNI kloak.test): sni_mismatch`);
  });

  test("no rules: substituted", async () => {
    const secret = fakeSecret(32);
    const r = await exec(secret, [], cli(secret));
    expect(r.code).toBe(0);
    expect(occurrences(server.received(), secret)).toBe(2);
    expect(r.stderr).toContain("may be sent to any TLS destination");
  });
});

describe("binding follows where GnuTLS ciphertext goes (gnutls_binding_client.c)", () => {
  async function run(mode: string) {
    const secret = fakeSecret(32);
    // CHECK_VALUE: the real value, for the cork mode's search of its own heap.
    const argv = ["env", `CHECK_VALUE=${secret}`, BINDING_CLIENT, mode, "127.0.0.1", String(server.port), "127.0.0.2", String(evil.port), "localhost", certs.caFile];
    const r = await runKloak(["exec", "--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=localhost", "--", ...argv]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("SNI_SET=0\nHANDSHAKE=ok\nSENT=");
    const values = occurrences(server.received(), secret) + occurrences(evil.received(), secret);
    return { r, values, allowed: server.received(), evil: evil.received(), out: keyValues(r.stdout) };
  }

  test("control: set_int2 on the allowed host's socket: substituted", async () => {
    const { values, allowed } = await run("control");
    expect(values).toBe(1);
    expect(placeholderCount(allowed)).toBe(0);
  });

  test("the SNI is read as counted: the first name_len bytes of a longer string", async () => {
    const { values } = await run("counted-sni");
    expect(values).toBe(1);
    expect(server.sni).toEqual(["localhost"]);
  });

  test("corked: the value never enters the library's buffer; gnutls_record_uncork's send substitutes, then restores", async () => {
    const { values, allowed, out } = await run("cork");
    expect(out.UNCORK).toEqual([String(out.SENT?.[0])]);
    expect(out.CORKED_HEAP).toEqual(["clean"]);
    expect(out.UNCORKED_HEAP).toEqual(["clean"]);
    expect(values).toBe(1);
    expect(placeholderCount(allowed)).toBe(0);
  });

  test("the app's push function, then set_int2 on the allowed socket: not bound to it (the relay's writes go elsewhere)", async () => {
    const { r, values, evil: got } = await run("push-then-int2");
    expect(values).toBe(0);
    expect(placeholderCount(got)).toBe(1);
    expect(r.stderr).toContain("refused 1x: secret API_TOKEN to unknown destination (SNI localhost): unknown_peer");
  });

  test("set_int2 on the allowed socket, then the app's push function: never substituted again", async () => {
    const { r, values, evil: got } = await run("int2-then-push");
    expect(values).toBe(0);
    expect(placeholderCount(got)).toBe(1);
    expect(r.stderr).toContain("refused 1x: secret API_TOKEN to unknown destination (SNI localhost): binding_changed");
  });

  test("a counted SNI with a NUL inside is no host name a rule can match, even if it starts like one", async () => {
    const { r, values, allowed } = await run("nul-sni");
    expect(values).toBe(0);
    expect(placeholderCount(allowed)).toBe(1);
    expect(r.stderr).toContain(`refused 1x: secret API_TOKEN to 127.0.0.1:${server.port} (SNI localhost\\0… (not one host name)): sni_mismatch`);
  });
});
