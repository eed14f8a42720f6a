/**
 * Agent memory against cluster size: does RSS follow what is enabled, or the
 * cluster? `bun bench/agent-scale.ts` (root: the real agent loads its eBPF
 * object). Each case gets a fresh test API server (test/support) and a fresh
 * real `kloak agent`; once it is ready and, where Secrets are enabled, its
 * Lease holder has written every shadow and loaded every key, it settles and
 * its VmRSS is sampled (median of 10 samples, 0.5 s apart).
 *
 *   idle          0 Secrets
 *   50k/1k        50,000 Secrets in 50 opted-in namespaces, 1,000 of them enabled
 *                 (one 32-byte key); every Secret carries a kubectl
 *                 last-applied-configuration annotation holding its data, as
 *                 `kubectl apply` leaves it
 *   200x400KB     200 Secrets of one 400 KB key (plus last-applied), none enabled
 *   200x400KB-on  the same, enabled with getkloak.io/keys=token (a 32-byte key
 *                 protected, the 400 KB key copied into the shadow as it is)
 *
 * Only counts and sizes are printed, never a value (all values are random).
 */
import { mkdirSync, rmdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { cgroupV2Root } from "../src/node/cgroups.ts";
import { startKubeApiServer, type KubeApiServer, type KubeObject } from "../test/support/kube-api-server.ts";
import { spawnKloak } from "../test/support/kloak.ts";
import { freePort } from "./agent.ts";
import { memStatus } from "./procfs.ts";

const MB = 1024 * 1024;
const b64 = (b: Buffer) => b.toString("base64");

function secret(ns: string, name: string, data: Record<string, Buffer>, labels: Record<string, string> = {}, annotations: Record<string, string> = {}): KubeObject {
  const enc = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)]));
  const lastApplied = JSON.stringify({ apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns, labels, annotations }, data: enc });
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name, namespace: ns, labels, annotations: { ...annotations, "kubectl.kubernetes.io/last-applied-configuration": lastApplied } },
    type: "Opaque",
    data: enc,
  };
}

async function metric(port: number, name: string): Promise<number | undefined> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text()).catch(() => "");
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

interface Case {
  name: string;
  fill(api: KubeApiServer): { total: number; enabled: number };
}

const CASES: Case[] = [
  { name: "idle", fill: () => ({ total: 0, enabled: 0 }) },
  {
    name: "50k Secrets, 1k enabled",
    fill(api) {
      let n = 0;
      for (let i = 0; i < 50; i++) {
        const ns = `ns-${i}`;
        for (let j = 0; j < 1000; j++, n++) {
          const enabled = n % 50 === 0;
          api.create(secret(ns, `s-${j}`, { token: randomBytes(24) }, enabled ? { "getkloak.io/enabled": "true" } : {}));
        }
      }
      return { total: n, enabled: n / 50 };
    },
  },
  {
    name: "200 Secrets of 400 KB, none enabled",
    fill(api) {
      for (let j = 0; j < 200; j++) api.create(secret("ns-0", `big-${j}`, { blob: randomBytes(400 * 1024) }));
      return { total: 200, enabled: 0 };
    },
  },
  {
    name: "200 Secrets of 400 KB, enabled (getkloak.io/keys=token)",
    fill(api) {
      for (let j = 0; j < 200; j++)
        api.create(secret("ns-0", `big-${j}`, { blob: randomBytes(400 * 1024), token: randomBytes(24) }, { "getkloak.io/enabled": "true" }, { "getkloak.io/keys": "token" }));
      return { total: 200, enabled: 200 };
    },
  },
];

async function run(c: Case): Promise<{ rss: number; hwm: number; readyS: number }> {
  const api = await startKubeApiServer({ bookmarkIntervalMs: 60_000 });
  const cg = join(cgroupV2Root(), `kloak-scale-${process.pid}`);
  mkdirSync(cg, { recursive: true });
  let agent: ReturnType<typeof spawnKloak> | undefined;
  try {
    api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: "kloak" } });
    for (let i = 0; i < 50; i++) api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: `ns-${i}`, labels: { "getkloak.io/enabled": "true" } } });
    const { total, enabled } = c.fill(api);
    const ops = await freePort();
    const t0 = Date.now();
    agent = spawnKloak(
      ["agent", "--kubeconfig", api.kubeconfigPath, "--node-name", "scale", "--pod-name", "scale", "--ops-port", String(ops), "--webhook-port", String(await freePort()), "--bind-address", "127.0.0.1", "--cgroup-root", cg, "--log-level", "warn"],
      { env: { KLOAK_NODE_NAME: undefined } },
    );
    const p = agent;
    void new Response(p.stderr).text();
    for (;;) {
      if (p.exitCode !== null) throw new Error(`agent exited ${p.exitCode}`);
      const ok = (await fetch(`http://127.0.0.1:${ops}/readyz`).catch(() => undefined))?.status === 200;
      if (ok && (enabled === 0 || (await metric(ops, "kloak_secrets_tracked")) === enabled)) break;
      if (Date.now() - t0 > 600_000) throw new Error("agent not ready/loaded within 600 s");
      await Bun.sleep(250);
    }
    const readyS = (Date.now() - t0) / 1000;
    await Bun.sleep(10_000);
    const rss: number[] = [];
    let hwm = 0;
    for (let i = 0; i < 10; i++) {
      const m = memStatus(p.pid);
      if (m) {
        rss.push(m.rss);
        hwm = m.hwm;
      }
      await Bun.sleep(500);
    }
    rss.sort((a, b) => a - b);
    const writes = await metric(ops, "kloak_shadow_writes_total");
    const out = { rss: rss[Math.floor(rss.length / 2)]!, hwm, readyS };
    console.log(`${c.name.padEnd(58)} Secrets ${String(total).padStart(6)} enabled ${String(enabled).padStart(5)}  ready+loaded ${readyS.toFixed(1)} s  VmRSS ${(out.rss / MB).toFixed(1)} MiB  VmHWM ${(hwm / MB).toFixed(1)} MiB  shadow writes ${writes}`);
    return out;
  } finally {
    agent?.kill("SIGTERM");
    await agent?.exited;
    await api.stop();
    try {
      rmdirSync(cg);
    } catch {}
  }
}

const only = process.argv[2];
for (const c of CASES) if (!only || c.name.startsWith(only)) await run(c);
