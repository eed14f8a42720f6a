/**
 * The data plane of one kloak process: the loaded object, its tracepoints,
 * per-process uprobes, the BPF maps of secrets and scopes, and the ring
 * worker. Everything here runs on the main thread except the worker.
 */
import { BpfLink, BpfMap, BpfObject, possibleCpus } from "../../lib/libbpf.ts";
import { workerSpec } from "../../lib/worker-spec.ts";
import { close as closeFd, eventfd, eventfdSignal, kill, SIGCONT } from "../../lib/libc.ts";
import { uprobeMultiSupported } from "../../lib/uprobe.ts";
import {
  COUNTERS,
  encodeBytes,
  encodeGrant,
  encodeName256,
  encodeNameAddr,
  encodePhKey,
  encodePolicy,
  encodeProc,
  encodeResolved,
  encodeU32,
  EventType,
  type CounterName,
  type DataplaneEvent,
  type KernelRule,
  type RefusalEvent,
  type SniEvent,
} from "./abi.ts";
import { Attacher } from "./attacher.ts";
import {
  loadObject,
  MODE_PROGRAMS,
  objectBytes,
  PROCESS_TRACEPOINTS,
  SEND_TRACEPOINTS,
  type RewriteMode,
  type UprobeKind,
} from "./bpf-object.ts";
import type { FromWorker, ToWorker, WorkerStats } from "./ring-protocol.ts";
import { TlsTargetFinder } from "./tls-targets.ts";

export interface DataplaneOptions {
  mode: RewriteMode | "auto";
  /** bytes of each write scanned for placeholders */
  scanCap: number;
  /** how long the worker waits for a writer to stop before giving up (fail closed) */
  stopWaitMs?: number;
  /** default: multi-uprobe links where the kernel has them */
  uprobes?: UprobeKind | "auto";
  /** called for attach problems and other things an operator should see */
  warn?: (msg: string) => void;
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
    | "stopReleased"
    | "policy"
    | "resolved"
    | "names"
    | "sniHold",
    BpfMap
  >;
  private readonly tracepoints: BpfLink[] = [];
  private readonly attacher: Attacher;
  private readonly worker: Worker;
  private readonly bellFd: number;
  private readonly cpus = possibleCpus();
  private seq = 0;
  private readonly acks = new Map<number, () => void>();
  private readonly refusalListeners: ((e: RefusalEvent) => void)[] = [];
  private sniHandler: (e: SniEvent) => Promise<void> | void = () => {};
  private readonly workerTotals: WorkerStats = {
    patched: 0,
    restored: 0,
    patchFailed: 0,
    notStopped: 0,
    noValue: 0,
  };
  private statsWaiters: (() => void)[] = [];
  private closed = false;

  private constructor(
    private readonly obj: BpfObject,
    mode: RewriteMode,
    reason: string,
    uprobes: UprobeKind,
    private readonly opts: DataplaneOptions,
  ) {
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
      stopReleased: obj.map("kloak_stop_released"),
      policy: obj.map("kloak_policy"),
      resolved: obj.map("kloak_resolved"),
      names: obj.map("kloak_names"),
      sniHold: obj.map("kloak_sni_hold"),
    };
    const [entry, ret] = MODE_PROGRAMS[mode];
    this.attacher = new Attacher(obj.program(entry).fd, obj.program(ret).fd, new TlsTargetFinder(), uprobes);
    this.bellFd = eventfd();
    this.worker = new Worker(workerSpec(new URL("./ring-worker.ts", import.meta.url), "./src/dataplane/ring-worker.ts"));
  }

  /** Load the object, attach the process tracepoints and start the ring worker. */
  static async start(opts: DataplaneOptions): Promise<Dataplane> {
    const want = opts.uprobes ?? "auto";
    const uprobes: UprobeKind = want === "auto" ? (uprobeMultiSupported() ? "multi" : "single") : want;
    const { obj, mode, reason } = loadObject(await objectBytes(), { ...opts, uprobes });
    let dp: Dataplane | undefined;
    try {
      dp = new Dataplane(obj, mode, reason, uprobes, opts);
      for (const name of PROCESS_TRACEPOINTS) dp.tracepoints.push(obj.program(name).attach());
      for (const name of SEND_TRACEPOINTS) {
        try {
          dp.tracepoints.push(obj.program(name).attach());
        } catch (e) {
          opts.warn?.(
            `cannot attach ${name} (${(e as Error).message.split("\n")[0]}): TLS connections are tied to their socket ` +
              "only through SSL_set_fd; secrets with rules are refused on other connections",
          );
        }
      }
      await dp.startWorker();
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
        ringFd: this.maps.events.fd,
        ringSize: this.maps.events.maxEntries,
        bellFd: this.bellFd,
        stopReleasedFd: this.maps.stopReleased.fd,
        stopWaitMs: this.opts.stopWaitMs ?? 500,
      });
    });
  }

  private post(m: ToWorker): void {
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
    this.workerTotals.patched += s.patched;
    this.workerTotals.restored += s.restored;
    this.workerTotals.patchFailed += s.patchFailed;
    this.workerTotals.notStopped += s.notStopped;
    this.workerTotals.noValue += s.noValue;
  }

  private onEvents(events: DataplaneEvent[]): void {
    if (this.closed) return;
    // Coalesce: one attach pass per process per batch; held processes resume after it.
    const sync = new Set<number>();
    const resume = new Set<number>();
    for (const ev of events) {
      switch (ev.type) {
        case EventType.FORK:
          sync.add(ev.tgid);
          break;
        case EventType.EXEC:
          sync.add(ev.tgid);
          resume.add(ev.tgid);
          break;
        case EventType.EXIT:
          sync.delete(ev.tgid);
          resume.delete(ev.tgid);
          this.attacher.detach(ev.tgid);
          break;
        case EventType.REFUSED:
          for (const l of this.refusalListeners) l(ev);
          break;
        case EventType.SNI:
          void this.onSniEvent(ev);
          break;
      }
    }
    for (const tgid of sync) this.attach(tgid);
    for (const tgid of resume) kill(tgid, SIGCONT);
  }

  private attach(tgid: number): void {
    const r = this.attacher.sync(tgid);
    for (const err of r.errors) this.opts.warn?.(`attach to pid ${tgid}: ${err}`);
  }

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
    kill(e.tgid, SIGCONT);
    if (this.closed) return;
    // Release the claim after the SIGCONT, by its seq, as the ring worker does.
    const seq = new Uint8Array(8);
    new DataView(seq.buffer).setBigUint64(0, e.seq, true);
    this.maps.stopReleased.update(encodeU32(e.tgid), seq);
  }

  /** Load one secret; resolves once the worker holds it too, so it is usable at once. */
  async setSecret(s: SecretEntry): Promise<void> {
    // The policy first: a findable placeholder must never be unrestricted, not even briefly.
    if (s.rules) this.maps.policy.update(encodeU32(s.id), encodePolicy(s.rules));
    else this.maps.policy.delete(encodeU32(s.id));
    this.maps.secrets.update(encodeU32(s.id), encodeBytes(s.placeholder));
    if (this.mode === "kernel") this.maps.values.update(encodeU32(s.id), encodeBytes(s.value));
    else await this.toWorker({ type: "secret", seq: 0, id: s.id, placeholder: s.placeholder, value: s.value });
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

  /** Children that pid forks from now on join scopeId; pid itself is not attached. */
  addLauncher(pid: number, scopeId: number): void {
    this.maps.launchers.update(encodeU32(pid), encodeU32(scopeId));
  }

  removeLauncher(pid: number): void {
    this.maps.launchers.delete(encodeU32(pid));
  }

  /** Protect a running process (and, through the fork tracepoint, its future children). */
  addProcess(pid: number, scopeId: number): void {
    this.maps.procs.update(encodeU32(pid), encodeProc(scopeId));
    this.attach(pid);
  }

  /** Pin the process map so a guardian can release stopped processes if this process dies. */
  pinProcesses(path: string): void {
    this.maps.procs.pin(path);
  }

  counters(): Record<CounterName, bigint> {
    const out = {} as Record<CounterName, bigint>;
    const value = new Uint8Array(8 * this.cpus);
    const view = new DataView(value.buffer);
    COUNTERS.forEach((name, i) => {
      let sum = 0n;
      if (this.maps.counters.lookup(encodeU32(i), value))
        for (let c = 0; c < this.cpus; c++) sum += view.getBigUint64(c * 8, true);
      out[name] = sum;
    });
    return out;
  }

  /** Substitution results of stop mode, as counted by the worker. */
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

  get attachErrors(): number {
    return this.attacher.attachErrors;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Detach first so no new stop can start, then let the worker finish what is queued.
    for (const l of this.tracepoints) l.destroy();
    await this.attacher.detachAll();
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 2000);
      this.statsWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
      this.post({ type: "stop" });
    });
    this.worker.terminate();
    closeFd(this.bellFd);
    this.obj.close();
  }
}
