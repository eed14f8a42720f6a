/**
 * Go executables as TLS targets: crypto/tls.(*Conn).Write found through the
 * pclntab (stripped binaries too), its entry and every RET probed, and the
 * struct offsets of the binary's Go version (go-offsets.ts). A Go binary kloak
 * cannot handle safely is refused with a reason, never probed on a guess.
 */
import { goMinor, NotGoError, readGoBinary } from "../../lib/gopclntab.ts";
import { DecodeError, returnSites } from "../../lib/x86-length.ts";
import { Fn } from "./abi.ts";
import { GO_OFFSETS } from "./go-offsets.ts";
import type { RefusedTarget, TlsFunction } from "./tls-targets.ts";

export const GO_WRITE = "crypto/tls.(*Conn).Write";
export const GO_TCP_WRITE = "net.(*TCPConn).Write";

export interface GoLayout {
  writeEntry: number;
  tcpWrite: number;
  connConn: number;
  connConfig: number;
  configServerName: number;
  tcpConnFd: number;
  netFdSysfd: number;
}

export interface GoTarget {
  version: string;
  /** id of the layout in kloak_go_layouts (in each probe's cookie: abi.ts probeCookie) */
  layoutId: number;
  layout: GoLayout;
  functions: TlsFunction[];
}

let nextLayoutId = 1;

/** Layout ids below next are taken (a predecessor's, whose probes carry them in their cookies: handover.ts). */
export function reserveLayoutIds(next: number): void {
  nextLayoutId = Math.max(nextLayoutId, next);
}

/** Go release lines the offsets table covers, oldest first. */
export function coveredGoVersions(): string[] {
  return Object.keys(GO_OFFSETS).sort((a, b) => Number(a.split(".")[1]) - Number(b.split(".")[1]));
}

/** null: not a Go binary, or one without crypto/tls (nothing to probe). */
export function goTargetOf(path: string): GoTarget | RefusedTarget | null {
  let bin;
  try {
    bin = readGoBinary(path, [GO_WRITE, GO_TCP_WRITE]);
  } catch (e) {
    if (e instanceof NotGoError) return null;
    return null; // unreadable: like any other file kloak cannot read
  }
  const write = bin.functions.get(GO_WRITE);
  if (!write) return null; // Go, but no TLS client code
  const refuse = (detail: string): RefusedTarget => ({ path, reason: "go_binary_unsupported", detail });
  const version = bin.version;
  if (!version) return refuse("its Go version is unreadable (.go.buildinfo absent or from before Go 1.18)");
  const minor = goMinor(version);
  const off = minor ? GO_OFFSETS[minor] : undefined;
  if (!off) return refuse(`${version} has no known struct offsets (covered: Go ${coveredGoVersions().join(", ")})`);
  const tcp = bin.functions.get(GO_TCP_WRITE);
  if (!tcp) return refuse(`${GO_TCP_WRITE} is absent: no connection could be bound to its socket`);
  let rets: number[];
  try {
    rets = returnSites(bin.code(write));
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    return refuse(`${GO_WRITE} could not be decoded (${e.message}): its returns, where placeholders are put back, are unknown`);
  }
  const layoutId = nextLayoutId++;
  return {
    version,
    layoutId,
    layout: {
      writeEntry: write.addr,
      tcpWrite: tcp.addr,
      connConn: off.connConn,
      connConfig: off.connConfig,
      configServerName: off.configServerName,
      tcpConnFd: off.tcpConnFd,
      netFdSysfd: off.netFdSysfd,
    },
    functions: [
      { name: GO_WRITE, offset: write.offset, cookie: Fn.GO_WRITE, ret: false },
      ...rets.map((r) => ({ name: `${GO_WRITE}+${r} (RET)`, offset: write.offset + r, cookie: Fn.GO_WRITE_RET, ret: false })),
    ],
  };
}
