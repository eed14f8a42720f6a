/**
 * PodAttacher's bookkeeping against a fake data plane and a fake cgroup tree
 * (plain directories with cgroup.procs files): scopes, grants, cgroups,
 * processes, retries, removal. The real kernel path is pod-attacher.test.ts.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PodAttacher, type PodDataplane, type PodTarget } from "../../src/node/pod-attacher.ts";
import type { ScopeSettings } from "../../src/dataplane/dataplane.ts";

const tmp = mkdtempSync(join(tmpdir(), "kloak-podattacher-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

class FakeDp implements PodDataplane {
  procs = new Map<number, number>();
  cgroups = new Map<bigint, number>();
  grants = new Set<string>();
  removed: number[] = [];
  scopes = new Map<number, ScopeSettings>();
  failAddProcess = false;
  setScope(scope: number, settings: ScopeSettings) {
    this.scopes.set(scope, settings);
  }
  removeScope(scope: number) {
    this.scopes.delete(scope);
  }
  grant(scope: number, id: number) {
    this.grants.add(`${scope}:${id}`);
  }
  revoke(scope: number, id: number) {
    return this.grants.delete(`${scope}:${id}`);
  }
  grantsByScope() {
    const m = new Map<number, number[]>();
    for (const g of this.grants) {
      const [s, id] = g.split(":").map(Number) as [number, number];
      m.set(s, [...(m.get(s) ?? []), id]);
    }
    return m;
  }
  addCgroup(id: bigint, scope: number) {
    this.cgroups.set(id, scope);
  }
  removeCgroup(id: bigint) {
    return this.cgroups.delete(id);
  }
  addProcess(pid: number, scope: number) {
    if (this.failAddProcess) throw new Error("kloak_procs full");
    this.procs.set(pid, scope);
  }
  removeProcess(pid: number) {
    this.removed.push(pid);
    return this.procs.delete(pid);
  }
  processScope(pid: number) {
    return this.procs.get(pid);
  }
  processesByScope() {
    const m = new Map<number, number[]>();
    for (const [pid, s] of this.procs) m.set(s, [...(m.get(s) ?? []), pid]);
    return m;
  }
  scopeGrants(scope: number) {
    return [...this.grants].filter((g) => g.startsWith(`${scope}:`)).map((g) => Number(g.split(":")[1])).sort((a, b) => a - b);
  }
}

const hex = (c: string) => c.repeat(64);
let n = 0;
function setup(opts: { retryMs?: number; retryForMs?: number } = {}) {
  const root = join(tmp, `r${n++}`);
  const dp = new FakeDp();
  const logs: { level: string; msg: string }[] = [];
  const attacher = new PodAttacher(dp, { cgroupRoot: root, log: (level, msg) => logs.push({ level, msg }), ...opts });
  const podDir = (uid: string) => join(root, "kubepods.slice", "kubepods-burstable.slice", `kubepods-burstable-pod${uid.replaceAll("-", "_")}.slice`);
  /** Create a container's cgroup holding pids; returns its id (inode). */
  const container = (uid: string, id: string, pids: number[]) => {
    const dir = join(podDir(uid), `cri-containerd-${id}.scope`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "cgroup.procs"), pids.map((p) => `${p}\n`).join(""));
    return statSync(dir, { bigint: true }).ino;
  };
  return { root, dp, logs, attacher, container };
}
const target = (uid: string, containers: PodTarget["containers"], secretIds: number[]): PodTarget => ({
  uid,
  namespace: "ns",
  name: `pod-${uid.slice(0, 4)}`,
  qosClass: "Burstable",
  containers,
  secretIds,
});

test("sync: a scope per pod from 1000, each running container's cgroup and processes, grants exactly; idempotent", () => {
  const { dp, attacher, container } = setup();
  const a = container("aaaa-1", hex("a"), [101, 102]);
  const b = container("aaaa-1", hex("b"), [103]);
  const t = target("aaaa-1", [
    { name: "app", containerId: `containerd://${hex("a")}`, running: true },
    { name: "side", containerId: `containerd://${hex("b")}`, running: true },
    { name: "init", containerId: `containerd://${hex("c")}`, running: false },
    { name: "new", running: true },
  ], [7, 9]);
  attacher.sync(t);
  expect(dp.cgroups).toEqual(new Map([[a, 1000], [b, 1000]]));
  expect(dp.procs).toEqual(new Map([[101, 1000], [102, 1000], [103, 1000]]));
  expect(dp.scopeGrants(1000)).toEqual([7, 9]);
  expect(attacher.stats()).toEqual({ pods: 1, containers: 2, processes: 3, pendingContainers: 0 });
  expect(attacher.scopeOf("aaaa-1")).toBe(1000);
  expect(attacher.podOfScope(1000)).toEqual({ uid: "aaaa-1", namespace: "ns", name: "pod-aaaa" });

  attacher.sync(t);
  expect(dp.cgroups.size).toBe(2);
  expect(dp.procs.size).toBe(3);

  // another pod: the next scope
  container("bbbb-2", hex("d"), [201]);
  attacher.sync(target("bbbb-2", [{ name: "app", containerId: `containerd://${hex("d")}`, running: true }], [9]));
  expect(dp.procs.get(201)).toBe(1001);
  expect(dp.scopeGrants(1001)).toEqual([9]);

  // grants follow the target exactly
  attacher.sync({ ...t, secretIds: [9, 11] });
  expect(dp.scopeGrants(1000)).toEqual([9, 11]);
  expect(dp.scopeGrants(1001)).toEqual([9]);
  attacher.close();
});

test("sync picks up processes that appeared in a known container, and only those", () => {
  const { dp, attacher, container } = setup();
  container("cccc-3", hex("a"), [301]);
  const t = target("cccc-3", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], []);
  attacher.sync(t);
  container("cccc-3", hex("a"), [301, 302]);
  attacher.sync(t);
  expect([...dp.procs.keys()].sort()).toEqual([301, 302]);
  attacher.close();
});

test("a stopped or restarted container's cgroup goes; the new one comes", () => {
  const { dp, attacher, container } = setup();
  const a = container("dddd-4", hex("a"), [401]);
  attacher.sync(target("dddd-4", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], [1]));
  expect(dp.cgroups.has(a)).toBe(true);
  const b = container("dddd-4", hex("b"), [402]);
  attacher.sync(target("dddd-4", [{ name: "app", containerId: `containerd://${hex("b")}`, running: true }], [1]));
  expect(dp.cgroups).toEqual(new Map([[b, 1000]]));
  expect(dp.procs.get(402)).toBe(1000);
  attacher.sync(target("dddd-4", [{ name: "app", containerId: `containerd://${hex("b")}`, running: false }], [1]));
  expect(dp.cgroups.size).toBe(0);
  attacher.close();
});

test("remove: grants, cgroups and processes of the pod go; other pods stay", () => {
  const { dp, attacher, container } = setup();
  container("eeee-5", hex("a"), [501, 502]);
  container("ffff-6", hex("b"), [601]);
  attacher.sync(target("eeee-5", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], [1, 2]));
  attacher.sync(target("ffff-6", [{ name: "app", containerId: `containerd://${hex("b")}`, running: true }], [2]));
  // a child that joined in the kernel (fork) without the attacher's knowledge
  dp.procs.set(503, 1000);
  attacher.remove("eeee-5");
  expect([...dp.procs]).toEqual([[601, 1001]]);
  expect(dp.scopeGrants(1000)).toEqual([]);
  expect(dp.scopeGrants(1001)).toEqual([2]);
  expect(dp.cgroups.size).toBe(1);
  expect(dp.removed.sort()).toEqual([501, 502, 503]);
  expect(attacher.stats()).toEqual({ pods: 1, containers: 1, processes: 1, pendingContainers: 0 });
  attacher.remove("eeee-5"); // unknown now: nothing
  attacher.remove("never");
  // a pod synced again after removal gets a new scope
  attacher.sync(target("eeee-5", [], [1]));
  expect(attacher.scopeOf("eeee-5")).toBe(1002);
  attacher.close();
});

test("a container whose cgroup is not there yet is retried, logged once, and attached when it appears", async () => {
  const { dp, attacher, container, logs } = setup({ retryMs: 20, retryForMs: 5000 });
  const t = target("gggg-7", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], [3]);
  attacher.sync(t);
  attacher.sync(t);
  expect(attacher.stats().pendingContainers).toBe(1);
  expect(dp.scopeGrants(1000)).toEqual([3]);
  await Bun.sleep(80);
  expect(logs.filter((l) => l.msg.includes("not found yet"))).toHaveLength(1);
  const id = container("gggg-7", hex("a"), [701]);
  for (let i = 0; i < 50 && attacher.stats().pendingContainers; i++) await Bun.sleep(20);
  expect(attacher.stats()).toEqual({ pods: 1, containers: 1, processes: 1, pendingContainers: 0 });
  expect(dp.cgroups.get(id)).toBe(1000);
  expect(logs.filter((l) => l.msg === "container attached")).toHaveLength(1);
  attacher.close();
});

test("retrying gives up after retryForMs with one warning; a later sync still finds it", async () => {
  const { dp, attacher, container, logs } = setup({ retryMs: 10, retryForMs: 50 });
  const t = target("hhhh-8", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], []);
  attacher.sync(t);
  for (let i = 0; i < 50 && attacher.stats().pendingContainers; i++) await Bun.sleep(20);
  expect(attacher.stats().pendingContainers).toBe(0);
  expect(logs.filter((l) => l.level === "warn")).toHaveLength(1);
  attacher.sync(t);
  expect(logs.filter((l) => l.msg.includes("not found"))).toHaveLength(2); // first miss + give-up, no more
  container("hhhh-8", hex("a"), [801]);
  attacher.sync(t);
  expect(dp.procs.get(801)).toBe(1000);
  attacher.close();
});

test("close stops the retries, also of containers a later sync finds missing", async () => {
  const { dp, attacher, container, logs } = setup({ retryMs: 10, retryForMs: 5000 });
  const t = target("kkkk-1", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], []);
  attacher.sync(t);
  attacher.close();
  attacher.sync(target("llll-2", [{ name: "app", containerId: `containerd://${hex("b")}`, running: true }], []));
  container("kkkk-1", hex("a"), [1101]);
  container("llll-2", hex("b"), [1201]);
  await Bun.sleep(60);
  expect(attacher.stats().pendingContainers).toBe(2);
  expect(dp.procs.size).toBe(0);
  expect(logs.filter((l) => l.msg === "container attached")).toHaveLength(0);
  // A sync still attaches: only the retrying stopped.
  attacher.sync(t);
  expect(dp.procs.get(1101)).toBe(1000);
});

test("sync never throws: data-plane failures are logged", () => {
  const { dp, attacher, container, logs } = setup();
  container("iiii-9", hex("a"), [901]);
  dp.failAddProcess = true;
  expect(() => attacher.sync(target("iiii-9", [{ name: "app", containerId: `containerd://${hex("a")}`, running: true }], []))).not.toThrow();
  expect(logs.some((l) => l.level === "warn" && l.msg.includes("cannot add"))).toBe(true);
  dp.grant = () => {
    throw new Error("map full");
  };
  expect(() => attacher.sync(target("jjjj-0", [], [1]))).not.toThrow();
  expect(logs.some((l) => l.level === "error")).toBe(true);
  attacher.close();
});
