/**
 * End to end on this kernel: the real `kloak agent` process against the test
 * API server. A fake pod whose "container" is a real process in a real
 * cgroup (made here, shaped like the kubelet's) is enabled and attached
 * through the pod watcher; its TLS write of a placeholder reaches a real TLS
 * server with the real value, and a rotated value is live without restarts.
 * The webhook is called over HTTPS verified against the CA the agent created.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmdirSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { applyPatch, type Operation } from "fast-json-patch";
import { parseAllDocuments } from "yaml";
import { cgroupProcesses, cgroupV2Root } from "../../src/node/cgroups.ts";
import { policyFor, startKubeApiServer, type KubeApiServer, type KubeObject } from "../support/kube-api-server.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { buildHttpRequest, pythonClientArgs, pythonPath } from "../support/clients.ts";
import { fakeSecret, fakeSecretFitting, occurrences, ROOT, spawnKloak } from "../support/kloak.ts";

const NODE = "node-e2e";
const CID = randomBytes(32).toString("hex");
const b64 = (s: string) => Buffer.from(s).toString("base64");
const unb64 = (s: string) => Buffer.from(s, "base64").toString("latin1");

let api: KubeApiServer;
let tls: TlsServer;
let certs: TestCerts;
let agent: ReturnType<typeof spawnKloak>;
let agentLog = "";
let opsPort = 0;
let webhookPort = 0;
let base = "";
let leaf = "";
let rel: string[] = [];
const tmp = mkdtempSync(join(tmpdir(), "kloak-agent-e2e-"));
const token = fakeSecret(40);
let python = "";

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log tail:\n${agentLog.split("\n").slice(-15).join("\n")}`);
    await Bun.sleep(50);
  }
}

async function metrics(): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${opsPort}/metrics`);
  return r.text();
}

function metric(text: string, name: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{") && l.split(" ")[0] === name);
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

async function freePort(): Promise<number> {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
  const p = s.port!;
  s.stop(true);
  return p;
}

/** The container's main process: runs the Python TLS client from inside the pod's cgroup. */
async function runInContainer(request: string, to: TlsServer = tls, host = "127.0.0.2"): Promise<{ code: number; stdout: string; stderr: string }> {
  const reqFile = join(tmp, `req-${Date.now()}`);
  writeFileSync(reqFile, request);
  const argv = pythonClientArgs({ port: to.port, host, caFile: certs.caFile, requestFile: reqFile });
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  // Join the cgroup, then exec: the agent's BPF sees an exec inside a pod cgroup and holds it until attached.
  const p = Bun.spawn(["sh", "-c", `echo $$ > ${q(join(leaf, "cgroup.procs"))} && exec ${argv.map(q).join(" ")}`], { stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

beforeAll(async () => {
  python = pythonPath();
  certs = await testCerts();
  tls = await startTlsServer({ host: "127.0.0.2", mode: "http" });
  // The agent may do exactly what deploy/base/rbac.yaml grants ServiceAccount kloak/kloak.
  const rbac = parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8")).map((d) => d.toJS() as KubeObject);
  api = await startKubeApiServer({ bookmarkIntervalMs: 1000, rbac: policyFor(rbac, "kloak", "kloak") });
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
  // Opted in: the only kind of namespace whose pods kloak's webhook sees.
  api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "shop", labels: { "getkloak.io/enabled": "true" } } });
  // deploy/ ships no webhook configurations: the agent registers them, owned by its ClusterRole.
  for (const doc of parseAllDocuments(readFileSync(join(ROOT, "deploy/base/rbac.yaml"), "utf8"))) {
    const o = doc.toJS() as KubeObject;
    if (o.kind === "ClusterRole") api.create(o);
  }
  api.create({
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: "api", namespace: "shop", labels: { "getkloak.io/enabled": "true" }, annotations: { "getkloak.io/hosts": "127.0.0.2" } },
    type: "Opaque",
    data: { token: b64(token) },
  });

  opsPort = await freePort();
  webhookPort = await freePort();
  base = join(cgroupV2Root(), `kloak-agent-e2e-${process.pid}`);
  mkdirSync(base, { recursive: true });
  agent = spawnKloak(
    [
      "agent",
      "--kubeconfig", api.kubeconfigPath,
      "--node-name", NODE,
      "--pod-name", "kloak-e2e",
      "--ops-port", String(opsPort),
      "--webhook-port", String(webhookPort),
      "--bind-address", "127.0.0.1",
      "--cgroup-root", base,
      "--lease-duration", "5",
      "--log-level", "debug",
    ],
    { env: { KLOAK_NODE_NAME: undefined } },
  );
  void (async () => {
    for await (const chunk of agent.stderr as ReadableStream<Uint8Array>) agentLog += new TextDecoder().decode(chunk);
  })();
  await waitFor("readyz", async () => {
    if (agent.exitCode !== null) throw new Error(`agent exited ${agent.exitCode}:\n${agentLog}`);
    return (await fetch(`http://127.0.0.1:${opsPort}/readyz`).catch(() => undefined))?.status === 200;
  }, 60_000);
}, 90_000);

afterAll(async () => {
  agent?.kill("SIGTERM");
  await agent?.exited;
  await tls?.close();
  await api?.stop();
  for (let i = 0; leaf && i < 100 && cgroupProcesses(leaf).length; i++) await Bun.sleep(20);
  for (const dir of [...rel.map((_, i) => join(base, ...rel.slice(0, rel.length - i))), base]) {
    try {
      rmdirSync(dir);
    } catch {}
  }
}, 30_000);

describe("kloak agent end to end", () => {
  test("shadow written, caBundle patched with the shared CA, webhook verified against it swaps the pod's reference", async () => {
    const shadow = await waitFor("shadow", () => api.get("Secret", "shop", "api-kloak") as (KubeObject & { data: Record<string, string> }) | undefined);
    const ph = unb64(shadow.data.token!);
    expect(ph.length).toBe(token.length);
    const tlsSecret = api.get("Secret", "kloak", "kloak-webhook-tls") as KubeObject & { data: Record<string, string> };
    const ca = unb64(tlsSecret.data["ca.crt"]!);
    expect(ca).toContain("BEGIN CERTIFICATE");
    const role = api.get("ClusterRole", undefined, "kloak")!;
    for (const kind of ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]) {
      const cfg = await waitFor(`${kind} registered with caBundle`, () => {
        const c = api.get(kind, undefined, "kloak") as (KubeObject & { webhooks: { clientConfig: { caBundle?: string } }[] }) | undefined;
        return c?.webhooks[0]!.clientConfig.caBundle ? c : undefined;
      });
      expect(unb64(cfg.webhooks[0]!.clientConfig.caBundle!)).toBe(ca);
      // Deleting the install (the ClusterRole) deletes them: uninstall never leaves them behind.
      expect(cfg.metadata.ownerReferences).toEqual([
        { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", name: "kloak", uid: role.metadata.uid! },
      ]);
    }
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { generateName: "web-", namespace: "shop" },
      spec: { containers: [{ name: "app", image: "app", env: [{ name: "TOKEN", valueFrom: { secretKeyRef: { name: "api", key: "token" } } }] }] },
    };
    const review = {
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      request: {
        uid: randomUUID(),
        kind: { group: "", version: "v1", kind: "Pod" },
        resource: { group: "", version: "v1", resource: "pods" },
        namespace: "shop",
        operation: "CREATE",
        userInfo: { username: "system:serviceaccount:kube-system:replicaset-controller" },
        object: pod,
        oldObject: null,
        dryRun: false,
      },
    };
    // Verified against the agent's own CA, for the Service's DNS name, reached on 127.0.0.1.
    const res = await fetch(`https://127.0.0.1:${webhookPort}/mutate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(review),
      // The certificate names the Service (kloak-webhook.kloak.svc), as the API server calls it.
      tls: { ca, serverName: "kloak-webhook.kloak.svc" },
    } as RequestInit);
    expect(res.status).toBe(200);
    const out = (await res.json()) as { response: { allowed: boolean; patch: string; patchType: string; uid: string } };
    expect(out.response.uid).toBe(review.request.uid);
    expect(out.response.allowed).toBe(true);
    expect(out.response.patchType).toBe("JSONPatch");
    const patched = applyPatch(structuredClone(pod), JSON.parse(unb64(out.response.patch)) as Operation[], true).newDocument as typeof pod & {
      metadata: { annotations: Record<string, string> };
    };
    expect(patched.spec.containers[0]!.env[0]!.valueFrom.secretKeyRef.name).toBe("api-kloak");
    expect(patched.metadata.annotations["getkloak.io/enabled"]).toBe("true");
    // A client that does not trust the agent's CA cannot talk to it.
    await expect(fetch(`https://127.0.0.1:${webhookPort}/mutate`, { method: "POST", body: "{}" })).rejects.toThrow();
    // Nor one that trusts it but expects another name.
    await expect(
      fetch(`https://127.0.0.1:${webhookPort}/mutate`, { method: "POST", body: "{}", tls: { ca, serverName: "evil.kloak.svc" } } as RequestInit),
    ).rejects.toThrow();
  }, 60_000);

  test("a cache miss asks the API server: a plain Secret is allowed, one that does not exist yet denies the pod", async () => {
    api.create({ apiVersion: "v1", kind: "Secret", metadata: { name: "plain", namespace: "shop" }, type: "Opaque", data: { k: b64("not-protected") } });
    const ca = unb64((api.get("Secret", "kloak", "kloak-webhook-tls") as KubeObject & { data: Record<string, string> }).data["ca.crt"]!);
    const review = async (secretName: string) => {
      const res = await fetch(`https://127.0.0.1:${webhookPort}/mutate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          apiVersion: "admission.k8s.io/v1",
          kind: "AdmissionReview",
          request: {
            uid: randomUUID(),
            kind: { group: "", version: "v1", kind: "Pod" },
            resource: { group: "", version: "v1", resource: "pods" },
            namespace: "shop",
            operation: "CREATE",
            userInfo: {},
            object: { apiVersion: "v1", kind: "Pod", metadata: { generateName: "w-", namespace: "shop" }, spec: { containers: [{ name: "c", image: "x", envFrom: [{ secretRef: { name: secretName } }] }] } },
          },
        }),
        tls: { ca, serverName: "kloak-webhook.kloak.svc" },
      } as RequestInit);
      return ((await res.json()) as { response: { allowed: boolean; status?: { message: string } } }).response;
    };
    expect((await review("plain")).allowed).toBe(true);
    const denied = await review("later");
    expect(denied.allowed).toBe(false);
    expect(denied.status!.message).toContain('secret "shop/later" does not exist yet');
  });

  test("a wiped caBundle, an edited selector and a deleted configuration are put back within seconds", async () => {
    type Cfg = KubeObject & { webhooks: { clientConfig: { caBundle?: string }; namespaceSelector?: unknown; failurePolicy?: string }[] };
    const get = (kind: string) => api.get(kind, undefined, "kloak") as Cfg | undefined;
    const m = await waitFor("mutating registered", () => get("MutatingWebhookConfiguration"));
    const want = structuredClone(m.webhooks);
    // What `kubectl replace` / Argo CD with the old manifest does: no caBundle, cluster-wide selector.
    const wiped = structuredClone(m);
    delete wiped.webhooks[0]!.clientConfig.caBundle;
    wiped.webhooks[0]!.namespaceSelector = {};
    api.update(wiped);
    expect(get("MutatingWebhookConfiguration")!.webhooks[0]!.clientConfig.caBundle).toBeUndefined();
    const t0 = Date.now();
    await waitFor("caBundle restored", () => get("MutatingWebhookConfiguration")!.webhooks[0]!.clientConfig.caBundle, 15_000);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(get("MutatingWebhookConfiguration")!.webhooks).toEqual(want);
    // Deleted outright: registered again.
    api.delete("ValidatingWebhookConfiguration", undefined, "kloak");
    const v = await waitFor("validating re-registered", () => get("ValidatingWebhookConfiguration"), 15_000);
    expect(v.webhooks[0]!.clientConfig.caBundle).toBe(want[0]!.clientConfig.caBundle);
    expect(agentLog).toContain("webhook configuration differed from kloak's; put back");
  }, 40_000);

  test("a pod on this node is attached through the pod watcher; its container's TLS write carries the real value; rotation is live", async () => {
    const shadow = api.get("Secret", "shop", "api-kloak") as KubeObject & { data: Record<string, string> };
    const ph = unb64(shadow.data.token!);
    // The pod as the webhook left it: references the shadow, annotated enabled. Pending until its container "starts".
    const pod = api.create({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "web-0", namespace: "shop", annotations: { "getkloak.io/enabled": "true" } },
      spec: { nodeName: NODE, containers: [{ name: "app", image: "app", env: [{ name: "TOKEN", valueFrom: { secretKeyRef: { name: "api-kloak", key: "token" } } }] }] },
      status: { phase: "Pending", qosClass: "BestEffort" },
    });
    const uid = pod.metadata.uid!;
    rel = ["kubepods.slice", "kubepods-besteffort.slice", `kubepods-besteffort-pod${uid.replaceAll("-", "_")}.slice`, `cri-containerd-${CID}.scope`];
    leaf = join(base, ...rel);
    mkdirSync(leaf, { recursive: true });
    const cur = api.get("Pod", "shop", "web-0")!;
    api.update({
      ...cur,
      status: {
        phase: "Running",
        qosClass: "BestEffort",
        containerStatuses: [{ name: "app", containerID: `containerd://${CID}`, ready: true, state: { running: { startedAt: new Date().toISOString() } } }],
      },
    });
    await waitFor("cgroup registered", async () => metric(await metrics(), 'kloak_bpf_map_entries{map="kloak_cgroups"}') === 1);
    expect(metric(await metrics(), "kloak_pods_tracked")).toBe(1);

    const request = buildHttpRequest({ host: "127.0.0.2", headers: { Authorization: `Bearer ${ph}` } }).toString("latin1");
    const before = tls.received().length;
    const r = await runInContainer(request);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("APP_UNCHANGED=yes"); // the app's buffer holds the placeholder again after the write
    const got = tls.received().subarray(before);
    expect(occurrences(got, `Bearer ${token}`)).toBe(1);
    expect(occurrences(got, ph)).toBe(0);

    // Rotation: same length and Huffman code length, so the placeholder stays; the next write
    // carries the new value, no restart.
    const rotated = fakeSecretFitting(ph);
    const orig = api.get("Secret", "shop", "api")!;
    api.update({ ...orig, data: { token: b64(rotated) } });
    await waitFor("rotated value loaded", () => agentLog.includes('"secret value or hosts updated"'));
    expect(unb64((api.get("Secret", "shop", "api-kloak") as KubeObject & { data: Record<string, string> }).data.token!)).toBe(ph);
    const before2 = tls.received().length;
    const r2 = await runInContainer(request);
    expect(r2.code).toBe(0);
    const got2 = tls.received().subarray(before2);
    expect(occurrences(got2, `Bearer ${rotated}`)).toBe(1);
    expect(occurrences(got2, token)).toBe(0);

    const m = await metrics();
    for (const name of [
      "kloak_build_info",
      "kloak_substitutions_total",
      "kloak_substitutions_refused_total",
      "kloak_events_lost_total",
      "kloak_syscall_runs_skipped_total",
      "kloak_syscall_runs_recovered_total",
      "kloak_syscall_backup_runs_skipped_total",
      "kloak_attached_processes",
      "kloak_uprobe_links",
      "kloak_uprobe_attach_errors_total",
      "kloak_bpf_map_entries",
      "kloak_bpf_map_capacity",
      "kloak_secrets_tracked",
      "kloak_pods_tracked",
      "kloak_webhook_requests_total",
      "kloak_webhook_request_duration_seconds_bucket",
      "kloak_webhook_cert_expiry_timestamp_seconds",
    ])
      expect({ name, present: m.includes(name) }).toEqual({ name, present: true });
    expect(metric(m, "kloak_substitutions_total")).toBeGreaterThanOrEqual(2);
    expect(metric(m, "kloak_webhook_cert_expiry_timestamp_seconds")).toBeGreaterThan(Date.now() / 1000);

    // A destination outside getkloak.io/hosts gets the placeholder, and the pod an Event saying why.
    const other = await startTlsServer({ host: "127.0.0.3", mode: "http" });
    try {
      const r4 = await runInContainer(request, other, "127.0.0.3");
      expect(r4.code).toBe(0);
      expect(occurrences(other.received(), ph)).toBe(1);
      expect(occurrences(other.received(), rotated)).toBe(0);
    } finally {
      await other.close();
    }
    type Ev = { reason: string; message: string; involvedObject: { kind: string; name: string } };
    const refused = await waitFor("refusal Event on the pod", () =>
      (api.events() as unknown as Ev[]).find((e) => e.reason === "KloakSubstitutionRefused" && e.involvedObject.name === "web-0"),
    );
    expect(refused.involvedObject.kind).toBe("Pod");
    expect(refused.message).toMatch(/secret api key token .*127\.0\.0\.3:\d+: destination_not_allowed/);
    expect(refused.message.includes(rotated)).toBe(false);

    // TLS kloak cannot hook in the pod (a ClientHello no probed library made, from a process that
    // links none): named in an Event on the pod and counted.
    const hello = Bun.spawn(
      [
        "sh",
        "-c",
        `echo $$ > '${join(leaf, "cgroup.procs")}' && exec ${python} -c 'import socket; s = socket.create_connection(("127.0.0.2", ${tls.port})); s.sendall(bytes([0x16, 3, 1, 0, 4, 1, 0, 0, 0])); s.close()'`,
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    expect(await hello.exited).toBe(0);
    const unhookable = await waitFor("unhookable Event on the pod", () =>
      (api.events() as unknown as Ev[]).find((e) => e.reason === "KloakTlsUnhookable" && e.involvedObject.name === "web-0"),
    );
    expect(unhookable.message).toMatch(/does TLS to 127\.0\.0\.2:\d+ through TLS linked into the program .*\(static_tls\)/);
    expect(metric(await metrics(), 'kloak_tls_unhookable_total{reason="static_tls"}')).toBe(1);

    // The pod goes: everything of it leaves the maps.
    api.delete("Pod", "shop", "web-0");
    await waitFor("cgroup unregistered", async () => metric(await metrics(), 'kloak_bpf_map_entries{map="kloak_cgroups"}') === 0);
    const before3 = tls.received().length;
    const r3 = await runInContainer(request);
    expect(r3.code).toBe(0);
    expect(occurrences(tls.received().subarray(before3), ph)).toBe(1);
  }, 90_000);

  test("the agent never needed more than deploy/base/rbac.yaml grants", () => {
    expect(api.forbidden).toEqual([]);
  });

  test("the agent's logs are JSON lines and never hold a secret value", () => {
    const lines = agentLog.split("\n").filter((l) => l.trim() !== "");
    expect(lines.length).toBeGreaterThan(5);
    for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
    expect(agentLog.includes(token)).toBe(false);
  });
});
