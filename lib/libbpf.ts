/**
 * Typed bindings to the system's libbpf.so.1 over bun:ffi.
 *
 * Rules the callers rely on:
 *  - every failure throws BpfError with the call, errno and the libbpf log
 *    lines printed during that call (a verifier rejection is readable);
 *  - all calls stay on the thread that loaded this module: libbpf's print
 *    callback is process-global (mapUpdateRaw and mapLookupRaw call bpf(2)
 *    directly, not libbpf: any thread may use them);
 *  - uprobes are attached by lib/uprobe.ts (plain fds another thread may close).
 */
import { dlopen, FFIType, JSCallback, ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { bpfSyscall, errno as lastErrno, strerror, vformat } from "./libc.ts";

const LIBBPF = "libbpf.so.1";

function open() {
  return dlopen(LIBBPF, {
    libbpf_major_version: { args: [], returns: FFIType.u32 },
    libbpf_minor_version: { args: [], returns: FFIType.u32 },
    libbpf_set_print: { args: [FFIType.ptr], returns: FFIType.ptr },
    libbpf_num_possible_cpus: { args: [], returns: FFIType.i32 },
    libbpf_probe_bpf_helper: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    libbpf_probe_bpf_map_type: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    bpf_object__open_mem: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.ptr },
    bpf_object__load: { args: [FFIType.ptr], returns: FFIType.i32 },
    bpf_object__close: { args: [FFIType.ptr], returns: FFIType.void },
    bpf_object__find_program_by_name: { args: [FFIType.ptr, FFIType.cstring], returns: FFIType.ptr },
    bpf_object__find_map_by_name: { args: [FFIType.ptr, FFIType.cstring], returns: FFIType.ptr },
    bpf_program__set_autoload: { args: [FFIType.ptr, FFIType.bool], returns: FFIType.i32 },
    bpf_program__set_expected_attach_type: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    bpf_program__set_log_level: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    bpf_program__set_log_buf: { args: [FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
    bpf_program__autoload: { args: [FFIType.ptr], returns: FFIType.bool },
    bpf_program__name: { args: [FFIType.ptr], returns: FFIType.cstring },
    bpf_object__next_program: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
    bpf_program__fd: { args: [FFIType.ptr], returns: FFIType.i32 },
    bpf_program__attach: { args: [FFIType.ptr], returns: FFIType.ptr },
    bpf_link__destroy: { args: [FFIType.ptr], returns: FFIType.i32 },
    bpf_object__next_map: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
    bpf_map__name: { args: [FFIType.ptr], returns: FFIType.cstring },
    bpf_map__reuse_fd: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    bpf_map__fd: { args: [FFIType.ptr], returns: FFIType.i32 },
    bpf_map__max_entries: { args: [FFIType.ptr], returns: FFIType.u32 },
    bpf_map__key_size: { args: [FFIType.ptr], returns: FFIType.u32 },
    bpf_map__set_max_entries: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    bpf_map__initial_value: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
    bpf_map_update_elem: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
    bpf_map_lookup_elem: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    bpf_map_delete_elem: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    bpf_map_get_next_key: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    bpf_obj_pin: { args: [FFIType.i32, FFIType.cstring], returns: FFIType.i32 },
    bpf_obj_get: { args: [FFIType.cstring], returns: FFIType.i32 },
    bpf_obj_get_info_by_fd: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    bpf_map__is_internal: { args: [FFIType.ptr], returns: FFIType.bool },
    bpf_link__fd: { args: [FFIType.ptr], returns: FFIType.i32 },
  });
}

/** enum libbpf_print_level: LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG */
const LIBBPF_DEBUG = 2;

let lib: ReturnType<typeof open> | undefined;
let logSink: string[] | undefined;
let printCallback: JSCallback | undefined;
let debug = false;

/**
 * Print every libbpf line on stderr, debug lines included (off by default):
 * libbpf prints thousands of debug lines per load (every CO-RE relocation),
 * and formatting them cost ~100 ms of a load, so they are dropped unless asked
 * for. Warnings and infos are kept for errors either way. Takes effect at once.
 */
export function setLibbpfDebug(on: boolean): void {
  debug = on;
}

/** libbpf, opened on first use; throws a BpfError naming the library when absent. */
function bpf() {
  if (lib) return lib.symbols;
  try {
    lib = open();
  } catch (e) {
    throw new BpfError(`dlopen ${LIBBPF}`, 2, [String((e as Error).message ?? e)]);
  }
  printCallback = new JSCallback(
    (level: number, fmt: Pointer, args: Pointer) => {
      if (level >= LIBBPF_DEBUG && !debug) return 0;
      const line = vformat(fmt, args).replace(/\n$/, "");
      if (logSink) logSink.push(line);
      if (debug) process.stderr.write(`libbpf[${level}]: ${line}\n`);
      return 0;
    },
    { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  );
  lib.symbols.libbpf_set_print(printCallback.ptr);
  return lib.symbols;
}

export class BpfError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    readonly log: string[],
  ) {
    const tail = log.length ? `\n${log.slice(-40).join("\n")}` : "";
    super(`${call}: ${strerror(errno)} (errno ${errno})${tail}`);
    this.name = "BpfError";
  }
}

/** Run a libbpf call, collecting what it printed; the log goes into any error. */
function logged<T>(fn: () => T): { value: T; log: string[] } {
  const outer = logSink;
  const log: string[] = [];
  logSink = log;
  try {
    return { value: fn(), log };
  } finally {
    logSink = outer;
    outer?.push(...log);
  }
}

function checkInt(call: string, fn: () => number): number {
  const { value, log } = logged(fn);
  if (value < 0) throw new BpfError(call, -value, log);
  return value;
}

// Bun types FFI pointer results as Pointer | bigint | null; they are Pointer | null here.
function checkPtr(call: string, fn: () => Pointer | bigint | null): Pointer {
  const { value, log } = logged(() => {
    const p = fn() as Pointer | null;
    return { p, e: p === null ? lastErrno() : 0 };
  });
  if (value.p === null) throw new BpfError(call, value.e || 22, log);
  return value.p;
}

const cstr = (s: string) => Buffer.from(s + "\0");

export function libbpfVersion(): string {
  const s = bpf();
  return `${s.libbpf_major_version()}.${s.libbpf_minor_version()}`;
}

export function possibleCpus(): number {
  return checkInt("libbpf_num_possible_cpus", () => bpf().libbpf_num_possible_cpus());
}

/** Whether the kernel lets programs of progType call the helper (a real trial load). */
export function probeHelper(progType: number, helperId: number): boolean {
  return bpf().libbpf_probe_bpf_helper(progType, helperId, null) === 1;
}

export function probeMapType(mapType: number): boolean {
  return bpf().libbpf_probe_bpf_map_type(mapType, null) === 1;
}

export const BPF_PROG_TYPE_KPROBE = 2;
/** Verifier log levels (bits): 1 and 2 trace every instruction, 4 prints only errors and statistics. */
export const BPF_LOG_STATS = 4;
export const BPF_MAP_TYPE_RINGBUF = 27;
/** map update flags: create or replace; replace only */
export const BPF_ANY = 0;
export const BPF_EXIST = 2;
export const BPF_FUNC = { probe_write_user: 36, send_signal: 109, get_attach_cookie: 174, loop: 181 } as const;

export class BpfMap {
  constructor(
    readonly name: string,
    private readonly handle: Pointer,
    private readonly owner: BpfObject,
  ) {}

  get fd(): number {
    return this.owner.loaded ? bpf().bpf_map__fd(this.handle) : -1;
  }

  /**
   * Before load: use the existing map behind fd (libbpf keeps a duplicate)
   * instead of creating one, so a second object's programs share the first's
   * maps. Name, type and sizes come from the existing map.
   */
  reuseFd(fd: number): void {
    checkInt(`bpf_map__reuse_fd(${this.name}, ${fd})`, () => bpf().bpf_map__reuse_fd(this.handle, fd));
  }

  /** A global-data map libbpf makes itself (.rodata*, .data, .bss, .kconfig). */
  get internal(): boolean {
    return bpf().bpf_map__is_internal(this.handle);
  }

  get maxEntries(): number {
    return bpf().bpf_map__max_entries(this.handle);
  }

  get keySize(): number {
    return bpf().bpf_map__key_size(this.handle);
  }

  /**
   * All keys (a snapshot: a hash map changed meanwhile may yield a key twice
   * or miss one). Array maps list every index.
   */
  keys(): Uint8Array[] {
    return mapKeys(this.fd, this.keySize, this.name);
  }

  /** How many keys the map holds now, without keeping them (same caveat as keys()). */
  count(): number {
    const size = this.keySize;
    let prev: Uint8Array | null = null;
    let next: Uint8Array = new Uint8Array(size);
    // Bounded: a hash map whose entries are deleted while it is walked restarts from its first bucket.
    const limit = this.maxEntries * 2;
    let n = 0;
    for (; n < limit; n++) {
      const rc: number = bpf().bpf_map_get_next_key(this.fd, prev ? ptr(prev) : null, ptr(next));
      if (rc === -2) break;
      if (rc < 0) throw new BpfError(`bpf_map_get_next_key(${this.name})`, -rc, []);
      const used = prev ?? new Uint8Array(size);
      prev = next;
      next = used;
    }
    return Math.min(n, this.maxEntries);
  }

  /** Before load only. */
  setMaxEntries(n: number): void {
    checkInt(`bpf_map__set_max_entries(${this.name}, ${n})`, () => bpf().bpf_map__set_max_entries(this.handle, n));
  }

  /** The writable initial contents of a global-data map (.rodata*, .data, .bss), before load. */
  initialValue(): DataView {
    const size = Buffer.alloc(8);
    const p = checkPtr(`bpf_map__initial_value(${this.name})`, () =>
      bpf().bpf_map__initial_value(this.handle, ptr(size)),
    );
    return new DataView(toArrayBuffer(p, 0, Number(size.readBigUInt64LE(0))));
  }

  update(key: Uint8Array, value: Uint8Array, flags = BPF_ANY): void {
    checkInt(`bpf_map_update_elem(${this.name})`, () => bpf().bpf_map_update_elem(this.fd, ptr(key), ptr(value), flags));
  }

  /** Fills value and returns true, or false when the key is absent. */
  lookup(key: Uint8Array, value: Uint8Array): boolean {
    const rc = bpf().bpf_map_lookup_elem(this.fd, ptr(key), ptr(value));
    if (rc === -2 /* ENOENT */) return false;
    if (rc < 0) throw new BpfError(`bpf_map_lookup_elem(${this.name})`, -rc, []);
    return true;
  }

  /** false when the key was absent. */
  delete(key: Uint8Array): boolean {
    const rc = bpf().bpf_map_delete_elem(this.fd, ptr(key));
    if (rc === -2) return false;
    if (rc < 0) throw new BpfError(`bpf_map_delete_elem(${this.name})`, -rc, []);
    return true;
  }

  pin(path: string): void {
    checkInt(`bpf_obj_pin(${this.name}, ${path})`, () => bpf().bpf_obj_pin(this.fd, cstr(path)));
  }
}

/** All keys of a map given by fd (e.g. one opened from a pin). */
export function mapKeys(fd: number, keySize: number, name = `fd ${fd}`): Uint8Array[] {
  const keys: Uint8Array[] = [];
  let prev: Uint8Array | null = null;
  for (;;) {
    const next = new Uint8Array(keySize);
    const rc = bpf().bpf_map_get_next_key(fd, prev ? ptr(prev) : null, ptr(next));
    if (rc === -2) return keys;
    if (rc < 0) throw new BpfError(`bpf_map_get_next_key(${name})`, -rc, []);
    keys.push(next);
    prev = next;
  }
}

/** Look key up in the map behind fd (e.g. one opened from a pin): fills value, false when absent. */
export function mapLookup(fd: number, key: Uint8Array, value: Uint8Array): boolean {
  const rc = bpf().bpf_map_lookup_elem(fd, ptr(key), ptr(value));
  if (rc === -2 /* ENOENT */) return false;
  if (rc < 0) throw new BpfError(`bpf_map_lookup_elem(fd ${fd})`, -rc, []);
  return true;
}

// struct bpf_prog_info (linux/bpf.h): its size and recursion_misses' offset (5.12+).
const PROG_INFO_SIZE = 232;
const PROG_INFO_RECURSION_MISSES = 208;

/**
 * Runs of the program behind fd that the kernel skipped because that program
 * was already running on the CPU (bpf_prog_info.recursion_misses): a
 * tracing program that the kernel lets be preempted makes every other run on
 * that CPU skip meanwhile. 0n from a kernel too old to count them.
 */
export function progRecursionMisses(fd: number): bigint {
  const info = new Uint8Array(PROG_INFO_SIZE);
  const len = new Uint32Array([PROG_INFO_SIZE]);
  const rc = bpf().bpf_obj_get_info_by_fd(fd, ptr(info), ptr(len));
  if (rc < 0) throw new BpfError(`bpf_obj_get_info_by_fd(fd ${fd})`, -rc, []);
  // The kernel fills as much of the struct as it knows and says how much.
  if ((len[0] ?? 0) < PROG_INFO_RECURSION_MISSES + 8) return 0n;
  return new DataView(info.buffer).getBigUint64(PROG_INFO_RECURSION_MISSES, true);
}

/** Open a pinned object (map) by its bpffs path; returns its fd. */
export function objGet(path: string): number {
  return checkInt(`bpf_obj_get(${path})`, () => {
    const fd = bpf().bpf_obj_get(cstr(path));
    return fd < 0 ? -lastErrno() : fd;
  });
}

export class BpfLink {
  private handle: Pointer | null;
  constructor(
    readonly description: string,
    handle: Pointer,
  ) {
    this.handle = handle;
  }

  /** The kernel link's fd (pin it with objPin to keep the link past this process). */
  get fd(): number {
    if (!this.handle) throw new Error(`link ${this.description} already destroyed`);
    return checkInt(`bpf_link__fd(${this.description})`, () => bpf().bpf_link__fd(this.handle!));
  }

  destroy(): void {
    if (!this.handle) return;
    bpf().bpf_link__destroy(this.handle);
    this.handle = null;
  }
}

export class BpfProgram {
  private logBuf: Buffer | undefined;

  constructor(
    readonly name: string,
    private readonly handle: Pointer,
  ) {}

  /** Whether load() will load this program. */
  get autoload(): boolean {
    return bpf().bpf_program__autoload(this.handle);
  }

  /**
   * Before load: have the verifier write its log for this program at `level`
   * into a buffer of `size` bytes (read it with verifierLog()). With a buffer
   * of its own, libbpf loads once and never retries at a higher level, so a
   * rejection costs one verification, not several.
   */
  captureVerifierLog(level: number, size: number): void {
    this.logBuf = Buffer.alloc(size);
    checkInt(`bpf_program__set_log_buf(${this.name})`, () =>
      bpf().bpf_program__set_log_buf(this.handle, ptr(this.logBuf!), size),
    );
    checkInt(`bpf_program__set_log_level(${this.name})`, () => bpf().bpf_program__set_log_level(this.handle, level));
  }

  /** What the verifier wrote into the buffer of captureVerifierLog(); "" without one. */
  verifierLog(): string {
    if (!this.logBuf) return "";
    const end = this.logBuf.indexOf(0);
    return this.logBuf.toString("utf8", 0, end < 0 ? this.logBuf.length : end);
  }

  setAutoload(on: boolean): void {
    checkInt(`bpf_program__set_autoload(${this.name})`, () => bpf().bpf_program__set_autoload(this.handle, on));
  }

  /**
   * Before load: the attach type the kernel verifies the program for. libbpf
   * 1.1 predates the "uprobe.multi" section name, so multi-uprobe programs
   * are declared as plain uprobes and switched here.
   */
  setExpectedAttachType(type: number): void {
    checkInt(`bpf_program__set_expected_attach_type(${this.name})`, () =>
      bpf().bpf_program__set_expected_attach_type(this.handle, type),
    );
  }

  /** The loaded program's fd (for attaching without libbpf links). */
  get fd(): number {
    return checkInt(`bpf_program__fd(${this.name})`, () => bpf().bpf_program__fd(this.handle));
  }

  /** Attach as its section name says (tracepoints, raw tracepoints). */
  attach(): BpfLink {
    const h = checkPtr(`bpf_program__attach(${this.name})`, () => bpf().bpf_program__attach(this.handle));
    return new BpfLink(this.name, h);
  }
}

export class BpfObject {
  private handle: Pointer | null;
  loaded = false;
  /** What libbpf printed during load (verifier output on failure). */
  loadLog: string[] = [];
  // libbpf keeps pointers into the object buffer and name; pin them for the object's life.
  private readonly keep: Buffer[];

  private constructor(handle: Pointer, keep: Buffer[]) {
    this.handle = handle;
    this.keep = keep;
  }

  static openMem(bytes: Uint8Array, name: string): BpfObject {
    const buf = Buffer.from(bytes);
    const nameBuf = cstr(name);
    // struct bpf_object_open_opts prefix: sz@0 object_name@8 relaxed_maps@16
    const opts = Buffer.alloc(24);
    opts.writeBigUInt64LE(24n, 0);
    opts.writeBigUInt64LE(BigInt(ptr(nameBuf)), 8);
    const h = checkPtr("bpf_object__open_mem", () => bpf().bpf_object__open_mem(ptr(buf), buf.length, ptr(opts)));
    return new BpfObject(h, [buf, nameBuf, opts]);
  }

  private get h(): Pointer {
    if (!this.handle) throw new Error("BPF object already closed");
    return this.handle;
  }

  private readonly progs = new Map<string, BpfProgram>();

  /** The program of that name (the same object on every call, so settings made before load stay with it). */
  program(name: string): BpfProgram {
    let prog = this.progs.get(name);
    if (!prog) {
      const p = checkPtr(`find program ${name}`, () => bpf().bpf_object__find_program_by_name(this.h, cstr(name)));
      prog = new BpfProgram(name, p);
      this.progs.set(name, prog);
    }
    return prog;
  }

  /** Every program of the object, in section order. */
  programs(): BpfProgram[] {
    const names: string[] = [];
    for (let p = bpf().bpf_object__next_program(this.h, null); p; p = bpf().bpf_object__next_program(this.h, p))
      names.push(String(bpf().bpf_program__name(p)));
    return names.map((n) => this.program(n));
  }

  /** Every map of the object, global-data maps (.rodata*, .data, .bss, .kconfig) included. */
  maps(): BpfMap[] {
    const out: BpfMap[] = [];
    for (let m = bpf().bpf_object__next_map(this.h, null); m; m = bpf().bpf_object__next_map(this.h, m))
      out.push(new BpfMap(String(bpf().bpf_map__name(m)), m as Pointer, this));
    return out;
  }

  map(name: string): BpfMap {
    const m = checkPtr(`find map ${name}`, () => bpf().bpf_object__find_map_by_name(this.h, cstr(name)));
    return new BpfMap(name, m, this);
  }

  load(): void {
    const { value, log } = logged(() => bpf().bpf_object__load(this.h));
    this.loadLog = log;
    if (value < 0) throw new BpfError("bpf_object__load", -value, log);
    this.loaded = true;
  }

  close(): void {
    if (!this.handle) return;
    bpf().bpf_object__close(this.handle);
    this.handle = null;
    this.loaded = false;
    void this.keep;
  }
}

// ---- Handing maps and links over to a successor process ----

/** Names of the object's maps that libbpf does not make itself (see BpfMap.internal). */
export function objectMapNames(obj: BpfObject): string[] {
  return obj
    .maps()
    .filter((m) => !m.internal)
    .map((m) => m.name);
}

/** Pin any BPF object (map, program, link) given by fd at a bpffs path. */
export function objPin(fd: number, path: string): void {
  checkInt(`bpf_obj_pin(fd ${fd}, ${path})`, () => bpf().bpf_obj_pin(fd, cstr(path)));
}

/** Delete key from the map behind fd; false when it was absent. */
export function mapDelete(fd: number, key: Uint8Array): boolean {
  const rc = bpf().bpf_map_delete_elem(fd, ptr(key));
  if (rc === -2) return false;
  if (rc < 0) throw new BpfError(`bpf_map_delete_elem(fd ${fd})`, -rc, []);
  return true;
}

const BPF_MAP_LOOKUP_ELEM = 1;
const BPF_MAP_UPDATE_ELEM = 2;
function mapElemCall(cmd: number, mapFd: number, key: Uint8Array, value: Uint8Array, flags: number): boolean {
  // union bpf_attr: map_fd@0 key@8 value@16 flags@24
  const attr = Buffer.alloc(32);
  attr.writeUInt32LE(mapFd, 0);
  attr.writeBigUInt64LE(BigInt(ptr(key)), 8);
  attr.writeBigUInt64LE(BigInt(ptr(value)), 16);
  attr.writeBigUInt64LE(BigInt(flags), 24);
  return bpfSyscall(cmd, attr) === 0;
}

/** bpf(BPF_MAP_UPDATE_ELEM) without libbpf, for threads that must not call it. */
export function mapUpdateRaw(mapFd: number, key: Uint8Array, value: Uint8Array, flags = BPF_ANY): boolean {
  return mapElemCall(BPF_MAP_UPDATE_ELEM, mapFd, key, value, flags);
}

/** bpf(BPF_MAP_LOOKUP_ELEM) without libbpf; false when the key is absent. */
export function mapLookupRaw(mapFd: number, key: Uint8Array, value: Uint8Array): boolean {
  return mapElemCall(BPF_MAP_LOOKUP_ELEM, mapFd, key, value, 0);
}
