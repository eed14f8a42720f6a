/**
 * A small authoritative DNS server over real UDP (node:dgram + dns-packet), so
 * the resolver is tested through the same c-ares code path it uses in
 * production, with answers a test can change while it runs.
 *
 * Known name + asked type present: NOERROR with the records and their TTL.
 * Known name, type absent: NOERROR, no answers (NODATA). Unknown name: NXDOMAIN.
 * `failing` makes every query fail: "servfail" answers SERVFAIL, "drop" never answers.
 */
import * as dgram from "node:dgram";
import { once } from "node:events";
import * as packet from "dns-packet";

export interface DnsRecord {
  A?: string[];
  AAAA?: string[];
  ttl: number;
}

export type DnsFailure = "servfail" | "drop" | false;

export interface DnsServer {
  host: string;
  port: number;
  /** "127.0.0.1:PORT" (IPv6: "[::1]:PORT"), as dns.Resolver#setServers wants it. */
  address: string;
  /** Replace a name's records (null: the name no longer exists). Names are case-insensitive. */
  set(name: string, rec: DnsRecord | null): void;
  /** Make every query fail until set back to false. */
  failing: DnsFailure;
  /** Every question received, in order (name as asked, type as "A", "AAAA", ...). */
  queries: { name: string; type: string }[];
  close(): Promise<void>;
}

const NXDOMAIN = 3;
const SERVFAIL = 2;

const key = (name: string) => name.toLowerCase().replace(/\.$/, "");

export async function startDnsServer(
  records: Record<string, DnsRecord>,
  opts: { host?: string; port?: number } = {},
): Promise<DnsServer> {
  const host = opts.host ?? "127.0.0.1";
  const zone = new Map<string, DnsRecord>();
  for (const [name, rec] of Object.entries(records)) zone.set(key(name), rec);

  const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  let closed = false;
  const server: DnsServer = {
    host,
    port: 0,
    address: "",
    failing: false,
    queries: [],
    set(name, rec) {
      if (rec) zone.set(key(name), rec);
      else zone.delete(key(name));
    },
    async close() {
      closed = true;
      socket.close();
      await once(socket, "close");
    },
  };

  socket.on("message", (msg, peer) => {
    if (closed) return;
    let query: packet.DecodedPacket;
    try {
      query = packet.decode(msg);
    } catch {
      return; // not DNS: a real server would ignore it too
    }
    const questions = query.questions ?? [];
    for (const q of questions) server.queries.push({ name: q.name, type: q.type });
    if (server.failing === "drop") return;

    let rcode = 0;
    const answers: packet.Answer[] = [];
    if (server.failing === "servfail") rcode = SERVFAIL;
    else {
      for (const q of questions) {
        const rec = zone.get(key(q.name));
        if (!rec) {
          rcode = NXDOMAIN;
          continue;
        }
        if (q.type !== "A" && q.type !== "AAAA") continue;
        for (const data of rec[q.type] ?? []) answers.push({ type: q.type, name: q.name, ttl: rec.ttl, data });
      }
    }
    const flags = packet.AUTHORITATIVE_ANSWER | packet.RECURSION_AVAILABLE | ((query.flags ?? 0) & packet.RECURSION_DESIRED) | rcode;
    const reply = packet.encode({ type: "response", id: query.id ?? 0, flags, questions, answers });
    socket.send(reply, peer.port, peer.address);
  });

  socket.bind(opts.port ?? 0, host);
  await once(socket, "listening");
  server.port = socket.address().port;
  server.address = host.includes(":") ? `[${host}]:${server.port}` : `${host}:${server.port}`;
  return server;
}
