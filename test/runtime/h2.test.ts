/**
 * HTTP/2 end to end: real clients (curl --http2 on nghttp2, node:http2, and a
 * hand-framed client over node:tls) under the real `kloak exec`, against a real
 * node:http2 server that records each stream's header values as HPACK decoded
 * them and its DATA. nghttp2 Huffman-codes header values whenever that is
 * shorter, so placeholders in headers reach the TLS write as bit strings
 * (bpf/hpack.h), at the bit alignment their prefix leaves them; raw literals
 * and DATA carry the placeholder's bytes (the byte scan).
 *
 * Go's HTTP/2 transport (crypto/tls) is hooked by the Go work of issue 11;
 * its HTTP/2 cases belong with those tests and go through the same write path
 * (on_write -> kloak_hpack_scan), so they need nothing more here.
 *
 * Counts only: a failing assertion never prints a value.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { huffmanBits, huffmanDecode } from "../../src/dataplane/hpack.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { nodePath, parseClientOutput, pythonPath } from "../support/clients.ts";
import { OSSL_CLIENT } from "../security/attack.ts";
import { startTlsServer } from "../support/tls-server.ts";
import { H2_CLIENT, startH2Server, type H2Server } from "../support/h2-server.ts";
import { fakeSecret, KLOAK, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";


let certs: TestCerts;
let h2: H2Server;
const tmp = mkdtempSync(join(tmpdir(), "kloak-h2-test-"));

beforeAll(async () => {
  certs = await testCerts();
  h2 = await startH2Server({ certFile: certs.certFile, keyFile: certs.keyFile });
});
afterAll(async () => {
  await h2.close();
});
beforeEach(() => h2.reset());

/** Shell-quote for sh -c, with $API_TOKEN left for the shell to expand. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`.replaceAll("$API_TOKEN", `'"$API_TOKEN"'`);

/** Value prefixes whose Huffman codes leave the placeholder at bit 0..7 of a byte. */
const ALIGN_PREFIXES: string[] = Array.from({ length: 8 }, (_, k) => {
  for (let n = 0; n < 16; n++)
    for (let i = 0; i <= n; i++) {
      const p = "a".repeat(i) + "b".repeat(n - i); // 'a' codes in 5 bits, 'b' in 6
      if (huffmanBits(p) % 8 === k) return `${p}-`.slice(0, -1);
    }
  throw new Error(`no prefix for alignment ${k}`);
});

/** A prefix whose code is longer than its bytes: nghttp2 sends the whole value as a raw literal. */
const RAW_PREFIX = "{}".repeat(40);

interface Tally {
  value: number;
  placeholder: number;
}

/** Occurrences of value and placeholders in header `name` (all streams), or in every header / all DATA. */
function tally(secret: string, where: { header?: string; data?: true }): Tally {
  let value = 0;
  let placeholder = 0;
  for (const s of h2.streams) {
    const texts = where.data ? [s.data.toString("latin1")] : s.headers.filter(([n]) => where.header === undefined || n === where.header).map(([, v]) => v);
    for (const t of texts) {
      value += occurrences(t, secret);
      placeholder += placeholderCount(t);
    }
  }
  return { value, placeholder };
}

function refused(stderr: string, reason: string): number {
  let n = 0;
  for (const m of stderr.matchAll(new RegExp(`refused (\\d+)x: secret API_TOKEN [^\\n]*: ${reason}`, "g"))) n += Number(m[1]);
  return n;
}

function curlH2(headers: string[], o: { body?: string; bodyFile?: string; extra?: string[] } = {}): string {
  const argv = ["curl", "--http2", "--fail", "--silent", "--show-error", "--cacert", certs.caFile];
  for (const h of headers) argv.push("-H", h);
  if (o.body !== undefined) argv.push("--data-raw", o.body);
  if (o.bodyFile !== undefined) argv.push("--data-binary", `@${o.bodyFile}`);
  argv.push(...(o.extra ?? []), `${h2.url}/api`);
  return argv.map(q).join(" ");
}

function nodeH2(
  headers: string[],
  o: { body?: string; raw?: boolean; splitLast?: boolean; huffmanData?: boolean } = {},
): string {
  const argv = [nodePath(), H2_CLIENT, "--url", `${h2.url}/api`, "--ca", certs.caFile];
  if (o.raw) argv.push("--raw");
  if (o.splitLast) argv.push("--split-last");
  if (o.huffmanData) argv.push("--huffman-data");
  for (const h of headers) argv.push("-H", h);
  if (o.body !== undefined) argv.push("--body", o.body);
  return argv.map(q).join(" ");
}

async function kloakExec(secret: string, allow: string | undefined, cmd: string) {
  // Generous: the same file runs under TCG in the kernel matrix's VMs (kernel mode).
  return runKloak(["exec", "--secret", `API_TOKEN=${secret}`, ...(allow ? ["--allow", `API_TOKEN=${allow}`] : []), "--", "sh", "-c", cmd], {
    timeoutMs: 900_000,
  });
}

/** Every header that carries the placeholder in this suite's requests. */
function tokenHeaders(): string[] {
  return [
    "authorization: Bearer $API_TOKEN",
    ...ALIGN_PREFIXES.map((p, k) => `x-align-${k}: ${p}$API_TOKEN`),
    `x-raw: ${RAW_PREFIX}$API_TOKEN`,
    // Two in one Huffman string: the first one's code ends inside a byte the second one's begins in.
    "x-two: $API_TOKEN $API_TOKEN",
  ];
}
/** Placeholders in tokenHeaders() */
const TOKEN_HEADERS = 1 + 8 + 1 + 2;

describe("HTTP/2: placeholders in HPACK header blocks and DATA", () => {
  test("the prefixes cover all 8 bit alignments; the raw prefix makes the literal longer Huffman-coded", () => {
    expect(new Set(ALIGN_PREFIXES.map((p) => huffmanBits(p) % 8)).size).toBe(8);
    expect(huffmanBits(RAW_PREFIX + "kloak:" + "Q".repeat(40))).toBeGreaterThan(8 * (RAW_PREFIX.length + 46));
  });

  test("curl --http2, allowed destination: every header (8 alignments, Huffman and raw) and the DATA carry the value", async () => {
    // x-two: the second placeholder's code starts in the byte where the first one's ends.
    let secret: string;
    do secret = fakeSecret(40);
    while ((huffmanBits(secret) + huffmanBits(" ")) % 8 === 0);
    const r = await kloakExec(secret, "127.0.0.1", curlH2(tokenHeaders(), { body: "token=$API_TOKEN&x=1" }));
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, {})).toEqual({ value: TOKEN_HEADERS, placeholder: 0 });
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 1, placeholder: 0 });
    for (let k = 0; k < 8; k++) expect(tally(secret, { header: `x-align-${k}` })).toEqual({ value: 1, placeholder: 0 });
    expect(tally(secret, { header: "x-two" })).toEqual({ value: 2, placeholder: 0 });
    expect(tally(secret, { data: true })).toEqual({ value: 1, placeholder: 0 });
    expect(r.stderr).toContain(`kloak: ${TOKEN_HEADERS + 1} substitution(s)`);
    expect(occurrences(r.stdout + r.stderr, secret)).toBe(0);
  });

  test("curl --http2, disallowed destination: the placeholders go out, every refusal is counted", async () => {
    const secret = fakeSecret(40);
    const r = await kloakExec(secret, "127.0.0.2", curlH2(tokenHeaders(), { body: "token=$API_TOKEN&x=1" }));
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, {})).toEqual({ value: 0, placeholder: TOKEN_HEADERS });
    expect(tally(secret, { data: true })).toEqual({ value: 0, placeholder: 1 });
    expect(r.stderr).toContain("kloak: 0 substitution(s)");
    expect(refused(r.stderr, "destination_not_allowed")).toBe(TOKEN_HEADERS + 1);
  });

  test("curl --http2, gRPC-style call: authorization metadata and a length-prefixed message", async () => {
    const secret = fakeSecret(48);
    // A gRPC frame (flag 0, 4-byte big-endian length) around a message holding the placeholder.
    const file = join(tmp, "grpc.bin");
    const build = (tok: string) => {
      const msg = Buffer.from(`\x0a\x30${tok}`, "latin1");
      const head = Buffer.alloc(5);
      head.writeUInt32BE(msg.length, 1);
      return Buffer.concat([head, msg]);
    };
    const grpcHeaders = ["content-type: application/grpc", "te: trailers", "grpc-timeout: 5S", "authorization: Bearer $API_TOKEN"];
    // The app only holds the placeholder: write the message from inside the tree.
    const cmd = `printf '%s' "$API_TOKEN" > ${q(join(tmp, "tok"))} && ${q(process.execPath)} -e ${q(
      `const fs=require("fs");const t=fs.readFileSync(${JSON.stringify(join(tmp, "tok"))},"latin1");const m=Buffer.from("\\x0a\\x30"+t,"latin1");const h=Buffer.alloc(5);h.writeUInt32BE(m.length,1);fs.writeFileSync(${JSON.stringify(file)},Buffer.concat([h,m]))`,
    )} && ${curlH2(grpcHeaders, { bodyFile: file })}`;
    const r = await kloakExec(secret, "127.0.0.1", cmd);
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 1, placeholder: 0 });
    const data = h2.streams[0]!.data;
    expect(data.length).toBe(build(secret).length);
    expect(occurrences(data, secret)).toBe(1);
    expect(data.readUInt32BE(1)).toBe(data.length - 5);
  });

  test("curl --http2, a header block too big for one frame: the placeholder in the CONTINUATION is substituted", async () => {
    const secret = fakeSecret(40);
    // 20000 'y' code into 17500 bytes: the block outgrows a 16384-byte HEADERS frame.
    const r = await kloakExec(secret, "127.0.0.1", curlH2([`x-big: ${"y".repeat(20_000)}`, "authorization: Bearer $API_TOKEN"]));
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 1, placeholder: 0 });
    expect(h2.streams[0]!.headers.find(([n]) => n === "x-big")?.[1].length).toBe(20_000);
  });

  test("node http2 (nghttp2 in node), no rules: header and DATA carry the value", async () => {
    const secret = fakeSecret(40);
    const r = await kloakExec(secret, undefined, nodeH2(["authorization: Bearer $API_TOKEN", `x-align-3: ${ALIGN_PREFIXES[3]}$API_TOKEN`], { body: "token=$API_TOKEN" }));
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, {})).toEqual({ value: 2, placeholder: 0 });
    expect(tally(secret, { data: true })).toEqual({ value: 1, placeholder: 0 });
  });

  test("hand-framed HEADERS + CONTINUATION (Huffman literals) and DATA over node:tls, no rules", async () => {
    const secret = fakeSecret(40);
    const headers = ["x-first: $API_TOKEN", ...ALIGN_PREFIXES.map((p, k) => `x-align-${k}: ${p}$API_TOKEN`), "authorization: Bearer $API_TOKEN"];
    const r = await kloakExec(secret, undefined, nodeH2(headers, { raw: true, body: "token=$API_TOKEN" }));
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    // authorization is the last header: wholly in the CONTINUATION frame.
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 1, placeholder: 0 });
    expect(tally(secret, {})).toEqual({ value: headers.length, placeholder: 0 });
    expect(tally(secret, { data: true })).toEqual({ value: 1, placeholder: 0 });
  });

  test("frames are walked across writes (a CONTINUATION cut by a write); Huffman codes in DATA are left alone", async () => {
    const secret = fakeSecret(40);
    // The request's second write starts inside the CONTINUATION frame, with the authorization field.
    const r = await kloakExec(
      secret,
      undefined,
      nodeH2(["x-first: $API_TOKEN", "authorization: Bearer $API_TOKEN"], {
        raw: true,
        splitLast: true,
        huffmanData: true,
        body: "Bearer $API_TOKEN",
      }),
    );
    expect(r.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, {})).toEqual({ value: 2, placeholder: 0 });
    // DATA is bytes to the server, not a header: a Huffman-coded placeholder there is no
    // placeholder, and walking the frames keeps kloak from touching it.
    const data = Buffer.from(huffmanDecode(h2.streams[0]!.data) ?? new Uint8Array());
    expect({ value: occurrences(data, secret), placeholder: placeholderCount(data) }).toEqual({ value: 0, placeholder: 1 });
    expect(r.stderr).toContain("kloak: 2 substitution(s)");
  });

  test("node http2 with rules: allowed destination (memory-BIO binding) and a disallowed one", async () => {
    const secret = fakeSecret(40);
    const cmd = nodeH2(["authorization: Bearer $API_TOKEN"], { body: "token=$API_TOKEN" });
    const ok = await kloakExec(secret, "127.0.0.1", cmd);
    expect(ok.code).toBe(0);
    await h2.waitStreams(1);
    // node's TLSWrap writes through memory BIOs, bound by the ClientHello its thread sends (bpf/membio.h).
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 1, placeholder: 0 });
    expect(tally(secret, { data: true })).toEqual({ value: 1, placeholder: 0 });
    h2.reset();
    const denied = await kloakExec(secret, "127.0.0.2", cmd);
    expect(denied.code).toBe(0);
    await h2.waitStreams(1);
    expect(tally(secret, { header: "authorization" })).toEqual({ value: 0, placeholder: 1 });
    expect(tally(secret, { data: true })).toEqual({ value: 0, placeholder: 1 });
    expect(refused(denied.stderr, "destination_not_allowed")).toBe(2);
  });
});

/** The header values of the one HEADERS frame a hand-built HTTP/2 request (ossl_client "h2") sent, decoded. */
function h2HeaderValues(plain: Buffer): string[] {
  let at = 24; // the preface
  const values: string[] = [];
  while (at + 9 <= plain.length) {
    const len = plain.readUIntBE(at, 3);
    const type = plain[at + 3];
    const payload = plain.subarray(at + 9, at + 9 + len);
    at += 9 + len;
    if (type !== 1) continue;
    // Literal fields without indexing, new name, both strings Huffman-coded, lengths < 127 (ossl_client's).
    for (let p = 0; p < payload.length; ) {
      p++; // 0x00
      const nlen = payload[p]! & 0x7f;
      p += 1 + nlen;
      let vlen = payload[p]! & 0x7f;
      p++;
      if (vlen === 0x7f) {
        vlen = 0x7f;
        let m = 0;
        for (;;) {
          const b = payload[p++]!;
          vlen += (b & 0x7f) << m;
          m += 7;
          if (!(b & 0x80)) break;
        }
      }
      values.push(Buffer.from(huffmanDecode(payload.subarray(p, p + vlen)) ?? new Uint8Array()).toString("latin1"));
      p += vlen;
    }
  }
  return values;
}

describe("nothing left behind", () => {
  test("kloak killed while an HTTP/2 write holds the value Huffman-coded: the guardian splices the placeholder's code back", async () => {
    const server = await startTlsServer({ mode: "raw" });
    try {
      const secret = fakeSecret(32);
      const steps = [
        { op: "tcp", id: "t", host: "127.0.0.1", port: server.port },
        { op: "ssl", id: "c" },
        { op: "buffer", id: "b", h2: true },
        { op: "app_bio", id: "c", sock: "t", during_write: "sleep:2" },
        { op: "connect", id: "c" },
        { op: "write", id: "c", buf: "b" },
        { op: "check", buf: "b", h2: true },
      ];
      const p = Bun.spawn(
        [...KLOAK, "exec", "--user", "root", "--secret", `API_KEY=${secret}`, "--allow", "API_KEY=127.0.0.1", "--", pythonPath(), OSSL_CLIENT, JSON.stringify(steps)],
        { stdout: "pipe", stderr: "pipe", env: { ...process.env, KLOAK_TEST_REQUEST: "GET / HTTP/1.1\r\nauthorization: Bearer {{API_KEY}}\r\n\r\n" } },
      );
      const reader = p.stdout.getReader();
      let out = "";
      const until = async (mark: string) => {
        while (!out.includes(mark)) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
      };
      await until("IN_WRITE=1");
      expect(out).toContain("IN_WRITE=1"); // the value's code is in the writer's buffer now
      process.kill(p.pid, "SIGKILL");
      await until("\u0000");
      expect(parseClientOutput(out).BUF_B).toEqual(["placeholder"]);
      // That write had gone out with the value, Huffman-coded.
      await server.waitFor((all) => all.length > 24);
      const values = h2HeaderValues(server.received());
      expect(values.filter((v) => v === `Bearer ${secret}`).length).toBe(1);
      expect(await new Response(p.stderr).text()).toMatch(/kloak guardian: kloak died; put back the placeholders of writes in flight/);
    } finally {
      await server.close();
    }
  });
});

describe("values no Huffman-exact placeholder can stand for", () => {
  test("kloak exec refuses them at load, saying why and what to do, without echoing them; nothing runs", async () => {
    for (const [value, why] of [
      ["aaaaeeeeoooo", "5-bit codes"],
      ["\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f", "long codes"],
    ] as const) {
      const marker = join(tmp, `ran-${why.replace(/\W/g, "")}`);
      const r = await runKloak(["exec", "--secret", `API_TOKEN=${value}`, "--", "sh", "-c", `touch ${q(marker)}`]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('secret "API_TOKEN" cannot get a placeholder that HTTP/2 can carry');
      expect(r.stderr).toContain(why);
      expect(r.stderr).toContain("Rotate it");
      expect(occurrences(r.stderr, value)).toBe(0);
      expect(await Bun.file(marker).exists()).toBe(false);
    }
  });
});
