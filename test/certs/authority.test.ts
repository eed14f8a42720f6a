import { describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import {
  BACKDATE_MS,
  coversNames,
  createCa,
  issueServing,
  keyMatchesCert,
  parseCert,
  serviceDnsNames,
  splitPem,
  verifyChain,
} from "../../src/certs/authority.ts";

const DAY = 86_400_000;
const now = new Date("2030-01-01T00:00:00Z");

describe("authority", () => {
  test("serviceDnsNames lists the in-cluster names of a Service", () => {
    expect(serviceDnsNames("kloak-webhook", "kloak")).toEqual([
      "kloak-webhook",
      "kloak-webhook.kloak",
      "kloak-webhook.kloak.svc",
      "kloak-webhook.kloak.svc.cluster.local",
    ]);
  });

  test("CA: self-signed, CA with pathlen 0 and keyCertSign, 10 years, backdated 5 minutes", async () => {
    const ca = await createCa({ now });
    const info = parseCert(ca.certPem);
    expect(info.isCa).toBe(true);
    expect(info.notBefore.getTime()).toBe(now.getTime() - BACKDATE_MS);
    expect(info.notAfter.getTime()).toBe(now.getTime() + 3650 * DAY);
    expect(ca.notAfter.getTime()).toBe(info.notAfter.getTime());
    expect(keyMatchesCert(ca.certPem, ca.keyPem)).toBe(true);
    expect(ca.keyPem).toStartWith("-----BEGIN PRIVATE KEY-----\n");
    const x = new X509Certificate(ca.certPem);
    expect(x.verify(x.publicKey)).toBe(true);
    expect(x.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    // node:crypto does not expose pathlen or keyUsage bits; read them with openssl.
    const out = Bun.spawnSync(["openssl", "x509", "-noout", "-text"], { stdin: Buffer.from(ca.certPem) });
    const dump = out.stdout.toString();
    expect(dump).toMatch(/CA:TRUE, pathlen:0/);
    expect(dump).toMatch(/Certificate Sign/);
  });

  test("serving cert: SANs, CN, serverAuth EKU, not a CA, 1 year, P-256, chain verifies", async () => {
    const ca = await createCa({ now });
    const names = serviceDnsNames("kloak-webhook", "kloak");
    const s = await issueServing(ca, names, { now });
    const info = parseCert(s.certPem);
    expect(info.dnsNames).toEqual(names);
    expect(info.subject).toBe("CN=kloak-webhook");
    expect(info.isCa).toBe(false);
    expect(info.serverAuth).toBe(true);
    expect(info.notBefore.getTime()).toBe(now.getTime() - BACKDATE_MS);
    expect(info.notAfter.getTime()).toBe(now.getTime() + 365 * DAY);
    expect(s.notBefore.getTime()).toBe(info.notBefore.getTime());
    expect(s.notAfter.getTime()).toBe(info.notAfter.getTime());
    expect(new X509Certificate(s.certPem).publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(keyMatchesCert(s.certPem, s.keyPem)).toBe(true);
    expect(keyMatchesCert(s.certPem, ca.keyPem)).toBe(false);
    expect(await verifyChain(s.certPem, ca.certPem)).toBe(true);
    expect(await verifyChain(s.certPem, ca.certPem, { at: new Date(now.getTime() + 100 * DAY) })).toBe(true);
    expect(await verifyChain(s.certPem, ca.certPem, { at: new Date(now.getTime() + 400 * DAY) })).toBe(false);
    const dump = Bun.spawnSync(["openssl", "x509", "-noout", "-text"], { stdin: Buffer.from(s.certPem) }).stdout.toString();
    expect(dump).toMatch(/CA:FALSE/);
    expect(dump).toMatch(/TLS Web Server Authentication/);
  });

  test("openssl agrees the chain is valid for a TLS server", async () => {
    const ca = await createCa();
    const s = await issueServing(ca, ["localhost"]);
    const dir = `${process.env.TMPDIR ?? "/tmp"}/kloak-authority-${process.pid}`;
    await Bun.write(`${dir}/ca.pem`, ca.certPem);
    await Bun.write(`${dir}/leaf.pem`, s.certPem);
    const r = Bun.spawnSync(["openssl", "verify", "-CAfile", `${dir}/ca.pem`, "-purpose", "sslserver", `${dir}/leaf.pem`]);
    Bun.spawnSync(["rm", "-rf", dir]);
    expect(r.stdout.toString().trim()).toEndWith(": OK");
  });

  test("a cert from another CA does not verify; a bundle containing its CA does", async () => {
    const [a, b] = await Promise.all([createCa(), createCa()]);
    const s = await issueServing(b, ["x.example"]);
    expect(await verifyChain(s.certPem, a.certPem)).toBe(false);
    expect(await verifyChain(s.certPem, a.certPem + b.certPem)).toBe(true);
    expect(await verifyChain(s.certPem, "not a pem")).toBe(false);
    expect(await verifyChain("garbage", a.certPem)).toBe(false);
    // A leaf is not a CA even if it signed something with the right name.
    expect(await verifyChain(s.certPem, s.certPem)).toBe(false);
    expect(parseCert(a.certPem).subject).not.toBe(parseCert(b.certPem).subject);
  });

  test("issueServing refuses a CA key that does not belong to the CA certificate, without quoting it", async () => {
    const [a, b] = await Promise.all([createCa(), createCa()]);
    const err = await issueServing({ certPem: a.certPem, keyPem: b.keyPem }, ["x"]).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain("does not belong");
    expect((err as Error).message).not.toContain(b.keyPem.split("\n")[1]!);
    await expect(issueServing(a, [])).rejects.toThrow("at least one DNS name");
  });

  test("serving certs from one CA get distinct keys and serials", async () => {
    const ca = await createCa();
    const [s1, s2] = await Promise.all([issueServing(ca, ["a"]), issueServing(ca, ["a"])]);
    expect(s1.keyPem).not.toBe(s2.keyPem);
    expect(new X509Certificate(s1.certPem).serialNumber).not.toBe(new X509Certificate(s2.certPem).serialNumber);
  });

  test("parseCert: bundle reads the first certificate; garbage throws", async () => {
    const [a, b] = await Promise.all([createCa(), createCa()]);
    expect(splitPem(a.certPem + b.certPem)).toHaveLength(2);
    expect(parseCert(a.certPem + b.certPem).fingerprint).toBe(parseCert(a.certPem).fingerprint);
    expect(parseCert(a.certPem).fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(() => parseCert("nothing here")).toThrow("no PEM CERTIFICATE block");
    expect(() => parseCert("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")).toThrow("does not parse");
  });

  test("coversNames: exact and single-label wildcard matches only", () => {
    expect(coversNames(["a.b", "c"], ["c", "A.B"])).toBe(true);
    expect(coversNames(["a.b"], ["c"])).toBe(false);
    expect(coversNames(["*.ns.svc"], ["x.ns.svc"])).toBe(true);
    expect(coversNames(["*.ns.svc"], ["y.x.ns.svc"])).toBe(false);
    expect(coversNames(["*.ns.svc"], ["ns.svc"])).toBe(false);
  });
});
