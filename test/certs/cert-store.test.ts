import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import * as k8s from "@kubernetes/client-node";
import { parseCert, serviceDnsNames, splitPem, verifyChain } from "../../src/certs/authority.ts";
import { CertStore, type CertStoreOptions, type SecretApi } from "../../src/certs/cert-store.ts";
import type { Material } from "../../src/certs/material.ts";
import { startKubeApiServer } from "../support/kube-api-server.ts";

type Api = Awaited<ReturnType<typeof startKubeApiServer>>;

const NS = "kloak";
const NAME = "kloak-webhook-tls";
const DNS = serviceDnsNames("kloak-webhook", NS);
const DAY = 86_400_000;

let api: Api;
let core: k8s.CoreV1Api;
let logs: { level: string; msg: string; fields?: Record<string, unknown> }[];

beforeEach(async () => {
  api = await startKubeApiServer();
  core = api.kubeConfig().makeApiClient(k8s.CoreV1Api);
  logs = [];
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });
});
afterEach(async () => {
  // Whatever a test did, no log line may carry a private key.
  for (const l of logs) expect(JSON.stringify(l)).not.toContain("PRIVATE KEY");
  await api.stop();
});

function store(opts: Partial<CertStoreOptions> = {}, client: SecretApi = core): CertStore {
  return new CertStore(client, {
    namespace: NS,
    secretName: NAME,
    dnsNames: DNS,
    log: (level, msg, fields) => logs.push({ level, msg, fields }),
    ...opts,
  });
}

interface SecretObj {
  type?: string;
  data?: Record<string, string>;
  metadata: { resourceVersion?: string; name: string; namespace: string };
}
const stored = (): SecretObj => api.get("Secret", NS, NAME) as unknown as SecretObj;
const field = (s: SecretObj, k: string) => Buffer.from(s.data?.[k] ?? "", "base64").toString("utf8");
const writes = () => api.requests.filter((r) => r.path.includes("/secrets") && r.method !== "GET");
const caFp = (m: Material) => parseCert(m.caPem).fingerprint;
const future = (days: number) => () => new Date(Date.now() + days * DAY);

describe("CertStore", () => {
  test(
    "creates the Secret when absent, then reuses it without writing",
    async () => {
      const m = await store().ensure();
      const s = stored();
      expect(s.type).toBe("kubernetes.io/tls");
      expect(Object.keys(s.data ?? {}).sort()).toEqual(["ca.crt", "ca.key", "tls.crt", "tls.key"]);
      expect(field(s, "tls.crt")).toBe(m.certPem);
      expect(field(s, "tls.key")).toBe(m.keyPem);
      expect(field(s, "ca.crt")).toBe(m.caPem);
      expect(parseCert(m.certPem).dnsNames).toEqual(DNS);
      expect(await verifyChain(m.certPem, m.caPem)).toBe(true);
      expect(m.notAfter.getTime()).toBe(parseCert(m.certPem).notAfter.getTime());
      expect(writes()).toHaveLength(1);

      const again = await store().ensure();
      expect(again).toEqual(m);
      expect(writes()).toHaveLength(1);
    },
    30_000,
  );

  test(
    "five agents racing on an empty cluster end with one CA; exactly one create succeeded",
    async () => {
      // Hold every first read until all five have been answered "no Secret", so all five really try to create.
      let release!: () => void;
      const allRead = new Promise<void>((r) => (release = r));
      let firstReads = 0;
      let answered = 0;
      const barrier: SecretApi = {
        readNamespacedSecret: async (p) => {
          const pending = core.readNamespacedSecret(p);
          if (firstReads < 5) {
            firstReads++;
            await pending.catch(() => {});
            if (++answered === 5) release();
            await allRead;
          }
          return pending;
        },
        createNamespacedSecret: (p) => core.createNamespacedSecret(p),
        replaceNamespacedSecret: (p) => core.replaceNamespacedSecret(p),
      };
      const results = await Promise.all(Array.from({ length: 5 }, () => store({}, barrier).ensure()));
      const fps = new Set(results.map(caFp));
      expect(fps.size).toBe(1);
      expect(new Set(results.map((m) => m.certPem)).size).toBe(1);
      expect(field(stored(), "ca.crt")).toBe(results[0]!.caPem);
      const creates = api.requests.filter((r) => r.method === "POST" && r.path.endsWith("/secrets"));
      expect(creates.length).toBe(5);
      expect(logs.filter((l) => l.msg.startsWith("created webhook TLS Secret")).length).toBe(1);
      expect(logs.filter((l) => l.msg.startsWith("another agent created")).length).toBe(4);
      expect(writes().filter((r) => r.method === "PUT")).toHaveLength(0);
    },
    30_000,
  );

  test(
    "a serving certificate near expiry is reissued from the same CA",
    async () => {
      const first = await store().ensure();
      // 300 of 365 days gone: less than a third of the lifetime left.
      const later = future(300);
      const renewed = await store({ now: later }).ensure();
      expect(renewed.certPem).not.toBe(first.certPem);
      expect(renewed.caPem).toBe(first.caPem);
      expect(await verifyChain(renewed.certPem, first.caPem)).toBe(true);
      const info = parseCert(renewed.certPem);
      expect(Math.abs(info.notBefore.getTime() - (later().getTime() - 5 * 60_000))).toBeLessThan(60_000);
      expect(field(stored(), "tls.crt")).toBe(renewed.certPem);
      expect(writes().map((w) => w.method)).toEqual(["POST", "PUT"]);
      expect(logs.some((l) => l.msg.startsWith("renewed the webhook serving certificate"))).toBe(true);

      // 100 days into the renewed certificate (73% left) nothing is due.
      const s2 = await store({ now: future(400) }).ensure();
      expect(s2.certPem).toBe(renewed.certPem);
      expect(writes()).toHaveLength(2);
    },
    30_000,
  );

  test(
    "a CA near expiry is rolled over: ca.crt = new + old, leaf from the new CA",
    async () => {
      const first = await store().ensure();
      const rolled = await store({ now: future(7 * 365) }).ensure();
      const cas = splitPem(rolled.caPem);
      expect(cas).toHaveLength(2);
      expect(cas[1]).toBe(first.caPem);
      expect(caFp(rolled)).not.toBe(caFp(first));
      expect(await verifyChain(rolled.certPem, cas[0]!)).toBe(true);
      // Clients given the bundle still trust agents serving the old leaf.
      expect(await verifyChain(first.certPem, rolled.caPem)).toBe(true);
      expect(field(stored(), "ca.crt")).toBe(rolled.caPem);
      expect(logs.some((l) => l.msg.startsWith("rolled the webhook CA over"))).toBe(true);
    },
    30_000,
  );

  test(
    "a DNS name the certificate lacks triggers a reissue from the same CA",
    async () => {
      const first = await store().ensure();
      const wanted = [...DNS, "kloak-webhook.kloak.svc.example.internal"];
      const m = await store({ dnsNames: wanted }).ensure();
      expect(m.caPem).toBe(first.caPem);
      expect(m.certPem).not.toBe(first.certPem);
      expect(parseCert(m.certPem).dnsNames).toEqual(wanted);
      // The old names are all still covered, so an agent with the old configuration is content.
      const old = await store().ensure();
      expect(old.certPem).toBe(m.certPem);
      expect(writes()).toHaveLength(2);
    },
    30_000,
  );

  test(
    "malformed serving cert: replaced from the same CA via update, logged as malformed",
    async () => {
      const first = await store().ensure();
      const s = api.get("Secret", NS, NAME)!;
      api.update({ ...s, data: { ...(s.data as Record<string, string>), "tls.crt": Buffer.from("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").toString("base64") } });
      const m = await store().ensure();
      expect(m.caPem).toBe(first.caPem);
      expect(await verifyChain(m.certPem, first.caPem)).toBe(true);
      const warn = logs.find((l) => l.level === "warn" && l.msg.includes("malformed"));
      expect(warn?.msg).toContain("update with resourceVersion");
      expect(String(warn?.fields?.problems)).toContain("tls.crt");
      expect(api.requests.some((r) => r.method === "DELETE")).toBe(false);
      const puts = writes().filter((w) => w.method === "PUT");
      expect(puts).toHaveLength(1);
    },
    30_000,
  );

  test(
    "malformed CA (ca.key missing, wrong type): new CA, type and extra keys kept, nothing deleted",
    async () => {
      api.create({
        apiVersion: "v1",
        kind: "Secret",
        metadata: { name: NAME, namespace: NS },
        type: "Opaque",
        data: { "ca.crt": Buffer.from("not a pem").toString("base64"), note: Buffer.from("keep me").toString("base64") },
      });
      const m = await store().ensure();
      expect(await verifyChain(m.certPem, m.caPem)).toBe(true);
      const s = stored();
      expect(s.type).toBe("Opaque");
      expect(field(s, "note")).toBe("keep me");
      expect(field(s, "ca.crt")).toBe(m.caPem);
      expect(splitPem(m.caPem)).toHaveLength(1);
      expect(logs.some((l) => l.level === "warn" && l.msg.includes("malformed") && l.msg.includes("new CA"))).toBe(true);
      expect(logs.some((l) => l.msg.includes("keeping its type"))).toBe(true);
      expect(api.requests.some((r) => r.method === "DELETE")).toBe(false);
    },
    30_000,
  );

  test(
    "conflict: another agent rotates between our read and our write; we re-read and adopt theirs",
    async () => {
      await store().ensure();
      const later = future(300);
      const other = store({ now: later });
      let theirs: Material | undefined;
      const racing: SecretApi = {
        readNamespacedSecret: (p) => core.readNamespacedSecret(p),
        createNamespacedSecret: (p) => core.createNamespacedSecret(p),
        replaceNamespacedSecret: async (p) => {
          // Lands after our read: our resourceVersion is now stale.
          theirs ??= await other.ensure();
          return core.replaceNamespacedSecret(p);
        },
      };
      const ours = await store({ now: later }, racing).ensure();
      expect(theirs).toBeDefined();
      expect(ours).toEqual(theirs!);
      expect(field(stored(), "tls.crt")).toBe(theirs!.certPem);
      // Their PUT succeeded, ours was refused; nothing else was written.
      expect(writes().map((w) => w.method)).toEqual(["POST", "PUT", "PUT"]);
      expect(logs.some((l) => l.msg.includes("changed while we were rotating"))).toBe(true);
    },
    30_000,
  );

  test(
    "API errors other than races surface with the Secret's name and the status",
    async () => {
      const failing: SecretApi = {
        readNamespacedSecret: () => Promise.reject(new k8s.ApiException(403, "forbidden", JSON.stringify({ message: "secrets is forbidden" }), {})),
        createNamespacedSecret: (p) => core.createNamespacedSecret(p),
        replaceNamespacedSecret: (p) => core.replaceNamespacedSecret(p),
      };
      await expect(store({}, failing).ensure()).rejects.toThrow("reading Secret kloak/kloak-webhook-tls: HTTP 403: secrets is forbidden");
    },
    30_000,
  );
});
