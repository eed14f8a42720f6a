/**
 * A TLS write while other threads of the writer map and unmap memory: the
 * kernel looks the buffer's mapping up under a trylock of the memory-map lock
 * (bpf_find_vma), which fails while another thread holds it for writing. In
 * stop mode that is no refusal: the item goes to kloak's worker marked
 * unchecked, and the worker checks /proc/<pid>/maps itself, with the writer
 * stopped, before it writes (a shared or file-backed buffer is still refused).
 * Before this, such writes went out with their placeholder (buffer_unchecked):
 * a starting Go runtime hit it, and so does any allocator-heavy client.
 *
 * Real kloak exec, real eBPF object, a real Python ssl client with four
 * threads hammering mmap/munmap, a real TLS server.
 */
import { afterAll, beforeAll, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, ROOT, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

const CLIENT = join(ROOT, "test", "support", "mmap_contention_client.py");
const WRITES = 400;
let certs: TestCerts;
let server: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-mmap-"));

beforeAll(async () => {
  certs = await testCerts();
  server = await startTlsServer();
});
beforeEach(() => server.reset());
afterAll(async () => {
  await server.close();
  rmSync(tmp, { recursive: true, force: true });
});

const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? NaN);

test(
  "stop mode: every write is substituted while the memory map is busy; the worker checked the buffers the kernel could not",
  async () => {
    const secret = fakeSecret(40);
    const metrics = join(tmp, "m.prom");
    const r = await runKloak(
      ["exec", "--rewrite-mode", "stop", "--secret", `API_KEY=${secret}`, "--metrics-file", metrics, "--", pythonPath(), CLIENT, String(server.port), certs.caFile, String(WRITES), "4"],
      { timeoutMs: 120_000 },
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`WROTE=${WRITES}`);
    expect(r.stdout).toContain("BUF=placeholder"); // every write's placeholder put back
    const got = server.received();
    const m = readFileSync(metrics, "utf8");
    expect({
      values: occurrences(got, secret), // header and body of every request
      placeholders: placeholderCount(got),
      unchecked: metric(m, 'kloak_substitutions_refused_total\\{reason="buffer_unchecked"\\}'),
      notPrivate: metric(m, 'kloak_substitutions_refused_total\\{reason="buffer_not_private"\\}'),
      killed: metric(m, "kloak_writers_killed_total"),
    }).toEqual({ values: 2 * WRITES, placeholders: 0, unchecked: 0, notPrivate: 0, killed: 0 });
    // The contention was real: some buffers were checked by the worker, not the kernel.
    const checked = metric(m, "kloak_buffers_checked_by_worker_total");
    if (!(checked > 0))
      throw new Error(`no write met a busy memory map in ${WRITES} writes with 4 hammering threads (kloak_buffers_checked_by_worker_total ${checked}): the case was not exercised`);
  },
  150_000,
);

test(
  "stop mode: a buffer in shared memory is refused whether the kernel or the worker checked it; the shared memory never holds the value",
  async () => {
    const secret = fakeSecret(40);
    const metrics = join(tmp, "shared.prom");
    const r = await runKloak(
      ["exec", "--rewrite-mode", "stop", "--secret", `API_KEY=${secret}`, "--metrics-file", metrics, "--", pythonPath(), CLIENT, String(server.port), certs.caFile, String(WRITES), "4", "shared"],
      { timeoutMs: 120_000 },
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`WROTE=${WRITES}`);
    expect(r.stdout).toContain("BUF=placeholder");
    const m = readFileSync(metrics, "utf8");
    expect({
      values: occurrences(server.received(), secret),
      notPrivate: metric(m, 'kloak_substitutions_refused_total\{reason="buffer_not_private"\}'),
      unchecked: metric(m, 'kloak_substitutions_refused_total\{reason="buffer_unchecked"\}'),
    }).toEqual({ values: 0, notPrivate: 2 * WRITES, unchecked: 0 });
    const checked = metric(m, "kloak_buffers_checked_by_worker_total");
    if (!(checked > 0)) throw new Error(`no shared-buffer write met a busy memory map (kloak_buffers_checked_by_worker_total ${checked}): the worker's refusal was not exercised`);
  },
  150_000,
);
