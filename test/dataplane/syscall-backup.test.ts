/**
 * The syscall program's backup (bpf/sysruns.h): on kernels whose syscall
 * programs can be skipped (7.0+), a second program on sys_enter runs the
 * work of the syscalls kloak_sys_enter was skipped for. Here the data plane
 * is told the kernel is 7.3 and loads what it would load there; on this
 * kernel kloak_sys_enter is never skipped, so the backup must see it ran and
 * do nothing: were it to handle a send a second time, a memory-BIO
 * connection's ClientHello would be counted twice and the connection marked
 * as seen on two sockets (never substituted). The kernel matrix's 7.x cells
 * run the case where it does the work. Real clients, a real TLS server,
 * destination rules so every substitution needs its connection bound.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { netnsInode } from "../../lib/proc.ts";
import { SYSCALL_BACKUP_PROGRAM, SYSCALL_PROGRAM } from "../../src/dataplane/bpf-object.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { NodeFacts } from "../../src/dataplane/kernel-support.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { nodePath, pythonPath, runClient } from "../support/clients.ts";
import { fakeSecret, occurrences } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const PY_MEMBIO = join(import.meta.dir, "..", "support", "membio_client.py");
const NODE_MEMBIO = join(import.meta.dir, "..", "support", "membio_client.mjs");
const SCOPE = 1;
const SECRET = 41;

let certs: TestCerts;
let server: TlsServer;
let dp: Dataplane;
let value: string;
let ph: string;

beforeAll(async () => {
  pythonPath();
  nodePath();
  certs = await testCerts();
  server = await startTlsServer({ host: "127.0.0.1" });
  const facts = new NodeFacts();
  facts.kernel = () => [7, 3];
  dp = await Dataplane.start({ mode: "auto", scanCap: 65536, facts });
  dp.setScope(SCOPE, { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" });
  value = fakeSecret(32);
  ph = new PlaceholderRegistry().create("API_KEY", valueShape(value));
  // 127.0.0.0/8 only: a substitution needs the connection's peer, so its socket binding
  const rules = [{ kind: "cidr" as const, addr: new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 0]), prefix: 104, port: 0 }];
  await dp.setSecret({ id: SECRET, placeholder: Buffer.from(ph), key: placeholderKey(ph), value: Buffer.from(value), rules });
  dp.grant(SCOPE, SECRET);
}, 60_000);
afterAll(async () => {
  await dp?.close();
  await server?.close();
});

test("told the kernel is 7.3, the data plane attaches the backup right after the syscall program", () => {
  const programs = dp.tracepointPrograms();
  expect(programs).toContain(SYSCALL_BACKUP_PROGRAM);
  expect(programs.indexOf(SYSCALL_BACKUP_PROGRAM)).toBe(programs.indexOf(SYSCALL_PROGRAM) + 1);
});

test.each([
  ["python asyncio (SSLObject)", () => [pythonPath(), PY_MEMBIO, "--kind", "streams"]],
  ["node https", () => [nodePath(), NODE_MEMBIO, "--kind", "https"]],
])("%s, 4 connections at once: every one bound once, substituted, none seen on two sockets", async (_name, argv) => {
  server.reset();
  const before = dp.counters();
  dp.addLauncher(process.pid, SCOPE);
  let r;
  try {
    r = await runClient([...argv(), "--ca", certs.caFile, "--concurrent", "4", "--url", server.url], { env: { API_KEY: ph }, timeoutMs: 60_000 });
  } finally {
    dp.removeLauncher(process.pid);
  }
  const after = dp.counters();
  expect(r.code).toBe(0);
  const got = server.received();
  // header and body of each of the 4 requests
  expect(occurrences(got, value)).toBe(8);
  expect(occurrences(got, ph)).toBe(0);
  expect(after.conns_bound - before.conns_bound).toBe(4n);
  expect(after.bind_conflict - before.bind_conflict).toBe(0n);
  // kloak_sys_enter is never skipped on this kernel: the backup had nothing to do
  expect(after.syscall_runs_recovered - before.syscall_runs_recovered).toBe(0n);
});
