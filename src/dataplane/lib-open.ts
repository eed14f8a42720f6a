/**
 * The TLS library a LIB_OPEN event names (bpf/libopen.h): a process in a scope
 * opening it while kloak's TLS programs are not loaded is held at the open.
 */
import { processVmReadString } from "../../lib/libc.ts";
import { NAME_MAX, type LibOpenEvent } from "./abi.ts";

/** The names bpf/libopen.h holds an open for: the file name (after the last '/') starts with one. */
const TLS_LIBRARY_PREFIXES = ["libssl.so", "libgnutls.so"];

const AT_FDCWD = -100;

/**
 * The opened file as a host path into the process's own view of the
 * filesystem, or null when it is no TLS library. The kernel program checked
 * the name, unless it could not read the path (ev.unread): then it is read
 * here, from the process, which is held at the open so the bytes are the
 * ones the open will use; a path that cannot be read is null (the open goes
 * on unattached: its writes keep their placeholders).
 */
export function openedLibrary(ev: LibOpenEvent): string | null {
  let path = ev.path;
  if (ev.unread) {
    const read = processVmReadString(ev.tgid, ev.upath, NAME_MAX);
    if (read === null) return null;
    const base = read.slice(read.lastIndexOf("/") + 1);
    if (!TLS_LIBRARY_PREFIXES.some((p) => base.startsWith(p))) return null;
    path = read;
  }
  if (path.startsWith("/")) return `/proc/${ev.tgid}/root${path}`;
  const dir = ev.dirfd === AT_FDCWD ? "cwd" : `fd/${ev.dirfd}`;
  return `/proc/${ev.tgid}/${dir}/${path}`;
}
