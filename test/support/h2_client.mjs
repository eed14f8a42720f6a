#!/usr/bin/env node
// HTTP/2 TLS clients for kloak tests, both on node's own OpenSSL:
//
//   node h2_client.mjs --url URL --ca CA.pem [-H 'name: value']... [--body TEXT] [--raw]
//
// Default: node:http2 (nghttp2: header values Huffman-coded when shorter).
// --raw: a minimal client over node:tls that writes the frames itself, so a
// test decides their layout: the preface, SETTINGS, then one request whose
// header block is HEADERS + CONTINUATION frames (split before the last header,
// which thus lies wholly in the CONTINUATION), each header a literal without
// indexing, Huffman-coded (RFC 7541 Appendix B); then DATA with the body.
//   --split-last     write the request in two TLS writes, 100 ms apart, split
//                    right before the last header field (so the second write
//                    starts inside the CONTINUATION frame)
//   --huffman-data   send the body Huffman-coded in the DATA frame (bytes that
//                    only look like a header value: kloak must leave them)
// Header values read $NAME from the environment ("$API_TOKEN").
// Prints "STATUS=<code>"; exit 0 on a 2xx.
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { HUFFMAN } from "./h2_huffman.mjs";

const { values: o } = parseArgs({
  options: {
    url: { type: "string" },
    ca: { type: "string" },
    header: { type: "string", short: "H", multiple: true, default: [] },
    body: { type: "string" },
    raw: { type: "boolean", default: false },
    "split-last": { type: "boolean", default: false },

    "huffman-data": { type: "boolean", default: false },
  },
  strict: true,
});
const expand = (s) => s.replace(/\$([A-Z_][A-Z0-9_]*)/g, (_, n) => process.env[n] ?? "");
const url = new URL(o.url);
const headers = o.header.map((h) => {
  const i = h.indexOf(":", 1);
  return [h.slice(0, i).trim().toLowerCase(), expand(h.slice(i + 1).trim())];
});
const body = o.body === undefined ? undefined : expand(o.body);
const ca = readFileSync(o.ca);

function done(status) {
  process.stdout.write(`STATUS=${status}\n`);
  process.exit(status >= 200 && status < 300 ? 0 : 1);
}

if (!o.raw) {
  const session = http2.connect(url.origin, { ca, maxSendHeaderBlockLength: 1 << 20 });
  session.on("error", (e) => {
    process.stderr.write(`session: ${e.message}\n`);
    process.exit(1);
  });
  const req = session.request({ ":method": body === undefined ? "GET" : "POST", ":path": url.pathname, ...Object.fromEntries(headers) });
  let status = 0;
  req.on("response", (h) => (status = h[":status"]));
  req.on("data", () => {});
  req.on("end", () => {
    session.close();
    done(status);
  });
  req.on("error", (e) => {
    process.stderr.write(`request: ${e.message}\n`);
    process.exit(1);
  });
  req.end(body);
} else {
  rawRequest();
}

// ---- --raw: frames written by hand ----------------------------------------

function huffman(str) {
  const bytes = Buffer.from(str, "latin1");
  const out = [];
  let acc = 0n;
  let n = 0n;
  for (const b of bytes) {
    const [code, bits] = HUFFMAN[b];
    acc = (acc << BigInt(bits)) | BigInt(code);
    n += BigInt(bits);
    while (n >= 8n) {
      out.push(Number((acc >> (n - 8n)) & 0xffn));
      n -= 8n;
      acc &= (1n << n) - 1n;
    }
  }
  if (n > 0n) out.push(Number(((acc << (8n - n)) | ((1n << (8n - n)) - 1n)) & 0xffn));
  return Buffer.from(out);
}

function int(value, prefixBits, first) {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

function str(s) {
  const h = huffman(s);
  return Buffer.concat([Buffer.from(int(h.length, 7, 0x80)), h]);
}

// Literal header field without indexing, new name (RFC 7541 6.2.2).
const field = (name, value) => Buffer.concat([Buffer.from([0x00]), str(name), str(value)]);

function frame(type, flags, stream, payload) {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

function rawRequest() {
  // No frame may come between HEADERS and its last CONTINUATION (RFC 9113
  // 6.10): a SETTINGS ack due meanwhile waits until the header block is whole.
  let blockOpen = false;
  let ackOwed = false;
  const sock = tls.connect({ host: url.hostname, port: Number(url.port), ca, ALPNProtocols: ["h2"], servername: url.hostname }, () => {
    const all = [
      [":method", body === undefined ? "GET" : "POST"],
      [":scheme", "https"],
      [":authority", url.host],
      [":path", url.pathname],
      ...headers,
    ];
    const first = Buffer.concat(all.slice(0, -1).map(([n, v]) => field(n, v)));
    const last = field(...all[all.length - 1]);
    const END_STREAM = 1, END_HEADERS = 4;
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    sock.write(preface);
    sock.write(frame(4, 0, 0, Buffer.alloc(0))); // SETTINGS
    const payload = body === undefined ? undefined : o["huffman-data"] ? huffman(body) : Buffer.from(body);
    // HEADERS and CONTINUATION (and DATA) in one write, as a client library would batch them.
    const request = Buffer.concat([
      frame(1, payload === undefined ? END_STREAM : 0, 1, first),
      frame(9, END_HEADERS, 1, last),
      ...(payload === undefined ? [] : [frame(0, END_STREAM, 1, payload)]),
    ]);
    if (!o["split-last"]) sock.write(request);
    else {
      const cut = 9 + first.length + 9; // the CONTINUATION's payload starts here
      blockOpen = true;
      sock.write(request.subarray(0, cut));
      setTimeout(() => {
        sock.write(request.subarray(cut));
        blockOpen = false;
        if (ackOwed) sock.write(frame(4, 1, 0, Buffer.alloc(0)));
        ackOwed = false;
      }, 100);
    }
  });
  let buf = Buffer.alloc(0);
  sock.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const type = buf[3];
      const flags = buf[4];
      const payload = buf.subarray(9, 9 + len);
      buf = buf.subarray(9 + len);
      if (type === 4 && !(flags & 1)) {
        if (blockOpen) ackOwed = true;
        else sock.write(frame(4, 1, 0, Buffer.alloc(0))); // SETTINGS ack
      }
      // The server's HEADERS: ":status: 200" is static index 8 (0x88) as node sends it.
      if (type === 1 && payload[0] === 0x88) {
        sock.end();
        done(200);
      }
      if (type === 7 || type === 3) {
        process.stderr.write(`server sent ${type === 7 ? "GOAWAY" : "RST_STREAM"} (error ${type === 7 ? payload.readUInt32BE(4) : payload.readUInt32BE(0)})\n`);
        process.exit(1);
      }
    }
  });
  sock.on("error", (e) => {
    process.stderr.write(`tls: ${e.message}\n`);
    process.exit(1);
  });
}
