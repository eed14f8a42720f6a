/**
 * Proves the test DNS server answers like a real one: through node:dns (c-ares) and, where
 * node:dns cannot tell cases apart (Bun reports NODATA as ENOTFOUND), on the wire.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import * as dgram from "node:dgram";
import * as dns from "node:dns";
import { once } from "node:events";
import * as packet from "dns-packet";
import { startDnsServer, type DnsServer } from "../support/dns-server.ts";

let srv: DnsServer;
beforeAll(async () => {
  srv = await startDnsServer({
    "both.test": { A: ["192.0.2.1", "192.0.2.2"], AAAA: ["2001:db8::1"], ttl: 42 },
    "v4only.test": { A: ["192.0.2.3"], ttl: 0 },
  });
});
afterAll(() => srv.close());

// A fresh Resolver each time: a Bun Resolver caches answers for their TTL.
function resolver(): dns.promises.Resolver {
  const r = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
  r.setServers([srv.address]);
  return r;
}

// dns-packet decodes the rcode, its types do not declare it.
type Reply = packet.DecodedPacket & { rcode: string };

/** Sends one query and returns the decoded reply, or undefined when none came within waitMs. */
async function raw(name: string, type: "A" | "AAAA", waitMs = 1000): Promise<Reply | undefined> {
  const sock = dgram.createSocket("udp4");
  let timer: Timer | undefined;
  try {
    sock.send(packet.encode({ type: "query", id: 4321, flags: packet.RECURSION_DESIRED, questions: [{ type, name }] }), srv.port, srv.host);
    const reply = once(sock, "message").then(([msg]) => packet.decode(msg as Buffer) as Reply);
    return await Promise.race([reply, new Promise<undefined>((r) => (timer = setTimeout(r, waitMs)))]);
  } finally {
    clearTimeout(timer);
    sock.close();
  }
}

test("listens on an ephemeral 127.0.0.1 port and gives a setServers address", () => {
  expect(srv.host).toBe("127.0.0.1");
  expect(srv.port).toBeGreaterThan(0);
  expect(srv.address).toBe(`127.0.0.1:${srv.port}`);
});

test("A and AAAA with the configured TTL, through node:dns", async () => {
  const r = resolver();
  expect(await r.resolve4("both.test", { ttl: true })).toEqual([
    { address: "192.0.2.1", ttl: 42 },
    { address: "192.0.2.2", ttl: 42 },
  ]);
  expect(await r.resolve6("both.test", { ttl: true })).toEqual([{ address: "2001:db8::1", ttl: 42 }]);
  expect(await r.resolve4("v4only.test", { ttl: true })).toEqual([{ address: "192.0.2.3", ttl: 0 }]);
});

test("names are case-insensitive and a trailing dot is accepted", async () => {
  expect(await resolver().resolve4("BoTh.TeSt.")).toEqual(["192.0.2.1", "192.0.2.2"]);
});

test("unknown name: NXDOMAIN; known name without the type: NOERROR and no answers", async () => {
  await expect(resolver().resolve4("nope.test")).rejects.toMatchObject({ code: "ENOTFOUND" });
  await expect(resolver().resolve6("v4only.test")).rejects.toMatchObject({ code: "ENOTFOUND" });

  const nx = await raw("nope.test", "A");
  expect(nx?.rcode).toBe("NXDOMAIN");
  const nodata = await raw("v4only.test", "AAAA");
  expect(nodata?.rcode).toBe("NOERROR");
  expect(nodata?.answers).toEqual([]);
});

test("reply echoes id and question; flags: response, authoritative, recursion available", async () => {
  const reply = await raw("Both.test", "AAAA");
  expect(reply).toMatchObject({ id: 4321, type: "response", flag_qr: true, flag_aa: true, flag_ra: true, flag_rd: true, rcode: "NOERROR" });
  expect(reply?.questions).toEqual([{ name: "Both.test", type: "AAAA", class: "IN" }]);
  expect(reply?.answers).toMatchObject([{ name: "Both.test", type: "AAAA", ttl: 42, data: "2001:db8::1" }]);
});

test("set() changes answers live and null removes the name", async () => {
  srv.set("live.test", { A: ["192.0.2.10"], ttl: 5 });
  expect(await resolver().resolve4("live.test")).toEqual(["192.0.2.10"]);
  srv.set("LIVE.test", { A: ["192.0.2.11"], AAAA: ["2001:db8::11"], ttl: 5 });
  expect(await resolver().resolve4("live.test")).toEqual(["192.0.2.11"]);
  srv.set("live.test", null);
  await expect(resolver().resolve4("live.test")).rejects.toMatchObject({ code: "ENOTFOUND" });
});

test("records every question", async () => {
  const before = srv.queries.length;
  await resolver().resolve6("both.test");
  expect(srv.queries.slice(before)).toEqual([{ name: "both.test", type: "AAAA" }]);
});

test("failing: servfail answers SERVFAIL, drop answers nothing, false recovers", async () => {
  try {
    srv.failing = "servfail";
    await expect(resolver().resolve4("both.test")).rejects.toMatchObject({ code: "ESERVFAIL" });
    expect((await raw("both.test", "A"))?.rcode).toBe("SERVFAIL");
    srv.failing = "drop";
    expect(await raw("both.test", "A", 200)).toBeUndefined();
  } finally {
    srv.failing = false;
  }
  expect(await resolver().resolve4("both.test")).toEqual(["192.0.2.1", "192.0.2.2"]);
});

test("serves IPv6 clients on ::1", async () => {
  const v6 = await startDnsServer({ "six.test": { AAAA: ["2001:db8::6"], ttl: 9 } }, { host: "::1" });
  try {
    expect(v6.address).toBe(`[::1]:${v6.port}`);
    const r = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
    r.setServers([v6.address]);
    expect(await r.resolve6("six.test", { ttl: true })).toEqual([{ address: "2001:db8::6", ttl: 9 }]);
  } finally {
    await v6.close();
  }
});
