/**
 * A real HTTP/2 TLS server for tests: node:http2 under the system's node
 * (test/support/h2-server.mjs) in a child process, reporting each completed
 * stream's decoded headers and body. A Huffman-coded header value arrives
 * decoded, so a test asserts on what the server's HPACK decoder saw.
 */
import { testCerts } from "./certs.ts";
import { nodePath } from "./clients.ts";

export interface H2Stream {
  headers: Record<string, string>;
  body: Buffer;
}

export interface H2Server {
  port: number;
  /** https://localhost:port */
  url: string;
  readonly streams: H2Stream[];
  /** Headers and bodies of every stream so far, as one buffer to count occurrences in. */
  received(): Buffer;
  reset(): void;
  close(): Promise<void>;
}

export async function startH2Server(): Promise<H2Server> {
  const certs = await testCerts();
  const child = Bun.spawn([nodePath(), `${import.meta.dir}/h2-server.mjs`, certs.certFile, certs.keyFile], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
  });
  let streams: H2Stream[] = [];
  const { promise: portP, resolve: resolvePort } = Promise.withResolvers<number>();
  (async () => {
    let pending = "";
    const dec = new TextDecoder();
    for await (const chunk of child.stdout) {
      pending += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = JSON.parse(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        if (typeof line.port === "number") resolvePort(line.port);
        else streams.push({ headers: line.headers, body: Buffer.from(line.body, "base64") });
      }
    }
  })();
  const port = await Promise.race([
    portP,
    child.exited.then((c) => {
      throw new Error(`the HTTP/2 test server (node ${nodePath()}) exited with ${c} before listening`);
    }),
  ]);
  return {
    port,
    url: `https://localhost:${port}`,
    get streams() {
      return streams;
    },
    received() {
      return Buffer.concat(streams.flatMap((s) => [Buffer.from(JSON.stringify(s.headers)), s.body]));
    },
    reset() {
      streams = [];
    },
    async close() {
      child.kill("SIGTERM");
      await child.exited;
    },
  };
}
