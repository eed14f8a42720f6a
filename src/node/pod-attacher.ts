/**
 * The node side of pod attach: one data-plane scope per pod, holding every
 * process of the pod's running containers, entitled to exactly the pod's
 * secrets.
 *
 *  - Processes already in a container's cgroup are added (and attached) by
 *    sync(); processes that appear there later join in the kernel, at their
 *    exec or fork, through kloak_cgroups (held at exec until attached).
 *  - remove() takes everything of the pod out of the maps: grants first (so
 *    nothing of it can redeem any more), then its cgroups, then its processes.
 *
 * Plain inputs, no Kubernetes client; synchronous file-system reads only,
 * never a child process (a blocked agent thread would leave held processes
 * stopped). Pids are read from cgroup.procs, so the agent must share the
 * host's pid namespace (hostPID) for them to be the kernel's.
 */
import type { LogFn } from "../log.ts";
import type { Dataplane } from "../dataplane/dataplane.ts";
import type { ViolationAction } from "../dataplane/refusals.ts";
import { cgroupProcesses, findContainerCgroup, type ContainerCgroup } from "./cgroups.ts";
import { WorkQueue } from "../kube/work-queue.ts";

export interface PodTarget {
  uid: string;
  namespace: string;
  name: string;
  qosClass?: string;
  containers: { name: string; containerId?: string; running: boolean }[];
  secretIds: number[];
}

/** What PodAttacher needs of the data plane (a Dataplane, or a fake in tests). */
export type PodDataplane = Pick<
  Dataplane,
  | "grant"
  | "revoke"
  | "grantsByScope"
  | "addCgroup"
  | "removeCgroup"
  | "addProcess"
  | "removeProcess"
  | "processScope"
  | "processesByScope"
  | "setScope"
  | "removeScope"
>;

export interface PodAttacherOptions {
  /** the cgroup v2 root (cgroupV2Root()) */
  cgroupRoot: string;
  log: LogFn;
  /** how often containers whose cgroup is not there yet are looked for again; default 1000 */
  retryMs?: number;
  /** ... and for how long; default 30000 */
  retryForMs?: number;
  /** the first scope id handed out; default 1000 (scope ids below are kloak exec's) */
  firstScopeId?: number;
  /** refuse connections that write through the app's own BIO (docs/policy.md); default false */
  strictBinding?: boolean;
  /** what a violation does for secrets without getkloak.io/on-violation; default pass */
  onViolation?: ViolationAction;
  /**
   * A data plane taken over from a previous agent (handover.ts): the scope it
   * gave the pod owning this container cgroup. The pod keeps it, so its
   * processes, grants and writes in flight stay valid without a gap.
   */
  adoptedScope?: (cgroupId: bigint) => number | undefined;
}

export interface PodAttacherStats {
  pods: number;
  /** containers whose cgroup is registered */
  containers: number;
  /** processes in the pods' scopes */
  processes: number;
  /** running containers whose cgroup was not found (yet) */
  pendingContainers: number;
}

interface PodState {
  uid: string;
  scopeId: number;
  namespace: string;
  name: string;
  qosClass?: string;
  /** containerId -> its registered cgroup */
  containers: Map<string, { name: string; cgroup: ContainerCgroup }>;
  /** containerId -> running but no cgroup found yet */
  pending: Map<string, { name: string; since: number }>;
  /** containers given up on (logged); looked for again at each sync, silently */
  gaveUp: Set<string>;
  grants: Set<number>;
}

/** Rounds remove() makes for processes that forked while their parent was being removed. */
const REMOVE_ROUNDS = 3;

/** Thrown by a retry that did not find the cgroup yet: the work queue tries again after retryMs. */
class NotFoundYet extends Error {}

export class PodAttacher {
  private readonly pods = new Map<string, PodState>();
  private nextScope: number;
  private readonly retryMs: number;
  private readonly retryForMs: number;
  /** `${uid}/${containerId}` of pending containers, looked for again every retryMs */
  private readonly retries: WorkQueue<string>;

  constructor(
    private readonly dp: PodDataplane,
    private readonly opts: PodAttacherOptions,
  ) {
    this.nextScope = opts.firstScopeId ?? 1000;
    this.retryMs = opts.retryMs ?? 1000;
    this.retryForMs = opts.retryForMs ?? 30_000;
    this.retries = new WorkQueue((key) => this.retry(key), { backoff: () => this.retryMs });
  }

  /**
   * Make the pod's scope match target: a scope for the pod (kept for its
   * life), each running container's cgroup registered and its processes
   * added, grants exactly target.secretIds. Idempotent; never throws.
   */
  sync(target: PodTarget): void {
    try {
      this.syncPod(target);
    } catch (e) {
      this.opts.log("error", "pod attach failed", { pod: `${target.namespace}/${target.name}`, uid: target.uid, error: e as Error });
    }
  }

  /** Everything of the pod out of the maps: grants, cgroups, processes. Never throws. */
  remove(uid: string): void {
    const st = this.pods.get(uid);
    if (!st) return;
    this.pods.delete(uid);
    const pod = `${st.namespace}/${st.name}`;
    try {
      // Nothing of the pod may redeem anything from here on.
      for (const id of st.grants) this.dp.revoke(st.scopeId, id);
      for (const id of this.dp.grantsByScope().get(st.scopeId) ?? []) this.dp.revoke(st.scopeId, id);
      st.grants.clear();
      // No process joins any more ...
      for (const c of st.containers.values()) this.dp.removeCgroup(c.cgroup.id);
      // ... and those in the scope leave. A fork that was in flight joined through its parent's entry.
      let left: number[] = [];
      for (let round = 0; round < REMOVE_ROUNDS; round++) {
        left = this.dp.processesByScope().get(st.scopeId) ?? [];
        if (left.length === 0) break;
        for (const pid of left) this.dp.removeProcess(pid);
      }
      left = this.dp.processesByScope().get(st.scopeId) ?? [];
      if (left.length) this.opts.log("warn", "pod processes still in its scope after removal", { pod, uid, processes: left.length });
      this.dp.removeScope(st.scopeId);
      this.opts.log("info", "pod detached", { pod, uid, scope: st.scopeId, containers: st.containers.size });
    } catch (e) {
      this.opts.log("error", "pod detach failed", { pod, uid, error: e as Error });
    }
  }

  stats(): PodAttacherStats {
    let containers = 0;
    let pending = 0;
    let processes = 0;
    let byScope: Map<number, number[]> | undefined;
    try {
      byScope = this.dp.processesByScope();
    } catch {
      // counted as 0
    }
    for (const st of this.pods.values()) {
      containers += st.containers.size;
      pending += st.pending.size;
      processes += byScope?.get(st.scopeId)?.length ?? 0;
    }
    return { pods: this.pods.size, containers, processes, pendingContainers: pending };
  }

  /** The scope of a pod, if attached. */
  scopeOf(uid: string): number | undefined {
    return this.pods.get(uid)?.scopeId;
  }

  /** The pod a scope belongs to (for refusal events and logs). */
  podOfScope(scopeId: number): { uid: string; namespace: string; name: string } | undefined {
    for (const st of this.pods.values()) if (st.scopeId === scopeId) return { uid: st.uid, namespace: st.namespace, name: st.name };
    return undefined;
  }

  /** Stop retrying (the maps are left as they are). A retry is synchronous: none is left running. */
  close(): void {
    void this.retries.shutdown();
  }

  private syncPod(t: PodTarget): void {
    let st = this.pods.get(t.uid);
    if (!st) {
      st = {
        uid: t.uid,
        scopeId: this.adoptedScopeOf(t) ?? this.nextScope++,
        namespace: t.namespace,
        name: t.name,
        containers: new Map(),
        pending: new Map(),
        gaveUp: new Set(),
        grants: new Set(),
      };
      this.pods.set(t.uid, st);
      // Its sockets must be in the pod's network namespace: learned from its first process.
      this.dp.setScope(st.scopeId, {
        netns: null,
        strictBinding: this.opts.strictBinding ?? false,
        onViolation: this.opts.onViolation ?? "pass",
      });
    }
    st.namespace = t.namespace;
    st.name = t.name;
    st.qosClass = t.qosClass;

    // Grants exactly as wanted; revocations first. Wanted ones are written
    // every time (idempotent): deleteSecret revokes in the kernel behind our back.
    const want = new Set(t.secretIds);
    for (const id of st.grants) {
      if (want.has(id)) continue;
      this.dp.revoke(st.scopeId, id);
      st.grants.delete(id);
    }
    for (const id of want) {
      this.dp.grant(st.scopeId, id);
      st.grants.add(id);
    }

    const running = new Map<string, string>();
    for (const c of t.containers) if (c.running && c.containerId) running.set(c.containerId, c.name);
    // Containers that stopped or were replaced (a restart has a new id): their cgroup goes.
    for (const [cid, c] of st.containers) {
      if (running.has(cid)) continue;
      this.dp.removeCgroup(c.cgroup.id);
      st.containers.delete(cid);
    }
    for (const cid of st.pending.keys()) if (!running.has(cid)) st.pending.delete(cid);
    for (const cid of st.gaveUp) if (!running.has(cid)) st.gaveUp.delete(cid);

    for (const [cid, name] of running) {
      const have = st.containers.get(cid);
      if (have) this.adopt(st, have.cgroup);
      else this.attachContainer(st, cid, name, !st.pending.has(cid) && !st.gaveUp.has(cid));
    }
  }

  private adoptedScopeOf(t: PodTarget): number | undefined {
    if (!this.opts.adoptedScope) return undefined;
    for (const c of t.containers) {
      if (!c.running || !c.containerId) continue;
      const cgroup = findContainerCgroup(this.opts.cgroupRoot, { uid: t.uid, qosClass: t.qosClass }, c.containerId);
      const scope = cgroup && this.opts.adoptedScope(cgroup.id);
      if (scope !== undefined && ![...this.pods.values()].some((p) => p.scopeId === scope)) return scope;
    }
    return undefined;
  }

  /** Register the container's cgroup and add its processes; false when it is not there yet. */
  private attachContainer(st: PodState, cid: string, name: string, firstTry: boolean): boolean {
    const cgroup = findContainerCgroup(this.opts.cgroupRoot, { uid: st.uid, qosClass: st.qosClass }, cid);
    const fields = { pod: `${st.namespace}/${st.name}`, container: name, containerId: cid };
    if (!cgroup) {
      if (firstTry) {
        st.pending.set(cid, { name, since: performance.now() });
        this.opts.log("info", "container cgroup not found yet; looking again", { ...fields, retryMs: this.retryMs });
        this.retries.addAfter(`${st.uid}/${cid}`, this.retryMs);
      }
      return false;
    }
    const waited = st.pending.get(cid);
    st.pending.delete(cid);
    st.gaveUp.delete(cid);
    // Register first: a process started from now on joins in the kernel; those before are listed below.
    this.dp.addCgroup(cgroup.id, st.scopeId);
    st.containers.set(cid, { name, cgroup });
    const added = this.adopt(st, cgroup);
    this.opts.log("info", "container attached", {
      ...fields,
      scope: st.scopeId,
      cgroup: cgroup.path,
      processes: added,
      ...(waited ? { waitedMs: Math.round(performance.now() - waited.since) } : {}),
    });
    return true;
  }

  /** Add the cgroup's processes not yet in the scope; returns how many were added. */
  private adopt(st: PodState, cgroup: ContainerCgroup): number {
    const added: number[] = [];
    for (const pid of cgroupProcesses(cgroup.path)) {
      if (this.dp.processScope(pid) === st.scopeId) continue;
      try {
        this.dp.addProcess(pid, st.scopeId);
        added.push(pid);
      } catch (e) {
        this.opts.log("warn", "cannot add a container process", { pod: `${st.namespace}/${st.name}`, pid, error: e as Error });
      }
    }
    if (added.length === 0) return 0;
    // A pid read above may have exited and been reused outside the container
    // before it was added: whatever is no longer in the cgroup leaves again.
    const now = new Set(cgroupProcesses(cgroup.path));
    let kept = 0;
    for (const pid of added) {
      if (now.has(pid)) kept++;
      else if (this.dp.processScope(pid) === st.scopeId) this.dp.removeProcess(pid);
    }
    return kept;
  }

  /** Look for a pending container's cgroup again; give up after retryForMs. */
  private retry(key: string): void {
    // A pod uid holds no slash; a container id may.
    const slash = key.indexOf("/");
    const st = this.pods.get(key.slice(0, slash));
    const cid = key.slice(slash + 1);
    const p = st?.pending.get(cid);
    // Attached by a sync meanwhile, stopped, or the pod removed.
    if (!st || !p) return;
    const now = performance.now();
    try {
      if (this.attachContainer(st, cid, p.name, false)) return;
    } catch (e) {
      this.opts.log("error", "container attach failed", { pod: `${st.namespace}/${st.name}`, containerId: cid, error: e as Error });
    }
    if (now - p.since < this.retryForMs) throw new NotFoundYet(cid);
    st.pending.delete(cid);
    st.gaveUp.add(cid);
    this.opts.log("warn", "container cgroup not found; its processes stay unattached (placeholders go out unchanged) until the pod changes", {
      pod: `${st.namespace}/${st.name}`,
      container: p.name,
      containerId: cid,
      cgroupRoot: this.opts.cgroupRoot,
      afterMs: Math.round(now - p.since),
    });
  }
}
