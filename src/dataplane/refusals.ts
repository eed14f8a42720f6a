/**
 * Every reason a placeholder is left in place, once: the `reason` label of
 * kloak_substitutions_refused_total, the word in `kloak exec`'s summary and in
 * the agent's Events, what it means, and whether it is a violation (an
 * attempt to misuse a secret, which the violation policy acts on). The kernel
 * enum kloak_refusal in bpf/kloak.h is checked against this table
 * (test/dataplane/abi.test.ts); the kernel's violation mask is built from it.
 */

export interface RefusalReason {
  /** label value and summary word */
  name: string;
  /** enum kloak_refusal value; null: decided by the stop-mode worker in user space */
  kernel: number | null;
  /** what it means for the reader, and what to do */
  hint: string;
  /** only an attempt to send the secret where it may not go causes it */
  violation: boolean;
}

export const REFUSALS: readonly RefusalReason[] = [
  { name: "unknown_placeholder", kernel: 0, violation: false, hint: "text shaped like a placeholder that kloak did not issue; left as is" },
  { name: "truncated", kernel: 1, violation: false, hint: "the placeholder was cut by the end of the write" },
  { name: "scope_not_entitled", kernel: 2, violation: true, hint: "this process may not use that secret" },
  { name: "too_many_placeholders", kernel: 3, violation: false, hint: "more than 16 placeholders in one write" },
  { name: "write_failed", kernel: 4, violation: false, hint: "kernel mode could not write the value into the buffer" },
  { name: "ringbuf_full", kernel: 5, violation: false, hint: "no room for the request and its restore; kloak is overloaded" },
  {
    name: "beyond_scan_cap",
    kernel: 6,
    violation: false,
    hint: "bytes past --scan-cap were not scanned; raise --scan-cap if placeholders can sit there",
  },
  {
    name: "concurrent_write",
    kernel: 7,
    violation: false,
    hint: "another thread of the process (one kloak cannot trace: docs/policy.md section 5) was mid-substitution; this write went out with the placeholder",
  },
  {
    name: "destination_not_allowed",
    kernel: 8,
    violation: true,
    hint: "no rule of the secret allows this peer; add one with --allow NAME=HOST if it is meant to",
  },
  {
    name: "sni_mismatch",
    kernel: 9,
    violation: true,
    hint: "the peer is an allowed host's address, but the client asked it for another name",
  },
  {
    name: "unknown_peer",
    kernel: 10,
    violation: false,
    hint: "kloak could not tie this TLS connection to a connected socket it saw set up (for node and asyncio: its ClientHello on a fresh socket, one connection at a time), so it fails closed",
  },
  { name: "inflight_full", kernel: 11, violation: false, hint: "no room to record the restore before changing a byte" },
  {
    name: "binding_changed",
    kernel: 12,
    violation: true,
    hint: "the connection's BIO or socket changed after it was tied to its socket, or it sent on two sockets",
  },
  { name: "sni_changed", kernel: 13, violation: true, hint: "the SNI was set again after the handshake began" },
  {
    name: "shared_fd_table",
    kernel: 14,
    violation: true,
    hint: "the process shares its file descriptors with another process, which could swap the socket",
  },
  {
    name: "foreign_netns",
    kernel: 15,
    violation: true,
    hint: "the socket is in another network namespace than the one kloak resolved the rules in",
  },
  {
    name: "buffer_not_private",
    kernel: 16,
    violation: true,
    hint: "the placeholder lies in shared, file-backed or read-only memory, where the value could outlive the write",
  },
  {
    name: "app_bio",
    kernel: 17,
    violation: false,
    hint: "strict binding: the connection writes through the application's own BIO or a memory BIO (curl, node, asyncio), which kloak cannot follow",
  },
  {
    name: "buffer_unchecked",
    kernel: 18,
    violation: false,
    hint: "the process's memory map was busy (it was mapping memory), so the buffer could not be checked",
  },
  {
    name: "hpack_kernel_mode",
    kernel: 19,
    violation: false,
    hint: "kernel mode: an HTTP/2 header carried the placeholder Huffman-coded, and the value's code was not loaded; reload the secret",
  },
  {
    name: "hpack_code_length",
    kernel: 20,
    violation: false,
    hint: "an HTTP/2 header carried the placeholder Huffman-coded, but its value's code has another length; reload the secret so kloak issues a fitting placeholder",
  },
  {
    name: "go_stack_buffer",
    kernel: 21,
    violation: false,
    hint: "Go: the write's buffer is on a goroutine stack, which Go may move during the call (the restore could miss it); pass a heap buffer (bufio, bytes.Buffer)",
  },
  {
    name: "writer_not_stopped",
    kernel: null,
    violation: false,
    hint: "stop mode: the writer was not seen stopped in time",
  },
  { name: "patch_failed", kernel: null, violation: false, hint: "stop mode: the value could not be written whole (undone)" },
  {
    name: "go_binary_unsupported",
    kernel: null,
    violation: false,
    hint: "a Go executable kloak cannot probe (Go version without known struct offsets, or a crypto/tls.(*Conn).Write it cannot decode): its TLS writes keep their placeholders; src/dataplane/go-offsets.ts lists the covered versions (scripts/go-offsets.ts adds one)",
  },
];

/** Number of kernel reasons (KR__COUNT). */
export const KERNEL_REFUSALS = REFUSALS.filter((r) => r.kernel !== null).length;

const byKernel = new Map(REFUSALS.filter((r) => r.kernel !== null).map((r) => [r.kernel!, r]));
const byName = new Map(REFUSALS.map((r) => [r.name, r]));

/** The reason of a kernel refusal code ("unknown" for a code this build does not know). */
export function refusalName(kernel: number): string {
  return byKernel.get(kernel)?.name ?? "unknown";
}

export function refusalHint(name: string): string | undefined {
  return byName.get(name)?.hint;
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

/** What a violation does to the writer (enum kloak_action). */
export const ACTIONS = ["pass", "block", "kill"] as const;
export type ViolationAction = (typeof ACTIONS)[number];

export function actionCode(a: ViolationAction): number {
  return ACTIONS.indexOf(a);
}

export function actionName(code: number): ViolationAction {
  return ACTIONS[code] ?? "pass";
}

/** What the violation policy did, said after a refusal. */
export const ACTION_SUFFIX: Record<ViolationAction, string> = {
  pass: "",
  block: "; violation: the connection was shut down",
  kill: "; violation: the process was killed",
};
