/**
 * A real HTTP/2 TLS server for tests: node:http2 (nghttp2) in a child
 * process on the machine's node (test/support/h2_server.mjs), recording each
 * stream's header values as HPACK decoded them and its DATA. Tests count
 * occurrences in what it recorded, never print it.
 */
import type { Subprocess } from "bun";
import { join } from "node:path";
import { nodePath } from "./clients.ts";

export interface H2Stream {
  headers: [name: string, value: string][];
  data: Buffer;
}

export interface H2Server {
  port: number;
  url: string;
  /** Streams completed so far, in order. */
  readonly streams: H2Stream[];
  /** Resolves once n streams completed; rejects after timeoutMs. */
  waitStreams(n: number, timeoutMs?: number): Promise<void>;
  reset(): void;
  close(): Promise<void>;
}

export const H2_SERVER = join(import.meta.dir, "h2_server.mjs");
export const H2_CLIENT = join(import.meta.dir, "h2_client.mjs");

export async function startH2Server(o: { certFile: string; keyFile: string; host?: string }): Promise<H2Server> {
  const proc: Subprocess<"pipe", "pipe", "inherit"> = Bun.spawn(
    [nodePath(), H2_SERVER, "--cert", o.certFile, "--key", o.keyFile, "--host", o.host ?? "127.0.0.1"],
    { stdin: "pipe", stdout: "pipe", stderr: "inherit" },
  );
  const streams: H2Stream[] = [];
  let port = 0;
  let ready: () => void = () => {};
  const listening = new Promise<void>((r) => (ready = r));
  void (async () => {
    let buf = "";
    for await (const chunk of proc.stdout) {
      buf += new TextDecoder().decode(chunk);
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /^PORT=(\d+)$/.exec(line);
        if (m) {
          port = Number(m[1]);
          ready();
        } else if (line.startsWith("{")) {
          const j = JSON.parse(line) as { headers: [string, string][]; data: string };
          streams.push({ headers: j.headers, data: Buffer.from(j.data, "base64") });
        }
      }
    }
  })();
  // Generous: node starts slowly in the kernel matrix's TCG VMs.
  const timer = setTimeout(() => proc.kill(), 180_000);
  await Promise.race([listening, proc.exited.then((c) => Promise.reject(new Error(`h2 server exited (${c}) before listening`)))]);
  clearTimeout(timer);
  return {
    port,
    url: `https://localhost:${port}`,
    streams,
    async waitStreams(n, timeoutMs = 60_000) {
      const end = performance.now() + timeoutMs;
      while (streams.length < n) {
        if (performance.now() > end) throw new Error(`h2 server: ${streams.length} of ${n} streams completed`);
        await Bun.sleep(20);
      }
    },
    reset() {
      streams.length = 0;
    },
    async close() {
      proc.kill();
      await proc.exited;
    },
  };
}
