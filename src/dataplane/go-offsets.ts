/**
 * Struct offsets bpf/golang.h reads, per Go release line (amd64), measured by
 * scripts/go-offsets.ts on real toolchains (reflect on the toolchain's own
 * types). The rows are GENERATED: rerun the script to add a version; never
 * edit them by hand. A Go binary of a release line not listed here is
 * refused (go_binary_unsupported): offsets are never guessed.
 */
export interface GoOffsets {
  /** the toolchain the row was measured on */
  measured: string;
  connConn: number;
  connConfig: number;
  configServerName: number;
  tcpConnFd: number;
  netFdSysfd: number;
}

export const GO_OFFSETS: Record<string, GoOffsets> = {
  "1.19": { measured: "go1.19.8", connConn: 0, connConfig: 72, configServerName: 128, tcpConnFd: 0, netFdSysfd: 16 },
  "1.22": { measured: "go1.22.12", connConn: 0, connConfig: 80, configServerName: 128, tcpConnFd: 0, netFdSysfd: 16 },
  "1.23": { measured: "go1.23.5", connConn: 0, connConfig: 80, configServerName: 128, tcpConnFd: 0, netFdSysfd: 16 },
  "1.24": { measured: "go1.24.4", connConn: 0, connConfig: 80, configServerName: 128, tcpConnFd: 0, netFdSysfd: 16 },
  "1.26": { measured: "go1.26.10", connConn: 0, connConfig: 80, configServerName: 128, tcpConnFd: 0, netFdSysfd: 16 },
};
