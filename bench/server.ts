/**
 * The benchmark's TLS server: a lean node:tls server inside the bench process,
 * the same for every variant. Two listeners on 127.0.0.1:
 *
 *  - http: keep-alive HTTP/1.1; every request (head + Content-Length body) gets
 *    a fixed small "200 OK" answer. Body bytes are skipped, not buffered.
 *  - bulk: a stream of fixed-size records; byte 0 of each record is "D" (data)
 *    or "E" (end). Once an end record has fully arrived the server answers
 *    "done <bytes read>\n", so the client's clock stops on bytes really read.
 *    The record size is the one set when the connection was accepted
 *    (setRecordSize: the cost-growth part sends records of 256 B to 1 MiB).
 *
 * Both count, across chunk boundaries, how often two needles appeared in the
 * plaintext: the real secret value and the placeholder marker "kloak:". Only
 * counts leave this module; the received bytes are never stored or printed.
 */
import { once } from "node:events";
import * as tls from "node:tls";

export interface ServerStats {
  connections: number;
  requests: number;
  bytes: number;
  /** occurrences of the real secret value */
  valueHits: number;
  /** occurrences of the placeholder marker ("kloak:") */
  markerHits: number;
  /** protocol errors (bad framing); should stay 0 */
  errors: string[];
  /** server-side CPU (this process, user+sys) between reset() and snapshot(), seconds */
  cpuS: number;
}

export interface BenchServer {
  httpPort: number;
  bulkPort: number;
  reset(): void;
  /** record size of bulk connections accepted from now on */
  setRecordSize(bytes: number): void;
  snapshot(): ServerStats;
  close(): Promise<void>;
}

const RESPONSE = Buffer.from(
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n",
  "latin1",
);
const CRLFCRLF = Buffer.from("\r\n\r\n");
const MAX_HEAD = 64 * 1024;

/** Counts a needle's occurrences in a stream delivered in chunks. */
class NeedleCounter {
  count = 0;
  private tail: Buffer = Buffer.alloc(0);
  constructor(private readonly needle: Buffer) {}

  feed(chunk: Buffer): void {
    const n = this.needle;
    // Matches spanning the previous chunk and this one: tail is n-1 bytes, so
    // any match in tail+head necessarily crosses the boundary.
    if (this.tail.length > 0) {
      const joined = Buffer.concat([this.tail, chunk.subarray(0, n.length - 1)]);
      for (let i = joined.indexOf(n); i >= 0; i = joined.indexOf(n, i + 1)) this.count++;
    }
    for (let i = chunk.indexOf(n); i >= 0; i = chunk.indexOf(n, i + 1)) this.count++;
    const keep = n.length - 1;
    if (chunk.length >= keep) this.tail = Buffer.from(chunk.subarray(chunk.length - keep));
    else this.tail = Buffer.concat([this.tail, chunk]).subarray(-keep);
  }
}

/** A connection's stats (of the run it started in) and the byte counter every chunk goes through first. */
type Counted = { s: Omit<ServerStats, "cpuS">; feed(data: Buffer): void };

/** Keep-alive HTTP/1.1: each request (head, then Content-Length bytes of body) answered with RESPONSE. */
function serveHttp(socket: tls.TLSSocket, { s, feed }: Counted): void {
  let head: Buffer = Buffer.alloc(0);
  let bodyLeft = 0;
  let broken = false;
  socket.on("data", (data: Buffer) => {
    feed(data);
    if (broken) return;
    let buf = data;
    let i = 0;
    while (i < buf.length) {
      if (bodyLeft > 0) {
        const take = Math.min(bodyLeft, buf.length - i);
        bodyLeft -= take;
        i += take;
        if (bodyLeft === 0) {
          s.requests++;
          socket.write(RESPONSE);
        }
        continue;
      }
      // In a request head.
      if (head.length > 0) {
        buf = Buffer.concat([head, buf.subarray(i)]);
        head = Buffer.alloc(0);
        i = 0;
      }
      const end = buf.indexOf(CRLFCRLF, i);
      if (end < 0) {
        if (buf.length - i > MAX_HEAD) {
          broken = true;
          s.errors.push("request head too long");
          socket.destroy();
          return;
        }
        head = Buffer.from(buf.subarray(i));
        return;
      }
      const text = buf.toString("latin1", i, end);
      if (!text.startsWith("POST ") && !text.startsWith("GET ")) {
        broken = true;
        s.errors.push(`bad request line ${JSON.stringify(text.slice(0, 30))}`);
        socket.destroy();
        return;
      }
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(text);
      bodyLeft = m ? Number(m[1]) : 0;
      i = end + 4;
      if (bodyLeft === 0) {
        s.requests++;
        socket.write(RESPONSE);
      }
    }
  });
}

/** Bulk: records of R bytes, "D"ata then one "E"nd record, answered with the byte count so far. */
function serveBulk(socket: tls.TLSSocket, { s, feed }: Counted, R: number): void {
  let total = 0;
  let endAt = -1; // stream offset just past the end record
  socket.on("data", (data: Buffer) => {
    feed(data);
    // Record starts inside this chunk.
    for (let i = (R - (total % R)) % R; i < data.length; i += R) {
      const kind = data[i];
      if (kind === 0x45 /* E */) endAt = total + i + R;
      else if (kind !== 0x44 /* D */ && s.errors.length < 5) s.errors.push(`bad record byte ${kind} at ${total + i}`);
    }
    total += data.length;
    if (endAt >= 0 && total >= endAt) {
      s.requests++;
      socket.write(`done ${total}\n`);
      endAt = -1;
    }
  });
}

export async function startBenchServer(o: {
  key: string;
  cert: string;
  /** the real secret value, counted (never printed) */
  value: Buffer;
  marker: Buffer;
  recordSize: number;
}): Promise<BenchServer> {
  let stats: Omit<ServerStats, "cpuS"> = fresh();
  let cpu0 = process.cpuUsage();
  let recordSize = o.recordSize;
  const sockets = new Set<tls.TLSSocket>();

  function fresh() {
    return { connections: 0, requests: 0, bytes: 0, valueHits: 0, markerHits: 0, errors: [] as string[] };
  }

  // Per-connection counters, added into the stats of the run the connection started in.
  const counting = (socket: tls.TLSSocket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    socket.setNoDelay(true);
    const s = stats;
    s.connections++;
    const value = new NeedleCounter(o.value);
    const marker = new NeedleCounter(o.marker);
    return { s, feed(data: Buffer) {
      s.bytes += data.length;
      const v0 = value.count, m0 = marker.count;
      value.feed(data);
      marker.feed(data);
      s.valueHits += value.count - v0;
      s.markerHits += marker.count - m0;
    } };
  };

  const http = tls.createServer({ key: o.key, cert: o.cert }, (socket) => serveHttp(socket, counting(socket)));
  const bulk = tls.createServer({ key: o.key, cert: o.cert }, (socket) => serveBulk(socket, counting(socket), recordSize));

  for (const srv of [http, bulk]) {
    srv.on("tlsClientError", () => {});
    srv.listen({ host: "127.0.0.1", port: 0 });
    await once(srv, "listening");
  }
  const port = (srv: tls.Server) => {
    const a = srv.address();
    if (a === null || typeof a === "string") throw new Error("no TCP address");
    return a.port;
  };

  return {
    httpPort: port(http),
    bulkPort: port(bulk),
    setRecordSize(bytes: number) {
      if (!Number.isInteger(bytes) || bytes < 1) throw new Error(`bad record size ${bytes}`);
      recordSize = bytes;
    },
    reset() {
      stats = fresh();
      cpu0 = process.cpuUsage();
    },
    snapshot() {
      const c = process.cpuUsage(cpu0);
      return { ...stats, errors: [...stats.errors], cpuS: (c.user + c.system) / 1e6 };
    },
    async close() {
      for (const s of sockets) s.destroy();
      await Promise.all([http, bulk].map((srv) => new Promise<void>((r) => srv.close(() => r()))));
    },
  };
}
