/** struct kloak_go_layout (bpf/kloak.h), as kloak_go_layouts holds it. */
import { LAYOUT } from "./abi.ts";
import type { GoLayout } from "./go-targets.ts";

export function encodeGoLayout(l: GoLayout): Uint8Array {
  const { size, fields: f } = LAYOUT.kloak_go_layout;
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  v.setBigUint64(f.write_entry, BigInt(l.writeEntry), true);
  v.setBigUint64(f.tcp_write, BigInt(l.tcpWrite), true);
  v.setUint32(f.conn_conn, l.connConn, true);
  v.setUint32(f.conn_config, l.connConfig, true);
  v.setUint32(f.config_server_name, l.configServerName, true);
  v.setUint32(f.tcpconn_fd, l.tcpConnFd, true);
  v.setUint32(f.netfd_sysfd, l.netFdSysfd, true);
  return b;
}
