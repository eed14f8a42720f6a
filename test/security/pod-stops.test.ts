/**
 * The same interactive-shell check as stops.test.ts (shell.ts), in an enabled
 * pod's container, entered the way `kubectl exec -it` does: the runtime forks
 * outside the container, moves the child into the container's cgroup and execs
 * the command there. The real cgroup layout under the real cgroup2 root, the
 * real eBPF object driven in-process through Dataplane and PodAttacher, a
 * secret with a destination rule; the shell's parent is not this process (as
 * the runtime is not the agent).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { cgroupProcesses, cgroupV2Root } from "../../src/node/cgroups.ts";
import { PodAttacher, type PodTarget } from "../../src/node/pod-attacher.ts";
import { kernelRules } from "../../src/policy/policy-engine.ts";
import { parseRuleList } from "../../src/policy/rules.ts";
import { placeholderKey, PlaceholderRegistry, valueShape } from "../../src/secrets/placeholder.ts";
import { testCerts } from "../support/certs.ts";
import { pythonPath } from "../support/clients.ts";
import { fakeSecret } from "../support/kloak.ts";
import { startTlsServer, type TlsServer } from "../support/tls-server.ts";
import { checkShell, commandList, shellArgs } from "./shell.ts";

const UID = `5e1f2a3b-4c5d-4e6f-8a9b-${String(process.pid).padStart(12, "0")}`;
const CID = "5hell".padEnd(64, "0");
const SECRET_ID = 601;
const REL = [
  "kubepods.slice",
  "kubepods-besteffort.slice",
  `kubepods-besteffort-pod${UID.replaceAll("-", "_")}.slice`,
  `cri-containerd-${CID}.scope`,
];
const TEST_TIMEOUT_MS = 300_000;

let server: TlsServer;
let caFile: string;
let python: string;
let dp: Dataplane;
let attacher: PodAttacher;
let base: string;
let leaf: string;
const secret = fakeSecret(32);
let placeholder: string;

const target: PodTarget = {
  uid: UID,
  namespace: "ns",
  name: "shell-0",
  qosClass: "BestEffort",
  containers: [{ name: "app", containerId: `containerd://${CID}`, running: true }],
  secretIds: [SECRET_ID],
};

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

beforeAll(async () => {
  // Everything that runs a child synchronously happens before any scope exists.
  python = pythonPath();
  server = await startTlsServer({ host: "127.0.0.1" });
  caFile = (await testCerts()).caFile;
  base = join(cgroupV2Root(), `kloak-shell-${process.pid}`);
  leaf = join(base, ...REL);
  mkdirSync(leaf, { recursive: true });
  placeholder = new PlaceholderRegistry().create("API_KEY", valueShape(secret));
  dp = await Dataplane.start({ mode: "auto", scanCap: 4096 });
  await dp.setSecret({
    id: SECRET_ID,
    placeholder: Buffer.from(placeholder),
    key: placeholderKey(placeholder),
    value: Buffer.from(secret),
    rules: kernelRules(parseRuleList("127.0.0.1")),
  });
  attacher = new PodAttacher(dp, { cgroupRoot: base, log: () => {} });
  attacher.sync(target);
}, 60_000);

afterAll(async () => {
  attacher?.remove(UID);
  attacher?.close();
  await dp?.close();
  await server?.close();
  for (let i = 0; i < 100 && cgroupProcesses(leaf).length; i++) await Bun.sleep(20);
  for (const dir of [...REL.map((_, i) => join(base, ...REL.slice(0, REL.length - i))), base]) {
    try {
      rmdirSync(dir);
    } catch (e) {
      console.error(`cleanup: ${(e as Error).message}`);
    }
  }
}, 30_000);

test(
  "an interactive shell exec'd into an enabled pod's container sees no job-control stop and no wrong exit status",
  async () => {
    const expected = commandList(server, caFile);
    // The runtime's exec: a process outside the container joins its cgroup, then execs.
    const inner = `echo $$ > ${q(join(leaf, "cgroup.procs"))} && exec ${[python, ...shellArgs(expected)].map(q).join(" ")}`;
    const p = Bun.spawn(["sh", "-c", `sh -c ${q(inner)}; exit $?`], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", API_KEY: placeholder },
    });
    const timer = setTimeout(() => p.kill("SIGKILL"), TEST_TIMEOUT_MS - 20_000);
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    clearTimeout(timer);
    const stats = await dp.workerStats();
    checkShell({ stdout, context: `rewrite mode ${dp.mode}; exit ${code}; stderr tail: ${stderr.slice(-1500)}`, expected, secret, server });
    expect(code).toBe(0);
    // Held where no parent sees: kloak traced the shell (and the shell's children through it).
    expect(stats.traced).toBeGreaterThanOrEqual(1);
    expect(stats.traceFailed).toBe(0);
  },
  TEST_TIMEOUT_MS,
);
