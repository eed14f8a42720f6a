/**
 * Why deploy/cert-manager is a CA chain, shown with certificates shaped like
 * cert-manager's (made by openssl, not by kloak's own authority): a client
 * that trusts only the caBundle cainjector injected — the API server — keeps
 * reaching the agent while the serving certificate is renewed under the CA,
 * where with a self-signed serving certificate it is locked out until the
 * injector catches up. And a CA renewed with the same key (rotationPolicy
 * Never) still verifies what it signed before.
 *
 * The agent's side is the real one: a kubelet-style Secret volume, watchCertDir
 * and the ReloadableHttpsServer the agent serves the webhook with.
 *
 * Needs openssl (scripts/setup.sh installs it).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { $ } from "bun";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { watchCertDir, type CertDirWatcher } from "../../src/certs/cert-manager.ts";
import { ReloadableHttpsServer } from "../../src/server/https-server.ts";

const HOST = "kloak-webhook.kloak.svc";
const dir = mkdtempSync(join(tmpdir(), "kloak-cm-chain-"));
const cleanups: (() => unknown)[] = [];

interface Pem {
  cert: string;
  key: string;
}

const openssl = async (args: string[]) => {
  const r = await $`openssl ${args}`.cwd(dir).quiet().nothrow();
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr.toString()}`);
};
const read = (f: string) => readFileSync(join(dir, f), "utf8");
const newKey = async (name: string) => openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`]);

/** A self-signed CA certificate for `key` (cert-manager's SelfSigned issuer with isCA: true). */
async function caCert(name: string, key: string, cn: string): Promise<Pem> {
  await openssl([
    "req", "-x509", "-new", "-key", `${key}.key`, "-out", `${name}.crt`, "-days", "3650", "-subj", `/CN=${cn}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,digitalSignature",
    "-addext", "subjectKeyIdentifier=hash",
  ]);
  return { cert: read(`${name}.crt`), key: read(`${key}.key`) };
}

/** A serving certificate for the webhook Service, signed by `ca` (a CA Issuer), with a fresh key. */
async function leaf(name: string, ca: { crt: string; key: string }): Promise<Pem> {
  await newKey(name);
  await openssl(["req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", "/"]);
  writeFileSync(join(dir, `${name}.ext`), `subjectAltName=DNS:${HOST},DNS:${HOST}.cluster.local\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n`);
  await openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", ca.crt, "-CAkey", ca.key, "-CAcreateserial", "-days", "90", "-extfile", `${name}.ext`, "-out", `${name}.crt`]);
  return { cert: read(`${name}.crt`), key: read(`${name}.key`) };
}

/** A self-signed serving certificate (the old overlay: SelfSigned issuer, no CA). */
async function selfSignedLeaf(name: string): Promise<Pem> {
  await newKey(name);
  await openssl(["req", "-x509", "-new", "-key", `${name}.key`, "-out", `${name}.crt`, "-days", "90", "-subj", "/", "-addext", `subjectAltName=DNS:${HOST}`]);
  return { cert: read(`${name}.crt`), key: read(`${name}.key`) };
}

/** A Secret volume as the kubelet lays it out and swaps it (atomic `..data` rename). */
class SecretVolume {
  private gen = 0;
  constructor(readonly path: string) {
    mkdirSync(path, { recursive: true });
  }
  publish(files: Record<string, string>): void {
    const name = `..gen_${++this.gen}`;
    mkdirSync(join(this.path, name));
    for (const [f, content] of Object.entries(files)) writeFileSync(join(this.path, name, f), content);
    symlinkSync(name, join(this.path, "..data_tmp"));
    renameSync(join(this.path, "..data_tmp"), join(this.path, "..data"));
    for (const f of Object.keys(files)) {
      try {
        symlinkSync(join("..data", f), join(this.path, f));
      } catch {
        // linked through ..data already
      }
    }
  }
}

/** One TLS handshake as the API server makes it: trusting only `caBundle`, checking the Service's name. */
function handshake(port: number, caBundle: string): Promise<{ ok: boolean; error?: string; subjectAltName?: string; fingerprint?: string }> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port, servername: HOST, ca: caBundle, rejectUnauthorized: true }, () => {
      const peer = s.getPeerCertificate();
      resolve({ ok: true, subjectAltName: peer.subjectaltname, fingerprint: peer.fingerprint256 });
      s.end();
    });
    s.on("error", (e) => resolve({ ok: false, error: e.message }));
  });
}

/** The agent's cert-manager mode: the mounted Secret, watched, served. */
async function agentServing(volume: SecretVolume): Promise<{ server: ReloadableHttpsServer; watcher: CertDirWatcher }> {
  let server: ReloadableHttpsServer | undefined;
  const first = Promise.withResolvers<{ certPem: string; keyPem: string }>();
  const watcher = watchCertDir(volume.path, (m) => (server ? void server.reload(m.certPem, m.keyPem) : first.resolve(m)), { intervalMs: 20 });
  const m = await first.promise;
  server = ReloadableHttpsServer.start({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("ok"), cert: m.certPem, key: m.keyPem, drainTimeoutMs: 2_000 });
  cleanups.push(() => watcher.stop(), () => server!.stop());
  return { server, watcher };
}

let ca: Pem;
let leaves: Pem[];

beforeAll(async () => {
  await newKey("ca");
  ca = await caCert("ca", "ca", "kloak-webhook-ca");
  leaves = [await leaf("leaf1", { crt: "ca.crt", key: "ca.key" }), await leaf("leaf2", { crt: "ca.crt", key: "ca.key" })];
}, 30_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  rmSync(dir, { recursive: true, force: true });
});

describe("deploy/cert-manager's CA chain", () => {
  test(
    "a serving certificate renewed under the CA: the API server, trusting only the injected CA, never fails a handshake",
    async () => {
      // cert-manager's leaf Secret: tls.crt, tls.key and ca.crt (the CA), mounted into the agent.
      const vol = new SecretVolume(join(dir, "vol-chain"));
      vol.publish({ "tls.crt": leaves[0]!.cert, "tls.key": leaves[0]!.key, "ca.crt": ca.cert });
      const { server } = await agentServing(vol);
      // cainjector, from the CA Certificate's Secret: the caBundle for the whole test.
      const caBundle = ca.cert;

      const seen = new Set<string>();
      const failures: string[] = [];
      let renewed = false;
      const deadline = Date.now() + 10_000;
      for (let i = 0; Date.now() < deadline; i++) {
        if (i === 10) {
          // cert-manager renews the leaf (new key, rotationPolicy Always); the kubelet swaps the volume.
          vol.publish({ "tls.crt": leaves[1]!.cert, "tls.key": leaves[1]!.key, "ca.crt": ca.cert });
          renewed = true;
        }
        const r = await handshake(server.port, caBundle);
        if (!r.ok) failures.push(r.error!);
        else seen.add(r.fingerprint!);
        if (renewed && seen.size === 2 && i > 30) break;
      }
      // What the chain is for: no handshake fails verification. A reset is another matter: the reload
      // closes the old SO_REUSEPORT listener, and a connection still in its accept queue is reset
      // unless net.ipv4.tcp_migrate_req=1 in the network namespace (measured: 2 runs in 3 reset one
      // connection here with 0, none with 1). That is the listener hand-over's, in either cert mode.
      const verification = failures.filter((e) => !/ECONNRESET/.test(e));
      expect(verification).toEqual([]);
      expect(failures.length - verification.length).toBeLessThanOrEqual(1);
      // Both serving certificates were served, one after the other.
      expect(seen.size).toBe(2);
    },
    30_000,
  );

  test(
    "the old overlay's self-signed serving certificate: after a renewal, the caBundle the API server holds no longer verifies",
    async () => {
      const [a, b] = [await selfSignedLeaf("self1"), await selfSignedLeaf("self2")];
      const vol = new SecretVolume(join(dir, "vol-self"));
      // A SelfSigned issuer's ca.crt is the certificate itself; cainjector injected it.
      vol.publish({ "tls.crt": a.cert, "tls.key": a.key, "ca.crt": a.cert });
      const { server, watcher } = await agentServing(vol);
      const caBundle = a.cert;
      expect((await handshake(server.port, caBundle)).ok).toBe(true);
      vol.publish({ "tls.crt": b.cert, "tls.key": b.key, "ca.crt": b.cert });
      await watcher.poll();
      let r = await handshake(server.port, caBundle);
      for (let i = 0; r.ok && i < 100; i++) r = await handshake(server.port, caBundle);
      // Until cainjector rewrites caBundle, every webhook call fails: failurePolicy Fail refuses the request.
      expect(r.ok).toBe(false);
      expect(r.error).toMatch(/self.signed|unable to verify|certificate/i);
    },
    30_000,
  );

  test("a CA renewed with the same key and subject (rotationPolicy Never) still verifies the serving certificates it signed", async () => {
    const renewed = await caCert("ca-renewed", "ca", "kloak-webhook-ca");
    expect(renewed.cert).not.toBe(ca.cert);
    writeFileSync(join(dir, "ca-renewed.pem"), renewed.cert);
    const ok = await $`openssl verify -CAfile ca-renewed.pem leaf1.crt`.cwd(dir).quiet().nothrow();
    expect(ok.stdout.toString().trim()).toBe("leaf1.crt: OK");

    // With a new key (rotationPolicy Always on the CA) it would not: an outage until every leaf is re-issued.
    await newKey("ca-newkey");
    const rekeyed = await caCert("ca-rekeyed", "ca-newkey", "kloak-webhook-ca");
    writeFileSync(join(dir, "ca-rekeyed.pem"), rekeyed.cert);
    const bad = await $`openssl verify -CAfile ca-rekeyed.pem leaf1.crt`.cwd(dir).quiet().nothrow();
    expect(bad.exitCode).not.toBe(0);

    // And the agent's own TLS stack agrees: a server with leaf1 passes a client that trusts only the renewed CA.
    const vol = new SecretVolume(join(dir, "vol-renewed"));
    vol.publish({ "tls.crt": leaves[0]!.cert, "tls.key": leaves[0]!.key, "ca.crt": ca.cert });
    const { server } = await agentServing(vol);
    expect(await handshake(server.port, renewed.cert)).toMatchObject({ ok: true });
    expect(await handshake(server.port, rekeyed.cert)).toMatchObject({ ok: false });
  }, 30_000);
});
