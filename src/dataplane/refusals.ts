/**
 * Every reason a placeholder is left in place, once: the `reason` label of
 * kloak_substitutions_refused_total, the word in `kloak exec`'s summary and in
 * the agent's Events, what it means, whether it is a violation (an attempt to
 * misuse a secret, which the violation policy acts on), and which counters
 * count it. The kernel's codes are enum kloak_refusal's (abi.generated.ts);
 * the kernel's violation mask is built from this table, and the metrics, the
 * exec summary and the agent's Events all read it.
 */
import { ENUMS } from "./abi.generated.ts";
import type { WorkerStats } from "./ring-protocol.ts";

const KR = ENUMS.kloak_refusal;

export interface RefusalReason {
  /** label value and summary word */
  name: string;
  /** enum kloak_refusal value (counted in kloak_refusals); null: decided in user space */
  kernel: number | null;
  /** what it means for the reader, and what to do */
  hint: string;
  /** what to do said in the agent's Events instead, where the remedy differs from `kloak exec`'s */
  agentHint?: string;
  /** only an attempt to send the secret where it may not go causes it */
  violation: boolean;
  /** the stop-mode worker's count of it (its own decision, or a buffer the kernel could not check) */
  worker?: (w: WorkerStats) => number;
}

export const REFUSALS: readonly RefusalReason[] = [
  { name: "unknown_placeholder", kernel: KR.KR_UNKNOWN_PLACEHOLDER, violation: false, hint: "text shaped like a placeholder that kloak did not issue; left as is" },
  { name: "truncated", kernel: KR.KR_TRUNCATED, violation: false, hint: "the placeholder was cut by the end of the write" },
  { name: "scope_not_entitled", kernel: KR.KR_NOT_ENTITLED, violation: true, hint: "this process may not use that secret" },
  { name: "too_many_placeholders", kernel: KR.KR_TOO_MANY, violation: false, hint: "more than 16 placeholders in one write" },
  { name: "write_failed", kernel: KR.KR_WRITE_FAILED, violation: false, hint: "kernel mode could not write the value into the buffer" },
  { name: "ringbuf_full", kernel: KR.KR_RINGBUF_FULL, violation: false, hint: "no room for the request and its restore; kloak is overloaded" },
  {
    name: "beyond_scan_cap",
    kernel: KR.KR_BEYOND_SCAN_CAP,
    violation: false,
    hint: "bytes past --scan-cap were not scanned; raise --scan-cap if placeholders can sit there",
  },
  {
    name: "concurrent_write",
    kernel: KR.KR_CONCURRENT_WRITE,
    violation: false,
    hint: "another thread of the process (one kloak cannot trace: docs/policy.md section 5) was mid-substitution; this write went out with the placeholder",
  },
  {
    name: "destination_not_allowed",
    kernel: KR.KR_DESTINATION_NOT_ALLOWED,
    violation: true,
    hint: "no rule of the secret allows this peer; add one with --allow NAME=HOST if it is meant to",
    agentHint: "add the host to the Secret's getkloak.io/hosts annotation if it is meant to",
  },
  {
    name: "sni_mismatch",
    kernel: KR.KR_SNI_MISMATCH,
    violation: true,
    hint: "the peer is an allowed host's address, but the client asked it for another name",
  },
  {
    name: "unknown_peer",
    kernel: KR.KR_UNKNOWN_PEER,
    violation: false,
    hint: "kloak could not tie this TLS connection to a connected socket it saw set up (for node and asyncio: its ClientHello on a fresh socket, one connection at a time), so it fails closed",
  },
  { name: "inflight_full", kernel: KR.KR_INFLIGHT_FULL, violation: false, hint: "no room to record the restore before changing a byte" },
  {
    name: "binding_changed",
    kernel: KR.KR_BINDING_CHANGED,
    violation: true,
    hint: "the connection's BIO or socket changed after it was tied to its socket, or it sent on two sockets",
  },
  { name: "sni_changed", kernel: KR.KR_SNI_CHANGED, violation: true, hint: "the SNI was set again after the handshake began" },
  {
    name: "shared_fd_table",
    kernel: KR.KR_SHARED_FD_TABLE,
    violation: true,
    hint: "the process shares its file descriptors with another process, which could swap the socket",
  },
  {
    name: "foreign_netns",
    kernel: KR.KR_FOREIGN_NETNS,
    violation: true,
    hint: "the socket is in another network namespace than the one kloak resolved the rules in",
  },
  {
    name: "buffer_not_private",
    kernel: KR.KR_BUFFER_NOT_PRIVATE,
    violation: true,
    worker: (w) => w.bufferRefused,
    hint: "the placeholder lies in shared, file-backed or read-only memory, where the value could outlive the write",
  },
  {
    name: "app_bio",
    kernel: KR.KR_APP_BIO,
    violation: false,
    hint: "strict binding: the connection writes through the application's own BIO or a memory BIO (curl, node, asyncio), which kloak cannot follow",
  },
  {
    name: "buffer_unchecked",
    kernel: KR.KR_BUFFER_UNCHECKED,
    violation: false,
    hint: "the process's memory map was busy (it was mapping memory), so the buffer could not be checked",
  },
  {
    name: "hpack_kernel_mode",
    kernel: KR.KR_HPACK_KERNEL_MODE,
    violation: false,
    hint: "kernel mode: an HTTP/2 header carried the placeholder Huffman-coded, and the value's code was not loaded; reload the secret",
  },
  {
    name: "hpack_code_length",
    kernel: KR.KR_HPACK_CODE_LENGTH,
    violation: false,
    hint: "an HTTP/2 header carried the placeholder Huffman-coded, but its value's code has another length; reload the secret so kloak issues a fitting placeholder",
  },
  {
    name: "go_stack_buffer",
    kernel: KR.KR_GO_STACK_BUFFER,
    violation: false,
    hint: "Go: the write's buffer is on a goroutine stack, which Go may move during the call (the restore could miss it); pass a heap buffer (bufio, bytes.Buffer)",
  },
  {
    name: "writer_not_stopped",
    kernel: null,
    violation: false,
    worker: (w) => w.notStopped,
    hint: "stop mode: the writer was not seen stopped in time",
  },
  {
    name: "patch_failed",
    kernel: null,
    violation: false,
    hint: "stop mode: the value could not be written whole (undone)",
    worker: (w) => w.patchFailed + w.noValue,
  },
  {
    name: "go_binary_unsupported",
    kernel: null,
    violation: false,
    hint: "a Go executable kloak cannot probe (Go version without known struct offsets, or a crypto/tls.(*Conn).Write it cannot decode): its TLS writes keep their placeholders; src/dataplane/go-offsets.ts lists the covered versions (scripts/go-offsets.ts adds one)",
  },
];

const byKernel = new Map(REFUSALS.filter((r) => r.kernel !== null).map((r) => [r.kernel!, r]));
const byName = new Map(REFUSALS.map((r) => [r.name, r]));

/** The reason of a kernel refusal code ("unknown" for a code this build does not know). */
export function refusalName(kernel: number): string {
  return byKernel.get(kernel)?.name ?? "unknown";
}

/** Who is told: `kloak exec`'s user (flags) or a pod's owner (annotations). */
export type RefusalAudience = "exec" | "agent";

export function refusalHint(name: string, audience: RefusalAudience = "exec"): string | undefined {
  const r = byName.get(name);
  return audience === "agent" ? (r?.agentHint ?? r?.hint) : r?.hint;
}

/** Refusals the stop-mode worker counted, every reason together. */
export function workerRefusals(w: WorkerStats): number {
  return REFUSALS.reduce((n, r) => n + (r.worker?.(w) ?? 0), 0);
}

/** kloak_config.violations: bit n set when kernel reason n is a violation. */
export function violationMask(): number {
  let mask = 0;
  for (const r of REFUSALS) if (r.violation && r.kernel !== null) mask |= 1 << r.kernel;
  return mask >>> 0;
}

/** "10.0.0.1:443 (SNI api.example.com)", "[::1]:8443", or "unknown destination". */
export function describeDestination(e: { peer: { address: string; port: number }; sni: string }): string {
  const { address, port } = e.peer;
  const peer = address === "" ? "unknown destination" : address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
  return e.sni ? `${peer} (SNI ${e.sni})` : peer;
}

/** What a violation does to the writer (enum kloak_action), in the kernel's order. */
const ACTION_PREFIX = "KLOAK_ACTION_";
type ActionKey = keyof typeof ENUMS.kloak_action;
export type ViolationAction = Lowercase<ActionKey extends `${typeof ACTION_PREFIX}${infer A}` ? A : never>;
export const ACTIONS: readonly ViolationAction[] = Object.entries(ENUMS.kloak_action)
  .sort(([, a], [, b]) => a - b)
  .map(([k]) => k.slice(ACTION_PREFIX.length).toLowerCase() as ViolationAction);

export function actionCode(a: ViolationAction): number {
  return ENUMS.kloak_action[`${ACTION_PREFIX}${a.toUpperCase() as Uppercase<ViolationAction>}`];
}

const actionByCode = new Map(ACTIONS.map((a) => [actionCode(a), a]));
export function actionName(code: number): ViolationAction {
  return actionByCode.get(code) ?? "pass";
}

/** What the violation policy did, said after a refusal. */
const ACTION_SUFFIX: Record<ViolationAction, string> = {
  pass: "",
  block: "; violation: the connection was shut down",
  kill: "; violation: the process was killed",
};

/** "<reason> (<hint>)<what the violation policy did>": a refusal as `kloak exec` and the agent's Events say it. */
export function describeRefusal(e: { reason: string; action: ViolationAction }, audience: RefusalAudience): string {
  const hint = refusalHint(e.reason, audience);
  return `${e.reason}${hint ? ` (${hint})` : ""}${ACTION_SUFFIX[e.action]}`;
}
