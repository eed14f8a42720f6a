/**
 * A local TLS server (node:tls, in the test process) that records exactly the
 * plaintext each connection delivered, so a test can assert what a real client
 * put on the wire after kloak touched its writes.
 *
 * mode "http" (default): additionally parses HTTP/1.1 requests (Content-Length
 * and chunked bodies, `Expect: 100-continue`) and answers each one with
 * `200 OK`, body "ok\n", keep-alive (unless the request asked to close).
 * mode "raw": records only and never sends application data.
 *
 * Recording is independent of parsing: `connections` holds the raw plaintext
 * bytes as received, whatever the parser thinks of them.
 */
import { once } from "node:events";
import * as tls from "node:tls";
import { testCerts } from "./certs.ts";

export type TlsServerMode = "http" | "raw";

export interface TlsServerOptions {
  /** Listen address; default 127.0.0.1. Use "::1" for IPv6. */
  host?: string;
  /** Listen port; default 0 (any free port). */
  port?: number;
  /** Default "http". */
  mode?: TlsServerMode;
  /** "http" mode: called with each complete request before its response is sent. */
  onRequest?: (r: RecordedRequest) => void;
}

/** One HTTP request the "http" mode parsed (body de-chunked). */
export interface RecordedRequest {
  /** Index into `connections` / `sni`. */
  connection: number;
  method: string;
  target: string;
  /** Header lines in order, names as sent. */
  headers: [name: string, value: string][];
  /** The body after removing chunked framing (trailers dropped). */
  body: Buffer;
}

export interface TlsServer {
  host: string;
  port: number;
  /** https://host:port (IPv6 hosts bracketed). */
  url: string;
  mode: TlsServerMode;
  /** Plaintext received, one Buffer per connection in accept order (grows as data arrives). */
  readonly connections: Buffer[];
  /** SNI each connection sent (undefined: none), same indexes as `connections`. */
  readonly sni: (string | undefined)[];
  /** "http" mode: every complete request, in order of completion. */
  readonly requests: RecordedRequest[];
  /** All connections' plaintext concatenated in accept order. */
  received(): Buffer;
  /** Resolves once pred(received()) holds; rejects after timeoutMs (default 10 s) saying what arrived. */
  waitFor(pred: (all: Buffer) => boolean, timeoutMs?: number): Promise<void>;
  /** Forget everything recorded so far (open connections record into new entries). */
  reset(): void;
  /** Drop all connections and stop listening. */
  close(): Promise<void>;
}

/** Per-connection recording; replaced on reset() so old data never reappears. */
interface ConnRecord {
  index: number;
  chunks: Buffer[];
  length: number;
  cached: Buffer | undefined;
}

const RESPONSE_BODY = "ok\n";
const MAX_HEAD = 64 * 1024;

export async function startTlsServer(opts: TlsServerOptions = {}): Promise<TlsServer> {
  const host = opts.host ?? "127.0.0.1";
  const mode = opts.mode ?? "http";
  const certs = await testCerts();

  let records: ConnRecord[] = [];
  let sniList: (string | undefined)[] = [];
  let requests: RecordedRequest[] = [];
  let epoch = 0;
  const sockets = new Set<tls.TLSSocket>();
  const waiters = new Set<() => void>();

  const notify = () => {
    for (const w of [...waiters]) w();
  };

  const server = tls.createServer({ key: certs.key, cert: certs.cert }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // Clients that vanish mid-stream (RST, killed process) are normal here.
    socket.on("error", () => {});

    const servername = typeof socket.servername === "string" && socket.servername !== "" ? socket.servername : undefined;
    let myEpoch = -1;
    let record: ConnRecord | undefined;
    const current = (): ConnRecord => {
      if (record === undefined || myEpoch !== epoch) {
        myEpoch = epoch;
        record = { index: records.length, chunks: [], length: 0, cached: undefined };
        records.push(record);
        sniList.push(servername);
      }
      return record;
    };
    current(); // a connection appears even if it never sends a byte

    const parser =
      mode === "http"
        ? new HttpParser(
            (req) => {
              const { close, ...request } = req;
              const recorded = { ...request, connection: current().index };
              requests.push(recorded);
              opts.onRequest?.(recorded);
              if (!socket.writable) return;
              socket.write(
                `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${RESPONSE_BODY.length}\r\n` +
                  `Connection: ${close ? "close" : "keep-alive"}\r\n\r\n${RESPONSE_BODY}`,
              );
              if (close) socket.end();
            },
            () => {
              if (socket.writable) socket.write("HTTP/1.1 100 Continue\r\n\r\n");
            },
            (why) => {
              if (!socket.writable) return;
              const body = `bad request: ${why}\n`;
              socket.end(
                `HTTP/1.1 400 Bad Request\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
              );
            },
          )
        : undefined;

    socket.on("data", (data: Buffer) => {
      const rec = current();
      rec.chunks.push(data);
      rec.length += data.length;
      rec.cached = undefined;
      parser?.feed(data);
      notify();
    });
  });

  server.on("tlsClientError", () => {}); // failed handshakes are a client's problem
  server.listen({ host, port: opts.port ?? 0 });
  await once(server, "listening");
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("TLS server has no TCP address");
  const port = addr.port;

  const bufferOf = (rec: ConnRecord): Buffer => {
    if (rec.cached === undefined) {
      rec.cached = rec.chunks.length === 1 ? rec.chunks[0]! : Buffer.concat(rec.chunks, rec.length);
      rec.chunks = [rec.cached];
    }
    return rec.cached;
  };
  const received = () => Buffer.concat(records.map(bufferOf));

  return {
    host,
    port,
    url: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
    mode,
    get connections() {
      return records.map(bufferOf);
    },
    get sni() {
      return [...sniList];
    },
    get requests() {
      return [...requests];
    },
    received,
    waitFor(pred, timeoutMs = 10_000) {
      return new Promise<void>((resolve, reject) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const check = () => {
          let ok: boolean;
          try {
            ok = pred(received());
          } catch (err) {
            finish();
            reject(err);
            return;
          }
          if (ok) {
            finish();
            resolve();
          }
        };
        const finish = () => {
          waiters.delete(check);
          if (timer !== undefined) clearTimeout(timer);
        };
        timer = setTimeout(() => {
          finish();
          const all = received();
          const tail = all.subarray(Math.max(0, all.length - 200)).toString("latin1");
          reject(
            new Error(
              `TLS server ${host}:${port}: condition not met within ${timeoutMs} ms; ` +
                `${all.length} bytes arrived over ${records.length} connection(s)` +
                (all.length > 0 ? `; last bytes: ${JSON.stringify(tail)}` : ""),
            ),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    reset() {
      epoch++;
      records = [];
      sniList = [];
      requests = [];
    },
    async close() {
      for (const w of [...waiters]) waiters.delete(w);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

type ParsedRequest = Omit<RecordedRequest, "connection"> & { close: boolean };

/**
 * Incremental HTTP/1.1 request parser. Only header blocks and chunk-size lines
 * are buffered; body bytes are consumed in place, so multi-MiB bodies cost O(n).
 */
class HttpParser {
  private pending: Buffer = Buffer.alloc(0);
  private state: "head" | "body" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailer" | "broken" = "head";
  private remaining = 0;
  private req: ParsedRequest | undefined;
  private body: Buffer[] = [];

  constructor(
    private readonly onRequest: (req: ParsedRequest) => void,
    private readonly onContinue: () => void,
    private readonly onError: (why: string) => void,
  ) {}

  feed(chunk: Buffer): void {
    const buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    let i = 0;
    while (i < buf.length) {
      switch (this.state) {
        case "broken":
          return;
        case "head": {
          const end = buf.indexOf("\r\n\r\n", i);
          if (end < 0) return this.keep(buf, i, "request head");
          const head = buf.subarray(i, end).toString("latin1");
          i = end + 4;
          if (!this.startRequest(head)) return;
          break;
        }
        case "body":
        case "chunk-data": {
          const take = Math.min(this.remaining, buf.length - i);
          if (take > 0) this.body.push(buf.subarray(i, i + take));
          i += take;
          this.remaining -= take;
          if (this.remaining > 0) return;
          if (this.state === "body") this.finishRequest();
          else {
            this.state = "chunk-crlf";
            this.remaining = 2;
          }
          break;
        }
        case "chunk-crlf": {
          const take = Math.min(this.remaining, buf.length - i);
          i += take;
          this.remaining -= take;
          if (this.remaining === 0) this.state = "chunk-size";
          break;
        }
        case "chunk-size": {
          const eol = buf.indexOf("\r\n", i);
          if (eol < 0) return this.keep(buf, i, "chunk size line");
          const line = buf.subarray(i, eol).toString("latin1");
          i = eol + 2;
          const sizeText = line.split(";")[0]!.trim();
          const size = /^[0-9a-fA-F]+$/.test(sizeText) ? parseInt(sizeText, 16) : NaN;
          if (!Number.isSafeInteger(size)) return this.fail(`bad chunk size ${JSON.stringify(line)}`);
          if (size === 0) this.state = "trailer";
          else {
            this.state = "chunk-data";
            this.remaining = size;
          }
          break;
        }
        case "trailer": {
          const eol = buf.indexOf("\r\n", i);
          if (eol < 0) return this.keep(buf, i, "trailer");
          const empty = eol === i;
          i = eol + 2;
          if (empty) this.finishRequest();
          break;
        }
      }
    }
  }

  private keep(buf: Buffer, from: number, what: string): void {
    if (buf.length - from > MAX_HEAD) return this.fail(`${what} longer than ${MAX_HEAD} bytes`);
    this.pending = Buffer.from(buf.subarray(from)); // copy: don't pin a large chunk
  }

  private fail(why: string): void {
    this.state = "broken";
    this.pending = Buffer.alloc(0);
    this.onError(why);
  }

  /** Returns false when the parser gave up. */
  private startRequest(head: string): boolean {
    const lines = head.split("\r\n");
    const requestLine = lines.shift() ?? "";
    const m = /^(\S+) (\S+) HTTP\/1\.[01]$/.exec(requestLine);
    if (m === null) {
      this.fail(`bad request line ${JSON.stringify(requestLine)}`);
      return false;
    }
    const headers: [string, string][] = [];
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon <= 0) {
        this.fail(`bad header line ${JSON.stringify(line)}`);
        return false;
      }
      headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
    }
    const get = (name: string) => headers.find(([n]) => n.toLowerCase() === name)?.[1];
    const connection = (get("connection") ?? "").toLowerCase();
    const close = connection.includes("close") || (requestLine.endsWith("1.0") && !connection.includes("keep-alive"));
    this.req = { method: m[1]!, target: m[2]!, headers, body: Buffer.alloc(0), close };
    this.body = [];

    if ((get("expect") ?? "").toLowerCase() === "100-continue") this.onContinue();
    const te = (get("transfer-encoding") ?? "").toLowerCase();
    const cl = get("content-length");
    if (te.includes("chunked")) {
      this.state = "chunk-size";
    } else if (cl !== undefined) {
      if (!/^\d+$/.test(cl)) {
        this.fail(`bad Content-Length ${JSON.stringify(cl)}`);
        return false;
      }
      this.remaining = Number(cl);
      this.state = "body";
      if (this.remaining === 0) this.finishRequest();
    } else {
      this.finishRequest();
    }
    return true;
  }

  private finishRequest(): void {
    const req = this.req!;
    req.body = Buffer.concat(this.body);
    this.body = [];
    this.req = undefined;
    this.state = "head";
    this.onRequest(req);
  }
}
