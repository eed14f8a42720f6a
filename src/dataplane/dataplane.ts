/**
 * The data plane of one kloak process: the loaded object, its tracepoints,
 * per-process uprobes, the BPF maps of secrets and scopes, and the ring
 * worker. Everything here runs on the main thread except the worker.
 */
import { BPF_EXIST, BpfLink, BpfMap, BpfObject, objectMapNames, objGet, objPin, possibleCpus, progRecursionMisses } from "../../lib/libbpf.ts";
import { workerSpec } from "../../lib/worker-spec.ts";
import { bpfAndPerfFds, handOffToHolder } from "../../lib/fd-handoff.ts";
import { existsSync, readdirSync, renameSync, rmSync } from "node:fs";
import { exePath, kernelFileId, mntnsInode, netnsInode } from "../../lib/proc.ts";
import { close as closeFd, eventfd, eventfdSignal, kill, SIGCONT, SIGKILL } from "../../lib/libc.ts";
import {
  COUNTERS,
  encodeBytes,
  encodeGrant,
  encodeImage,
  encodeName256,
  encodeNameAddr,
  encodePhKey,
  encodePolicy,
  encodeProc,
  encodeResolved,
  encodeScope,
  encodeU32,
  encodeU64,
  EventType,
  KEY_LEN,
  LAYOUT,
  MARKER_LEN,
  MAX_SUBST,
  type CounterName,
  type DataplaneEvent,
  type KernelRule,
  type RefusalEvent,
  type SniEvent,
  type LibOpenEvent,
  ScopeFlags,
} from "./abi.ts";
import { actionCode, REFUSALS, type ViolationAction } from "./refusals.ts";
import { UnhookableLog } from "./unhookable-log.ts";
import { mapsAnyOf } from "./unhookable.ts";
import { ProbeAttacher } from "./probe-attacher.ts";
import { encodeHcode } from "./hpack-splice.ts";
import { huffmanBits } from "./hpack.ts";
import { encodeGoLayout } from "./go-layout.ts";
import {
  GO_PROGRAMS,
  handoverIdentity,
  loadGroup,
  loadObject,
  MODE_PROGRAMS,
  objectBytes,
  processTracepoints,
  SYSCALL_BACKUP_PROGRAM,
  SYSCALL_PROGRAM,
  type KloakObject,
  type LoadedObject,
  type ProgramGroup,
  type UprobeKind,
} from "./bpf-object.ts";
import type { NodeFacts, RewriteMode } from "./kernel-support.ts";
import { MAPS, type ProgramName } from "./abi.generated.ts";
import { noWorkerStats, type FromWorker, type ToWorker, type WorkerStats } from "./ring-protocol.ts";
import type { HoldMethod } from "./holds.ts";
import { TlsTargetFinder } from "./tls-targets.ts";
import { openedLibrary } from "./lib-open.ts";
import { PIN_DIR, PINNED_MAPS, pinPath, unpinState } from "./release.ts";
import { handoverName, parseUprobePin, partialHandoverDir, releaseHandover, uprobePinName, type Handover } from "./handover.ts";
import { reserveLayoutIds } from "./go-targets.ts";

export interface DataplaneOptions {
  mode: RewriteMode | "auto";
  /** bytes of each write scanned for placeholders */
  scanCap: number;
  /** how long the worker waits for a writer to stop before giving up (fail closed) */
  stopWaitMs?: number;
  /** default: multi-uprobe links where the kernel has them */
  uprobes?: UprobeKind | "auto";
  /** default ptrace: holds no parent sees (tracer.ts) */
  holds?: HoldMethod;
  /** called for attach problems and other things an operator should see */
  warn?: (msg: string) => void;
  /**
   * Verify program groups when a process first needs them rather than at
   * start (bpf-object.ts LoadOptions.onDemand): the Go programs when a Go
   * executable appears, in stop mode the TLS programs when a process opens a
   * TLS library (watchLibraryOpens) or execs a program with TLS inside.
   * `kloak exec` starts its command sooner; a tree without them never waits.
   */
  programsOnDemand?: boolean;
  /** what the node is (default: this one's; tests say another kernel to load what it would) */
  facts?: NodeFacts;
}

/** What the metrics read (metrics/dataplane-metrics.ts), taken at once. */
export interface DataplaneSnapshot {
  /** the rewrite mode: who substitutes (the kernel, or the stop-mode worker) */
  mode: RewriteMode;
  counters: Record<CounterName, bigint>;
  /** kernel refusals by reason (refusals.ts) */
  refusals: Record<string, bigint>;
  /** the worker's stats (workerStats), when the caller has them */
  worker?: WorkerStats;
  /** processes whose TLS kloak cannot hook, by reason (unhookable.ts) */
  unhookable?: Record<string, number>;
  /** runs of the send program the kernel skipped (syscallRunsSkipped) */
  syscallRunsSkipped?: bigint;
  /** runs of its backup the kernel skipped (syscallBackupRunsSkipped) */
  syscallBackupRunsSkipped?: bigint;
}

export interface ScopeSettings {
  /** inode of the network namespace the scope's sockets must be in; null: its first process's */
  netns: bigint | null;
  strictBinding: boolean;
  onViolation: ViolationAction;
}

export interface SecretEntry {
  id: number;
  placeholder: Uint8Array;
  key: { tail: Uint8Array; tailLen: number };
  value: Uint8Array;
  /** where the secret may go; null: anywhere */
  rules: readonly KernelRule[] | null;
}

/** A client held at a new SNI name waits at most this long for its resolution. */
const SNI_HOLD_MS = 1000;
/** How often removeProcess / deleteSecret look again for writes still in flight. */
const INFLIGHT_POLL_MS = 20;
/** deleteSecret waits at most this long for writes that substituted the secret to return. */
const DELETE_WAIT_MS = 30_000;
/** How long close() lets writes in flight finish (and be restored) before it kills their writers. */
const CLOSE_WAIT_MS = 3_000;

/** Entries and capacity of one BPF map (exported by the agent as metrics). */
export interface MapUsage {
  name: string;
  entries: number;
  capacity: number;
}

/** What a taken-over data plane's maps held (Dataplane.adopt): how the new agent's ids line up with them. */
interface AdoptedState {
  /** placeholder (hex) -> the secret id it has in the maps */
  secretIds: Map<string, number>;
  maxSecretId: number;
  /** cgroup id -> scope */
  scopeOfCgroup: Map<bigint, number>;
  /** scope -> the network namespace it was bound to (0: not learned) */
  netns: Map<number, bigint>;
  maxScope: number;
}

/** What Dataplane.pruneAdopted removed. */
export interface PruneResult {
  scopes: number;
  secrets: number;
  files: number;
}

export class Dataplane {
  readonly mode: RewriteMode;
  readonly modeReason: string;
  readonly uprobes: UprobeKind;
  private readonly maps: Record<
    | "placeholders"
    | "secrets"
    | "values"
    | "procs"
    | "launchers"
    | "entitled"
    | "counters"
    | "events"
    | "writes"
    | "refusals"
    | "scopes"
    | "onViolation"
    | "stopReleased"
    | "policy"
    | "resolved"
    | "names"
    | "sniHold"
    | "libWatch"
    | "cgroups"
    | "conns"
    | "inflight"
    | "goInflight"
    | "stopOwner"
    | "images"
    | "hcodes"
    | "hvalues",
    BpfMap
  >;
  private readonly tracepoints: BpfLink[] = [];
  private readonly attacher: ProbeAttacher;
  private readonly worker: Worker;
  private bellFd: number;
  private readonly cpus = possibleCpus();
  private seq = 0;
  private readonly acks = new Map<number, () => void>();
  private readonly refusalListeners: ((e: RefusalEvent) => void)[] = [];
  private sniHandler: (e: SniEvent) => Promise<void> | void = () => {};
  private readonly workerTotals: WorkerStats = noWorkerStats();
  private statsWaiters: (() => void)[] = [];
  private closed = false;
  private readonly scopes = new Map<number, ScopeSettings>();
  private readonly learnedNetns = new Set<number>();
  /** images whose exec needs no hold (kloak_images), by key: the scope that taught it */
  private readonly images = new Map<string, { key: Uint8Array; scope: number }>();
  /**
   * Launchers this data plane was given (kept after removeLauncher: their
   * children's fork events may still be queued). A launcher's child runs the
   * launcher's code until its exec, which is held and attached: its fork
   * attaches nothing (else kloak's own Bun would be probed at every launch).
   */
  private readonly launcherPids = new Set<number>();
  /** removed processes whose probes go once no write of theirs is in flight */
  private readonly detaching = new Map<number, ReturnType<typeof setTimeout>>();
  /** tracepoint links taken over from a predecessor (raw link fds) */
  private adoptedTracepoints: number[] = [];
  /** what the maps held when this data plane took them over (Dataplane.adopt), until pruneAdopted */
  private adoptedState?: AdoptedState;
  /** the ring worker leaves kloak_writes unread until resumeWrites() (adopted rings) */
  private writesPaused = false;

  /** program groups loaded after start, each in an object of its own sharing obj's maps */
  private readonly groupObjects = new Map<ProgramGroup, KloakObject>();
  /** groups that failed to load: the error, given again to every later attach */
  private readonly groupFailures = new Map<ProgramGroup, Error>();
  private readonly deferred: ReadonlySet<ProgramGroup>;
  private readonly obj: KloakObject;
  /** SYSCALL_BACKUP_PROGRAM is loaded (bpf-object.ts) */
  private readonly backupSyscalls: boolean;

  private constructor(
    loaded: LoadedObject,
    private readonly objectBytes: Uint8Array,
    private readonly opts: DataplaneOptions,
  ) {
    const { obj, mode, reason, uprobes } = loaded;
    this.obj = obj;
    this.deferred = new Set(loaded.deferred);
    this.backupSyscalls = loaded.backupSyscalls;
    this.mode = mode;
    this.modeReason = reason;
    this.uprobes = uprobes;
    this.maps = {
      placeholders: obj.map("kloak_placeholders"),
      secrets: obj.map("kloak_secrets"),
      values: obj.map("kloak_values"),
      procs: obj.map("kloak_procs"),
      launchers: obj.map("kloak_launchers"),
      entitled: obj.map("kloak_entitled"),
      counters: obj.map("kloak_counters"),
      events: obj.map("tls_events"),
      writes: obj.map("kloak_writes"),
      refusals: obj.map("kloak_refusals"),
      scopes: obj.map("kloak_scopes"),
      onViolation: obj.map("kloak_on_violation"),
      stopReleased: obj.map("kloak_stop_released"),
      policy: obj.map("kloak_policy"),
      resolved: obj.map("kloak_resolved"),
      names: obj.map("kloak_names"),
      sniHold: obj.map("kloak_sni_hold"),
      libWatch: obj.map("kloak_lib_watch"),
      cgroups: obj.map("kloak_cgroups"),
      conns: obj.map("kloak_conns"),
      inflight: obj.map("kloak_inflight"),
      goInflight: obj.map("kloak_go_inflight"),
      stopOwner: obj.map("kloak_stop_owner"),
      images: obj.map("kloak_images"),
      hcodes: obj.map("kloak_hcodes"),
      hvalues: obj.map("kloak_hvalues"),
    };
    const [entry, ret] = MODE_PROGRAMS[mode];
    const goLayouts = obj.map("kloak_go_layouts");
    this.attacher = new ProbeAttacher(
      {
        tls: () => ({ entryFd: this.program("tls", entry), retFd: this.program("tls", ret) }),
        go: () => ({
          progFd: this.program("go", GO_PROGRAMS[mode]),
          register: (id, layout) => goLayouts.update(encodeU32(id), encodeGoLayout(layout)),
        }),
      },
      new TlsTargetFinder((b) => this.unhookable.bunUnrecognised(b, this.processScope(b.pid))),
      uprobes,
    );
    this.bellFd = eventfd();
    this.worker = new Worker(workerSpec(new URL("./ring-worker.ts", import.meta.url), "./src/dataplane/ring-worker.ts"));
  }

  /**
   * While the tls programs are not loaded, hold scoped processes that open a
   * TLS library (bpf/libopen.h) until it is attached. Without the syscall
   * program there is nothing to hold them with: the programs load now.
   */
  private watchLibraryOpens(syscalls: boolean): void {
    if (this.tlsLoaded()) return;
    if (!syscalls) {
      this.program("tls", MODE_PROGRAMS[this.mode][0]);
      return;
    }
    this.maps.libWatch.update(encodeU32(0), encodeU32(1));
  }

  private tlsLoaded(): boolean {
    return !this.deferred.has("tls") || this.groupObjects.has("tls");
  }

  /**
   * The fd of a program of group, loading the group first when it was
   * deferred (onDemand): the caller holds the process that needs it.
   */
  private program(group: ProgramGroup, name: ProgramName): number {
    if (!this.deferred.has(group)) return this.obj.program(name).fd;
    let o = this.groupObjects.get(group);
    if (!o) {
      const failed = this.groupFailures.get(group);
      if (failed) throw failed;
      try {
        o = loadGroup(this.objectBytes, this.obj, this.mode, this.uprobes, group).obj;
      } catch (e) {
        // Said once in full (the verifier's lines); each attach that needed it says it in short.
        this.opts.warn?.((e as Error).message);
        const short = new Error(`the ${group} programs did not load (said above): this file's TLS writes keep their placeholders`);
        this.groupFailures.set(group, short);
        throw short;
      }
      this.groupObjects.set(group, o);
    }
    return o.program(name).fd;
  }

  /** Load the object, attach the process tracepoints and start the ring worker. */
  static async start(opts: DataplaneOptions): Promise<Dataplane> {
    const bytes = await objectBytes();
    const loaded = loadObject(bytes, {
      mode: opts.mode,
      scanCap: opts.scanCap,
      uprobes: opts.uprobes,
      onDemand: opts.programsOnDemand,
      facts: opts.facts,
    });
    const { obj } = loaded;
    let dp: Dataplane | undefined;
    try {
      dp = new Dataplane(loaded, bytes, opts);
      // The worker boots (a thread with its own VM) while the tracepoints attach.
      const workerReady = dp.startWorker();
      workerReady.catch(() => {}); // awaited below
      for (const name of processTracepoints(loaded.mode)) dp.tracepoints.push(obj.program(name).attach());
      let syscalls = true;
      try {
        dp.tracepoints.push(obj.program(SYSCALL_PROGRAM).attach());
        // After SYSCALL_PROGRAM: the kernel runs a tracepoint's programs in the order they were attached.
        if (loaded.backupSyscalls) dp.tracepoints.push(obj.program(SYSCALL_BACKUP_PROGRAM).attach());
      } catch (e) {
        syscalls = false;
        opts.warn?.(
          `cannot attach ${SYSCALL_PROGRAM} (${(e as Error).message.split("\n")[0]}): TLS connections are tied to their socket ` +
            "only through SSL_set_fd; secrets with rules are refused on other connections",
        );
      }
      dp.watchLibraryOpens(syscalls);
      await workerReady;
      return dp;
    } catch (e) {
      if (dp) await dp.close();
      else obj.close();
      throw e;
    }
  }

  private startWorker(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.worker.onerror = (e) => reject(new Error(`ring worker failed: ${e.message}`));
      this.worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const m = e.data;
        if (m.type === "ready") resolve();
        else this.onWorkerMessage(m);
      };
      this.post({
        type: "init",
        eventsFd: this.maps.events.fd,
        eventsSize: this.maps.events.maxEntries,
        writesFd: this.maps.writes.fd,
        writesSize: this.maps.writes.maxEntries,
        bellFd: this.bellFd,
        stopReleasedFd: this.maps.stopReleased.fd,
        procsFd: this.maps.procs.fd,
        stopWaitMs: this.opts.stopWaitMs ?? 500,
        trace: (this.opts.holds ?? "ptrace") === "ptrace",
        paused: this.writesPaused,
      });
    });
  }

  private post(m: ToWorker): void {
    if (this.bellFd < 0) return; // the worker is gone
    this.worker.postMessage(m);
    eventfdSignal(this.bellFd);
  }

  private onWorkerMessage(m: FromWorker): void {
    switch (m.type) {
      case "ack":
        this.acks.get(m.seq)?.();
        this.acks.delete(m.seq);
        break;
      case "events":
        this.onEvents(m.events);
        break;
      case "stats":
      case "stopped":
        this.addStats(m.stats);
        for (const w of this.statsWaiters.splice(0)) w();
        break;
    }
  }

  private addStats(s: WorkerStats): void {
    for (const k of Object.keys(this.workerTotals) as (keyof WorkerStats)[]) this.workerTotals[k] += s[k];
  }

  private onEvents(events: DataplaneEvent[]): void {
    if (this.closed) return;
    // Coalesce: one attach pass per process per batch; held processes resume after it.
    const sync = new Set<number>();
    const resume = new Set<number>();
    /** fork children held at their first stop (ring-worker.ts) until attached */
    const forked = new Set<number>();
    /** fork children (of a process, not a launcher) -> their parent */
    const parents = new Map<number, number>();
    const libOpens: LibOpenEvent[] = [];
    for (const ev of events) {
      switch (ev.type) {
        case EventType.FORK:
          // A child has none of its parent's probes (they are per process): attached before it runs.
          if (!this.launcherPids.has(ev.ppid)) {
            sync.add(ev.tgid);
            parents.set(ev.tgid, ev.ppid);
          }
          if (ev.held) forked.add(ev.tgid);
          this.learnNetns(ev.scopeId, ev.tgid);
          break;
        case EventType.EXEC:
          sync.add(ev.tgid);
          parents.delete(ev.tgid);
          resume.add(ev.tgid);
          this.learnNetns(ev.scopeId, ev.tgid);
          break;
        case EventType.EXEC_KNOWN:
          // Not held: its files are attached; what its old image had and this one has not goes.
          sync.add(ev.tgid);
          parents.delete(ev.tgid);
          break;
        case EventType.EXIT:
          sync.delete(ev.tgid);
          resume.delete(ev.tgid);
          forked.delete(ev.tgid);
          this.attacher.detach(ev.tgid);
          this.unhookable.exited(ev.tgid);
          break;
        case EventType.REFUSED:
          for (const l of this.refusalListeners) l(ev);
          break;
        case EventType.SNI:
          void this.onSniEvent(ev);
          break;
        case EventType.LIB_OPEN:
          libOpens.push(ev);
          break;
        case EventType.UNHOOKED_TLS:
          // a process mapping a probed file: its TLS may be hooked in a way the kernel check does not see
          if (!mapsAnyOf(ev.tgid, this.attacher.filesOf(ev.tgid))) this.unhookable.unhooked(ev);
          break;
      }
    }
    // A process removed from its scope meanwhile (removeProcess) is not attached again.
    for (const tgid of sync) {
      const scope = this.processScope(tgid);
      if (scope === undefined) continue;
      const parent = parents.get(tgid);
      const files = parent === undefined ? this.attach(tgid) : this.attachChild(tgid, parent);
      if (files && resume.has(tgid)) this.learnImage(tgid, scope, files);
    }
    for (const tgid of resume) this.post({ type: "release", reason: "exec", tgid, tid: tgid, seq: 0n });
    for (const tgid of forked) this.post({ type: "release", reason: "fork", tgid, tid: tgid, seq: 0n });
    // Held at the open of a TLS library: attached (the tls programs loaded first if need be), then let go.
    for (const ev of libOpens) {
      const lib = openedLibrary(ev);
      if (lib !== null && this.processScope(ev.tgid) !== undefined) this.attach(ev.tgid, [lib]);
      if (ev.hold) this.post({ type: "release", reason: "lib", tgid: ev.tgid, tid: ev.tid, seq: ev.seq });
    }
  }

  /**
   * Attach the TLS files of tgid (and `extra`, files it is opening); its file
   * ids, or null when some could not be attached. The system's libssl is
   * attached for what a process may dlopen — once the tls programs are
   * loaded; before, opens are watched instead (watchLibraryOpens).
   */
  private attach(tgid: number, extra?: string[]): string[] | null {
    const had = this.tlsLoaded();
    let r = this.attacher.sync(tgid, { systemLibssl: had, extra });
    if (!had && this.tlsLoaded()) {
      // They loaded for this process: from now on every process synced gets the system's libssl,
      // as the agent's do, and so do the processes released before (they may dlopen it any time).
      const first = r;
      r = this.attacher.sync(tgid, { systemLibssl: true, extra });
      r = { ...r, errors: [...first.errors, ...r.errors], refused: [...first.refused, ...r.refused] };
      for (const pid of this.attacher.pids())
        if (pid !== tgid && this.processScope(pid) !== undefined) {
          const other = this.attacher.extend(pid, { systemLibssl: true });
          for (const err of other.errors) this.opts.warn?.(`attach to pid ${pid}: ${err}`);
        }
      this.maps.libWatch.update(encodeU32(0), encodeU32(0));
    }
    for (const err of r.errors) this.opts.warn?.(`attach to pid ${tgid}: ${err}`);
    for (const f of r.refused) this.opts.warn?.(`pid ${tgid}: ${f.reason}: ${f.path}: ${f.detail}; its TLS writes keep their placeholders`);
    return r.errors.length ? null : r.files;
  }

  /** Attach a fork child to its parent's files (ProbeAttacher.inherit), or look at it afresh. */
  private attachChild(tgid: number, parent: number): string[] | null {
    const r = this.tlsLoaded() ? this.attacher.inherit(tgid, parent) : null;
    if (!r) return this.attach(tgid);
    for (const err of r.errors) this.opts.warn?.(`attach to pid ${tgid}: ${err}`);
    return r.errors.length ? null : r.files;
  }

  /**
   * Remember pid's executable (in its mount namespace, which decides the
   * libraries it loads) as known: a traced process that execs it is not held.
   * Only an image whose TLS files are at most the system's libssl: every
   * process kloak has synced since the tls programs loaded has that attached
   * for itself already (a fork child at its fork hold), and before they load
   * an image with TLS files is never learnt (its files are none) while the
   * open watch holds the loader's open of libssl. Any other TLS file (a
   * Go, node or Bun executable, GnuTLS, a bundled libssl) needs the exec's
   * hold to be attached for the process before it runs.
   */
  private learnImage(pid: number, scope: number, files: string[]): void {
    const system = new Set(this.tlsLoaded() ? this.attacher.systemLibsslIds(pid) : []);
    if (files.some((id) => !system.has(id))) return;
    const file = exePath(pid) === null ? null : kernelFileId(`/proc/${pid}/exe`);
    const mntns = mntnsInode(pid);
    if (!file || mntns === null) return;
    const key = encodeImage(file.ino, file.dev, mntns);
    const id = Buffer.from(key).toString("hex");
    if (this.images.has(id)) return;
    this.images.set(id, { key, scope });
    this.maps.images.update(key, new Uint8Array([1]));
  }

  /** Processes in a scope whose TLS kloak cannot hook (unhookable.ts): each reported once. */
  readonly unhookable = new UnhookableLog();

  onRefusal(fn: (e: RefusalEvent) => void): void {
    this.refusalListeners.push(fn);
  }

  /**
   * SNI names clients of protected processes set. A client held at a new
   * name (see holdAtNewSni) resumes once fn settles, or after SNI_HOLD_MS at most:
   * fn resolves the name if a wildcard rule covers it.
   */
  onSni(fn: (e: SniEvent) => Promise<void> | void): void {
    this.sniHandler = fn;
  }

  /** Hold clients at SNI names not seen before; wanted while any secret has a wildcard rule. */
  holdAtNewSni(on: boolean): void {
    this.maps.sniHold.update(encodeU32(0), encodeU32(on ? 1 : 0));
  }

  private async onSniEvent(e: SniEvent): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([this.sniHandler(e), new Promise((r) => (timer = setTimeout(r, SNI_HOLD_MS)))]);
    } catch (err) {
      this.opts.warn?.(`SNI ${e.sni}: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    // Closed meanwhile: the maps are gone, but a held client must still run.
    if (!this.closed) this.maps.names.update(encodeName256(e.sni), new Uint8Array([1]));
    if (!e.hold) return;
    // Closed: the worker let every traced thread go; an untraced process needs its SIGCONT.
    if (this.closed) kill(e.tgid, SIGCONT);
    else this.post({ type: "release", reason: "sni", tgid: e.tgid, tid: e.tid, seq: e.seq });
  }

  /** Load one secret; resolves once the worker holds it too, so it is usable at once. */
  async setSecret(s: SecretEntry): Promise<void> {
    // The policy first: a findable placeholder must never be unrestricted, not even briefly.
    if (s.rules) this.maps.policy.update(encodeU32(s.id), encodePolicy(s.rules));
    else this.maps.policy.delete(encodeU32(s.id));
    this.maps.secrets.update(encodeU32(s.id), encodeBytes(s.placeholder));
    // For HTTP/2 header blocks (bpf/hpack.h): the placeholder's Huffman code.
    this.maps.hcodes.update(encodeU32(s.id), encodeHcode(s.placeholder, s.value));
    if (this.mode === "kernel") {
      this.maps.values.update(encodeU32(s.id), encodeBytes(s.value));
      // Only a value whose code fits its placeholder's bits is ever spliced.
      if (huffmanBits(s.value) === huffmanBits(s.placeholder)) this.maps.hvalues.update(encodeU32(s.id), encodeHcode(s.value, s.value));
      else this.maps.hvalues.delete(encodeU32(s.id));
    } else await this.toWorker({ type: "secret", seq: 0, id: s.id, placeholder: s.placeholder, value: s.value });
    // Findable last: the kernel never sees a placeholder whose value is not ready.
    this.maps.placeholders.update(encodePhKey(s.key.tail, s.key.tailLen), encodeU32(s.id));
  }

  private toWorker(m: Extract<ToWorker, { seq: number }>): Promise<void> {
    const seq = ++this.seq;
    return new Promise((resolve) => {
      this.acks.set(seq, resolve);
      this.post({ ...m, seq });
    });
  }

  /**
   * kloak resolved name to addr (16 bytes, IPv4 mapped). validUntilNs
   * (CLOCK_MONOTONIC): connections bound after it no longer match;
   * VALID_FOREVER while the name still resolves to it.
   */
  setResolved(name: string, addr: Uint8Array, validUntilNs: bigint): void {
    this.maps.resolved.update(encodeNameAddr(name, addr), encodeResolved(validUntilNs));
  }

  deleteResolved(name: string, addr: Uint8Array): void {
    this.maps.resolved.delete(encodeNameAddr(name, addr));
  }

  grant(scopeId: number, secretId: number): void {
    this.maps.entitled.update(encodeGrant(scopeId, secretId), new Uint8Array([1]));
  }

  /** The scope may no longer redeem the secret (writes already substituted still restore). false: it could not. */
  revoke(scopeId: number, secretId: number): boolean {
    return this.maps.entitled.delete(encodeGrant(scopeId, secretId));
  }

  /** Every grant in the kernel, by scope: scope id -> secret ids. */
  grantsByScope(): Map<number, number[]> {
    const out = new Map<number, number[]>();
    for (const key of this.maps.entitled.keys()) {
      const v = new DataView(key.buffer);
      const scope = v.getUint32(0, true);
      let ids = out.get(scope);
      if (!ids) out.set(scope, (ids = []));
      ids.push(v.getUint32(4, true));
    }
    return out;
  }

  /**
   * Processes in this cgroup v2 (id: the inode number of its directory in
   * the cgroup2 fs) or in a cgroup below it join scopeId at their next exec
   * or fork, and are held at that exec until attached like any scoped
   * process. Processes already in it are not touched: addProcess them.
   */
  addCgroup(cgroupId: bigint, scopeId: number): void {
    this.maps.cgroups.update(encodeU64(cgroupId), encodeU32(scopeId));
  }

  /** false when the cgroup was not registered. Its processes stay in their scope: removeProcess them. */
  removeCgroup(cgroupId: bigint): boolean {
    return this.maps.cgroups.delete(encodeU64(cgroupId));
  }

  /** The scope of a protected process, or undefined. */
  processScope(pid: number): number | undefined {
    const value = new Uint8Array(LAYOUT.kloak_proc.size);
    if (!this.maps.procs.lookup(encodeU32(pid), value)) return undefined;
    return new DataView(value.buffer).getUint32(0, true);
  }

  /** Every protected process, by scope: scope id -> pids. */
  processesByScope(): Map<number, number[]> {
    const out = new Map<number, number[]>();
    const value = new Uint8Array(LAYOUT.kloak_proc.size);
    for (const key of this.maps.procs.keys()) {
      if (!this.maps.procs.lookup(key, value)) continue; // exited meanwhile
      const scope = new DataView(value.buffer).getUint32(0, true);
      let pids = out.get(scope);
      if (!pids) out.set(scope, (pids = []));
      pids.push(new DataView(key.buffer).getUint32(0, true));
    }
    return out;
  }

  /**
   * The process leaves its scope: no new substitution starts (and its
   * children no longer join). Its probes go once none of its writes is in
   * flight, so a substituted write still puts the placeholder back.
   * false when it was not protected.
   */
  removeProcess(pid: number): boolean {
    const had = this.maps.procs.delete(encodeU32(pid));
    this.post({ type: "disown", tgid: pid });
    // Not at once: a probe that found the process in the map just before the
    // delete may be about to record its write.
    this.detachWhenIdle(pid, INFLIGHT_POLL_MS);
    return had;
  }

  private detachWhenIdle(pid: number, delayMs: number): void {
    if (this.closed) return;
    clearTimeout(this.detaching.get(pid));
    const timer = setTimeout(() => {
      this.detaching.delete(pid);
      if (this.closed || this.processScope(pid) !== undefined) return; // added back meanwhile
      if (this.writesInFlight(pid)) {
        this.detachWhenIdle(pid, Math.min(delayMs * 2, 1000));
        return;
      }
      this.attacher.detach(pid);
      // kloak_exit cleans these for scoped processes only.
      this.maps.stopOwner.delete(encodeU32(pid));
      this.maps.stopReleased.delete(encodeU32(pid));
    }, delayMs);
    timer.unref?.();
    this.detaching.set(pid, timer);
  }

  /**
   * Before anything is detached: no process is in a scope any more (what it
   * writes from now on goes out as it is), and every write already in flight
   * gets its restore, from its return probe (kernel mode) or from the worker
   * (stop mode), which both still run. A process still inside such a write
   * after CLOSE_WAIT_MS is killed: once the probes are gone nothing could put
   * its placeholder back, and it must not live on with the value (a
   * descendant that outlived CMD, a pod's process when the agent stops).
   */
  private async settleWrites(): Promise<void> {
    // No scoped process alive (every one's exit removed it; `kloak exec` after its whole tree
    // ended): no probe can be recording a write for one, nothing to wait for.
    const anyScoped = this.maps.procs.count() > 0 || this.maps.cgroups.count() > 0;
    for (const map of [this.maps.cgroups, this.maps.launchers, this.maps.procs]) for (const key of map.keys()) map.delete(key);
    const F = LAYOUT.kloak_write_event.fields;
    const deadline = performance.now() + CLOSE_WAIT_MS;
    for (let first = true; ; first = false) {
      // A probe that found its process just before the delete may still be recording its write.
      if (anyScoped || !first) await Bun.sleep(INFLIGHT_POLL_MS);
      const writers = new Set<number>();
      for (const v of this.liveWrites()) writers.add(v.getUint32(F.tgid, true));
      if (writers.size === 0) return;
      if (performance.now() >= deadline) {
        for (const pid of writers) {
          kill(pid, SIGKILL);
          this.opts.warn?.(`killed process ${pid}: still inside a TLS write holding a secret ${CLOSE_WAIT_MS} ms after kloak began to stop`);
        }
        return;
      }
    }
  }

  /** Whether a thread of pid is between a substitution and its restore. */
  private writesInFlight(pid: number): boolean {
    let tids: string[];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      return false; // gone
    }
    const value = new Uint8Array(LAYOUT.kloak_write_event.size);
    if (tids.some((tid) => this.maps.inflight.lookup(encodeU32(Number(tid)), value))) return true;
    // Go writes are recorded by goroutine (bpf/golang.h), not by thread.
    const v = new DataView(value.buffer);
    for (const key of this.maps.goInflight.keys())
      if (this.maps.goInflight.lookup(key, value) && v.getUint32(LAYOUT.kloak_write_event.fields.tgid, true) === pid) return true;
    return false;
  }

  /** The restore records (kloak_write_event) of live threads; a thread that died inside its write leaves its record behind. */
  private *liveWrites(): Generator<DataView> {
    const F = LAYOUT.kloak_write_event.fields;
    const value = new Uint8Array(LAYOUT.kloak_write_event.size);
    const v = new DataView(value.buffer);
    for (const key of this.maps.inflight.keys()) {
      if (!this.maps.inflight.lookup(key, value)) continue;
      if (existsSync(`/proc/${v.getUint32(F.tgid, true)}/task/${v.getUint32(F.tid, true)}`)) yield v;
    }
    // Go writes, by goroutine: its thread may change, so only the process must live.
    for (const key of this.maps.goInflight.keys()) {
      if (!this.maps.goInflight.lookup(key, value)) continue;
      if (existsSync(`/proc/${v.getUint32(F.tgid, true)}`)) yield v;
    }
  }

  /** Whether a live thread is between substituting secret id and restoring it. */
  private secretInFlight(id: number): boolean {
    const F = LAYOUT.kloak_write_event.fields;
    for (const v of this.liveWrites()) {
      const n = Math.min(v.getUint32(F.count, true), MAX_SUBST);
      for (let i = 0; i < n; i++) if (v.getUint32(F.items + i * LAYOUT.kloak_item.size + 8, true) === id) return true;
    }
    return false;
  }

  /**
   * Unload a secret. Unfindable first (its placeholder key), so no new
   * write substitutes it; then its grants go; then, once no write that
   * substituted it is still to be restored (at most DELETE_WAIT_MS), its
   * placeholder, value and rules, and the worker's copy.
   */
  async deleteSecret(id: number): Promise<void> {
    const ph = new Uint8Array(LAYOUT.kloak_bytes.size);
    if (this.maps.secrets.lookup(encodeU32(id), ph)) {
      const len = new DataView(ph.buffer).getUint32(0, true);
      const tailLen = Math.min(KEY_LEN, len - MARKER_LEN);
      const key = encodePhKey(ph.subarray(8 + MARKER_LEN, 8 + MARKER_LEN + tailLen), tailLen);
      const owner = new Uint8Array(4);
      // Keys are prefix-free among loaded secrets; never delete another secret's.
      if (tailLen > 0 && this.maps.placeholders.lookup(key, owner) && new DataView(owner.buffer).getUint32(0, true) === id) this.maps.placeholders.delete(key);
    }
    for (const [scope, ids] of this.grantsByScope()) if (ids.includes(id)) this.revoke(scope, id);
    // A probe may have looked the key up just before the delete: look after it is done.
    const deadline = performance.now() + DELETE_WAIT_MS;
    do await Bun.sleep(INFLIGHT_POLL_MS);
    while (!this.closed && this.secretInFlight(id) && performance.now() < deadline);
    if (this.closed) return;
    if (this.secretInFlight(id))
      this.opts.warn?.(`secret ${id}: a write that substituted it is still in flight after ${DELETE_WAIT_MS} ms; deleting it anyway`);
    this.maps.secrets.delete(encodeU32(id));
    this.maps.hcodes.delete(encodeU32(id));
    if (this.mode === "kernel") {
      this.maps.values.delete(encodeU32(id));
      this.maps.hvalues.delete(encodeU32(id));
    }
    this.maps.policy.delete(encodeU32(id));
    this.maps.onViolation.delete(encodeU32(id));
    if (this.mode === "stop") await this.toWorker({ type: "delete", seq: 0, id });
  }

  /** Entries and capacity of the maps that fill with pods, processes, secrets and connections. */
  mapUsage(): MapUsage[] {
    const m = this.maps;
    return [m.procs, m.secrets, m.entitled, m.cgroups, m.conns, m.policy].map((map) => ({
      name: map.name,
      entries: map.count(),
      capacity: map.maxEntries,
    }));
  }

  /** Children that pid forks from now on join scopeId; pid itself is not attached. */
  addLauncher(pid: number, scopeId: number): void {
    this.launcherPids.add(pid);
    this.maps.launchers.update(encodeU32(pid), encodeU32(scopeId));
  }

  removeLauncher(pid: number): void {
    this.maps.launchers.delete(encodeU32(pid));
  }

  /** Protect a running process (and, through the fork tracepoint, its future children). */
  addProcess(pid: number, scopeId: number): void {
    this.maps.procs.update(encodeU32(pid), encodeProc(scopeId));
    this.learnNetns(scopeId, pid);
    // Traced before its probes exist: its first hold is already one its parent cannot see.
    this.post({ type: "adopt", tgid: pid });
    this.attach(pid);
  }

  /**
   * Pin the maps a guardian needs to release this kloak's processes without
   * leaving a value behind (release.ts): processes, writes in flight,
   * placeholders, stop claims. Undone by unpin().
   */
  pinState(base: string): void {
    try {
      for (const [suffix, name] of Object.entries(PINNED_MAPS)) this.obj.map(name).pin(pinPath(base, suffix as keyof typeof PINNED_MAPS));
    } catch (e) {
      unpinState(base);
      throw e;
    }
  }

  counters(): Record<CounterName, bigint> {
    const out = {} as Record<CounterName, bigint>;
    const value = new Uint8Array(8 * this.cpus);
    const view = new DataView(value.buffer);
    COUNTERS.forEach((name, i) => {
      let sum = 0n;
      if (this.maps.counters.lookup(encodeU32(i), value)) for (let c = 0; c < this.cpus; c++) sum += view.getBigUint64(c * 8, true);
      out[name] = sum;
    });
    return out;
  }

  /**
   * Runs of the send program the kernel skipped: from 7.0 a program on a
   * syscall tracepoint that is preempted on a CPU makes the program's other
   * runs there skip (README, Limits). 0n where it cannot be read.
   */
  syscallRunsSkipped(): bigint {
    return this.recursionMisses(SYSCALL_PROGRAM);
  }

  /** The counters the metrics read, now; `worker`: the worker's stats, when the caller has them. */
  snapshot(worker?: WorkerStats): DataplaneSnapshot {
    return {
      mode: this.mode,
      counters: this.counters(),
      refusals: this.refusalCounts(),
      worker,
      unhookable: this.unhookable.counts(),
      syscallRunsSkipped: this.syscallRunsSkipped(),
      syscallBackupRunsSkipped: this.syscallBackupRunsSkipped(),
    };
  }

  /** The programs this data plane attached to tracepoints, in the order they run on a shared one. */
  tracepointPrograms(): string[] {
    return this.tracepoints.map((l) => l.description);
  }

  /** The same for its backup (kernels 7.0+, bpf/sysruns.h); 0n where it is not loaded. */
  syscallBackupRunsSkipped(): bigint {
    return this.backupSyscalls ? this.recursionMisses(SYSCALL_BACKUP_PROGRAM) : 0n;
  }

  private recursionMisses(program: ProgramName): bigint {
    try {
      return progRecursionMisses(this.obj.program(program).fd);
    } catch {
      return 0n;
    }
  }

  /** Refusals the kernel counted, by reason (refusals.ts); the worker's are in workerStats(). */
  refusalCounts(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    const value = new Uint8Array(8 * this.cpus);
    const view = new DataView(value.buffer);
    for (const r of REFUSALS) {
      if (r.kernel === null) continue;
      let sum = 0n;
      if (this.maps.refusals.lookup(encodeU32(r.kernel), value)) for (let c = 0; c < this.cpus; c++) sum += view.getBigUint64(c * 8, true);
      out[r.name] = sum;
    }
    // Go executables kloak refused to probe (each file once): user space decides these.
    out.go_binary_unsupported = BigInt(this.attacher.refusedFiles.size);
    return out;
  }

  /**
   * How a scope is protected: the network namespace (inode of /proc/<pid>/ns/net)
   * its sockets must be in, strict binding (refuse connections bound only
   * through the app's own BIO), and what a violation does unless the secret
   * says otherwise. netns null: the namespace of the first process seen in the
   * scope (a pod's); until then its secrets with rules are refused.
   */
  setScope(scopeId: number, s: ScopeSettings): void {
    this.scopes.set(scopeId, s);
    // A scope taken over keeps the network namespace its processes were seen in: no window where its secrets are refused.
    const adopted = s.netns === null ? this.adoptedState?.netns.get(scopeId) : undefined;
    if (adopted) this.learnedNetns.add(scopeId);
    this.writeScope(scopeId, s.netns ?? adopted ?? 0n);
  }

  removeScope(scopeId: number): void {
    this.scopes.delete(scopeId);
    this.maps.scopes.delete(encodeU32(scopeId));
    for (const [id, img] of this.images) {
      if (img.scope !== scopeId) continue;
      this.maps.images.delete(img.key);
      this.images.delete(id);
    }
  }

  private writeScope(scopeId: number, netns: bigint): void {
    const s = this.scopes.get(scopeId);
    if (!s) return;
    const flags = s.strictBinding ? ScopeFlags.STRICT_BINDING : 0;
    this.maps.scopes.update(encodeU32(scopeId), encodeScope({ netns, flags, onViolation: actionCode(s.onViolation) }));
  }

  /** A scope waiting for its first process's network namespace takes pid's. */
  private learnNetns(scopeId: number, pid: number): void {
    const s = this.scopes.get(scopeId);
    if (!s || s.netns !== null || this.learnedNetns.has(scopeId)) return;
    try {
      const netns = netnsInode(pid);
      this.learnedNetns.add(scopeId);
      this.writeScope(scopeId, netns);
    } catch {
      // gone already: the next process will tell
    }
  }

  /** What a violation with this secret does (else its scope's default). */
  setViolationAction(secretId: number, action: ViolationAction | null): void {
    if (action === null) this.maps.onViolation.delete(encodeU32(secretId));
    else this.maps.onViolation.update(encodeU32(secretId), encodeU32(actionCode(action)));
  }

  /**
   * Substitution results of stop mode, as counted by the worker, once it has
   * drained its rings: every event recorded before the call has reached the
   * listeners (onRefusal, …) when this resolves.
   */
  async workerStats(): Promise<WorkerStats> {
    if (!this.closed) {
      await new Promise<void>((r) => {
        this.statsWaiters.push(r);
        this.post({ type: "stats" });
      });
    }
    return { ...this.workerTotals };
  }

  get attachedProcesses(): number {
    return this.attacher.processes;
  }

  get uprobeLinks(): number {
    return this.attacher.links;
  }

  get attachErrors(): number {
    return this.attacher.attachErrors;
  }

  /**
   * Stop: no process is protected any more, every substituted write has been
   * restored, the worker has finished what was queued. `handOff` (a process
   * about to exit): the programs, links and maps go to a holder process that
   * releases them after this one has exited (lib/fd-handoff.ts), instead of
   * this process waiting for the kernel's detach; kernel-mode values are
   * wiped from the maps first.
   */
  async close(opts: { handOff?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.detaching.values()) clearTimeout(t);
    this.detaching.clear();
    await this.settleWrites();
    if (opts.handOff) {
      for (const key of this.maps.values.keys()) this.maps.values.delete(key);
      await this.stopWorker();
      if (handOffToHolder(bpfAndPerfFds())) return; // the fds die with this process; the holder releases the objects
    }
    // Detach first so no new stop can start, then let the worker finish what is queued.
    for (const l of this.tracepoints) l.destroy();
    for (const fd of this.adoptedTracepoints.splice(0)) closeFd(fd);
    await this.attacher.detachAll();
    await this.stopWorker();
    for (const o of this.groupObjects.values()) o.close();
    this.obj.close();
  }

  private async stopWorker(handover = false): Promise<void> {
    if (this.bellFd < 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 2000);
      this.statsWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
      this.post({ type: "stop", handover });
    });
    this.worker.terminate();
    closeFd(this.bellFd);
    this.bellFd = -1;
  }

  // ---- Zero-gap upgrade (handover.ts) ----

  /**
   * Take over a predecessor's data plane (a claimed handover): load the same
   * object reusing every one of its maps, keep its tracepoint and uprobe links
   * (their programs are this object's, loaded by the predecessor: same code,
   * same maps), start the worker on the same rings with kloak_writes unread
   * until resumeWrites(), and sync every process of the maps with the
   * attacher. Throws when anything of it fails; the caller then releases the
   * handover and starts afresh.
   */
  static async adopt(opts: DataplaneOptions, h: Handover): Promise<Dataplane> {
    const bytes = await objectBytes();
    const names = readdirSync(h.path);
    const reuse = new Map<string, number>();
    let loaded: ReturnType<typeof loadObject> | undefined;
    try {
      for (const n of names) if (n.startsWith("map-")) reuse.set(n.slice(4), objGet(`${h.path}/${n}`));
      loaded = loadObject(bytes, { mode: h.mode, scanCap: opts.scanCap, uprobes: h.uprobes, reuseMaps: reuse });
    } finally {
      for (const fd of reuse.values()) closeFd(fd); // libbpf holds its own
    }
    const { obj, mode, uprobes } = loaded;
    const missing = objectMapNames(obj).filter((n) => !reuse.has(n));
    const problem =
      handoverIdentity(bytes, { mode, uprobes, scanCap: opts.scanCap }) !== h.identity
        ? "the handover's identity does not match this object and settings"
        : missing.length
          ? `the handover lacks maps ${missing.join(", ")}`
          : names.filter((n) => n.startsWith("tp-")).length < processTracepoints(mode).length
            ? "the handover lacks tracepoint links"
            : undefined;
    if (problem) {
      obj.close();
      throw new Error(problem);
    }
    let dp: Dataplane | undefined;
    const linkFds: number[] = [];
    try {
      dp = new Dataplane({ ...loaded, reason: `taken over from kloak ${h.pid} (${mode} mode)` }, bytes, opts);
      dp.writesPaused = true;
      const attachments = new Map<string, number[]>();
      for (const n of names) {
        const up = parseUprobePin(n);
        if (!n.startsWith("tp-") && !up) continue;
        const fd = objGet(`${h.path}/${n}`);
        linkFds.push(fd);
        if (up) attachments.set(up.attachment, [...(attachments.get(up.attachment) ?? []), fd]);
        else dp.adoptedTracepoints.push(fd);
      }
      for (const [key, fds] of attachments) dp.attacher.adopt(key, fds);
      linkFds.length = 0; // owned by dp now
      dp.readAdoptedState();
      // Known images are the predecessor's: an exec of one is held and attached again until this one learns it.
      for (const key of dp.maps.images.keys()) dp.maps.images.delete(key);
      // Its tracer is gone; traced flags left behind would make the kernel hold single threads nobody traces.
      const value = new Uint8Array(LAYOUT.kloak_proc.size);
      const v = new DataView(value.buffer);
      for (const key of dp.maps.procs.keys()) {
        if (!dp.maps.procs.lookup(key, value) || (v.getUint32(4, true) & 1) === 0) continue;
        v.setUint32(4, v.getUint32(4, true) & ~1, true);
        dp.maps.procs.update(key, value, BPF_EXIST);
      }
      await dp.startWorker();
      // Every protected process claims its files (adopted links), or gets them attached.
      for (const pids of dp.processesByScope().values()) for (const pid of pids) dp.attach(pid);
      rmSync(h.path, { recursive: true, force: true });
      return dp;
    } catch (e) {
      for (const fd of linkFds) closeFd(fd);
      // Not close(): it would take the handover's processes out of their scopes and wait for writes
      // nobody serves. The handover's pins still hold everything; the caller releases it (releaseHandover).
      if (dp) await dp.abandon();
      else obj.close();
      throw e;
    }
  }

  /**
   * Let go of everything without touching the maps (no settling, no
   * restore): for a data plane whose processes someone else releases (a
   * handover's pins, the agent's own pins with releaseDead).
   */
  async abandon(): Promise<void> {
    if (this.closed && this.bellFd < 0 && this.adoptedTracepoints.length === 0 && this.tracepoints.length === 0) return;
    this.closed = true;
    for (const t of this.detaching.values()) clearTimeout(t);
    this.detaching.clear();
    await this.stopWorker(true);
    for (const l of this.tracepoints.splice(0)) l.destroy();
    for (const fd of this.adoptedTracepoints.splice(0)) closeFd(fd);
    await this.attacher.detachAll();
    this.obj.close();
  }

  private readAdoptedState(): void {
    const st: AdoptedState = { secretIds: new Map(), maxSecretId: 0, scopeOfCgroup: new Map(), netns: new Map(), maxScope: 0 };
    const ph = new Uint8Array(LAYOUT.kloak_bytes.size);
    for (const key of this.maps.secrets.keys()) {
      if (!this.maps.secrets.lookup(key, ph)) continue;
      const id = new DataView(key.buffer).getUint32(0, true);
      const len = Math.min(new DataView(ph.buffer).getUint32(0, true), ph.length - 8);
      st.secretIds.set(Buffer.from(ph.subarray(8, 8 + len)).toString("hex"), id);
      st.maxSecretId = Math.max(st.maxSecretId, id);
    }
    const scope = new Uint8Array(4);
    for (const key of this.maps.cgroups.keys()) {
      if (!this.maps.cgroups.lookup(key, scope)) continue;
      const id = new DataView(scope.buffer).getUint32(0, true);
      st.scopeOfCgroup.set(new DataView(key.buffer).getBigUint64(0, true), id);
      st.maxScope = Math.max(st.maxScope, id);
    }
    const sv = new Uint8Array(LAYOUT.kloak_scope.size);
    for (const key of this.maps.scopes.keys()) {
      if (!this.maps.scopes.lookup(key, sv)) continue;
      const id = new DataView(key.buffer).getUint32(0, true);
      st.netns.set(id, new DataView(sv.buffer).getBigUint64(LAYOUT.kloak_scope.fields.netns, true));
      st.maxScope = Math.max(st.maxScope, id);
    }
    for (const id of this.processesByScope().keys()) st.maxScope = Math.max(st.maxScope, id);
    let maxLayout = 0;
    for (const key of this.obj.map("kloak_go_layouts").keys()) maxLayout = Math.max(maxLayout, new DataView(key.buffer).getUint32(0, true));
    reserveLayoutIds(maxLayout + 1);
    this.adoptedState = st;
  }

  /** Whether this data plane was taken over from a predecessor and not pruned yet. */
  get adopted(): boolean {
    return this.adoptedState !== undefined;
  }

  /** The id the predecessor gave the secret with this placeholder (each handed out once), so grants and writes in flight stay valid. */
  adoptedSecretId(placeholder: Uint8Array): number | undefined {
    const st = this.adoptedState;
    if (!st) return undefined;
    const hex = Buffer.from(placeholder).toString("hex");
    const id = st.secretIds.get(hex);
    st.secretIds.delete(hex);
    return id;
  }

  /** Secret ids from here on are free (above every taken-over one). */
  firstFreeSecretId(): number {
    return (this.adoptedState?.maxSecretId ?? 0) + 1;
  }

  /** The scope the predecessor gave the pod whose container has this cgroup. */
  adoptedScope(cgroupId: bigint): number | undefined {
    return this.adoptedState?.scopeOfCgroup.get(cgroupId);
  }

  /** Scope ids from here on are free. */
  firstFreeScopeId(): number {
    return (this.adoptedState?.maxScope ?? 0) + 1;
  }

  /**
   * The secrets are loaded: serve the requests the taken-over rings hold, and
   * those to come.
   *
   * The processes taken over are not traced again: one may be inside a write
   * whose hold the kernel made as a group stop (untraced), and a tracer seizing
   * it then would wait for a ptrace hold that never comes — a restore not
   * served kills the writer. They are held with group stops (as with --holds
   * signals) until their next exec, where the worker adopts them safely
   * (stopped, single-threaded, in no write).
   */
  resumeWrites(): void {
    if (!this.writesPaused) return;
    this.writesPaused = false;
    this.post({ type: "serve" });
  }

  /**
   * After the first full sync of a taken-over data plane: what the
   * predecessor had and this agent does not goes. Scopes not live (their
   * grants, cgroups and processes), secrets this agent's catalog does not
   * know, probes no process uses.
   */
  async pruneAdopted(live: { scope: (id: number) => boolean; secret: (id: number) => boolean }): Promise<PruneResult> {
    const out: PruneResult = { scopes: 0, secrets: 0, files: 0 };
    if (!this.adoptedState || this.closed) return out;
    this.adoptedState = undefined;
    const dead = new Set<number>();
    for (const key of this.maps.scopes.keys()) {
      const id = new DataView(key.buffer).getUint32(0, true);
      if (!live.scope(id)) dead.add(id);
    }
    for (const [scope, ids] of this.grantsByScope()) if (!live.scope(scope)) for (const id of ids) this.revoke(scope, id);
    const scope = new Uint8Array(4);
    for (const key of this.maps.cgroups.keys())
      if (this.maps.cgroups.lookup(key, scope) && !live.scope(new DataView(scope.buffer).getUint32(0, true))) this.maps.cgroups.delete(key);
    for (const [id, pids] of this.processesByScope()) {
      if (live.scope(id)) continue;
      dead.add(id);
      for (const pid of pids) this.removeProcess(pid);
    }
    for (const id of dead) this.maps.scopes.delete(encodeU32(id));
    out.scopes = dead.size;
    const gone: number[] = [];
    for (const key of this.maps.secrets.keys()) {
      const id = new DataView(key.buffer).getUint32(0, true);
      if (!live.secret(id)) gone.push(id);
    }
    await Promise.all(gone.map((id) => this.deleteSecret(id)));
    out.secrets = gone.length;
    out.files = this.attacher.dropUnused((pid) => this.processScope(pid) !== undefined);
    return out;
  }

  /**
   * Stop without stopping protection: the worker finishes what is queued and
   * lets its tracees go; then every map and link is pinned as a handover
   * (handover.ts) that a successor with the same object takes over, and this
   * process may exit. Nothing is restored, resumed or detached. Returns the
   * handover's directory; throws (nothing offered, the caller closes) when
   * the pins cannot be made.
   */
  async handOver(deadline: number): Promise<string> {
    if (this.closed) throw new Error("the data plane is closed");
    this.closed = true;
    for (const t of this.detaching.values()) clearTimeout(t);
    this.detaching.clear();
    await this.stopWorker(true);
    const identity = handoverIdentity(await objectBytes(), { mode: this.mode, uprobes: this.uprobes, scanCap: this.opts.scanCap });
    const dir = partialHandoverDir();
    try {
      for (const name of MAPS) this.obj.map(name).pin(`${dir}/map-${name}`);
      for (const [suffix, name] of Object.entries(PINNED_MAPS)) this.obj.map(name).pin(pinPath(`${dir}/state`, suffix as keyof typeof PINNED_MAPS));
      let n = 0;
      for (const l of this.tracepoints) objPin(l.fd, `${dir}/tp-${n++}`);
      for (const fd of this.adoptedTracepoints) objPin(fd, `${dir}/tp-${n++}`);
      for (const [key, fds] of this.attacher.linksByAttachment()) fds.forEach((fd, i) => objPin(fd, `${dir}/${uprobePinName(key, i)}`));
      const final = `${PIN_DIR}/${handoverName({ identity, mode: this.mode, uprobes: this.uprobes, scanCap: this.opts.scanCap, pid: process.pid, deadline })}`;
      renameSync(dir, final);
      return final;
    } catch (e) {
      // Not offered. The worker is gone, so close() could not serve the writes it would wait for:
      // release through the pins made so far (placeholders back, writers resumed), then let go.
      // With no map pinned yet, the caller releases through its own pins (releaseDead).
      // Our links go first (the pins keep what was pinned), so the release's last resume is final.
      await this.abandon();
      if (existsSync(`${dir}/map-kloak_procs`)) await releaseHandover(dir);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }
}

