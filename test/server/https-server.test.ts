import { afterEach, describe, expect, test } from "bun:test";
import { createCa, issueServing, parseCert, type CaBundle, type ServingCert } from "../../src/certs/authority.ts";
import { ReloadableHttpsServer } from "../../src/server/https-server.ts";
import { peerFingerprint } from "../support/tls-peer.ts";

const servers: ReloadableHttpsServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop(true)));
});


async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/slow") {
    inFlightSlow++;
    await Bun.sleep(500);
    inFlightSlow--;
  }
  return new Response(`ok ${url.pathname}`);
}
let inFlightSlow = 0;

async function pki(n: number): Promise<{ ca: CaBundle; certs: ServingCert[] }> {
  const ca = await createCa();
  const certs = await Promise.all(Array.from({ length: n }, () => issueServing(ca, ["localhost"])));
  return { ca, certs };
}

describe("ReloadableHttpsServer", () => {
  test(
    "three reloads under back-to-back load: no failed request, new connections get the new certificate, slow requests finish",
    async () => {
      const { ca, certs } = await pki(4);
      const fps = certs.map((c) => parseCert(c.certPem).fingerprint);
      const server = ReloadableHttpsServer.start({ port: 0, hostname: "127.0.0.1", fetch: handler, cert: certs[0]!.certPem, key: certs[0]!.keyPem });
      servers.push(server);
      expect(server.port).toBeGreaterThan(0);
      expect(await peerFingerprint(server.port, ca.certPem)).toBe(fps[0]!);

      const stats = { ok: 0, slowOk: 0, failures: [] as string[] };
      /** Client-side slow requests not yet answered, each resolving to its status (0 on error). */
      const slowInFlight = new Set<Promise<number>>();
      let running = true;
      const one = async (path: string): Promise<number> => {
        try {
          const res = await fetch(`https://localhost:${server.port}${path}`, { tls: { ca: ca.certPem } });
          const body = await res.text();
          if (res.status === 200 && body === `ok ${path}`) {
            stats.ok++;
            if (path === "/slow") stats.slowOk++;
          } else stats.failures.push(`${path}: ${res.status} ${body}`);
          return res.status;
        } catch (e) {
          stats.failures.push(`${path}: ${(e as Error).message}`);
          return 0;
        }
      };
      const loop = async (path: string) => {
        while (running) {
          const p = one(path);
          if (path === "/slow") slowInFlight.add(p);
          await p;
          slowInFlight.delete(p);
        }
      };
      const loops = [loop("/"), loop("/"), loop("/"), loop("/slow"), loop("/slow")];

      for (let i = 1; i <= 3; i++) {
        await Bun.sleep(600);
        // Slow requests are mid-flight on the old server right now (they run back to back).
        expect(inFlightSlow).toBeGreaterThan(0);
        const caught = [...slowInFlight];
        expect(caught.length).toBeGreaterThan(0);
        await server.reload(certs[i]!.certPem, certs[i]!.keyPem);
        // Those requests were on the server being replaced; they must all have been answered.
        expect(await Promise.all(caught)).toEqual(caught.map(() => 200));
        expect(await peerFingerprint(server.port, ca.certPem)).toBe(fps[i]!);
      }
      await Bun.sleep(600);
      running = false;
      await Promise.all(loops);

      expect(stats.failures).toEqual([]);
      expect(stats.ok).toBeGreaterThan(50);
      expect(stats.slowOk).toBeGreaterThanOrEqual(8);
    },
    30_000,
  );

  test(
    "an unusable certificate is rejected and the previous one keeps being served",
    async () => {
      const { ca, certs } = await pki(2);
      const server = ReloadableHttpsServer.start({ port: 0, hostname: "127.0.0.1", fetch: handler, cert: certs[0]!.certPem, key: certs[0]!.keyPem });
      servers.push(server);
      // A key from another pair must not be accepted.
      const err = await server.reload(certs[1]!.certPem, certs[0]!.keyPem).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).toContain("still serving the previous one");
      expect(err?.message).not.toContain("PRIVATE KEY");
      expect(await peerFingerprint(server.port, ca.certPem)).toBe(parseCert(certs[0]!.certPem).fingerprint);
      const res = await fetch(`https://localhost:${server.port}/`, { tls: { ca: ca.certPem } });
      expect(res.status).toBe(200);
      // A later good reload still works after a failed one.
      await server.reload(certs[1]!.certPem, certs[1]!.keyPem);
      expect(await peerFingerprint(server.port, ca.certPem)).toBe(parseCert(certs[1]!.certPem).fingerprint);
    },
    30_000,
  );

  test(
    "stop() lets an in-flight request finish, then the port refuses connections",
    async () => {
      const { ca, certs } = await pki(1);
      const server = ReloadableHttpsServer.start({ port: 0, hostname: "127.0.0.1", fetch: handler, cert: certs[0]!.certPem, key: certs[0]!.keyPem });
      const slow = fetch(`https://localhost:${server.port}/slow`, { tls: { ca: ca.certPem } });
      await Bun.sleep(100);
      await server.stop();
      const res = await slow;
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("ok /slow");
      await expect(fetch(`https://localhost:${server.port}/`, { tls: { ca: ca.certPem } })).rejects.toThrow();
      await expect(server.reload(certs[0]!.certPem, certs[0]!.keyPem)).rejects.toThrow("stopped");
    },
    30_000,
  );

  test(
    "a request still running when the drain timeout passes is cut off so a reload cannot hang",
    async () => {
      const { ca, certs } = await pki(2);
      const server = ReloadableHttpsServer.start({
        port: 0,
        hostname: "127.0.0.1",
        drainTimeoutMs: 200,
        fetch: async () => {
          await Bun.sleep(5_000);
          return new Response("late");
        },
        cert: certs[0]!.certPem,
        key: certs[0]!.keyPem,
      });
      servers.push(server);
      const hung = fetch(`https://localhost:${server.port}/`, { tls: { ca: ca.certPem } }).then(
        (r) => r.status,
        () => "cut",
      );
      await Bun.sleep(100);
      const t0 = performance.now();
      await server.reload(certs[1]!.certPem, certs[1]!.keyPem);
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(await hung).toBe("cut");
    },
    30_000,
  );
});
