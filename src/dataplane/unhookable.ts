/**
 * Processes in a scope that do TLS through a library kloak has no probes in:
 * their placeholders go out as they are, whatever the rules say. kloak names
 * them (the exec summary, kloak_tls_unhookable_total{reason}, pod Events)
 * instead of reporting a bare "0 TLS writes".
 *
 * Two sources: the kernel sees a ClientHello that no hooked library made
 * (bpf/unhooked.h; once per process), and the attacher finds a Bun binary it
 * has no signature for (bun-boringssl.ts) before any byte is sent.
 */
import { readFileSync, readlinkSync, statSync } from "node:fs";
import type { Peer } from "./abi.ts";

/** Why a process's TLS is invisible to kloak: the label of kloak_tls_unhookable_total. */
export const UNHOOKABLE_REASONS = {
  bun_unrecognised: "a Bun binary with no BoringSSL signature for its version",
  java: "Java's own TLS (JSSE)",
  gnutls: "GnuTLS",
  nss: "NSS",
  libssl_unhooked: "an OpenSSL library kloak did not probe for this connection",
  static_tls: "TLS linked into the program that kloak has no probes for (rustls, Go, a static build)",
} as const;
export type UnhookableReason = keyof typeof UNHOOKABLE_REASONS;

export const UNHOOKABLE_HINTS: Record<UnhookableReason, string> = {
  bun_unrecognised:
    "use a Bun version kloak covers (src/dataplane/bun-signatures.ts), or derive this one: bun scripts/bun-signatures.ts --write PATH-TO-BUN",
  java: "kloak has no probes in JSSE: send the secret through a client that uses OpenSSL, or keep it out of this process",
  gnutls: "this kloak build has no GnuTLS probes: use a client built on OpenSSL",
  nss: "kloak has no probes in NSS: use a client built on OpenSSL",
  libssl_unhooked: "the process maps libssl but this connection never went through it; see kloak doctor",
  static_tls: "kloak cannot substitute in this client: use one built on OpenSSL (curl, python, node) or Bun",
};

export interface UnhookableReport {
  tgid: number;
  scopeId: number;
  reason: UnhookableReason;
  comm: string;
  exe: string;
  /** TLS libraries the process maps ("none" when it maps none) */
  links: string;
  /** where its first unhooked ClientHello went (absent when found at attach) */
  peer?: Peer;
  /** e.g. the Bun version and why it was not recognised */
  detail?: string;
}

const TLS_LIBS: { re: RegExp; name: string; reason: UnhookableReason }[] = [
  { re: /\/libjvm\.so$|\/libjava\.so$/, name: "java", reason: "java" },
  { re: /\/libgnutls\.so[.0-9]*$/, name: "libgnutls", reason: "gnutls" },
  { re: /\/libnss3\.so$/, name: "libnss3", reason: "nss" },
  { re: /\/libssl\.so[.0-9]*$/, name: "libssl", reason: "libssl_unhooked" },
];

/** The TLS libraries pid maps, by /proc/PID/maps; [] when none (or it is gone). */
export function tlsLibraries(pid: number): { name: string; path: string; reason: UnhookableReason }[] {
  let maps: string;
  try {
    maps = readFileSync(`/proc/${pid}/maps`, "utf8");
  } catch {
    return [];
  }
  const found = new Map<string, { name: string; path: string; reason: UnhookableReason }>();
  for (const line of maps.split("\n")) {
    const path = line.slice(line.indexOf("/")).trim();
    if (!line.includes("/")) continue;
    for (const l of TLS_LIBS) if (l.re.test(path) && !found.has(l.name)) found.set(l.name, { name: l.name, path, reason: l.reason });
  }
  return [...found.values()];
}

function procText(pid: number, what: "comm"): string {
  try {
    return readFileSync(`/proc/${pid}/${what}`, "utf8").trim();
  } catch {
    return "?";
  }
}

function exeOf(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return "?";
  }
}

/** A report for a ClientHello the kernel saw outside hooked TLS (bunUnrecognised: the exe is an unrecognised Bun). */
export function describeUnhooked(
  tgid: number,
  scopeId: number,
  peer: Peer | undefined,
  bunUnrecognised?: string,
): UnhookableReport {
  const libs = tlsLibraries(tgid);
  // the most specific library decides; Java maps libnss/libssl at times too
  const reason: UnhookableReason = bunUnrecognised ? "bun_unrecognised" : (libs[0]?.reason ?? "static_tls");
  return {
    tgid,
    scopeId,
    reason,
    comm: procText(tgid, "comm"),
    exe: exeOf(tgid),
    links: libs.length ? libs.map((l) => l.path).join(", ") : "none (TLS built into the executable)",
    ...(peer && peer.address ? { peer } : {}),
    ...(bunUnrecognised ? { detail: bunUnrecognised } : {}),
  };
}

/** One line: what, who, what it links, the hint. */
export function unhookableMessage(r: UnhookableReport): string {
  const to = r.peer ? ` to ${r.peer.address.includes(":") ? `[${r.peer.address}]` : r.peer.address}:${r.peer.port}` : "";
  return (
    `process ${r.tgid} (${r.comm}, ${r.exe}) does TLS${to} through ${UNHOOKABLE_REASONS[r.reason]}` +
    `${r.detail ? ` (${r.detail})` : ""}; it links: ${r.links}. Its placeholders are sent as they are ` +
    `(${r.reason}): ${UNHOOKABLE_HINTS[r.reason]}`
  );
}

/**
 * Does pid map one of these files (ids dev:ino, as the attacher keys them)?
 * A process that maps a file kloak probes is not reported: its TLS may be
 * hooked by a binding this report does not know of.
 */
export function mapsAnyOf(pid: number, ids: ReadonlySet<string>): boolean {
  if (ids.size === 0) return false;
  const paths = new Set<string>();
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
      const at = line.indexOf("/");
      if (at >= 0) paths.add(line.slice(at).replace(/ \(deleted\)$/, ""));
    }
  } catch {
    return false; // gone
  }
  const files = [`/proc/${pid}/exe`, ...[...paths].map((p) => `/proc/${pid}/root${p}`)];
  for (const f of files) {
    try {
      const st = statSync(f);
      if (ids.has(`${st.dev}:${st.ino}`)) return true;
    } catch {
      // unmapped or gone meanwhile
    }
  }
  return false;
}
