/**
 * Where the kubelet puts a pod's containers in the cgroup v2 tree, and which
 * processes are in them. Plain file-system reads: the finder works on any
 * directory tree (the tests build fake ones), and nothing here runs a child
 * process or blocks on one.
 *
 * Layouts (kubelet cgroup driver × QoS class × runtime):
 *
 *   systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/<leaf>
 *             kubepods.slice/kubepods-pod<uid_>.slice/<leaf>                     (Guaranteed)
 *             kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/<leaf>
 *   cgroupfs: kubepods/burstable/pod<uid>/<leaf>, kubepods/pod<uid>/<leaf>, kubepods/besteffort/pod<uid>/<leaf>
 *
 *   <uid_> is the pod uid with "-" replaced by "_". Leaves: containerd
 *   cri-containerd-<id>.scope (systemd) or <id> (cgroupfs); CRI-O
 *   crio-<id>.scope or crio-<id> (crio-conmon-<id>.scope is its monitor, not
 *   the container), with the processes in a `container` sub-cgroup when it
 *   has one; docker docker-<id>.scope or <id>.
 *
 * A kubelet --cgroup-root moves kubepods below a prefix (and, with systemd,
 * prefixes the slice names: foo.slice/foo-kubepods.slice/...), so the
 * kubepods directory is searched up to three levels deep and slice names are
 * matched by their suffix.
 */
import { readdirSync, readFileSync, statfsSync, statSync, type Dirent } from "node:fs";
import { join } from "node:path";
import { EnvironmentError } from "../errors.ts";

/** statfs f_type of cgroup2 */
export const CGROUP2_SUPER_MAGIC = 0x63677270;

export type QosClass = "Guaranteed" | "Burstable" | "BestEffort";

export interface ContainerCgroup {
  /** the directory whose processes are the container's */
  path: string;
  /** cgroup v2 id: the directory's inode number (what bpf_get_current_cgroup_id returns) */
  id: bigint;
}

function isCgroup2(path: string): boolean {
  try {
    if (statfsSync(path).type === CGROUP2_SUPER_MAGIC) return true;
  } catch {
    return false;
  }
  return false;
}

/** Mount points of cgroup2 file systems in /proc/self/mountinfo. */
function cgroup2Mounts(mountinfo = "/proc/self/mountinfo"): string[] {
  let text: string;
  try {
    text = readFileSync(mountinfo, "latin1");
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split("\n")) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const [left, right] = line.split(" - ");
    if (!left || !right || right.split(" ")[0] !== "cgroup2") continue;
    const mountPoint = left.split(" ")[4];
    if (mountPoint) out.push(mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

/**
 * The cgroup v2 hierarchy: base when it is cgroup2 (unified mode, every
 * current Kubernetes node), else base/unified (systemd's hybrid mode, v1
 * controllers beside it). Throws when neither is.
 */
export function cgroupV2Root(base = "/sys/fs/cgroup"): string {
  const mounts = cgroup2Mounts();
  for (const dir of [base, join(base, "unified")]) {
    if (isCgroup2(dir) || mounts.includes(dir)) return dir;
  }
  throw new EnvironmentError(
    `no cgroup v2 hierarchy at ${base} or ${join(base, "unified")}: kloak needs cgroup v2 (unified or hybrid mode) to find ` +
      `pod containers. Check with \`stat -fc %T ${base}\` (cgroup2fs) or \`grep cgroup2 /proc/self/mountinfo\`; ` +
      "if the agent runs in a container, mount the host's /sys/fs/cgroup into it",
  );
}

function subdirs(path: string): string[] {
  let entries: Dirent[];
  try {
    entries = readdirSync(path, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

const isKubepods = (name: string) => name === "kubepods" || name === "kubepods.slice" || name.endsWith("-kubepods.slice");

/** Directories named like kubepods, at depth 1 to 3 below root (shallowest first). */
export function kubepodsDirs(root: string, maxDepth = 3): string[] {
  const found: string[] = [];
  let level = [root];
  for (let depth = 1; depth <= maxDepth && found.length === 0; depth++) {
    const next: string[] = [];
    for (const dir of level) {
      for (const name of subdirs(dir)) {
        const p = join(dir, name);
        if (isKubepods(name)) found.push(p);
        // Never search inside a kubepods tree or a pod for another one.
        else if (depth < maxDepth) next.push(p);
      }
    }
    level = next;
  }
  return found;
}

/** QoS sub-directory names of the kubepods directory, for the class (Guaranteed pods sit in kubepods itself). */
function qosMatches(name: string, qos: "burstable" | "besteffort"): boolean {
  return name === qos || name.endsWith(`kubepods-${qos}.slice`);
}

function podDirIn(dir: string, uid: string): string | undefined {
  const systemd = `pod${uid.replaceAll("-", "_")}.slice`;
  for (const name of subdirs(dir)) {
    if (name === `pod${uid}`) return join(dir, name);
    // kubepods-burstable-pod<uid_>.slice, kubepods-pod<uid_>.slice, prefix-kubepods-…
    if (name.endsWith(systemd) && (name === systemd || name.endsWith(`-${systemd}`))) return join(dir, name);
  }
  return undefined;
}

/** The pod's directory under one kubepods directory; the QoS class's place first, then the others. */
function podDir(kubepods: string, uid: string, qosClass?: string): string | undefined {
  const qosDirs = (qos: "burstable" | "besteffort") => subdirs(kubepods).filter((n) => qosMatches(n, qos)).map((n) => join(kubepods, n));
  const guaranteed = [kubepods];
  const order =
    qosClass === "Burstable"
      ? [...qosDirs("burstable"), ...guaranteed, ...qosDirs("besteffort")]
      : qosClass === "BestEffort"
        ? [...qosDirs("besteffort"), ...guaranteed, ...qosDirs("burstable")]
        : [...guaranteed, ...qosDirs("burstable"), ...qosDirs("besteffort")];
  for (const dir of order) {
    const p = podDirIn(dir, uid);
    if (p) return p;
  }
  return undefined;
}

/** Parse `containerd://<id>` (as in a pod's containerStatuses); no scheme: runtime unknown. */
export function parseContainerId(containerId: string): { runtime: string; id: string } | undefined {
  const m = /^([a-z0-9.-]+):\/\/([A-Za-z0-9_.-]+)$/.exec(containerId.trim());
  if (m) return { runtime: m[1]!, id: m[2]! };
  return /^[A-Za-z0-9_.-]+$/.test(containerId.trim()) ? { runtime: "", id: containerId.trim() } : undefined;
}

/** Leaf directory names of a container, most specific first. */
function leafNames(runtime: string, id: string): string[] {
  const containerd = [`cri-containerd-${id}.scope`, id];
  const crio = [`crio-${id}.scope`, `crio-${id}`];
  const docker = [`docker-${id}.scope`, id];
  const all = [...new Set([...containerd, ...crio, ...docker])];
  switch (runtime) {
    case "containerd":
      return [...new Set([...containerd, ...all])];
    case "cri-o":
    case "crio":
      return [...new Set([...crio, ...all])];
    case "docker":
      return [...new Set([...docker, ...all])];
    default:
      return all;
  }
}

/**
 * The cgroup of one container of a pod, or undefined when it is not (yet)
 * there. containerId as the pod status gives it (`containerd://<64 hex>`,
 * `cri-o://…`, `docker://…`).
 */
export function findContainerCgroup(
  root: string,
  pod: { uid: string; qosClass?: QosClass | string },
  containerId: string,
): ContainerCgroup | undefined {
  const parsed = parseContainerId(containerId);
  if (!parsed || !pod.uid || pod.uid.includes("/")) return undefined;
  for (const kubepods of kubepodsDirs(root)) {
    const dir = podDir(kubepods, pod.uid, pod.qosClass);
    if (!dir) continue;
    for (const leaf of leafNames(parsed.runtime, parsed.id)) {
      let path = join(dir, leaf);
      if (!isDir(path)) continue;
      // CRI-O (systemd) may run the processes in a sub-cgroup of the scope.
      const inner = join(path, "container");
      if (leaf.startsWith("crio-") && isDir(inner)) path = inner;
      try {
        return { path, id: statSync(path, { bigint: true }).ino };
      } catch {
        return undefined; // removed meanwhile
      }
    }
  }
  return undefined;
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Pids in the cgroup and every cgroup below it (containers may nest), as
 * this process's pid namespace numbers them. A cgroup removed meanwhile
 * contributes nothing.
 */
export function cgroupProcesses(path: string): number[] {
  const pids = new Set<number>();
  const walk = (dir: string, depth: number) => {
    let text = "";
    try {
      text = readFileSync(join(dir, "cgroup.procs"), "latin1");
    } catch {
      // gone, or not a cgroup
    }
    for (const line of text.split("\n")) {
      const pid = Number(line);
      if (line !== "" && Number.isInteger(pid) && pid > 0) pids.add(pid);
    }
    if (depth < 32) for (const name of subdirs(dir)) walk(join(dir, name), depth + 1);
  };
  walk(path, 0);
  return [...pids];
}
