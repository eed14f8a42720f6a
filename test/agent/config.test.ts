import { describe, expect, test } from "bun:test";
import { parseAgentConfig, webhookRegistration, type AgentConfig } from "../../src/agent/config.ts";
import { UsageError } from "../../src/errors.ts";
import { runKloak } from "../support/kloak.ts";

const host = () => "node-a";
const base = { KLOAK_NODE_NAME: "node-a" };

function fails(argv: string[], env: Record<string, string>, ...want: RegExp[]): string {
  let msg = "";
  try {
    parseAgentConfig(argv, env, host);
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    msg = (e as Error).message;
  }
  expect(msg).not.toBe("");
  expect(msg).not.toContain("\n");
  for (const w of want) expect(msg).toMatch(w);
  return msg;
}

describe("kloak agent configuration", () => {
  test("defaults, env and flags (the flag wins)", () => {
    const c = parseAgentConfig(["--ops-port", "9191"], { ...base, KLOAK_OPS_PORT: "9000", KLOAK_DNS_SERVERS: "10.0.0.10, 10.0.0.11:5353" }, host);
    if (c === "help") throw new Error("help");
    expect(c.nodeName).toBe("node-a");
    expect(c.opsPort).toBe(9191);
    expect(c.webhookPort).toBe(443);
    expect(c.certManagerCa).toBe("kloak-webhook-ca");
    expect(c.namespace).toBe("kloak");
    expect(c.podName).toBe("node-a");
    expect(c.certMode).toBe("self");
    expect(c.dnsServers).toEqual(["10.0.0.10", "10.0.0.11:5353"]);
    expect(c.scanCap).toBe(65536);
    expect(c.leaseDurationSeconds).toBe(15);
    expect(c.holds).toBe("ptrace");
    const signals = parseAgentConfig([], { ...base, KLOAK_HOLDS: "signals" }, host);
    expect(signals !== "help" && signals.holds).toBe("signals");
  });

  test("each bad value is one line naming the flag, its variable and the value", () => {
    fails([], {}, /--node-name \(KLOAK_NODE_NAME\)/, /is required/);
    fails(["--webhook-port", "70000"], base, /--webhook-port \(KLOAK_WEBHOOK_PORT\) "70000"/, /1 to 65535/);
    fails([], { ...base, KLOAK_OPS_PORT: "http" }, /--ops-port \(KLOAK_OPS_PORT\) "http" \[from KLOAK_OPS_PORT\]/, /port number/);
    fails(["--cert-mode", "vault"], base, /--cert-mode/, /self, cert-manager/);
    fails(["--namespace", "Kloak_NS"], base, /--namespace/, /namespace name/);
    fails(["--bind-address", "localhost"], base, /--bind-address/, /not an IP/);
    fails(["--lease-duration", "2"], base, /--lease-duration/, /5 to 300/);
    fails(["--scan-cap", "lots"], base, /--scan-cap/, /not a size/);
    fails(["--log-level", "loud"], base, /--log-level/);
    fails(["--holds", "freeze"], base, /--holds \(KLOAK_HOLDS\) "freeze"/, /ptrace, signals/);
    fails(["--dns-server", "dns.example"], base, /--dns-server/, /IP\[:PORT\]/);
    fails(["--cert-mode", "cert-manager"], base, /--cert-dir/);
    fails(["--cert-manager-ca", "Kloak CA"], base, /--cert-manager-ca \(KLOAK_CERT_MANAGER_CA\) "Kloak CA"/, /Certificate name/);
    fails(["--webhook-port", "9090"], base, /different ports/);
    fails(["--no-such-flag"], base, /no-such-flag/, /kloak agent --help/);
  });

  test("the CLI exits 2 with the one line; a missing kubeconfig file too", async () => {
    const r = await runKloak(["agent", "--webhook-port", "0x10"], { env: base });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("--webhook-port");
    const k = await runKloak(["agent", "--kubeconfig", "/nonexistent/kubeconfig"], { env: base });
    expect(k.code).toBe(2);
    expect(k.stderr).toContain("no such file");
    const h = await runKloak(["agent", "--help"]);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain("KLOAK_NODE_NAME");
  }, 30_000);

  test("cert-manager mode registers the webhooks to trust the CA Certificate, not the serving one", () => {
    const parse = (argv: string[], env: Record<string, string> = {}) => {
      const c = parseAgentConfig(argv, { ...base, ...env }, host);
      if (c === "help") throw new Error("help");
      return c as AgentConfig;
    };
    const cm = ["--cert-mode", "cert-manager", "--cert-dir", "/etc/kloak/webhook-tls"];
    expect(webhookRegistration(parse(cm)).ca).toEqual({ mode: "cert-manager", certificate: "kloak/kloak-webhook-ca" });
    expect(webhookRegistration(parse(cm, { KLOAK_NAMESPACE: "sec", KLOAK_CERT_MANAGER_CA: "my-ca" })).ca).toEqual({ mode: "cert-manager", certificate: "sec/my-ca" });
    expect(webhookRegistration(parse([]))).toEqual({ name: "kloak", namespace: "kloak", service: "kloak-webhook", clusterRole: "kloak", ca: { mode: "self" } });
  });
});
