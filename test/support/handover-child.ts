/**
 * The old side of test/dataplane/handover.test.ts, in a process of its own so
 * that what it hands over outlives it: starts a data plane, loads a secret
 * into a scope, starts the loop client in that scope (its output to a file),
 * waits for 10 answers, hands over, exits. Prints the client's pid, then the
 * handover's directory.
 * argv: spec file (JSON: uprobes, scope, id, secret, placeholder, client argv, out file).
 */
import { readFileSync } from "node:fs";
import { netnsInode } from "../../lib/proc.ts";
import { Dataplane } from "../../src/dataplane/dataplane.ts";
import { placeholderKey } from "../../src/secrets/placeholder.ts";

const spec = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as {
  uprobes: "multi" | "single";
  scope: number;
  id: number;
  secret: string;
  placeholder: string;
  argv: string[];
  out: string;
};
const dp = await Dataplane.start({ mode: "auto", scanCap: 65536, uprobes: spec.uprobes, holds: "signals" });
dp.setScope(spec.scope, { netns: netnsInode(process.pid), strictBinding: false, onViolation: "pass" });
await dp.setSecret({
  id: spec.id,
  placeholder: Buffer.from(spec.placeholder),
  key: placeholderKey(spec.placeholder),
  value: Buffer.from(spec.secret),
  rules: null,
});
dp.grant(spec.scope, spec.id);
dp.addLauncher(process.pid, spec.scope);
try {
  const client = Bun.spawn(spec.argv, { stdout: Bun.file(spec.out), stderr: Bun.file(`${spec.out}.err`), stdin: "ignore" });
  client.unref();
  process.stdout.write(`${client.pid}\n`);
} finally {
  dp.removeLauncher(process.pid);
}
const oks = () => {
  try {
    return readFileSync(spec.out, "latin1").split("\n").filter((l) => l.startsWith("OK ")).length;
  } catch {
    return 0;
  }
};
for (let i = 0; i < 400 && oks() < 10; i++) await Bun.sleep(25);
if (oks() < 10) {
  process.stderr.write("the client made fewer than 10 requests\n");
  process.exit(1);
}
process.stdout.write((await dp.handOver(Date.now() + 30_000)) + "\n");
process.exit(0);
