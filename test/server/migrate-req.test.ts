/**
 * net.ipv4.tcp_migrate_req at agent start (https-server.ts): turned on in a
 * network namespace of the agent's own (a pod's), so a certificate reload
 * hands connections queued on the old listener to the new one instead of
 * resetting them; never touched in the host's namespace. Real namespaces:
 * `unshare -n` gives the child a fresh one, where the setting starts at 0.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { migrateQueuedConnections } from "../../src/server/https-server.ts";
import { netnsInode } from "../../lib/proc.ts";

const ROOT = join(import.meta.dir, "..", "..");
const FILE = "/proc/sys/net/ipv4/tcp_migrate_req";

describe("tcp_migrate_req", () => {
  test("in a network namespace of its own: turned on, and the namespace reads 1 afterwards", () => {
    const host = netnsInode(process.pid);
    const script = `
      import { migrateQueuedConnections } from ${JSON.stringify(join(ROOT, "src/server/https-server.ts"))};
      import { netnsInode } from ${JSON.stringify(join(ROOT, "lib/proc.ts"))};
      import { readFileSync } from "node:fs";
      const before = readFileSync(${JSON.stringify(FILE)}, "utf8").trim();
      // The parent's namespace stands for the host's (pid 1's may be unreadable in a sandbox).
      const said = migrateQueuedConnections({ netns: netnsInode(process.pid), hostNetns: ${host}n });
      console.log(JSON.stringify({ before, said, after: readFileSync(${JSON.stringify(FILE)}, "utf8").trim() }));
    `;
    const r = Bun.spawnSync(["unshare", "-n", process.execPath, "-e", script]);
    expect(r.stderr.toString()).toBe("");
    const out = JSON.parse(r.stdout.toString());
    expect(out).toEqual({ before: "0", said: "turned on in this pod's network namespace", after: "1" });
  });

  test("in the host's network namespace: left alone, and the reason is said", () => {
    const before = readFileSync(FILE, "utf8");
    const said = migrateQueuedConnections({ netns: 4026531840n, hostNetns: 4026531840n });
    expect(said).toStartWith("left alone: this is the host's network namespace");
    expect(readFileSync(FILE, "utf8")).toBe(before);
  });

  test("a namespace that cannot be told (null) is treated as the host's", () => {
    expect(migrateQueuedConnections({ netns: null, hostNetns: 1n })).toStartWith("left alone");
  });

  test("a setting that cannot be written: said, not thrown", () => {
    const said = migrateQueuedConnections({ netns: 1n, hostNetns: 2n, file: "/nonexistent/tcp_migrate_req" });
    expect(said).toStartWith("cannot be turned on (");
  });
});
