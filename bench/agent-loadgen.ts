/**
 * Open-loop HTTPS load generator for the agent benchmark's webhook test, run
 * as its own process: `bun bench/agent-loadgen.ts CONFIG.json`.
 *
 * Request i is due at t0 + i/rate whatever happened before it: a request goes
 * out on the first idle keep-alive connection, or waits in a queue for one,
 * and its latency is measured from the time it was DUE, not from when it was
 * written (so a slow server cannot lower the offered load or hide its stalls:
 * no coordinated omission). The time from write to answer is reported too
 * ("service time").
 *
 * HTTP/1.1 on a fixed set of TLS connections (node:tls), verified against the
 * given CA for `serverName` while connecting to 127.0.0.1, as kube-apiserver
 * reaches a webhook Service. Before the load, two connections that must fail
 * are tried: one for another name, one without the CA.
 *
 * stdout: JSON lines {"event":"connected"}, {"event":"measure"} (first
 * measured request due), {"event":"window-end"} (last measured request due),
 * then {"event":"result", ...}. Nothing secret is printed: the Secret values
 * inside validate reviews are random and never leave this process.
 */
import { readFileSync } from "node:fs";
import * as tls from "node:tls";
import { nearestRank, sum } from "./stats.ts";
import { buildTemplates, checkAnswer, kindOf, KINDS, UID_MARKER, type ReviewKind, type ReviewTemplate, type SecretInventory } from "./agent-reviews.ts";

export interface LoadConfig {
  mode: "kloak" | "baseline";
  port: number;
  /** PEM the server must chain to */
  ca: string;
  serverName: string;
  rate: number;
  warmupS: number;
  durationS: number;
  connections: number;
  inventory: SecretInventory;
  /** check every answer's status; parse and check one in `sampleEvery` fully */
  sampleEvery: number;
  /** a request still unanswered this long after the last one was due is counted as lost */
  drainTimeoutS: number;
}

export interface LatencyStats {
  n: number;
  mean_ms: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
}

export interface LoadResult {
  event: "result";
  mode: "kloak" | "baseline";
  rate: number;
  duration_s: number;
  warmup_s: number;
  connections: number;
  /** measured requests due in the window */
  scheduled: number;
  /** of those: answered (any status) */
  answered: number;
  /** answered with HTTP 200 and, where sampled, a correct review */
  ok: number;
  /** answered per second over the window (first due -> last answered) */
  achieved_rps: number;
  errors: Record<string, number>;
  error_samples: string[];
  /** from the time each request was due (open loop) */
  latency: LatencyStats;
  /** from the time each request was written to its connection */
  service: LatencyStats;
  by_kind: Record<ReviewKind, { n: number; p50_ms: number; p99_ms: number; max_ms: number }>;
  /** how late the generator's timer was in sending (max, p99), ms */
  dispatch_lag_max_ms: number;
  dispatch_lag_p99_ms: number;
  /** requests that had to wait for a free connection */
  queued: number;
  reconnects: number;
  verified: { checked: number; failed: number; by_kind: Record<ReviewKind, number> };
  tls_checks: { wrong_name_rejected: boolean; no_ca_rejected: boolean; authorized: boolean };
  request_bytes_mean: number;
  response_bytes_mean: number;
  cpu_s: number;
}

function stats(xs: Float64Array | number[]): LatencyStats {
  const s = Float64Array.from(xs).sort();
  const n = s.length;
  const q = (p: number) => nearestRank(s, p);
  return { n, mean_ms: n ? sum(s) / n : NaN, p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99), p999_ms: q(0.999), max_ms: n ? s[n - 1]! : NaN };
}

interface Req {
  i: number;
  due: number;
  sent: number;
  t: ReviewTemplate;
  uid: string;
  payload: Buffer;
}

interface Answer {
  status: number;
  body: Buffer;
}

/** One keep-alive HTTP/1.1 connection over TLS, one request at a time. */
class Conn {
  sock!: tls.TLSSocket;
  cur: Req | undefined;
  private buf: Buffer = Buffer.alloc(0);
  dead = false;

  constructor(
    private readonly cfg: LoadConfig,
    private readonly onAnswer: (c: Conn, r: Req, a: Answer | Error) => void,
    /** the connection closed while idle */
    private readonly onClosed: (c: Conn) => void,
  ) {}

  open(): Promise<void> {
    this.dead = false;
    this.buf = Buffer.alloc(0);
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: "127.0.0.1", port: this.cfg.port, ca: this.cfg.ca, servername: this.cfg.serverName }, () => {
        if (!s.authorized) reject(new Error(`not authorized: ${s.authorizationError}`));
        else resolve();
      });
      s.setNoDelay(true);
      // Events of a replaced socket are ignored.
      s.on("data", (d: Buffer) => s === this.sock && this.data(d));
      s.on("error", (e) => {
        reject(e);
        if (s === this.sock) this.fail(e);
      });
      s.on("close", () => s === this.sock && this.fail(new Error("connection closed")));
      this.sock = s;
    });
  }

  send(r: Req): void {
    this.cur = r;
    r.sent = performance.now();
    this.sock.write(r.payload);
  }

  private fail(e: Error): void {
    if (this.dead) return;
    this.dead = true;
    const r = this.cur;
    this.cur = undefined;
    if (r) this.onAnswer(this, r, e);
    else this.onClosed(this);
  }

  private data(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const a = this.parse();
      if (!a) return;
      const r = this.cur;
      this.cur = undefined;
      if (r) this.onAnswer(this, r, a);
    }
  }

  /** One full response off the buffer, or undefined if it has not all arrived. */
  private parse(): Answer | undefined {
    const end = this.buf.indexOf("\r\n\r\n");
    if (end < 0) return undefined;
    const head = this.buf.subarray(0, end).toString("latin1");
    const status = Number(head.slice(9, 12));
    const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head);
    let pos = end + 4;
    if (cl) {
      const len = Number(cl[1]);
      if (this.buf.length < pos + len) return undefined;
      const body = this.buf.subarray(pos, pos + len);
      this.buf = this.buf.subarray(pos + len);
      return { status, body };
    }
    if (chunked) {
      const parts: Buffer[] = [];
      for (;;) {
        const eol = this.buf.indexOf("\r\n", pos);
        if (eol < 0) return undefined;
        const size = parseInt(this.buf.subarray(pos, eol).toString("latin1"), 16);
        if (this.buf.length < eol + 2 + size + 2) return undefined;
        if (size === 0) {
          this.buf = this.buf.subarray(eol + 4);
          return { status, body: Buffer.concat(parts) };
        }
        parts.push(this.buf.subarray(eol + 2, eol + 2 + size));
        pos = eol + 2 + size + 2;
      }
    }
    // No length: the body is empty for our purposes.
    this.buf = this.buf.subarray(pos);
    return { status, body: Buffer.alloc(0) };
  }
}

/** A connection attempt that must fail; resolves true if it did. */
function mustFail(o: tls.ConnectionOptions): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tls.connect(o, () => {
      resolve(false);
      s.destroy();
    });
    s.on("error", () => resolve(true));
    setTimeout(() => {
      resolve(false);
      s.destroy();
    }, 5000).unref?.();
  });
}

function emit(x: unknown): void {
  process.stdout.write(JSON.stringify(x) + "\n");
}

/** The load generator's request for review i: one of the kind's templates with a fresh uid, as kube-apiserver sends it. */
function payloadOf(templates: Record<ReviewKind, ReviewTemplate[]>, i: number): { t: ReviewTemplate; uid: string; payload: Buffer } {
  const kind = kindOf(i);
  const list = templates[kind];
  const t = list[Math.floor(i / 10) % list.length]!;
  const uid = crypto.randomUUID();
  const body = Buffer.from(t.body.replace(UID_MARKER, uid));
  const head =
    `POST ${t.path}?timeout=5s HTTP/1.1\r\nHost: kloak-webhook.kloak.svc:443\r\nUser-Agent: kube-apiserver-admission\r\n` +
    `Accept: application/json, */*\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
  return { t, uid, payload: Buffer.concat([Buffer.from(head, "latin1"), body]) };
}

/** What the measured requests (index m = i - warm-up) produced, filled in as they are sent and answered. */
class Tally {
  readonly latency: Float64Array;
  readonly service: Float64Array;
  readonly lag: Float64Array;
  readonly kinds: ReviewKind[];
  readonly errors: Record<string, number> = {};
  readonly errorSamples: string[] = [];
  readonly verified = { checked: 0, failed: 0, by_kind: { patched: 0, allowed: 0, validate: 0 } as Record<ReviewKind, number> };
  answered = 0;
  ok = 0;
  lastAnswer = 0;
  queued = 0;
  reconnects = 0;
  reqBytes = 0;
  resBytes = 0;

  constructor(readonly measN: number) {
    this.latency = new Float64Array(measN).fill(NaN);
    this.service = new Float64Array(measN).fill(NaN);
    this.lag = new Float64Array(measN);
    this.kinds = new Array(measN);
  }

  noteError(what: string, detail?: string): void {
    this.errors[what] = (this.errors[what] ?? 0) + 1;
    if (detail !== undefined && this.errorSamples.length < 10) this.errorSamples.push(`${what}: ${detail}`.slice(0, 300));
  }

  /** Measured request m answered at `now`: its latencies, and its answer checked (fully for a sample). */
  answer(cfg: LoadConfig, r: Req, a: Answer, m: number, now: number): void {
    this.answered++;
    this.lastAnswer = now;
    this.latency[m] = now - r.due;
    this.service[m] = now - r.sent;
    this.resBytes += a.body.length;
    let bad: string | undefined = a.status === 200 ? undefined : `HTTP ${a.status}`;
    const sample = bad === undefined && (m % cfg.sampleEvery === 0 || m < 30);
    if (sample) {
      bad = checkAnswer(cfg.mode, r.t, r.uid, a.status, a.body.toString("utf8"));
      this.verified.checked++;
      this.verified.by_kind[r.t.kind]++;
      if (bad) this.verified.failed++;
    }
    if (bad) this.noteError(`bad answer (${r.t.kind})`, bad);
    else this.ok++;
  }

  /** The result line: latency statistics overall and by kind, the generator's own lateness, the counts. */
  result(cfg: LoadConfig, firstDue: number, tlsChecks: LoadResult["tls_checks"], cpu: NodeJS.CpuUsage): LoadResult {
    const { latency, measN } = this;
    const answeredLat = latency.filter((x) => !Number.isNaN(x));
    const byKind = {} as LoadResult["by_kind"];
    for (const k of KINDS) {
      const xs: number[] = [];
      for (let m = 0; m < measN; m++) if (this.kinds[m] === k && !Number.isNaN(latency[m]!)) xs.push(latency[m]!);
      const s = stats(xs);
      byKind[k] = { n: s.n, p50_ms: s.p50_ms, p99_ms: s.p99_ms, max_ms: s.max_ms };
    }
    const lagS = stats(this.lag);
    return {
      event: "result",
      mode: cfg.mode,
      rate: cfg.rate,
      duration_s: cfg.durationS,
      warmup_s: cfg.warmupS,
      connections: cfg.connections,
      scheduled: measN,
      answered: this.answered,
      ok: this.ok,
      achieved_rps: this.lastAnswer > firstDue ? this.answered / ((this.lastAnswer - firstDue) / 1000) : 0,
      errors: this.errors,
      error_samples: this.errorSamples,
      latency: stats(answeredLat),
      service: stats(this.service.filter((x) => !Number.isNaN(x))),
      by_kind: byKind,
      dispatch_lag_max_ms: lagS.max_ms,
      dispatch_lag_p99_ms: lagS.p99_ms,
      queued: this.queued,
      reconnects: this.reconnects,
      verified: this.verified,
      tls_checks: tlsChecks,
      request_bytes_mean: this.reqBytes / measN,
      response_bytes_mean: this.answered ? this.resBytes / this.answered : 0,
      cpu_s: (cpu.user + cpu.system) / 1e6,
    };
  }
}

async function main(): Promise<void> {
  const cfg = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as LoadConfig;
  const templates = buildTemplates(cfg.inventory, 64);
  const interval = 1000 / cfg.rate;
  const warmN = Math.round(cfg.rate * cfg.warmupS);
  const measN = Math.round(cfg.rate * cfg.durationS);
  const total = warmN + measN;

  const tlsChecks = {
    wrong_name_rejected: await mustFail({ host: "127.0.0.1", port: cfg.port, ca: cfg.ca, servername: "evil.kloak.svc" }),
    no_ca_rejected: await mustFail({ host: "127.0.0.1", port: cfg.port, servername: cfg.serverName }),
    authorized: false,
  };

  const tally = new Tally(measN);
  let outstanding = 0;
  const queue: Req[] = [];
  let qHead = 0;
  const idle: Conn[] = [];
  const conns: Conn[] = [];
  let allDone: (() => void) | undefined;
  let stopping = false;

  const reopen = (c: Conn) => {
    tally.reconnects++;
    void c.open().then(
      () => next(c),
      (e) => tally.noteError("reconnect", (e as Error).message),
    );
  };

  const onAnswer = (c: Conn, r: Req, a: Answer | Error) => {
    const now = performance.now();
    outstanding--;
    const m = r.i - warmN;
    if (a instanceof Error) {
      if (m >= 0) tally.noteError("connection", a.message);
    } else if (m >= 0) tally.answer(cfg, r, a, m, now);
    if (c.dead) {
      // Reconnect in the background; its queue share goes to the others meanwhile.
      if (!stopping) reopen(c);
    } else next(c);
    if (outstanding === 0 && allDone) allDone();
  };

  const onClosed = (c: Conn) => {
    const k = idle.indexOf(c);
    if (k >= 0) idle.splice(k, 1);
    if (stopping) return;
    reopen(c);
  };

  const next = (c: Conn) => {
    if (qHead < queue.length) {
      const r = queue[qHead]!;
      queue[qHead++] = undefined as unknown as Req;
      c.send(r);
    } else idle.push(c);
  };

  for (let k = 0; k < cfg.connections; k++) {
    const c = new Conn(cfg, onAnswer, onClosed);
    await c.open();
    conns.push(c);
    idle.push(c);
  }
  tlsChecks.authorized = true;
  emit({ event: "connected" });

  const cpu0 = process.cpuUsage();
  const t0 = performance.now() + 20;
  let i = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (i < total && t0 + i * interval <= now) {
        const due = t0 + i * interval;
        const p = payloadOf(templates, i);
        const r: Req = { i, due, sent: 0, ...p };
        const m = i - warmN;
        if (m === 0) emit({ event: "measure" });
        if (m >= 0) {
          tally.lag[m] = now - due;
          tally.kinds[m] = p.t.kind;
          tally.reqBytes += p.payload.length;
        }
        outstanding++;
        // FIFO: every connection stays in use (a LIFO pool would let the others idle out).
        const c = idle.shift();
        if (c) c.send(r);
        else {
          if (m >= 0) tally.queued++;
          queue.push(r);
        }
        if (m === measN - 1) emit({ event: "window-end" });
        i++;
      }
      if (i < total) setTimeout(tick, Math.max(0, t0 + i * interval - performance.now()));
      else resolve();
    };
    setTimeout(tick, Math.max(0, t0 - performance.now()));
  });
  // Drain: what is not answered in time is lost.
  if (outstanding > 0) {
    await new Promise<void>((resolve) => {
      allDone = resolve;
      setTimeout(resolve, cfg.drainTimeoutS * 1000).unref?.();
    });
  }
  const cpu = process.cpuUsage(cpu0);
  const lost = measN - tally.answered - (tally.errors.connection ?? 0);
  if (lost > 0) tally.errors.unanswered = lost;
  stopping = true;
  for (const c of conns) c.sock.destroy();
  emit(tally.result(cfg, t0 + warmN * interval, tlsChecks, cpu));
}

await main();
process.exit(0);
