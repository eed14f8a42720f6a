/**
 * The container cgroup finder against every kubelet layout (driver × QoS ×
 * runtime, --cgroup-root prefixes, CRI-O's conmon and `container`
 * sub-cgroup) in fake trees of plain directories, plus one real layout in the
 * real cgroup2 hierarchy.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmdirSync, rmSync, statSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cgroupProcesses, cgroupV2Root, findContainerCgroup, kubepodsDirs, parseContainerId } from "../../src/node/cgroups.ts";

const UID = "7d3b1c2a-5e6f-4a1b-9c8d-0e1f2a3b4c5d";
const UID_ = UID.replaceAll("-", "_");
const HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const OTHER = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

const tmp = mkdtempSync(join(tmpdir(), "kloak-cgroups-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
function tree(...dirs: string[]): string {
  const root = join(tmp, `t${n++}`);
  for (const d of dirs) mkdirSync(join(root, d), { recursive: true });
  return root;
}

type Qos = "Guaranteed" | "Burstable" | "BestEffort";
const QOS: Qos[] = ["Guaranteed", "Burstable", "BestEffort"];
const RUNTIMES = [
  { scheme: "containerd", systemd: `cri-containerd-${HEX}.scope`, cgroupfs: HEX },
  { scheme: "cri-o", systemd: `crio-${HEX}.scope`, cgroupfs: `crio-${HEX}` },
  { scheme: "docker", systemd: `docker-${HEX}.scope`, cgroupfs: HEX },
] as const;

function systemdPod(qos: Qos, prefix = ""): string {
  const kp = prefix ? `${prefix}.slice/${prefix}-kubepods.slice` : "kubepods.slice";
  const p = prefix ? `${prefix}-kubepods` : "kubepods";
  if (qos === "Guaranteed") return `${kp}/${p}-pod${UID_}.slice`;
  const q = qos.toLowerCase();
  return `${kp}/${p}-${q}.slice/${p}-${q}-pod${UID_}.slice`;
}
function cgroupfsPod(qos: Qos, prefix = ""): string {
  const kp = prefix ? `${prefix}/kubepods` : "kubepods";
  return qos === "Guaranteed" ? `${kp}/pod${UID}` : `${kp}/${qos.toLowerCase()}/pod${UID}`;
}

describe("findContainerCgroup: every driver, QoS class and runtime", () => {
  for (const driver of ["systemd", "cgroupfs"] as const) {
    for (const qos of QOS) {
      for (const rt of RUNTIMES) {
        test(`${driver} ${qos} ${rt.scheme}`, () => {
          const pod = driver === "systemd" ? systemdPod(qos) : cgroupfsPod(qos);
          const leaf = `${pod}/${driver === "systemd" ? rt.systemd : rt.cgroupfs}`;
          // a sibling pod and a sibling container, which must not match
          const root = tree(leaf, `${pod}/${driver === "systemd" ? rt.systemd.replace(HEX, OTHER) : OTHER}`, `${cgroupfsPod("Burstable").replace(UID, "00000000-0000-0000-0000-000000000000")}/${HEX}x`);
          const got = findContainerCgroup(root, { uid: UID, qosClass: qos }, `${rt.scheme}://${HEX}`);
          expect(got?.path).toBe(join(root, leaf));
          expect(got?.id).toBe(statSync(join(root, leaf), { bigint: true }).ino);
          // found without the QoS class too, and with a wrong one
          expect(findContainerCgroup(root, { uid: UID }, `${rt.scheme}://${HEX}`)?.path).toBe(join(root, leaf));
          const wrong = QOS.find((q) => q !== qos)!;
          expect(findContainerCgroup(root, { uid: UID, qosClass: wrong }, `${rt.scheme}://${HEX}`)?.path).toBe(join(root, leaf));
          // another pod's uid, another container
          expect(findContainerCgroup(root, { uid: "11111111-2222-3333-4444-555555555555", qosClass: qos }, `${rt.scheme}://${HEX}`)).toBeUndefined();
          expect(findContainerCgroup(root, { uid: UID, qosClass: qos }, `${rt.scheme}://${"0".repeat(64)}`)).toBeUndefined();
        });
      }
    }
  }
});

describe("findContainerCgroup: kubelet --cgroup-root prefixes", () => {
  for (const qos of QOS) {
    test(`systemd, prefix slice (custom.slice/custom-kubepods.slice/…), ${qos}`, () => {
      const leaf = `${systemdPod(qos, "custom")}/cri-containerd-${HEX}.scope`;
      const root = tree(leaf, "system.slice/containerd.service");
      expect(findContainerCgroup(root, { uid: UID, qosClass: qos }, `containerd://${HEX}`)?.path).toBe(join(root, leaf));
    });
    test(`cgroupfs, two-level prefix (a/b/kubepods/…), ${qos}`, () => {
      const leaf = `a/${cgroupfsPod(qos, "b")}/${HEX}`;
      const root = tree(leaf, "a/c/d/e");
      expect(findContainerCgroup(root, { uid: UID, qosClass: qos }, `containerd://${HEX}`)?.path).toBe(join(root, leaf));
    });
  }
  test("kubepods deeper than three levels is not searched", () => {
    const root = tree(`a/b/c/${cgroupfsPod("Burstable")}/${HEX}`);
    expect(kubepodsDirs(root)).toEqual([]);
    expect(findContainerCgroup(root, { uid: UID, qosClass: "Burstable" }, `containerd://${HEX}`)).toBeUndefined();
  });
  test("the shallowest kubepods wins", () => {
    const root = tree("kubepods.slice", "x/kubepods");
    expect(kubepodsDirs(root)).toEqual([join(root, "kubepods.slice")]);
  });
});

describe("findContainerCgroup: CRI-O specifics", () => {
  const pod = systemdPod("Burstable");
  test("crio-conmon-<id>.scope is the monitor, never the container", () => {
    const root = tree(`${pod}/crio-conmon-${HEX}.scope`);
    expect(findContainerCgroup(root, { uid: UID, qosClass: "Burstable" }, `cri-o://${HEX}`)).toBeUndefined();
    mkdirSync(join(root, pod, `crio-${HEX}.scope`));
    expect(findContainerCgroup(root, { uid: UID, qosClass: "Burstable" }, `cri-o://${HEX}`)?.path).toBe(join(root, pod, `crio-${HEX}.scope`));
  });
  test("the `container` sub-cgroup holds the processes when it exists", () => {
    const leaf = `${pod}/crio-${HEX}.scope/container`;
    const root = tree(leaf, `${pod}/crio-conmon-${HEX}.scope`);
    const got = findContainerCgroup(root, { uid: UID, qosClass: "Burstable" }, `cri-o://${HEX}`);
    expect(got?.path).toBe(join(root, leaf));
    expect(got?.id).toBe(statSync(join(root, leaf), { bigint: true }).ino);
  });
  test("cgroupfs crio-<id>", () => {
    const leaf = `${cgroupfsPod("BestEffort")}/crio-${HEX}`;
    const root = tree(leaf);
    expect(findContainerCgroup(root, { uid: UID, qosClass: "BestEffort" }, `cri-o://${HEX}`)?.path).toBe(join(root, leaf));
  });
});

describe("container ids", () => {
  test("parseContainerId", () => {
    expect(parseContainerId(`containerd://${HEX}`)).toEqual({ runtime: "containerd", id: HEX });
    expect(parseContainerId(`cri-o://${HEX}`)).toEqual({ runtime: "cri-o", id: HEX });
    expect(parseContainerId(`docker://${HEX}`)).toEqual({ runtime: "docker", id: HEX });
    expect(parseContainerId(HEX)).toEqual({ runtime: "", id: HEX });
    expect(parseContainerId("")).toBeUndefined();
    expect(parseContainerId("containerd://../../etc")).toBeUndefined();
  });
  test("an id without a runtime tries every leaf form; garbage finds nothing", () => {
    const leaf = `${systemdPod("Guaranteed")}/docker-${HEX}.scope`;
    const root = tree(leaf);
    expect(findContainerCgroup(root, { uid: UID }, HEX)?.path).toBe(join(root, leaf));
    expect(findContainerCgroup(root, { uid: UID }, "containerd://")).toBeUndefined();
    expect(findContainerCgroup(root, { uid: "" }, `docker://${HEX}`)).toBeUndefined();
    expect(findContainerCgroup(join(root, "missing"), { uid: UID }, `docker://${HEX}`)).toBeUndefined();
  });
});

test("cgroupProcesses: cgroup.procs of the cgroup and every sub-cgroup; a missing cgroup has none", () => {
  const root = tree("c/nested/deeper", "c/other");
  writeFileSync(join(root, "c", "cgroup.procs"), "10\n11\n");
  writeFileSync(join(root, "c", "nested", "cgroup.procs"), "12\n");
  writeFileSync(join(root, "c", "nested", "deeper", "cgroup.procs"), "13\n10\n");
  writeFileSync(join(root, "c", "other", "cgroup.procs"), "");
  expect(cgroupProcesses(join(root, "c")).sort((a, b) => a - b)).toEqual([10, 11, 12, 13]);
  expect(cgroupProcesses(join(root, "nope"))).toEqual([]);
});

describe("cgroup v2 root", () => {
  test("the real root: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host", () => {
    const root = cgroupV2Root();
    expect(["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]).toContain(root);
    expect(readFileSync(join(root, "cgroup.controllers"), "latin1")).toBeDefined();
  });
  test("no cgroup2 at the base: an error that says what is needed and how to check", () => {
    expect(() => cgroupV2Root(tmp)).toThrow(/cgroup v2.*stat -fc %T/);
  });
});

test("a real kubelet layout in the real cgroup2 hierarchy: found, id = inode, processes listed", async () => {
  const base = join(cgroupV2Root(), `kloak-unit-${process.pid}`);
  const rel = `${systemdPod("Burstable")}/cri-containerd-${HEX}.scope`;
  const leaf = join(base, rel);
  mkdirSync(leaf, { recursive: true });
  const proc = Bun.spawn(["sh", "-c", `echo $$ > ${leaf}/cgroup.procs && exec sleep 30`], { stdout: "ignore", stderr: "inherit" });
  try {
    const got = findContainerCgroup(base, { uid: UID, qosClass: "Burstable" }, `containerd://${HEX}`);
    expect(got?.path).toBe(leaf);
    expect(got?.id).toBe(statSync(leaf, { bigint: true }).ino);
    for (let i = 0; i < 100 && !cgroupProcesses(leaf).includes(proc.pid); i++) await Bun.sleep(20);
    expect(cgroupProcesses(leaf)).toEqual([proc.pid]);
    // nested: processes of the pod's cgroup subtree
    expect(cgroupProcesses(join(base, "kubepods.slice"))).toContain(proc.pid);
  } finally {
    proc.kill("SIGKILL");
    await proc.exited;
    for (let i = 0; i < 50 && cgroupProcesses(leaf).length; i++) await Bun.sleep(20);
    const parts = rel.split("/");
    for (let i = parts.length; i > 0; i--) rmdirSync(join(base, ...parts.slice(0, i)));
    rmdirSync(base);
  }
}, 30_000);
