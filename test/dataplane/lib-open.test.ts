/**
 * `kloak exec` loads its TLS programs when a process first needs them
 * (bpf/libopen.h): until then a scoped process that opens a TLS library is
 * held at that open, the library attached, and only then let go. These are
 * the ways a tree first reaches TLS: a program linked against libssl (its
 * loader opens it after the exec), a late dlopen (Python's `import ssl`), a
 * dlopen by a relative path (openat's dirfd), and each must be substituted
 * exactly as when the programs load at start. Real kernel, real clients,
 * real TLS server; assertions count occurrences, never print a value.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testCerts, type TestCerts } from "../support/certs.ts";
import { pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";

let certs: TestCerts;
let http: TlsServer;
const tmp = mkdtempSync(join(tmpdir(), "kloak-lib-open-"));

beforeAll(async () => {
  certs = await testCerts();
  http = await startTlsServer({ mode: "http" });
});
afterAll(() => http.close());
beforeEach(() => http.reset());

/** A counter of the --metrics-file kloak wrote. */
function metric(file: string, name: string): number {
  const line = readFileSync(file, "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`${name} is not in ${file}`);
  return Number(line.split(" ")[1]);
}

/** Python: optionally wait, optionally load libssl by a relative path first, then one HTTPS request carrying $API_TOKEN. */
function pythonRequest(o: { sleep?: number; preload?: { dir: string; file: string } }): string {
  return [
    "import os, time",
    `time.sleep(${o.sleep ?? 0})`,
    ...(o.preload ? ["import ctypes", `os.chdir(${JSON.stringify(o.preload.dir)})`, `ctypes.CDLL(${JSON.stringify("./" + o.preload.file)})`] : []),
    "import http.client, ssl",
    `ctx = ssl.create_default_context(cafile=${JSON.stringify(certs.caFile)})`,
    `c = http.client.HTTPSConnection("localhost", ${http.port}, context=ctx)`,
    'c.request("GET", "/late", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})',
    "print(c.getresponse().status)",
  ].join("\n");
}

/** The libssl Python's _ssl links, as the loader resolves it. */
function pythonLibssl(): string {
  const found = Bun.spawnSync([pythonPath(), "-c", "import ssl, _ssl; print(_ssl.__file__)"]);
  if (!found.success) throw new Error(`python cannot import ssl: ${found.stderr}`);
  const ldd = Bun.spawnSync(["ldd", found.stdout.toString().trim()]).stdout.toString();
  const lib = /libssl\.so\S*\s+=>\s+(\S+)/.exec(ldd)?.[1];
  if (!lib) throw new Error(`no libssl in ldd of _ssl:\n${ldd}`);
  return lib;
}

async function run(cmd: string[], secret: string, metrics: string) {
  const r = await runKloak(["exec", "--secret", `API_TOKEN=${secret}`, "--allow", "API_TOKEN=localhost", "--metrics-file", metrics, "--", ...cmd]);
  expect(r.stderr).not.toContain(secret);
  return r;
}

describe("the TLS programs load when a process first opens a TLS library", () => {
  test("Python's `import ssl` half a second in, the tree's first TLS: held at the open, substituted", async () => {
    const secret = fakeSecret(32);
    const m = join(tmp, "late.prom");
    const r = await run([pythonPath(), "-c", pythonRequest({ sleep: 0.5 })], secret, m);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe("200");
    const got = http.received();
    expect(occurrences(got, `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(placeholderCount(got)).toBe(0);
    expect(metric(m, "kloak_library_open_holds_total")).toBeGreaterThanOrEqual(1);
    expect(metric(m, "kloak_library_opens_unheld_total")).toBe(0);
  });

  test("curl started by a shell, twice: both substituted; at most the first is held at an open", async () => {
    const secret = fakeSecret(32);
    const m = join(tmp, "curl.prom");
    const curl = `curl -sS --fail --cacert ${certs.caFile} -H "Authorization: Bearer $API_TOKEN" ${http.url}/c`;
    const r = await run(["sh", "-c", `sleep 0.2; ${curl} && ${curl}`], secret, m);
    expect(r.code).toBe(0);
    expect(occurrences(http.received(), `Authorization: Bearer ${secret}\r\n`)).toBe(2);
    expect(placeholderCount(http.received())).toBe(0);
    // The first curl loads the programs: at its exec when a library it links has TLS inside (Debian's
    // libcurl reaches GnuTLS through librtmp), else at its loader's open of libssl. From then on the
    // system's libssl is attached at every exec and opens are no longer watched: the second is not held.
    expect(metric(m, "kloak_library_open_holds_total")).toBeLessThanOrEqual(1);
  });

  test("a library opened by a relative path (openat from the working directory) is attached through it", async () => {
    const lib = pythonLibssl();
    const secret = fakeSecret(32);
    const m = join(tmp, "relative.prom");
    const dir = lib.slice(0, lib.lastIndexOf("/"));
    const file = lib.slice(lib.lastIndexOf("/") + 1);
    const r = await run([pythonPath(), "-c", pythonRequest({ preload: { dir, file } })], secret, m);
    expect(r.code).toBe(0);
    expect(occurrences(http.received(), `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(placeholderCount(http.received())).toBe(0);
    expect(metric(m, "kloak_library_open_holds_total")).toBeGreaterThanOrEqual(1);
  });

  test("an open whose path the kernel program cannot read (a page never touched) is held all the same, and attached", async () => {
    // A path that is a string constant (a dlopen of a fixed path) may lie in a page the process
    // never touched; a tracing program cannot fault it in. Here the path lies in a fresh mmap of a
    // file, opened with libc's open() (which does not touch it); the library is then loaded
    // through that fd, so no other open of it is seen: only a hold at this open attaches it.
    const lib = pythonLibssl();
    const secret = fakeSecret(32);
    const m = join(tmp, "unread.prom");
    const pathFile = join(tmp, "unread-path");
    await Bun.write(pathFile, lib + "\0");
    const code = [
      "import ctypes, os",
      "libc = ctypes.CDLL(None, use_errno=True)",
      "libc.mmap.restype = ctypes.c_void_p",
      "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]",
      "libc.open.argtypes = [ctypes.c_void_p, ctypes.c_int]",
      `pf = os.open(${JSON.stringify(pathFile)}, os.O_RDONLY)`,
      "addr = libc.mmap(None, 4096, 1, 2, pf, 0)  # PROT_READ, MAP_PRIVATE: no page of it mapped yet",
      "fd = libc.open(addr, os.O_RDONLY)",
      "assert fd >= 0, ctypes.get_errno()",
      'ctypes.CDLL(f"/proc/self/fd/{fd}", mode=ctypes.RTLD_GLOBAL)  # its soname satisfies _ssl: no open by name',
      pythonRequest({}),
    ].join("\n");
    const r = await run([pythonPath(), "-c", code], secret, m);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe("200");
    expect(occurrences(http.received(), `Authorization: Bearer ${secret}\r\n`)).toBe(1);
    expect(placeholderCount(http.received())).toBe(0);
    expect(metric(m, "kloak_library_open_paths_unread_total")).toBeGreaterThanOrEqual(1);
    expect(metric(m, "kloak_library_open_holds_total")).toBe(0); // no open of it by a name the kernel program read
  });

  test("a tree that never opens a TLS library holds nothing at its opens", async () => {
    const m = join(tmp, "none.prom");
    const r = await run(["sh", "-c", "cat /etc/hostname /etc/os-release >/dev/null; ls /usr/lib >/dev/null"], fakeSecret(32), m);
    expect(r.code).toBe(0);
    expect(metric(m, "kloak_library_open_holds_total")).toBe(0);
    expect(metric(m, "kloak_tls_writes_total")).toBe(0);
  });
});
