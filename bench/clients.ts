/**
 * The clients part of `bun run bench` (--only clients): request throughput of
 * a Go client (net/http over crypto/tls, HTTP/1.1 and HTTP/2) and of an
 * HTTP/2 client (curl --http2, nghttp2's HPACK), each run directly with the
 * real value (the baseline) and under `kloak exec` with a placeholder that is
 * substituted in every request (a header and the body), in the same run,
 * against the same local servers (test/support: node:tls and node:http2).
 *
 * One run = one process sending N requests (Go: N goroutines over its
 * connection pool; curl: N URLs over one connection). The request rate is the
 * slope between N and 4N requests, which cancels process and kloak start-up;
 * the whole-job ratio of N requests is reported next to it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tableHead, tableRow, writeReportSection } from "./report.ts";
import { median } from "./stats.ts";
import { testCerts } from "../test/support/certs.ts";
import { startH2Server } from "../test/support/h2-server.ts";
import { KLOAK } from "../test/support/kloak.ts";
import { startTlsServer } from "../test/support/tls-server.ts";
import { buildGoClient } from "../test/runtime/go-support.ts";


interface ClientCase {
  id: string;
  what: string;
  /** the command that sends n requests to url, reading API_TOKEN and CA_FILE */
  script(url: string, n: number): string;
  h2: boolean;
}

export interface ClientResult {
  id: string;
  what: string;
  requests: number;
  reps: number;
  baselineRps: number;
  kloakRps: number;
  /** steady state: kloak's request rate over the baseline's */
  ratio: number;
  /** one short job of n requests, start and exit included: baseline time over kloak's */
  jobRatio: number;
}

async function timed(argv: string[], env: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  const p = Bun.spawn(argv, { env: { ...process.env, ...env }, stdout: "ignore", stderr: "pipe", stdin: "ignore" });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  if (code !== 0) throw new Error(`${argv.slice(-1)[0]!.slice(0, 120)} exited ${code}: ${err.slice(-400)}`);
  return performance.now() - t0;
}

export async function runClientsBench(o: { reps: number; requests: number }): Promise<ClientResult[]> {
  const certs = await testCerts();
  const h1 = await startTlsServer({ mode: "http" });
  const h2 = await startH2Server({ certFile: certs.certFile, keyFile: certs.keyFile });
  const dir = mkdtempSync(join(tmpdir(), "kloak-bench-clients-"));
  const go = buildGoClient("1.19", { pie: true, stripped: true }, dir);
  const value = `bench-${crypto.randomUUID().replaceAll("-", "")}`; // 38 bytes
  const cases: ClientCase[] = [
    {
      id: "go-h1",
      what: "Go net/http, HTTP/1.1",
      h2: false,
      script: (url, n) => `KLOAK_TEST_TOKEN="$API_TOKEN" KLOAK_TEST_CA="$CA_FILE" KLOAK_TEST_H2=0 exec '${go}' client '${url}' ${n}`,
    },
    {
      id: "go-h2",
      what: "Go net/http, HTTP/2",
      h2: true,
      script: (url, n) => `KLOAK_TEST_TOKEN="$API_TOKEN" KLOAK_TEST_CA="$CA_FILE" KLOAK_TEST_H2=1 exec '${go}' client '${url}' ${n}`,
    },
    {
      id: "curl-h2",
      what: "curl --http2 (nghttp2), one connection",
      h2: true,
      script: (url, n) =>
        `exec curl -sS --fail --http2 --cacert "$CA_FILE" -o /dev/null -H "Authorization: Bearer $API_TOKEN" --data "token=$API_TOKEN" ${Array(n).fill(`'${url}'`).join(" ")}`,
    },
  ];
  const results: ClientResult[] = [];
  try {
    for (const c of cases) {
      const url = c.h2 ? `${h2.url}/api` : `https://localhost:${h1.port}/api`;
      const env = { CA_FILE: certs.caFile };
      // Each side at n and 4n requests: the difference cancels what does not grow with the
      // requests (process and kloak start, the handshake), so the slope is the request rate.
      const n = o.requests;
      const t: Record<string, number[]> = { b1: [], b4: [], k1: [], k4: [] };
      const run = (count: number, kloak: boolean) =>
        timed(
          kloak
            ? [...KLOAK, "exec", "--quiet", "--user", "root", "--secret", "API_TOKEN", "--allow", "API_TOKEN=localhost", "--", "sh", "-c", c.script(url, count)]
            : ["sh", "-c", c.script(url, count)],
          { ...env, API_TOKEN: value },
        );
      for (let i = 0; i <= o.reps; i++) {
        // Interleaved, so drift hits both; the first round warms caches and is not counted.
        const round = { b1: await run(n, false), k1: await run(n, true), b4: await run(4 * n, false), k4: await run(4 * n, true) };
        if (i > 0) for (const [k, v] of Object.entries(round)) t[k]!.push(v);
        h1.reset();
        h2.reset();
      }
      const baselineRps = (3 * n) / ((median(t.b4!) - median(t.b1!)) / 1000);
      const kloakRps = (3 * n) / ((median(t.k4!) - median(t.k1!)) / 1000);
      const jobRatio = median(t.b1!) / median(t.k1!);
      results.push({ id: c.id, what: c.what, requests: n, reps: o.reps, baselineRps, kloakRps, ratio: kloakRps / baselineRps, jobRatio });
    }
  } finally {
    await h1.close();
    await h2.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

export function clientsMarkdown(rs: ClientResult[]): string {
  return [
    "## Clients (`bun run bench --only clients`)",
    "",
    `Each side sends n = ${rs[0]?.requests ?? 0} and 4n requests from one process (a header and the body carry the secret),`,
    `medians of ${rs[0]?.reps ?? 0} interleaved rounds: the baseline with the real value and no kloak, and kloak with a`,
    "placeholder substituted in every request. req/s = 3n / (time(4n) - time(n)), so process and kloak start-up, the",
    "handshake and exit cancel out; \"job of n\" is the whole wall time of n requests, start and exit included.",
    "",
    ...tableHead(["client", "baseline req/s", "kloak req/s", "ratio", "job of n: ratio"]),
    ...rs.map((r) => tableRow([r.what, r.baselineRps.toFixed(0), r.kloakRps.toFixed(0), `${(r.ratio * 100).toFixed(0)}%`, `${(r.jobRatio * 100).toFixed(0)}%`])),
  ].join("\n");
}

export function writeClientsReport(dir: string, rs: ClientResult[]): string {
  return writeReportSection(dir, "clients", clientsMarkdown(rs), rs);
}
